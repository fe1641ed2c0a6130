//! Checkpoint tensors by their own names: memory-mapped safetensors, the name/shape contract a
//! config implies, and the seeded initialisation used when no real weights exist.
//!
//! Loading maps each file and builds every tensor over the mapped bytes, then converts it to the
//! compute dtype and device; nothing reads the whole file into memory first. When the compute
//! dtype equals the file's dtype on the CPU, the tensor stays a view of the mapping (no copy at
//! all). Such views borrow the mapping: keep the [`Weights`] (or its [`Weights::keep_alive`]
//! handle) alive for as long as any tensor obtained from it is used.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use tch::{Device, Kind, Tensor};

use super::config::{
    CLIP_MLP_RATIO, Config, SAM_MLP_RATIO, SAM_NECK_CHANNELS, SAM_PATCH, SAM_WINDOW,
};
use super::error::{OcrError, Result};

/// Name -> shape of every tensor a checkpoint for `cfg` must contain (sorted by name).
pub type ShapeMap = BTreeMap<String, Vec<i64>>;

/// Keeps the memory maps behind mapped tensors alive (see the module docs).
#[derive(Clone, Default)]
pub struct KeepAlive {
    _maps: Vec<Arc<Mmap>>,
}

/// libtorch's default CPU generator is shared by the whole process: a seeded draw interleaved
/// with another thread's draws yields other numbers. Whoever seeds it and draws a reproducible
/// sequence holds this lock for the whole sequence ([`Weights::seeded`] does).
static GLOBAL_RNG: Mutex<()> = Mutex::new(());

/// Take the process-wide lock on libtorch's default generator (see [`Weights::seeded`]).
pub fn lock_global_rng() -> MutexGuard<'static, ()> {
    GLOBAL_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tensors of one checkpoint, keyed by checkpoint name (`model.sam_model.blocks.0.attn.qkv.weight`).
pub struct Weights {
    /// The tensors on the CPU (mapped views or converted copies); [`Weights::get`] and
    /// [`Weights::take`] move them to `device` when they are asked for, so a GPU receives each
    /// tensor once, where the model wants it.
    tensors: HashMap<String, Tensor>,
    device: Device,
    /// What the tensors came from, for error messages (a file, a folder or the seed).
    source: PathBuf,
    keep: KeepAlive,
}

/// One parsed safetensors file: its mapping, the data offset and the header.
struct MappedFile {
    path: PathBuf,
    map: Arc<Mmap>,
    data_start: usize,
    metadata: Metadata,
}

fn weights_err(path: &Path, message: impl Into<String>) -> OcrError {
    OcrError::Weights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn shape_i64(info: &TensorInfo) -> Vec<i64> {
    info.shape.iter().map(|&d| d as i64).collect()
}

impl MappedFile {
    /// Map `path` and check its header: the header itself, and for every tensor a supported
    /// dtype, a byte range that matches its shape and lies inside the file.
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| OcrError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the file is opened read-only and only ever read through this mapping; the
        // usual caveat of memory maps (another process truncating the file) applies.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| OcrError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad_header = |why: String| {
            weights_err(
                path,
                format!("bad safetensors header ({why}); the file is damaged or not safetensors"),
            )
        };
        let len_bytes: [u8; 8] = map
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad_header(format!("file is only {} bytes", map.len())))?;
        let header_len = u64::from_le_bytes(len_bytes);
        let data_start = usize::try_from(header_len)
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&end| end <= map.len())
            .ok_or_else(|| {
                bad_header(format!(
                    "header length {header_len} exceeds the file size {}",
                    map.len()
                ))
            })?;
        let metadata: Metadata = serde_json::from_slice(&map[8..data_start])
            .map_err(|e| bad_header(format!("header JSON: {e}")))?;
        let mapped = Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            data_start,
            metadata,
        };
        mapped.check_ranges()?;
        Ok(mapped)
    }

    fn check_ranges(&self) -> Result<()> {
        let data_len = self.map.len() - self.data_start;
        for name in self.metadata.offset_keys() {
            let Some(info) = self.metadata.info(&name) else {
                continue;
            };
            let Some(kind) = kind_of(info.dtype) else {
                return Err(weights_err(
                    &self.path,
                    format!("tensor {name} has unsupported dtype {:?}", info.dtype),
                ));
            };
            let (start, end) = info.data_offsets;
            let numel: usize = info.shape.iter().product();
            let need = numel * kind.elt_size_in_bytes();
            if end < start || end - start != need {
                return Err(weights_err(
                    &self.path,
                    format!(
                        "tensor {name}: shape {:?} ({:?}) needs {need} bytes but the header \
                         gives {}..{}",
                        info.shape, info.dtype, start, end
                    ),
                ));
            }
            if end > data_len {
                return Err(weights_err(
                    &self.path,
                    format!(
                        "tensor {name}: its data (bytes {start}..{end}) runs past the end of the \
                         file ({data_len} data bytes): the file is truncated, download it again"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn shapes(&self) -> impl Iterator<Item = (String, Vec<i64>)> + '_ {
        self.metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, shape_i64(info)))
    }

    /// The tensor `name` in the compute `kind` on `device`; a view of the mapping when no
    /// conversion is needed.
    fn tensor(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| weights_err(&self.path, format!("missing tensor {name}")))?;
        let file_kind = kind_of(info.dtype)
            .ok_or_else(|| weights_err(&self.path, format!("tensor {name}: unsupported dtype")))?;
        let shape = shape_i64(info);
        let bytes = &self.map[self.data_start + info.data_offsets.0..]
            [..info.data_offsets.1 - info.data_offsets.0];
        let elt = file_kind.elt_size_in_bytes();
        let view = if (bytes.as_ptr() as usize).is_multiple_of(elt) {
            let strides = contiguous_strides(&shape);
            // SAFETY: the range was checked against the shape and dtype in `check_ranges`, the
            // pointer is aligned for the dtype, and the mapping outlives the tensor (the
            // `Weights` or its `KeepAlive` holds it). The tensor is never written to.
            unsafe { Tensor::from_blob(bytes.as_ptr(), &shape, &strides, file_kind, Device::Cpu) }
        } else {
            // A writer that did not align the data: fall back to one copy of this tensor.
            Tensor::f_from_data_size(bytes, &shape, file_kind)?
        };
        let converted = if view.is_floating_point() && file_kind != kind {
            view.f_to_kind(kind)?
        } else {
            view
        };
        Ok(converted.f_to_device(device)?)
    }
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Weights {
    /// Weights made of `tensors` as they are (unit tests of the loaders).
    #[cfg(test)]
    pub(crate) fn from_tensors(tensors: HashMap<String, Tensor>, device: Device) -> Self {
        Self {
            tensors,
            device,
            source: PathBuf::from("test tensors"),
            keep: KeepAlive { _maps: Vec::new() },
        }
    }

    /// Load one safetensors file as it is (every tensor it holds, no name contract), converting
    /// floating-point tensors to `kind` on `device`.
    pub fn load(path: &Path, kind: Kind, device: Device) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let names: Vec<String> = file.shapes().map(|(n, _)| n).collect();
        let mut tensors = HashMap::with_capacity(names.len());
        for name in names {
            let t = file.tensor(&name, kind, Device::Cpu)?;
            tensors.insert(name, t);
        }
        Ok(Self {
            tensors,
            device,
            source: path.to_path_buf(),
            keep: KeepAlive {
                _maps: vec![file.map.clone()],
            },
        })
    }

    /// Load the checkpoint files of a model for `cfg`: the tensor names over all files must
    /// equal [`expected_shapes`] exactly, with the same shapes; any difference is an error
    /// naming the file and the tensor.
    pub fn load_checked(
        files: &[PathBuf],
        cfg: &Config,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        // Errors about no file in particular name the file (one shard) or the folder.
        let folder = match files {
            [one] => one.clone(),
            _ => files
                .first()
                .and_then(|p| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let mapped = files
            .iter()
            .map(|p| MappedFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        let mut found: BTreeMap<String, (Vec<i64>, usize)> = BTreeMap::new();
        for (i, file) in mapped.iter().enumerate() {
            for (name, shape) in file.shapes() {
                if let Some((_, j)) = found.insert(name.clone(), (shape, i)) {
                    return Err(weights_err(
                        &file.path,
                        format!(
                            "tensor {name} is also in {}; remove the duplicate shard",
                            mapped[j].path.display()
                        ),
                    ));
                }
            }
        }
        let shapes: ShapeMap = found
            .iter()
            .map(|(n, (s, _))| (n.clone(), s.clone()))
            .collect();
        check_contract(&expected_shapes(cfg), &shapes).map_err(|(name, message)| {
            let path = found
                .get(&name)
                .map(|(_, i)| mapped[*i].path.clone())
                .unwrap_or_else(|| folder.clone());
            weights_err(&path, message)
        })?;
        let mut tensors = HashMap::with_capacity(found.len());
        for (name, (_, i)) in found {
            let t = mapped[i].tensor(&name, kind, Device::Cpu)?;
            tensors.insert(name, t);
        }
        Ok(Self {
            tensors,
            device,
            source: folder,
            keep: KeepAlive {
                _maps: mapped.into_iter().map(|f| f.map).collect(),
            },
        })
    }

    /// The seeded random weights of the fixtures: one CPU generator seeded with `seed`
    /// (`tch::manual_seed`, the same generator as `torch.manual_seed`), then every tensor of
    /// [`expected_shapes`] in sorted-name order drawn as `z = randn(shape, f32)` and mapped:
    /// a 1-D `*weight` -> `1 + 0.1 z`; other 1-D -> `0.02 z`; `model.embed_tokens.weight` -> `z`;
    /// anything else -> `z / sqrt(prod(shape[1:]))`. Then converted to `kind` on `device`.
    ///
    /// Holds [`lock_global_rng`] while drawing, so concurrent seeded loads give the same numbers.
    pub fn seeded(cfg: &Config, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let _rng = lock_global_rng();
        tch::manual_seed(seed);
        let shapes = expected_shapes(cfg);
        // Every draw goes into one f32 buffer (`normal_` is what `randn` runs, so the numbers are
        // the same): a fresh f32 tensor per draw, freed after its conversion, left the heap
        // holding up to 5 GB of freed pages at the full size.
        let largest = shapes.values().map(|s| s.iter().product::<i64>()).max();
        let buffer = Tensor::f_empty([largest.unwrap_or(0)], (Kind::Float, Device::Cpu))?;
        let mut tensors = HashMap::with_capacity(shapes.len());
        for (name, shape) in shapes {
            let numel: i64 = shape.iter().product();
            let mut z = buffer.f_narrow(0, 0, numel)?.f_view(shape.as_slice())?;
            let _ = z.f_normal_(0.0, 1.0)?;
            let z = seeded_value(&name, &shape, z);
            let t = if kind == Kind::Float {
                z.copy()
            } else {
                z.f_to_kind(kind)?
            };
            tensors.insert(name, t);
        }
        drop(buffer);
        release_free_heap();
        Ok(Self {
            tensors,
            device,
            source: PathBuf::from(format!("seeded weights (seed {seed})")),
            keep: KeepAlive::default(),
        })
    }

    /// The tensor named `name` on the weights' device (on the CPU a shallow clone sharing
    /// storage; elsewhere a copy on that device).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        Ok(t.f_to_device(self.device)?)
    }

    /// Remove and return the tensor named `name` on the weights' device, so that its memory is
    /// freed as soon as the caller drops it (used when the model repacks tensors).
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        let t = self.take_host(name)?;
        Ok(t.f_to_device(self.device)?)
    }

    /// Remove and return the tensor named `name` as it is held, on the CPU: for copying it
    /// straight into a slot of a larger tensor on the device (stacked experts), one upload and
    /// no intermediate device tensor.
    pub fn take_host(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| self.missing(name))
    }

    /// The shape and dtype of the tensor named `name` (without moving it anywhere).
    pub fn shape_and_kind(&self, name: &str) -> Result<(Vec<i64>, Kind)> {
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        Ok((t.size(), t.kind()))
    }

    /// The device the tensors are handed out on.
    pub fn device(&self) -> Device {
        self.device
    }

    fn missing(&self, name: &str) -> OcrError {
        weights_err(&self.source, format!("missing tensor {name}"))
    }

    /// Drop `t`, a tensor taken from these weights and copied elsewhere (e.g. into stacked
    /// expert weights). When it is a view of a file mapping, the whole pages it covers are
    /// handed back (`MADV_DONTNEED`): they stay in the page cache but leave this process's
    /// resident set, so repacking does not count the same bytes twice. Returns whether pages
    /// were released; tensors in ordinary memory are simply dropped.
    pub fn done_with(&self, t: Tensor) -> bool {
        if t.device() != Device::Cpu {
            return false;
        }
        let start = t.data_ptr() as usize;
        let end = start + t.numel() * t.kind().elt_size_in_bytes();
        let inside = self.keep._maps.iter().any(|m| {
            let base = m.as_ptr() as usize;
            start >= base && end <= base + m.len()
        });
        if !inside {
            return false;
        }
        release_pages(start, end)
    }

    /// A handle that keeps the file mappings alive (hold it beside tensors from [`Weights::get`]).
    pub fn keep_alive(&self) -> KeepAlive {
        // On another device every tensor handed out is a copy: nothing views the mappings once
        // the weights are dropped, so they go with them.
        if self.device == Device::Cpu {
            self.keep.clone()
        } else {
            KeepAlive::default()
        }
    }

    /// Name -> shape of the tensors held.
    pub fn shapes(&self) -> ShapeMap {
        self.tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.size()))
            .collect()
    }

    /// Name, shape and dtype of every tensor held.
    pub fn shapes_and_kinds(&self) -> impl Iterator<Item = (&str, Vec<i64>, Kind)> + '_ {
        self.tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.size(), t.kind()))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// `MADV_DONTNEED` on the whole pages inside `start..end`, which must lie in a read-only file
/// mapping (then later reads fault the pages back in from the page cache; nothing is lost).
fn release_pages(start: usize, end: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        if last <= first {
            return false;
        }
        // SAFETY: the range lies inside a live read-only shared file mapping (checked by the
        // caller), so dropping its pages only makes the next access read them again.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            ) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (start, end);
        false
    }
}

/// Give the heap pages freed so far back to the system (glibc keeps freed chunks otherwise,
/// which after repacking many tensors adds gigabytes to the resident set).
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns memory the allocator holds as free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Apply the seeded rule to a fresh draw `z` in place (no second buffer per tensor).
fn seeded_value(name: &str, shape: &[i64], mut z: Tensor) -> Tensor {
    if shape.len() == 1 {
        if name.ends_with("weight") {
            z *= 0.1;
            z += 1.0;
        } else {
            z *= 0.02;
        }
    } else if name != "model.embed_tokens.weight" {
        let fan: i64 = shape[1..].iter().product();
        z /= (fan as f64).sqrt();
    }
    z
}

/// Compare the checkpoint's `found` names and shapes with the `expected` ones. The error is
/// `(tensor name, message)` for the first difference (missing, then unexpected, then
/// mis-shaped), with a count of the other differences.
pub fn check_contract(
    expected: &ShapeMap,
    found: &ShapeMap,
) -> std::result::Result<(), (String, String)> {
    let missing: Vec<&String> = expected
        .keys()
        .filter(|n| !found.contains_key(*n))
        .collect();
    let unexpected: Vec<&String> = found
        .keys()
        .filter(|n| !expected.contains_key(*n))
        .collect();
    let misshaped: Vec<&String> = expected
        .iter()
        .filter(|(n, s)| found.get(*n).is_some_and(|f| f != *s))
        .map(|(n, _)| n)
        .collect();
    let total = missing.len() + unexpected.len() + misshaped.len();
    let more = if total > 1 {
        format!(" (and {} more difference(s))", total - 1)
    } else {
        String::new()
    };
    let hint = "check that the checkpoint matches config.json";
    if let Some(name) = missing.first() {
        let shape = &expected[*name];
        return Err((
            (*name).clone(),
            format!("tensor {name} (shape {shape:?}) is missing{more}; {hint}"),
        ));
    }
    if let Some(name) = unexpected.first() {
        return Err((
            (*name).clone(),
            format!("unexpected tensor {name}, the config implies no such tensor{more}; {hint}"),
        ));
    }
    if let Some(name) = misshaped.first() {
        return Err((
            (*name).clone(),
            format!(
                "tensor {name} has shape {:?}, the config implies {:?}{more}; {hint}",
                found[*name], expected[*name]
            ),
        ));
    }
    Ok(())
}

/// Every tensor name of a checkpoint for `cfg`, with its shape, derived from the config alone.
pub fn expected_shapes(cfg: &Config) -> ShapeMap {
    let mut m = ShapeMap::new();
    language_shapes(cfg, &mut m);
    sam_shapes(cfg, &mut m);
    clip_shapes(cfg, &mut m);
    let h = cfg.language_config.hidden_size;
    m.insert("model.image_newline".into(), vec![h]);
    m.insert("model.view_seperator".into(), vec![h]);
    let p = &cfg.projector_config;
    m.insert(
        "model.projector.layers.weight".into(),
        vec![p.n_embed, p.input_dim],
    );
    m.insert("model.projector.layers.bias".into(), vec![p.n_embed]);
    m
}

fn insert_mlp(m: &mut ShapeMap, prefix: &str, hidden: i64, inner: i64) {
    m.insert(format!("{prefix}.gate_proj.weight"), vec![inner, hidden]);
    m.insert(format!("{prefix}.up_proj.weight"), vec![inner, hidden]);
    m.insert(format!("{prefix}.down_proj.weight"), vec![hidden, inner]);
}

fn insert_norm(m: &mut ShapeMap, prefix: &str, width: i64) {
    m.insert(format!("{prefix}.weight"), vec![width]);
    m.insert(format!("{prefix}.bias"), vec![width]);
}

fn insert_linear(m: &mut ShapeMap, prefix: &str, out: i64, inp: i64) {
    m.insert(format!("{prefix}.weight"), vec![out, inp]);
    m.insert(format!("{prefix}.bias"), vec![out]);
}

fn language_shapes(cfg: &Config, m: &mut ShapeMap) {
    let l = &cfg.language_config;
    let h = l.hidden_size;
    let hd = l.head_dim();
    m.insert("model.embed_tokens.weight".into(), vec![l.vocab_size, h]);
    m.insert("lm_head.weight".into(), vec![l.vocab_size, h]);
    m.insert("model.norm.weight".into(), vec![h]);
    for i in 0..l.num_hidden_layers {
        let p = format!("model.layers.{i}");
        m.insert(format!("{p}.input_layernorm.weight"), vec![h]);
        m.insert(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        m.insert(
            format!("{p}.self_attn.q_proj.weight"),
            vec![l.num_attention_heads * hd, h],
        );
        m.insert(
            format!("{p}.self_attn.k_proj.weight"),
            vec![l.num_key_value_heads * hd, h],
        );
        m.insert(
            format!("{p}.self_attn.v_proj.weight"),
            vec![l.num_key_value_heads * hd, h],
        );
        m.insert(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, l.num_attention_heads * hd],
        );
        if l.is_moe_layer(i) {
            m.insert(format!("{p}.mlp.gate.weight"), vec![l.n_routed_experts, h]);
            for e in 0..l.n_routed_experts {
                insert_mlp(
                    m,
                    &format!("{p}.mlp.experts.{e}"),
                    h,
                    l.moe_intermediate_size,
                );
            }
            if l.n_shared_experts > 0 {
                insert_mlp(
                    m,
                    &format!("{p}.mlp.shared_experts"),
                    h,
                    l.shared_intermediate_size(),
                );
            }
        } else {
            insert_mlp(m, &format!("{p}.mlp"), h, l.intermediate_size);
        }
    }
}

fn sam_shapes(cfg: &Config, m: &mut ShapeMap) {
    let s = &cfg.vision_config.width.sam;
    let w = s.width;
    let head_dim = w / s.heads;
    let grid = cfg.sam_pos_grid();
    let p = "model.sam_model";
    m.insert(
        format!("{p}.patch_embed.proj.weight"),
        vec![w, 3, SAM_PATCH, SAM_PATCH],
    );
    m.insert(format!("{p}.patch_embed.proj.bias"), vec![w]);
    m.insert(format!("{p}.pos_embed"), vec![1, grid, grid, w]);
    for i in 0..s.layers {
        let b = format!("{p}.blocks.{i}");
        let window = if s.global_attn_indexes.contains(&i) {
            grid
        } else {
            SAM_WINDOW
        };
        insert_norm(m, &format!("{b}.norm1"), w);
        insert_norm(m, &format!("{b}.norm2"), w);
        insert_linear(m, &format!("{b}.attn.qkv"), 3 * w, w);
        insert_linear(m, &format!("{b}.attn.proj"), w, w);
        m.insert(
            format!("{b}.attn.rel_pos_h"),
            vec![2 * window - 1, head_dim],
        );
        m.insert(
            format!("{b}.attn.rel_pos_w"),
            vec![2 * window - 1, head_dim],
        );
        insert_linear(m, &format!("{b}.mlp.lin1"), SAM_MLP_RATIO * w, w);
        insert_linear(m, &format!("{b}.mlp.lin2"), w, SAM_MLP_RATIO * w);
    }
    let n = SAM_NECK_CHANNELS;
    m.insert(format!("{p}.neck.0.weight"), vec![n, w, 1, 1]);
    insert_norm(m, &format!("{p}.neck.1"), n);
    m.insert(format!("{p}.neck.2.weight"), vec![n, n, 3, 3]);
    insert_norm(m, &format!("{p}.neck.3"), n);
    let (c2, c3) = (s.downsample_channels[0], s.downsample_channels[1]);
    m.insert(format!("{p}.net_2.weight"), vec![c2, n, 3, 3]);
    m.insert(format!("{p}.net_3.weight"), vec![c3, c2, 3, 3]);
}

fn clip_shapes(cfg: &Config, m: &mut ShapeMap) {
    let c = &cfg.vision_config.width.clip;
    let w = c.width;
    let positions = cfg.clip_pos_grid() * cfg.clip_pos_grid() + 1;
    let p = "model.vision_model";
    m.insert(format!("{p}.embeddings.class_embedding"), vec![w]);
    m.insert(
        format!("{p}.embeddings.patch_embedding.weight"),
        vec![w, 3, c.patch_size, c.patch_size],
    );
    m.insert(
        format!("{p}.embeddings.position_embedding.weight"),
        vec![positions, w],
    );
    insert_norm(m, &format!("{p}.pre_layrnorm"), w);
    for i in 0..c.layers {
        let b = format!("{p}.transformer.layers.{i}");
        insert_norm(m, &format!("{b}.layer_norm1"), w);
        insert_norm(m, &format!("{b}.layer_norm2"), w);
        insert_linear(m, &format!("{b}.self_attn.qkv_proj"), 3 * w, w);
        insert_linear(m, &format!("{b}.self_attn.out_proj"), w, w);
        insert_linear(m, &format!("{b}.mlp.fc1"), CLIP_MLP_RATIO * w, w);
        insert_linear(m, &format!("{b}.mlp.fc2"), w, CLIP_MLP_RATIO * w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rule_per_tensor_kind() {
        // Each call gets its own draw: the rule works in place.
        let z = || Tensor::from_slice(&[1.0f32, -2.0]);
        let norm = seeded_value("a.norm.weight", &[2], z());
        assert_eq!(Vec::<f32>::try_from(norm).ok(), Some(vec![1.1, 0.8]));
        let bias = seeded_value("a.bias", &[2], z());
        assert_eq!(Vec::<f32>::try_from(bias).ok(), Some(vec![0.02, -0.04]));
        let z2 = || Tensor::from_slice(&[4.0f32, 8.0, 12.0, 16.0]).view([1, 4]);
        let w = seeded_value("x.weight", &[1, 4], z2()).view([-1]);
        assert_eq!(Vec::<f32>::try_from(w).ok(), Some(vec![2.0, 4.0, 6.0, 8.0]));
        let e = seeded_value("model.embed_tokens.weight", &[1, 4], z2()).view([-1]);
        let e = Vec::<f32>::try_from(e).ok();
        assert_eq!(e, Some(vec![4.0, 8.0, 12.0, 16.0]));
    }

    #[test]
    fn contract_reports_each_kind_of_difference() {
        let expected: ShapeMap = [("a".to_string(), vec![2]), ("b".to_string(), vec![3, 4])]
            .into_iter()
            .collect();
        assert!(check_contract(&expected, &expected).is_ok());
        let mut missing = expected.clone();
        missing.remove("b");
        let (name, msg) = check_contract(&expected, &missing).unwrap_err();
        assert_eq!(name, "b");
        assert!(msg.contains("missing"), "{msg}");
        let mut extra = expected.clone();
        extra.insert("c".into(), vec![1]);
        let (name, msg) = check_contract(&expected, &extra).unwrap_err();
        assert_eq!(name, "c");
        assert!(msg.contains("unexpected"), "{msg}");
        let mut bad = expected.clone();
        bad.insert("b".into(), vec![4, 3]);
        let (name, msg) = check_contract(&expected, &bad).unwrap_err();
        assert_eq!(name, "b");
        assert!(msg.contains("[4, 3]") && msg.contains("[3, 4]"), "{msg}");
    }

    #[test]
    fn same_dtype_on_cpu_is_a_view_of_the_mapping() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-model/model.safetensors");
        let file = MappedFile::open(&path).expect("tiny model");
        let name = "model.layers.1.mlp.experts.3.up_proj.weight";
        let info = file.metadata.info(name).expect("tensor");
        let at = file.map.as_ptr() as usize + file.data_start + info.data_offsets.0;
        let view = file
            .tensor(name, Kind::BFloat16, Device::Cpu)
            .expect("bf16");
        assert_eq!(view.data_ptr() as usize, at, "bf16 on CPU should not copy");
        let f32 = file.tensor(name, Kind::Float, Device::Cpu).expect("f32");
        assert_ne!(f32.data_ptr() as usize, at);
        assert!(f32.equal(&view.to_kind(Kind::Float)));
    }

    /// Released pages of a mapping read back the same; memory that is not a mapping is never
    /// advised (doing so would zero it).
    #[test]
    fn released_mapping_pages_read_back_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big.safetensors");
        let data = Tensor::arange(3 * 4096, (Kind::Float, Device::Cpu)).view([3, 4096]);
        Tensor::write_safetensors(&[("w", &data)], &path).expect("write");
        let w = Weights::load(&path, Kind::Float, Device::Cpu).expect("load");
        let view = w.get("w").expect("w");
        let sum = view.sum(Kind::Double).double_value(&[]);
        assert!(
            w.done_with(view.shallow_clone()),
            "a 48 KiB view covers whole pages"
        );
        assert_eq!(view.sum(Kind::Double).double_value(&[]), sum);
        assert!(view.equal(&data));
        let heap = data.copy();
        assert!(!w.done_with(heap.shallow_clone()));
        assert!(heap.equal(&data));
    }
}
