//! CLIP-L (`model.vision_model.*`) fed by the SAM feature map instead of its own patch
//! embedding: class token, position embeddings resized to the feature grid, `pre_layrnorm`, and
//! pre-LN blocks with quick-GELU (no post-layernorm).

use tch::Tensor;

use super::layers::{LayerNorm, Linear, Ops, attention, get_small, resize_grid_bicubic_aa};
use crate::ocr::config::{CLIP_LN_EPS, CLIP_MLP_RATIO, Config};
use crate::ocr::error::{OcrError, Result};
use crate::ocr::weights::Vars;

const PREFIX: &str = "model.vision_model";

struct Layer {
    ln1: LayerNorm,
    qkv: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
}

impl Layer {
    fn load(w: &mut Vars, [dim, heads]: [i64; 2], i: i64, ops: Ops) -> Result<Self> {
        let p = format!("{PREFIX}.transformer.layers.{i}");
        let ffn = CLIP_MLP_RATIO * dim;
        Ok(Self {
            ln1: LayerNorm::load(w, &format!("{p}.layer_norm1"), dim, CLIP_LN_EPS, ops.kind)?,
            qkv: Linear::load(
                w,
                &format!("{p}.self_attn.qkv_proj"),
                [dim, 3 * dim],
                true,
                ops,
            )?,
            out: Linear::load(w, &format!("{p}.self_attn.out_proj"), [dim, dim], true, ops)?,
            ln2: LayerNorm::load(w, &format!("{p}.layer_norm2"), dim, CLIP_LN_EPS, ops.kind)?,
            fc1: Linear::load(w, &format!("{p}.mlp.fc1"), [dim, ffn], true, ops)?,
            fc2: Linear::load(w, &format!("{p}.mlp.fc2"), [ffn, dim], true, ops)?,
            heads,
        })
    }

    /// `x` `[B, L, C]` -> same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.f_add(&self.attend(&self.ln1.forward(x)?)?)?;
        let mid = self.fc1.forward(&self.ln2.forward(&h)?)?;
        let mid = mid.f_mul(&mid.f_mul_scalar(1.702)?.f_sigmoid()?)?;
        Ok(h.f_add(&self.fc2.forward(&mid)?)?)
    }

    fn attend(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.size3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .f_view([b, l, 3, self.heads, c / self.heads])?
            .f_permute([2, 0, 3, 1, 4])?;
        let out = attention(&qkv.get(0), &qkv.get(1), &qkv.get(2), None)?;
        self.out
            .forward(&out.f_permute([0, 2, 1, 3])?.f_reshape([b, l, c])?)
    }
}

/// The CLIP transformer used on SAM features.
pub(crate) struct Clip {
    class_embedding: Tensor,
    /// Position of the class token, `[1, C]`.
    cls_pos: Tensor,
    /// Grid positions, `[1, C, P, P]` (channels first, ready for resizing).
    grid_pos: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Clip {
    /// Small tensors are converted to `compute`; matrices keep their stored dtype.
    pub(crate) fn load(cfg: &Config, w: &mut Vars, ops: Ops) -> Result<Self> {
        let clip = &cfg.vision_config.width.clip;
        let dim = clip.width;
        if cfg.sam_out_channels() != dim {
            return Err(OcrError::Invalid(format!(
                "CLIP width {dim} must equal the SAM output channels {} (CLIP consumes SAM \
                 features); check config.json",
                cfg.sam_out_channels()
            )));
        }
        // CLIP's own patch embedding is in the checkpoint, unused: CLIP reads SAM's features.
        w.unused(
            &format!("{PREFIX}.embeddings.patch_embedding.weight"),
            &[dim, 3, clip.patch_size, clip.patch_size],
        )?;
        let grid = cfg.clip_pos_grid();
        let pos = get_small(
            w,
            &format!("{PREFIX}.embeddings.position_embedding.weight"),
            &[grid * grid + 1, dim],
            ops.kind,
        )?;
        let grid_pos = pos
            .f_narrow(0, 1, grid * grid)?
            .f_reshape([1, grid, grid, dim])?
            .f_permute([0, 3, 1, 2])?;
        Ok(Self {
            class_embedding: get_small(
                w,
                &format!("{PREFIX}.embeddings.class_embedding"),
                &[dim],
                ops.kind,
            )?,
            cls_pos: pos.f_narrow(0, 0, 1)?,
            grid_pos,
            pre_norm: LayerNorm::load(
                w,
                &format!("{PREFIX}.pre_layrnorm"),
                dim,
                CLIP_LN_EPS,
                ops.kind,
            )?,
            layers: (0..clip.layers)
                .map(|i| Layer::load(w, [dim, clip.heads], i, ops))
                .collect::<Result<_>>()?,
        })
    }

    /// SAM features `[B, C, g, g]` -> `[B, 1 + g*g, C]`, class token first.
    pub(crate) fn forward(&self, sam: &Tensor) -> Result<Tensor> {
        let (b, c, g, _) = sam.size4()?;
        let patches = sam.f_flatten(2, 3)?.f_transpose(1, 2)?;
        let cls = self.class_embedding.f_expand([b, 1, c], false)?;
        let x = Tensor::f_cat(&[cls, patches], 1)?.f_add(&self.positions(g)?)?;
        let mut x = self.pre_norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// Position embeddings `[1 + g*g, C]` for a `g x g` grid: the class position unchanged, the
    /// grid part resized when `g` differs from the nominal grid.
    fn positions(&self, g: i64) -> Result<Tensor> {
        let grid = if g == self.grid_pos.size()[2] {
            self.grid_pos.shallow_clone()
        } else {
            resize_grid_bicubic_aa(&self.grid_pos, g)?
        };
        let c = grid.size()[1];
        let grid = grid.f_permute([0, 2, 3, 1])?.f_reshape([g * g, c])?;
        Ok(Tensor::f_cat(&[self.cls_pos.shallow_clone(), grid], 0)?)
    }
}
