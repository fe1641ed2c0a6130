//! Vision encoder: SAM ViT-B, CLIP-L fed by SAM features, the linear projector, and the
//! `image_newline` / `view_seperator` layout of a global view plus tiles.
//!
//! Every view of a batch goes through the encoder at once (all tiles of a page in one batch).
//! Weights stay in their loaded dtype (f32 for parity, bf16 for speed) and device; position
//! tables are resized in f32 as the reference does.

mod clip;
mod layers;
mod sam;

use tch::{Kind, Tensor};

use self::clip::Clip;
use self::layers::{Linear, Ops, get_small};
use self::sam::Sam;
use super::config::{Config, SAM_PATCH};
use super::cpu::Path;
use super::error::{OcrError, Result};
use super::weights::{KeepAlive, Vars};

/// Outputs of each stage for one batch of views (kept for parity checks).
pub struct VisionStages {
    /// SAM + net_2 + net_3 output, `[B, C, g, g]`.
    pub sam: Tensor,
    /// CLIP output with CLS first, `[B, 1 + g*g, W]`.
    pub clip: Tensor,
    /// Projected features, `[B, g*g, H]`.
    pub proj: Tensor,
}

impl VisionStages {
    /// Another handle on the same tensors (no copy).
    pub fn shallow_clone(&self) -> Self {
        Self {
            sam: self.sam.shallow_clone(),
            clip: self.clip.shallow_clone(),
            proj: self.proj.shallow_clone(),
        }
    }
}

/// Everything the vision path computes for one image.
pub struct ImageFeatures {
    /// Stages of the global view (batch of one).
    pub global: VisionStages,
    /// Present when the image has tiles (Gundam mode with a crop grid).
    pub local: Option<VisionStages>,
    /// The image rows in sequence order: local rows with newline, global rows with newline,
    /// view separator. `[num_image_tokens, H]`.
    pub embeds: Tensor,
}

impl ImageFeatures {
    /// Another handle on the same tensors (no copy).
    pub fn shallow_clone(&self) -> Self {
        Self {
            global: self.global.shallow_clone(),
            local: self.local.as_ref().map(VisionStages::shallow_clone),
            embeds: self.embeds.shallow_clone(),
        }
    }
}

/// SAM, CLIP, the projector and the two learned layout vectors of a checkpoint.
pub struct VisionModel {
    sam: Sam,
    clip: Clip,
    projector: Linear,
    /// `[H]`, appended after every row of features.
    image_newline: Tensor,
    /// `[1, H]`, closing the image's rows.
    view_separator: Tensor,
    /// Dtype of the activations (the stored weights may be narrower, e.g. bf16 weights with
    /// f32 arithmetic on a CPU without bf16 instructions).
    compute: Kind,
    /// The weights' file mappings: tensors kept above may be views of them.
    _mapping: KeepAlive,
}

impl VisionModel {
    /// Build the vision path from the checkpoint tensors, every size taken from `cfg`, computing
    /// in `compute` on `path` (this is also where its tensors' names and shapes are declared,
    /// see [`Vars`]).
    pub fn load(cfg: &Config, w: &mut Vars, compute: Kind, path: Path) -> Result<Self> {
        let ops = Ops {
            kind: compute,
            path,
        };
        let p = &cfg.projector_config;
        let hidden = p.n_embed;
        Ok(Self {
            sam: Sam::load(cfg, w, ops)?,
            clip: Clip::load(cfg, w, ops)?,
            projector: Linear::load(
                w,
                "model.projector.layers",
                [p.input_dim, hidden],
                true,
                ops,
            )?,
            image_newline: get_small(w, "model.image_newline", &[hidden], ops.kind)?,
            view_separator: get_small(w, "model.view_seperator", &[hidden], ops.kind)?
                .f_unsqueeze(0)?,
            compute,
            _mapping: w.keep_alive(),
        })
    }

    /// SAM, CLIP and projector on a batch of views `[B, 3, S, S]` (S a multiple of 16).
    pub fn encode(&self, pixels: &Tensor) -> Result<VisionStages> {
        check_views(pixels, "views")?;
        let pixels = pixels
            .f_to_device(self.sam.device())?
            .f_to_kind(self.compute)?;
        tch::no_grad(|| {
            let sam = self.sam.forward(&pixels)?;
            let clip = self.clip.forward(&sam)?;
            let sam_tokens = sam.f_flatten(2, 3)?.f_transpose(1, 2)?;
            let clip_tokens = clip.f_narrow(1, 1, clip.size()[1] - 1)?;
            let proj = self
                .projector
                .forward(&Tensor::f_cat(&[clip_tokens, sam_tokens], 2)?)?;
            Ok(VisionStages { sam, clip, proj })
        })
    }

    /// One image: the global view `[1, 3, S, S]`, optional tiles `[n, 3, s, s]` cut row-major,
    /// and the crop grid `[tiles across, tiles down]` (used only with tiles).
    pub fn embed_image(
        &self,
        global: &Tensor,
        tiles: Option<&Tensor>,
        spatial_crop: [i64; 2],
    ) -> Result<ImageFeatures> {
        if global.dim() != 4 || global.size()[0] != 1 {
            return Err(OcrError::Invalid(format!(
                "the global view must be one image [1, 3, S, S], got {:?}",
                global.size()
            )));
        }
        let local = match tiles {
            Some(t) => {
                check_tile_count(t, spatial_crop)?;
                Some(self.encode(t)?)
            }
            None => None,
        };
        let global = self.encode(global)?;
        let mut rows = Vec::with_capacity(3);
        if let Some(l) = &local {
            rows.push(self.tile_rows(&l.proj, spatial_crop)?);
        }
        rows.push(self.tile_rows(&global.proj, [1, 1])?);
        rows.push(self.view_separator.shallow_clone());
        let embeds = tch::no_grad(|| Tensor::f_cat(&rows, 0))?;
        Ok(ImageFeatures {
            global,
            local,
            embeds,
        })
    }

    /// Projected tiles `[across*down, g*g, H]` (row-major) joined into one picture of
    /// `down*g` rows by `across*g` columns, each row followed by `image_newline`:
    /// `[down*g * (across*g + 1), H]`.
    fn tile_rows(&self, proj: &Tensor, [across, down]: [i64; 2]) -> Result<Tensor> {
        let (_, tokens, hidden) = proj.size3()?;
        let g = grid_side(tokens)?;
        let picture = proj
            .f_view([down, across, g, g, hidden])?
            .f_permute([0, 2, 1, 3, 4])?
            .f_reshape([down * g, across * g, hidden])?;
        let newline = self.image_newline.f_expand([down * g, 1, hidden], false)?;
        Ok(Tensor::f_cat(&[picture, newline], 1)?.f_reshape([-1, hidden])?)
    }
}

/// Side of a square token grid.
fn grid_side(tokens: i64) -> Result<i64> {
    let g = (tokens as f64).sqrt().round() as i64;
    if g * g != tokens {
        return Err(OcrError::Invalid(format!(
            "{tokens} image tokens do not form a square grid"
        )));
    }
    Ok(g)
}

/// Views must be `[B, 3, S, S]` with `B >= 1` and `S` a positive multiple of the SAM patch.
fn check_views(pixels: &Tensor, what: &str) -> Result<()> {
    let size = pixels.size();
    let ok = matches!(size.as_slice(), &[b, 3, h, w]
        if b >= 1 && h == w && h >= SAM_PATCH && h % SAM_PATCH == 0);
    if ok {
        Ok(())
    } else {
        Err(OcrError::Invalid(format!(
            "{what} must be [B, 3, S, S] with S a multiple of {SAM_PATCH}, got {size:?}"
        )))
    }
}

fn check_tile_count(tiles: &Tensor, [across, down]: [i64; 2]) -> Result<()> {
    let n = tiles.size().first().copied().unwrap_or(0);
    if across < 1 || down < 1 || n != across * down {
        return Err(OcrError::Invalid(format!(
            "{n} tiles do not fill a crop grid of {across} across by {down} down"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
