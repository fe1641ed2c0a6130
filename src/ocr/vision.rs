//! Vision encoder: SAM ViT-B, CLIP-L fed by SAM features, the linear projector, and the
//! `image_newline` / `view_seperator` layout of a global view plus tiles.
//!
//! API skeleton (filled in by the engine work).

use tch::Tensor;

use super::config::Config;
use super::error::{OcrError, Result};
use super::weights::Weights;

/// Outputs of each stage for one batch of views (kept for parity checks).
pub struct VisionStages {
    /// SAM + net_2 + net_3 output, `[B, C, g, g]`.
    pub sam: Tensor,
    /// CLIP output with CLS first, `[B, 1 + g*g, W]`.
    pub clip: Tensor,
    /// Projected features, `[B, g*g, H]`.
    pub proj: Tensor,
}

/// Everything the vision path computes for one image.
pub struct ImageFeatures {
    pub global: VisionStages,
    /// Present when the image has tiles (Gundam mode with a crop grid).
    pub local: Option<VisionStages>,
    /// The image rows in sequence order: local rows with newline, global rows with newline,
    /// view separator. `[num_image_tokens, H]`.
    pub embeds: Tensor,
}

pub struct VisionModel {}

impl VisionModel {
    pub fn load(_cfg: &Config, _w: &Weights) -> Result<Self> {
        Err(OcrError::Invalid("vision model not implemented yet".into()))
    }

    /// SAM, CLIP and projector on a batch of views `[B, 3, S, S]` (S a multiple of 16).
    pub fn encode(&self, _pixels: &Tensor) -> Result<VisionStages> {
        Err(OcrError::Invalid("vision model not implemented yet".into()))
    }

    /// One image: the global view `[1, 3, S, S]`, optional tiles `[n, 3, s, s]` cut row-major,
    /// and the crop grid `[tiles across, tiles down]`.
    pub fn embed_image(
        &self,
        _global: &Tensor,
        _tiles: Option<&Tensor>,
        _spatial_crop: [i64; 2],
    ) -> Result<ImageFeatures> {
        Err(OcrError::Invalid("vision model not implemented yet".into()))
    }
}
