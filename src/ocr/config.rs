//! `config.json` of a DeepSeek-OCR checkpoint (the real one and the tiny test model share the
//! schema). Every size the model code uses comes from here: either read from the file or, for the
//! few sizes the reference code hard-codes, from the constants below (kept in this one place).

use std::path::Path;

use serde::Deserialize;

use super::error::{OcrError, Result};

/// SAM patch size (the reference hard-codes `patch_size=16`).
pub const SAM_PATCH: i64 = 16;
/// SAM window size for the non-global blocks.
pub const SAM_WINDOW: i64 = 14;
/// Output channels of the SAM neck.
pub const SAM_NECK_CHANNELS: i64 = 256;
/// SAM MLP ratio (the reference hard-codes 4, the config's `mlp_ratio` 3.7362 is unused).
pub const SAM_MLP_RATIO: i64 = 4;
/// CLIP FFN width = this times the CLIP width.
pub const CLIP_MLP_RATIO: i64 = 4;
/// `<image>` in the DeepSeek-OCR tokenizer; used when config.json has no `image_token_id`.
pub const DEFAULT_IMAGE_TOKEN_ID: i64 = 128815;
/// LayerNorm eps of SAM (and its neck), CLIP, and the decoder's RMSNorm.
pub const SAM_LN_EPS: f64 = 1e-6;
pub const CLIP_LN_EPS: f64 = 1e-5;
pub const RMS_NORM_EPS: f64 = 1e-6;
pub const ROPE_THETA: f64 = 10000.0;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vision_config: VisionConfig,
    pub projector_config: ProjectorConfig,
    pub language_config: LanguageConfig,
    /// Present in the tiny test model only; the real model uses the tokenizer's `<image>`.
    #[serde(default)]
    pub image_token_id: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Nominal SAM input size (its `pos_embed` grid is `image_size / 16`).
    pub image_size: i64,
    pub width: VisionWidths,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionWidths {
    #[serde(rename = "sam_vit_b")]
    pub sam: SamConfig,
    #[serde(rename = "clip-l-14-224")]
    pub clip: ClipConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SamConfig {
    pub layers: i64,
    pub heads: i64,
    pub width: i64,
    pub global_attn_indexes: Vec<i64>,
    pub downsample_channels: Vec<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub layers: i64,
    pub heads: i64,
    pub width: i64,
    pub image_size: i64,
    pub patch_size: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProjectorConfig {
    pub input_dim: i64,
    pub n_embed: i64,
    pub projector_type: String,
}

fn default_one() -> i64 {
    1
}
fn default_topk_method() -> String {
    "greedy".into()
}
fn default_scoring() -> String {
    "softmax".into()
}
fn default_scaling() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
pub struct LanguageConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub moe_intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub n_routed_experts: i64,
    pub num_experts_per_tok: i64,
    pub n_shared_experts: i64,
    pub first_k_dense_replace: i64,
    #[serde(default = "default_one")]
    pub moe_layer_freq: i64,
    #[serde(default = "default_topk_method")]
    pub topk_method: String,
    #[serde(default = "default_scoring")]
    pub scoring_func: String,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default = "default_scaling")]
    pub routed_scaling_factor: f64,
    #[serde(default)]
    pub use_mla: bool,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
}

impl LanguageConfig {
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
    /// Whether decoder layer `i` uses the MoE block (else the dense MLP).
    pub fn is_moe_layer(&self, i: i64) -> bool {
        self.n_routed_experts > 0
            && i >= self.first_k_dense_replace
            && i % self.moe_layer_freq.max(1) == 0
    }
    /// Width of the shared-experts MLP.
    pub fn shared_intermediate_size(&self) -> i64 {
        self.moe_intermediate_size * self.n_shared_experts
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| OcrError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|message| OcrError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse and check the config; the error is a one-line message.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let l = &self.language_config;
        let sam = &self.vision_config.width.sam;
        let clip = &self.vision_config.width.clip;
        if l.use_mla {
            return Err("use_mla = true (multi-head latent attention) is not supported".into());
        }
        if l.num_attention_heads <= 0 || l.hidden_size % l.num_attention_heads != 0 {
            return Err("hidden_size must be a multiple of num_attention_heads".into());
        }
        if l.num_key_value_heads != l.num_attention_heads {
            return Err(
                "grouped-query attention (num_key_value_heads != heads) is not supported".into(),
            );
        }
        if l.topk_method != "greedy" || l.scoring_func != "softmax" {
            return Err(format!(
                "MoE routing {}/{} is not supported (only greedy/softmax)",
                l.topk_method, l.scoring_func
            ));
        }
        if self.projector_config.projector_type != "linear" {
            return Err(format!(
                "projector_type {:?} is not supported (only linear)",
                self.projector_config.projector_type
            ));
        }
        if sam.downsample_channels.len() != 2 {
            return Err("sam_vit_b.downsample_channels must have two entries".into());
        }
        if sam.heads <= 0
            || sam.width % sam.heads != 0
            || clip.heads <= 0
            || clip.width % clip.heads != 0
        {
            return Err("vision widths must be multiples of their head counts".into());
        }
        if self.projector_config.input_dim != clip.width + self.sam_out_channels() {
            return Err(format!(
                "projector input_dim {} != CLIP width {} + SAM channels {}",
                self.projector_config.input_dim,
                clip.width,
                self.sam_out_channels()
            ));
        }
        if self.projector_config.n_embed != l.hidden_size {
            return Err("projector n_embed must equal the language model's hidden_size".into());
        }
        if self.vision_config.image_size % SAM_PATCH != 0 {
            return Err("vision image_size must be a multiple of 16".into());
        }
        Ok(())
    }

    /// Channels of the SAM feature map after `net_3` (what CLIP consumes as patch embeddings).
    pub fn sam_out_channels(&self) -> i64 {
        *self
            .vision_config
            .width
            .sam
            .downsample_channels
            .last()
            .unwrap_or(&0)
    }
    /// Grid side of SAM's absolute `pos_embed` (64 for the 1024 nominal image).
    pub fn sam_pos_grid(&self) -> i64 {
        self.vision_config.image_size / SAM_PATCH
    }
    /// Grid side of CLIP's nominal patch grid (16 for 224/14); positions = side^2 + 1.
    pub fn clip_pos_grid(&self) -> i64 {
        let c = &self.vision_config.width.clip;
        c.image_size / c.patch_size
    }
    pub fn image_token_id(&self) -> i64 {
        self.image_token_id.unwrap_or(DEFAULT_IMAGE_TOKEN_ID)
    }
    /// Side of the projected feature grid for an input of `image_size` pixels:
    /// patches of 16, then two stride-2 convolutions (ceil each time).
    pub fn feature_grid(image_size: i64) -> i64 {
        let p = image_size / SAM_PATCH;
        let a = (p + 1) / 2;
        (a + 1) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_grid_matches_the_modes() {
        assert_eq!(Config::feature_grid(1024), 16);
        assert_eq!(Config::feature_grid(640), 10);
        assert_eq!(Config::feature_grid(512), 8);
        assert_eq!(Config::feature_grid(1280), 20);
    }

    #[test]
    fn rejects_mla() {
        let text = r#"{"vision_config":{"image_size":1024,"width":{"sam_vit_b":{"layers":1,"heads":1,"width":8,"global_attn_indexes":[],"downsample_channels":[8,8]},"clip-l-14-224":{"layers":1,"heads":1,"width":8,"image_size":224,"patch_size":14}}},
        "projector_config":{"input_dim":16,"n_embed":8,"projector_type":"linear"},
        "language_config":{"hidden_size":8,"intermediate_size":8,"moe_intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"num_key_value_heads":1,"n_routed_experts":0,"num_experts_per_tok":0,"n_shared_experts":0,"first_k_dense_replace":1,"use_mla":true,"vocab_size":8,"max_position_embeddings":8,"bos_token_id":0,"eos_token_id":1}}"#;
        let err = Config::from_json(text).unwrap_err();
        assert!(err.contains("use_mla"), "{err}");
        let ok = text.replace("\"use_mla\":true", "\"use_mla\":false");
        let cfg = Config::from_json(&ok).expect("valid config");
        assert_eq!(cfg.image_token_id(), DEFAULT_IMAGE_TOKEN_ID);
    }
}
