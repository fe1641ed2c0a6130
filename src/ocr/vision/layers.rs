//! Small building blocks shared by SAM, CLIP and the projector: linear and LayerNorm layers
//! loaded by checkpoint name and shape, and the f32 resizing of position tables.

use tch::{Kind, Tensor};

use crate::ocr::cpu::{Path, gemv};
use crate::ocr::error::Result;
use crate::ocr::weights::Vars;

/// The vision phase's compute dtype and where its work runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ops {
    pub kind: Kind,
    pub path: Path,
}

/// `nn.Linear`: `y = x W^T + b`. The weight stays in its stored dtype; the bias is kept in the
/// compute dtype (see [`gemv::linear_any`] for weights stored narrower than the activations).
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    path: Path,
}

impl Linear {
    /// `{prefix}.weight` `[out, inp]`, and `{prefix}.bias` `[out]` (in `ops.kind`) when `bias`
    /// is set; products on `ops.path`.
    pub(crate) fn load(
        w: &mut Vars,
        prefix: &str,
        [inp, out]: [i64; 2],
        bias: bool,
        ops: Ops,
    ) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(get_small(w, &format!("{prefix}.bias"), &[out], ops.kind)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            path: ops.path,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        gemv::linear_any(x, &self.weight, self.bias.as_ref(), self.path)
    }

    /// `x W^T` without the bias (added later by the caller, see [`Linear::bias`]).
    pub(crate) fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        gemv::linear_any(x, &self.weight, None, self.path)
    }

    /// Where the layer's products run.
    pub(crate) fn path(&self) -> Path {
        self.path
    }

    /// The bias in the compute dtype, if the layer has one.
    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// `nn.LayerNorm` over the last dimension, computed in the compute dtype.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// `{prefix}.weight` and `{prefix}.bias`, both `[dim]`, converted to `compute`.
    pub(crate) fn load(
        w: &mut Vars,
        prefix: &str,
        dim: i64,
        eps: f64,
        compute: Kind,
    ) -> Result<Self> {
        Ok(Self {
            weight: get_small(w, &format!("{prefix}.weight"), &[dim], compute)?,
            bias: get_small(w, &format!("{prefix}.bias"), &[dim], compute)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.weight.size()[0];
        Ok(x.f_layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)?)
    }
}

/// A small tensor (norm, bias, position table) of `shape`, converted to the compute dtype once
/// at load, so that it meets the activations in their dtype.
pub(crate) fn get_small(w: &mut Vars, name: &str, shape: &[i64], compute: Kind) -> Result<Tensor> {
    Ok(w.get(name, shape)?.f_to_kind(compute)?)
}

/// Resize a `[N, C, h, w]` grid of position embeddings to `[N, C, size, size]` the way the
/// reference does: `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` computed
/// in f32, the result cast back to the input's dtype.
pub(crate) fn resize_grid_bicubic_aa(grid: &Tensor, size: i64) -> Result<Tensor> {
    let kind = grid.kind();
    let resized = grid
        .f_to_kind(Kind::Float)?
        .f_internal_upsample_bicubic2d_aa([size, size], false, None, None)?;
    Ok(resized.f_to_kind(kind)?)
}

/// Resize a `[L, C]` table along `L` to `len` rows the way the reference does:
/// `F.interpolate(mode="linear", align_corners=False)` in f32, cast back to the input's dtype.
pub(crate) fn resize_table_linear(table: &Tensor, len: i64) -> Result<Tensor> {
    let kind = table.kind();
    let resized = table
        .f_to_kind(Kind::Float)?
        .f_transpose(0, 1)?
        .f_unsqueeze(0)?
        .f_upsample_linear1d([len], false, None)?;
    Ok(resized
        .f_squeeze_dim(0)?
        .f_transpose(0, 1)?
        .f_to_kind(kind)?)
}

/// Multi-head attention core: `q`, `k`, `v` `[B, heads, L, head_dim]`, an optional additive
/// mask broadcastable to `[B, heads, L, L]`, default `1/sqrt(head_dim)` scale.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(
        q, k, v, mask, 0.0, false, None, false,
    )?)
}
