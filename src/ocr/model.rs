//! The whole model: vision features scattered into the token embeddings, then the decoder.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::config::Config;
use super::cpu::{Kernels, Plan};
use super::decoder::Decoder;
use super::error::{OcrError, Result};
use super::vision::{ImageFeatures, VisionModel};
use super::weights::{KeepAlive, ShapeMap, Vars, Weights};

/// One image of a prompt, already preprocessed into pixel tensors (f32, `[-1, 1]`, RGB, CHW).
pub struct ImageInput {
    /// The global view `[1, 3, S, S]`.
    pub global: Tensor,
    /// The tiles `[n, 3, s, s]`, cut row-major (Gundam mode with a crop grid), if any.
    pub tiles: Option<Tensor>,
    /// `[tiles across, tiles down]` (`[1, 1]` without tiles).
    pub spatial_crop: [i64; 2],
}

/// A prompt ready for the model: token ids, which of them are image placeholders, and the
/// images whose features fill the placeholders (in order).
pub struct PreparedInput {
    pub input_ids: Vec<i64>,
    /// True at the image-token positions; as long as `input_ids`.
    pub image_mask: Vec<bool>,
    pub images: Vec<ImageInput>,
}

impl PreparedInput {
    /// Another handle on the same ids and tensors (the tensors are not copied).
    pub fn shallow_clone(&self) -> Self {
        Self {
            input_ids: self.input_ids.clone(),
            image_mask: self.image_mask.clone(),
            images: self
                .images
                .iter()
                .map(|i| ImageInput {
                    global: i.global.shallow_clone(),
                    tiles: i.tiles.as_ref().map(Tensor::shallow_clone),
                    spatial_crop: i.spatial_crop,
                })
                .collect(),
        }
    }
}

/// DeepSeek-OCR: config, vision encoder and language model on one device and dtype.
pub struct DeepseekOcr {
    pub config: Config,
    pub vision: VisionModel,
    pub decoder: Decoder,
    pub device: Device,
    /// Dtype the weights are stored in.
    pub kind: Kind,
    /// Dtype of the activations and arithmetic: `kind` on libtorch's path, f32 over bf16/f16
    /// weights where dsocr's CPU kernels run ([`Plan::compute_kind`]).
    pub compute: Kind,
    /// Where each phase runs: libtorch's ops or dsocr's CPU kernels of one tier.
    pub plan: Plan,
    /// Declared last: dropped after the tensors that may view the mapped files.
    _keep: KeepAlive,
}

impl DeepseekOcr {
    /// [`Self::load_with`] on the compute path of `$DSOCR_KERNELS` (auto when unset).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load_with(dir, device, kind, Kernels::from_env()?.plan(device)?)
    }

    /// Load a model folder: `config.json` and its `*.safetensors` files (all of them, checked
    /// against the names and shapes the config implies), in `kind` on `device`, each phase on
    /// the path of `plan`.
    pub fn load_with(dir: &Path, device: Device, kind: Kind, plan: Plan) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(OcrError::Invalid(format!(
                "{} has no config.json: point to a DeepSeek-OCR model folder (config.json + \
                 *.safetensors)",
                dir.display()
            )));
        }
        let config = Config::from_file(&config_path)?;
        let files = safetensors_files(dir)?;
        let expected = Self::checkpoint_shapes(&config)?;
        // SAFETY: the weights go into `from_weights`, whose model holds their mappings (each of
        // the vision model and the decoder keeps a handle) for as long as it holds tensors
        // from them; nothing writes to a weight tensor.
        let weights = unsafe { Weights::load_checked(&files, &expected, kind, device) }?;
        Self::from_weights(config, weights, device, kind, plan)
    }

    /// The full-size (or any) architecture of `config` with the fixtures' seeded weights, on
    /// the compute path of `$DSOCR_KERNELS`.
    pub fn seeded(config: Config, seed: i64, device: Device, kind: Kind) -> Result<Self> {
        Self::seeded_with(
            config,
            seed,
            device,
            kind,
            Kernels::from_env()?.plan(device)?,
        )
    }

    /// [`Self::seeded`] on the paths of `plan`.
    pub fn seeded_with(
        config: Config,
        seed: i64,
        device: Device,
        kind: Kind,
        plan: Plan,
    ) -> Result<Self> {
        let weights = Weights::seeded(&Self::checkpoint_shapes(&config)?, seed, kind, device)?;
        Self::from_weights(config, weights, device, kind, plan)
    }

    /// Build the model from weights already in `kind` on `device`.
    pub fn from_weights(
        config: Config,
        mut weights: Weights,
        device: Device,
        kind: Kind,
        plan: Plan,
    ) -> Result<Self> {
        let keep = weights.keep_alive();
        let compute = plan.compute_kind(device, kind);
        tracing::info!(
            "compute path: {} ({} arithmetic)",
            plan.describe(),
            super::device::kind_name(compute)
        );
        let mut vars = Vars::load(&mut weights);
        let vision = VisionModel::load(&config, &mut vars, compute, plan.vision)?;
        let decoder = Decoder::load(&config, &mut vars, compute, plan)?;
        drop(weights);
        super::weights::release_free_heap();
        Ok(Self {
            config,
            vision,
            decoder,
            device,
            kind,
            compute,
            plan,
            _keep: keep,
        })
    }

    /// Name -> shape of every tensor a checkpoint for `config` holds: what the vision model's
    /// and the decoder's loaders ask for, run without weights (see [`Vars::declare`]).
    pub fn checkpoint_shapes(config: &Config) -> Result<ShapeMap> {
        let (mut vars, kind, plan) = (Vars::declare(Kind::Float), Kind::Float, Plan::libtorch());
        VisionModel::load(config, &mut vars, kind, plan.vision)?;
        Decoder::load(config, &mut vars, kind, plan)?;
        Ok(vars.into_declared())
    }

    /// Run the vision encoder on every image of `input`.
    pub fn encode_images(&self, input: &PreparedInput) -> Result<Vec<ImageFeatures>> {
        input
            .images
            .iter()
            .map(|img| {
                let global = img.global.to_device(self.device).to_kind(self.compute);
                let tiles = img
                    .tiles
                    .as_ref()
                    .map(|t| t.to_device(self.device).to_kind(self.compute));
                self.vision
                    .embed_image(&global, tiles.as_ref(), img.spatial_crop)
            })
            .collect()
    }

    /// The token embeddings of `input` `[T, H]` with the image features written, in row order,
    /// into the image-token positions (the reference's `masked_scatter`).
    pub fn input_embeds(&self, input: &PreparedInput, images: &[ImageFeatures]) -> Result<Tensor> {
        let ids = &input.input_ids;
        if ids.is_empty() {
            return Err(OcrError::Invalid("empty prompt: no input ids".into()));
        }
        let vocab = self.decoder.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= vocab) {
            return Err(OcrError::Invalid(format!(
                "token id {bad} is outside the vocabulary (0..{vocab}); the tokenizer does not \
                 match the model"
            )));
        }
        if input.image_mask.len() != ids.len() {
            return Err(OcrError::Invalid(format!(
                "image mask has {} entries for {} input ids",
                input.image_mask.len(),
                ids.len()
            )));
        }
        let embeds = self.decoder.embed(&Tensor::from_slice(ids))?;
        let positions: Vec<i64> = (0..ids.len() as i64)
            .filter(|&i| input.image_mask[i as usize])
            .collect();
        let rows: i64 = images.iter().map(|f| f.embeds.size()[0]).sum();
        if positions.len() as i64 != rows {
            return Err(OcrError::Invalid(format!(
                "the prompt has {} image tokens but the images give {rows} feature rows; \
                 build the prompt with the same resolution mode as the images",
                positions.len()
            )));
        }
        if rows == 0 {
            return Ok(embeds);
        }
        let feats: Vec<Tensor> = images
            .iter()
            .map(|f| f.embeds.to_kind(embeds.kind()))
            .collect();
        let feats = Tensor::f_cat(&feats, 0)?;
        let index = Tensor::from_slice(&positions).to_device(embeds.device());
        Ok(embeds.f_index_copy(0, &index, &feats)?)
    }
}

/// The `*.safetensors` files of a model folder, sorted by name.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| OcrError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(OcrError::Invalid(format!(
            "{} has no *.safetensors weights: download the model (dsocr download) or point to \
             the folder that holds them",
            dir.display()
        )));
    }
    Ok(files)
}
