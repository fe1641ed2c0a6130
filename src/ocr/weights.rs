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

use super::error::{OcrError, Result};

/// Name -> shape of checkpoint tensors, sorted by name (a checkpoint's contract, see [`Vars`]).
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
    ///
    /// # Safety
    /// Tensors handed out on the CPU in the file's own dtype are views of the file mapping
    /// (see the module docs). The caller keeps these weights, or a [`Weights::keep_alive`]
    /// handle taken from them, alive for as long as any tensor obtained from them is used, and
    /// nothing writes to such a tensor. No other process may shrink the file while it is
    /// mapped.
    pub unsafe fn load(path: &Path, kind: Kind, device: Device) -> Result<Self> {
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

    /// Load the checkpoint files of a model: the tensor names over all files must equal
    /// `expected` (what the model's loaders declare, see [`Vars::declare`]) exactly, with the
    /// same shapes; any difference is an error naming the file and the tensor.
    ///
    /// # Safety
    /// As for [`Weights::load`]: the tensors handed out may view the file mappings, which the
    /// caller keeps alive (these weights or their [`Weights::keep_alive`] handle) as long as
    /// such a tensor is used.
    pub unsafe fn load_checked(
        files: &[PathBuf],
        expected: &ShapeMap,
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
        check_contract(expected, &shapes).map_err(|(name, message)| {
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
    /// `shapes` (a model's declared checkpoint, see [`Vars::declare`]) in sorted-name order
    /// drawn as `z = randn(shape, f32)` and mapped:
    /// a 1-D `*weight` -> `1 + 0.1 z`; other 1-D -> `0.02 z`; `model.embed_tokens.weight` -> `z`;
    /// anything else -> `z / sqrt(prod(shape[1:]))`. Then converted to `kind` on `device`.
    ///
    /// Holds [`lock_global_rng`] while drawing, so concurrent seeded loads give the same numbers.
    pub fn seeded(shapes: &ShapeMap, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let _rng = lock_global_rng();
        tch::manual_seed(seed);
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
            let z = seeded_value(name, shape, z);
            let t = if kind == Kind::Float {
                z.copy()
            } else {
                z.f_to_kind(kind)?
            };
            tensors.insert(name.clone(), t);
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
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let t = self.take_host(name)?;
        Ok(t.f_to_device(self.device)?)
    }

    /// Remove and return the tensor named `name` as it is held, on the CPU: for copying it
    /// straight into a slot of a larger tensor on the device (stacked experts), one upload and
    /// no intermediate device tensor.
    fn take_host(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| self.missing(name))
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
    fn done_with(&self, t: Tensor) -> bool {
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

/// The tensors a loader reads, asked for by checkpoint name and shape: each module states the
/// tensors it needs where it loads them, and nowhere else (candle's `VarBuilder`).
///
/// The same loader runs against either end:
/// - [`Vars::declare`] holds no weights. It records every name and shape asked for and hands
///   out placeholders of that shape that own no memory (one element, broadcast). The record is
///   the checkpoint's contract: [`Weights::load_checked`] compares the files with it, and
///   [`Weights::seeded`] draws its tensors in its order.
/// - [`Vars::load`] hands out the tensors of [`Weights`], each checked against the shape asked
///   for.
///
/// A loader must therefore do its heavy work through `Vars` ([`Vars::empty`],
/// [`Vars::copy_into`]), so that declaring a full-size model allocates nothing of its size.
pub struct Vars<'a> {
    source: Source<'a>,
}

enum Source<'a> {
    Declare { shapes: ShapeMap, kind: Kind },
    Load(&'a mut Weights),
}

impl Vars<'static> {
    /// A record of the tensors a loader asks for; placeholders come in `kind`.
    pub fn declare(kind: Kind) -> Self {
        Self {
            source: Source::Declare {
                shapes: ShapeMap::new(),
                kind,
            },
        }
    }
}

impl<'a> Vars<'a> {
    /// The tensors of `weights`, handed out (and taken) by the loaders.
    pub fn load(weights: &'a mut Weights) -> Self {
        Self {
            source: Source::Load(weights),
        }
    }

    /// Whether this only records what is asked for (see [`Vars::declare`]): a loader skips
    /// work that only a running model needs.
    pub fn is_declaring(&self) -> bool {
        matches!(self.source, Source::Declare { .. })
    }

    /// Every name and shape asked for so far (empty when loading).
    pub fn into_declared(self) -> ShapeMap {
        match self.source {
            Source::Declare { shapes, .. } => shapes,
            Source::Load(_) => ShapeMap::new(),
        }
    }

    /// The weights handed out, when loading.
    pub fn weights(&self) -> Option<&Weights> {
        match &self.source {
            Source::Declare { .. } => None,
            Source::Load(w) => Some(w),
        }
    }

    /// The device tensors are handed out on (the CPU while declaring).
    pub fn device(&self) -> Device {
        match &self.source {
            Source::Declare { .. } => Device::Cpu,
            Source::Load(w) => w.device,
        }
    }

    /// The tensor `name` of `shape` on the weights' device, leaving it in the weights (on the
    /// CPU a shallow clone sharing storage).
    pub fn get(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        match &mut self.source {
            Source::Declare { shapes, kind } => declare(shapes, *kind, name, shape),
            Source::Load(w) => checked(w, name, shape, |w| w.get(name)),
        }
    }

    /// The tensor `name` of `shape` on the weights' device, removed from the weights so that
    /// its memory goes when the caller drops it.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        match &mut self.source {
            Source::Declare { shapes, kind } => declare(shapes, *kind, name, shape),
            Source::Load(w) => checked(w, name, shape, |w| w.take(name)),
        }
    }

    /// A tensor `name` of `shape` that the checkpoint holds and the model never reads: part of
    /// the contract all the same, and dropped from the weights when loading.
    pub fn unused(&mut self, name: &str, shape: &[i64]) -> Result<()> {
        let t = match &mut self.source {
            Source::Declare { shapes, kind } => declare(shapes, *kind, name, shape),
            Source::Load(w) => checked(w, name, shape, |w| w.take_host(name)),
        };
        t.map(drop)
    }

    /// The tensor `name` of `shape` copied into `parts`, then released: each part is
    /// `(destination, dimension, start)` and receives the next `len` along that dimension of
    /// the tensor, from `start` (`len` the destination's size there). Straight from the host
    /// tensor into each destination: one upload on a GPU, no intermediate device tensor.
    pub fn copy_into(
        &mut self,
        name: &str,
        shape: &[i64],
        parts: Vec<(Tensor, i64, i64)>,
    ) -> Result<()> {
        let w = match &mut self.source {
            Source::Declare { shapes, kind } => {
                return declare(shapes, *kind, name, shape).map(drop);
            }
            Source::Load(w) => w,
        };
        let t = checked(w, name, shape, |w| w.take_host(name))?;
        for (mut dst, dim, start) in parts {
            let len = dst.size()[dim as usize];
            dst.f_copy_(&t.f_narrow(dim, start, len)?)?;
        }
        w.done_with(t);
        Ok(())
    }

    /// A new uninitialised tensor on the weights' device (a placeholder while declaring).
    pub fn empty(&self, shape: &[i64], kind: Kind) -> Result<Tensor> {
        match &self.source {
            Source::Declare { .. } => placeholder(shape, kind),
            Source::Load(w) => Ok(Tensor::f_empty(shape, (kind, w.device))?),
        }
    }

    /// Hand back the pages of `t`, a tensor taken from the weights and copied elsewhere (see
    /// [`Weights::done_with`]).
    pub fn done_with(&self, t: Tensor) -> bool {
        match &self.source {
            Source::Declare { .. } => false,
            Source::Load(w) => w.done_with(t),
        }
    }

    /// A handle on the file mappings the tensors handed out may view.
    pub fn keep_alive(&self) -> KeepAlive {
        match &self.source {
            Source::Declare { .. } => KeepAlive::default(),
            Source::Load(w) => w.keep_alive(),
        }
    }
}

/// Record `name` with `shape` (the same name twice must have the same shape) and hand out a
/// placeholder of that shape.
fn declare(shapes: &mut ShapeMap, kind: Kind, name: &str, shape: &[i64]) -> Result<Tensor> {
    let declared = shapes
        .entry(name.to_string())
        .or_insert_with(|| shape.to_vec());
    if declared != shape {
        return Err(OcrError::Invalid(format!(
            "tensor {name} is declared as {declared:?} and as {shape:?}"
        )));
    }
    placeholder(shape, kind)
}

/// A tensor of `shape` that owns one element (zero strides).
fn placeholder(shape: &[i64], kind: Kind) -> Result<Tensor> {
    Ok(Tensor::f_zeros([], (kind, Device::Cpu))?.f_expand(shape, false)?)
}

/// `fetch(w)`, checked to have `shape`.
fn checked(
    w: &mut Weights,
    name: &str,
    shape: &[i64],
    fetch: impl FnOnce(&mut Weights) -> Result<Tensor>,
) -> Result<Tensor> {
    let t = fetch(w)?;
    if t.size() != shape {
        return Err(weights_err(
            &w.source,
            format!(
                "tensor {name} has shape {:?}, the config implies {shape:?}; the weights do \
                 not match config.json",
                t.size()
            ),
        ));
    }
    Ok(t)
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

    /// Declaring records each name with its shape and hands out placeholders that own one
    /// element; loading hands out the tensors, checked against the shape asked for.
    #[test]
    fn vars_declare_then_load() {
        let mut vars = Vars::declare(Kind::BFloat16);
        assert!(vars.is_declaring());
        let big = vars.take("a.weight", &[4096, 4096]).expect("declared");
        assert_eq!((big.size(), big.kind()), (vec![4096, 4096], Kind::BFloat16));
        assert_eq!(
            big.stride(),
            vec![0, 0],
            "a placeholder owns no memory of its size"
        );
        vars.unused("b.weight", &[3]).expect("declared");
        let again = vars.get("a.weight", &[4096, 4096]);
        assert!(again.is_ok(), "the same declaration twice");
        let err = vars.get("a.weight", &[2]).unwrap_err().to_string();
        assert!(err.contains("[4096, 4096]") && err.contains("[2]"), "{err}");
        let declared = vars.into_declared();
        let want: ShapeMap = [("a.weight", vec![4096, 4096]), ("b.weight", vec![3])]
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        assert_eq!(declared, want);

        let tensors = [("a.weight", [2, 3]), ("c.weight", [2, 2])]
            .into_iter()
            .map(|(n, s)| (n.to_string(), Tensor::ones(s, (Kind::Float, Device::Cpu))))
            .collect();
        let mut weights = Weights::from_tensors(tensors, Device::Cpu);
        let mut vars = Vars::load(&mut weights);
        assert!(!vars.is_declaring());
        let err = vars.take("a.weight", &[3, 2]).unwrap_err().to_string();
        assert!(err.contains("a.weight has shape [2, 3]"), "{err}");
        assert_eq!(vars.get("c.weight", &[2, 2]).expect("c").size(), vec![2, 2]);
        let err = vars.get("d.weight", &[1]).unwrap_err().to_string();
        assert!(err.contains("missing tensor d.weight"), "{err}");
        assert!(vars.into_declared().is_empty());
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
        // SAFETY: `view` is dropped before `w`.
        let w = unsafe { Weights::load(&path, Kind::Float, Device::Cpu) }.expect("load");
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
