//! SAM ViT-B image encoder (`model.sam_model.*`): patch embedding, absolute positions resized
//! to the patch grid, transformer blocks with windowed or global attention and decomposed
//! relative positions, the neck, and the two stride-2 convolutions `net_2` / `net_3`.

use tch::{Kind, Tensor};

use super::layers::{
    LayerNorm, Linear, Ops, attention, get_small, resize_grid_bicubic_aa, resize_table_linear,
};
use crate::ocr::config::{
    Config, SAM_LN_EPS, SAM_MLP_RATIO, SAM_NECK_CHANNELS, SAM_PATCH, SAM_WINDOW,
};
use crate::ocr::cpu::{Isa, relpos_attn};
use crate::ocr::error::Result;
use crate::ocr::weights::Vars;

const PREFIX: &str = "model.sam_model";

/// Attention with decomposed relative positions (`rel_pos_h`, `rel_pos_w`).
struct RelPosAttention {
    qkv: Linear,
    proj: Linear,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    heads: i64,
}

impl RelPosAttention {
    /// Global attention: `x` `[B, H, W, C]` -> `[B, H, W, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.size4()?;
        if let Some(isa) = self.fused(x) {
            return self.forward_fused(isa, x, (h, w));
        }
        // The whole grid is one window: one copy to `[3, B, heads, H*W, d]`.
        let qkv = window_heads(&self.qkv.forward(x)?, (h, w), self.heads)?;
        let out = self.core(&qkv, h, w)?;
        self.proj.forward(&window_merge(&out, (h, w), h, w)?)
    }

    /// Windowed attention over `x` `[B, H, W, C]` in `window`-sized windows (the grid padded
    /// with zeros to whole windows, the padding attended to as in the reference) -> `[B, H, W,
    /// C]`. Where the fused kernel applies, [`Self::forward_fused`]; otherwise, through
    /// libtorch: the projections are row-wise, so they run on the unpadded grid: `qkv` of a zero
    /// (padding) row is its bias alone, added after partitioning, and `proj` runs after the
    /// windows are joined and the padding cropped. Same numbers, 16% fewer rows (4096 instead
    /// of 4900 at 1024 px).
    fn forward_windowed(&self, x: &Tensor, window: i64) -> Result<Tensor> {
        let (_, h, w, _) = x.size4()?;
        let window = (window, window);
        if let Some(isa) = self.fused(x) {
            return self.forward_fused(isa, x, window);
        }
        let mut qkv = window_heads(&self.qkv.forward_no_bias(x)?, window, self.heads)?;
        if let Some(bias) = self.qkv.bias() {
            // In place, after the copy into windows: padding rows get the bias alone.
            let d = qkv.size()[4];
            let _ = qkv.f_add_(&bias.f_view([3, 1, self.heads, 1, d])?)?;
        }
        let out = self.core(&qkv, window.0, window.1)?;
        self.proj.forward(&window_merge(&out, window, h, w)?)
    }

    /// Global (`window` = the grid) or windowed attention through
    /// [`relpos_attn::grid_attention`], which reads q, k and v from the projections where they
    /// lie (padding rows: the bias) and writes its output in the grid's layout: no windows,
    /// heads or mask are materialised, padding queries are skipped.
    fn forward_fused(&self, isa: Isa, x: &Tensor, window: (i64, i64)) -> Result<Tensor> {
        let out = relpos_attn::grid_attention(
            isa,
            &self.qkv.forward(x)?,
            self.qkv.bias(),
            self.heads,
            window,
            &rel_table(&self.rel_pos_h, window.0)?,
            &rel_table(&self.rel_pos_w, window.1)?,
        )?;
        self.proj.forward(&out)
    }

    /// The tier of the fused kernel, when it runs for `x` (the layer is on the kernels' path
    /// and [`relpos_attn::applies`]).
    fn fused(&self, x: &Tensor) -> Option<Isa> {
        let isa = self.qkv.path().isa()?;
        relpos_attn::applies(isa, x, self.head_dim()).then_some(isa)
    }

    fn head_dim(&self) -> i64 {
        self.rel_pos_h.size().last().copied().unwrap_or(0)
    }

    /// Attention with relative positions over an `H x W` grid of keys: `qkv` `[3, G, heads,
    /// H*W, d]` (contiguous) -> `[G, heads, H*W, d]`.
    fn core(&self, qkv: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let (rel_h, rel_w) = self.rel_pos_terms(&q, h, w)?;
        RelPos {
            q: &q,
            k: &k,
            v: &v,
            rel_h: &rel_h,
            rel_w: &rel_w,
        }
        .attention()
    }

    /// The two halves of the additive mask from the unscaled queries `q`
    /// `[B, heads, H*W, head_dim]`: `q·R_h[qh, kh]` as `[B, heads, H*W, H, 1]` and
    /// `q·R_w[qw, kw]` as `[B, heads, H*W, 1, W]`; their broadcast sum is the mask.
    fn rel_pos_terms(&self, q: &Tensor, h: i64, w: i64) -> Result<(Tensor, Tensor)> {
        let (b, heads, _, head_dim) = q.size4()?;
        let rh = rel_pos_for(&self.rel_pos_h, h)?;
        let rw = rel_pos_for(&self.rel_pos_w, w)?;
        let r_q = q.f_reshape([b * heads, h, w, head_dim])?;
        let rel_h = Tensor::f_einsum("bhwc,hkc->bhwk", &[&r_q, &rh], None::<i64>)?;
        let rel_w = Tensor::f_einsum("bhwc,wkc->bhwk", &[&r_q, &rw], None::<i64>)?;
        Ok((
            rel_h.f_reshape([b, heads, h * w, h, 1])?,
            rel_w.f_reshape([b, heads, h * w, 1, w])?,
        ))
    }
}

/// Additive-mask chunk materialised at once on the CPU for sequences shorter than
/// [`CPU_PER_HEAD_MIN_ROWS`] (longer ones go one head at a time). A full mask is
/// `heads * (H*W)^2` values; freshly allocated, it costs as much in page faults as the attention
/// itself, so the queries are taken in chunks whose mask fits one buffer that is reused. Rows of
/// attention are independent, so the result is the same.
const CPU_MASK_CHUNK_BYTES: usize = 128 << 20;

/// Fewest query rows per chunk on the CPU, whatever the buffer size: libtorch's CPU flash
/// attention picks its query block from the number of queries (32 below 192, 64 below 768,
/// 256 from 768), and small blocks made a 1024-px global block's attention 1.8x slower
/// (libtorch alone, same run: 128-row chunks 2.07 s, 768-row chunks 1.17 s).
const CPU_MIN_CHUNK_ROWS: i64 = 768;

/// Query rows per SDPA call in a global block on the CPU, one head at a time (see
/// [`RelPos::per_head`]).
const CPU_HEAD_CHUNK_ROWS: i64 = 2048;

/// From this many queries on (global blocks; windows have 196), the CPU takes one head at a
/// time.
const CPU_PER_HEAD_MIN_ROWS: i64 = 1024;

/// The inputs of one attention with decomposed relative positions: q, k, v `[B, heads, L, d]`
/// and the relative-position terms `rel_h` `[B, heads, L, kh, 1]` and `rel_w`
/// `[B, heads, L, 1, kw]`, whose sum is the mask.
struct RelPos<'a> {
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    rel_h: &'a Tensor,
    rel_w: &'a Tensor,
}

impl RelPos<'_> {
    /// `softmax(q k^T / sqrt(d) + rel_h + rel_w) v` through SDPA (CUDA, bf16 compute, CPUs
    /// without AVX-512; elsewhere [`RelPosAttention::forward_fused`] runs instead), the mask
    /// built for one chunk of queries at a time (on CUDA, where allocation is cheap, in one
    /// piece).
    fn attention(&self) -> Result<Tensor> {
        let (b, heads, len, _) = self.q.size4()?;
        if !self.q.device().is_cuda() && len >= CPU_PER_HEAD_MIN_ROWS {
            return self.per_head();
        }
        let (kh, kw) = (self.rel_h.size()[3], self.rel_w.size()[4]);
        let row_bytes = (b * heads * kh * kw) as usize * self.q.kind().elt_size_in_bytes();
        let chunk = if self.q.device().is_cuda() {
            len
        } else {
            ((CPU_MASK_CHUNK_BYTES / row_bytes.max(1)) as i64)
                .max(CPU_MIN_CHUNK_ROWS)
                .min(len)
        };
        let buffer = Tensor::f_empty([b, heads, chunk, kh, kw], (self.q.kind(), self.q.device()))?;
        let mut outs = Vec::with_capacity(((len + chunk - 1) / chunk) as usize);
        for start in (0..len).step_by(chunk as usize) {
            let n = chunk.min(len - start);
            outs.push(self.query_chunk(&buffer, start, n)?);
        }
        Ok(Tensor::f_cat(&outs, 2)?)
    }

    /// Attention of queries `start..start + n`, their mask `rel_h + rel_w` written into
    /// `buffer` (at least `n` rows along dim 2) first.
    fn query_chunk(&self, buffer: &Tensor, start: i64, n: i64) -> Result<Tensor> {
        let (b, heads, _, kh, _) = self.rel_h.size5()?;
        let kw = self.rel_w.size()[4];
        let mask = self
            .rel_h
            .f_narrow(2, start, n)?
            .f_add_out(
                &buffer.f_narrow(2, 0, n)?,
                &self.rel_w.f_narrow(2, start, n)?,
            )?
            .f_view([b, heads, n, kh * kw])?;
        attention(&self.q.f_narrow(2, start, n)?, self.k, self.v, Some(&mask))
    }

    /// [`RelPos::attention`] for long sequences on the CPU: one head and up to
    /// [`CPU_HEAD_CHUNK_ROWS`] queries per SDPA call, so that each mask chunk (32 MB at 1024 px)
    /// is written and read while it is still in the cache instead of streaming 150 MB chunks
    /// through memory. Same rows, same arithmetic. Measured on the venv's torch (2 threads, 12
    /// heads x 4096 queries x 64, the same mask construction, alternated four times in one
    /// process): 493-564 ms per global block against 569-808 ms for 768-row chunks over all
    /// heads.
    fn per_head(&self) -> Result<Tensor> {
        let (b, heads, len, _) = self.q.size4()?;
        let (kh, kw) = (self.rel_h.size()[3], self.rel_w.size()[4]);
        let rows = CPU_HEAD_CHUNK_ROWS.min(len);
        let opts = (self.q.kind(), self.q.device());
        let buffer = Tensor::f_empty([1, 1, rows, kh, kw], opts)?;
        let out = Tensor::f_empty([b, heads, len, self.v.size()[3]], opts)?;
        let one = |t: &Tensor, i: i64, h: i64| -> Result<Tensor> {
            Ok(t.f_narrow(0, i, 1)?.f_narrow(1, h, 1)?)
        };
        for i in 0..b {
            for h in 0..heads {
                let (q, k, v) = (one(self.q, i, h)?, one(self.k, i, h)?, one(self.v, i, h)?);
                let (rel_h, rel_w) = (one(self.rel_h, i, h)?, one(self.rel_w, i, h)?);
                let head = RelPos {
                    q: &q,
                    k: &k,
                    v: &v,
                    rel_h: &rel_h,
                    rel_w: &rel_w,
                };
                for start in (0..len).step_by(rows as usize) {
                    let n = rows.min(len - start);
                    let o = head.query_chunk(&buffer, start, n)?;
                    one(&out, i, h)?.f_narrow(2, start, n)?.f_copy_(&o)?;
                }
            }
        }
        Ok(out)
    }
}

/// `R[q, k] = table[q - k + size - 1]` `[size, size, C]`, the table first resized linearly to
/// `2 * size - 1` rows when its length differs (query and key grids are equal here).
fn rel_pos_for(table: &Tensor, size: i64) -> Result<Tensor> {
    let table = rel_table(table, size)?;
    let pos = Tensor::f_arange(size, (Kind::Int64, table.device()))?;
    let idx = pos
        .f_unsqueeze(1)?
        .f_sub(&pos.f_unsqueeze(0)?)?
        .f_add_scalar(size - 1)?;
    let rows = table.f_index_select(0, &idx.f_flatten(0, 1)?)?;
    Ok(rows.f_reshape([size, size, -1])?)
}

/// The relative-position table for a `size`-long axis: `[2 * size - 1, C]`, resized linearly
/// when its length differs (as the reference's `get_rel_pos` does).
fn rel_table(table: &Tensor, size: i64) -> Result<Tensor> {
    let len = 2 * size - 1;
    if table.size()[0] == len {
        Ok(table.shallow_clone())
    } else {
        resize_table_linear(table, len)
    }
}

/// Projections `[B, H, W, 3C]` padded with zeros to whole `(wh, ww)` windows, cut into windows
/// (row-major per image) and split into q, k, v and heads in one copy: `[3, B * nH * nW,
/// heads, wh * ww, d]`. q, k and v are then contiguous views.
fn window_heads(qkv: &Tensor, (wh, ww): (i64, i64), heads: i64) -> Result<Tensor> {
    let (b, h, w, c3) = qkv.size4()?;
    let (hp, wp) = (round_up(h, wh), round_up(w, ww));
    let d = c3 / 3 / heads;
    let padded = if hp > h || wp > w {
        qkv.f_constant_pad_nd([0, 0, 0, wp - w, 0, hp - h])?
    } else {
        qkv.shallow_clone()
    };
    let (nh, nw) = (hp / wh, wp / ww);
    Ok(padded
        .f_view(&[b, nh, wh, nw, ww, 3, heads, d][..])?
        .f_permute([5, 0, 1, 3, 6, 2, 4, 7])?
        .f_contiguous()?
        .f_view([3, b * nh * nw, heads, wh * ww, d])?)
}

/// Inverse of [`window_heads`] for one of q, k, v (or the attention's output): `[B * nH * nW,
/// heads, wh * ww, d]` -> `[B, H, W, heads * d]`, padding cropped.
fn window_merge(windows: &Tensor, (wh, ww): (i64, i64), h: i64, w: i64) -> Result<Tensor> {
    let (hp, wp) = (round_up(h, wh), round_up(w, ww));
    let (_, heads, _, d) = windows.size4()?;
    let x = windows
        .f_view(&[-1, hp / wh, wp / ww, heads, wh, ww, d][..])?
        .f_permute([0, 1, 4, 2, 5, 3, 6])?
        .f_reshape([-1, hp, wp, heads * d])?;
    Ok(x.f_narrow(1, 0, h)?.f_narrow(2, 0, w)?.f_contiguous()?)
}

fn round_up(n: i64, m: i64) -> i64 {
    (n + m - 1) / m * m
}

/// One pre-LN transformer block; `window == 0` means global attention.
struct Block {
    norm1: LayerNorm,
    attn: RelPosAttention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    window: i64,
}

impl Block {
    fn load(w: &mut Vars, cfg: &Config, i: i64, ops: Ops) -> Result<Self> {
        let sam = &cfg.vision_config.width.sam;
        let (dim, heads) = (sam.width, sam.heads);
        let global = sam.global_attn_indexes.contains(&i);
        // Relative-position tables cover the window, or the nominal grid for global blocks.
        let rel_size = if global {
            cfg.sam_pos_grid()
        } else {
            SAM_WINDOW
        };
        let p = format!("{PREFIX}.blocks.{i}");
        let rel_shape = [2 * rel_size - 1, dim / heads];
        Ok(Self {
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), dim, SAM_LN_EPS, ops.kind)?,
            attn: RelPosAttention {
                qkv: Linear::load(w, &format!("{p}.attn.qkv"), [dim, 3 * dim], true, ops)?,
                proj: Linear::load(w, &format!("{p}.attn.proj"), [dim, dim], true, ops)?,
                rel_pos_h: get_small(w, &format!("{p}.attn.rel_pos_h"), &rel_shape, ops.kind)?,
                rel_pos_w: get_small(w, &format!("{p}.attn.rel_pos_w"), &rel_shape, ops.kind)?,
                heads,
            },
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), dim, SAM_LN_EPS, ops.kind)?,
            lin1: Linear::load(
                w,
                &format!("{p}.mlp.lin1"),
                [dim, SAM_MLP_RATIO * dim],
                true,
                ops,
            )?,
            lin2: Linear::load(
                w,
                &format!("{p}.mlp.lin2"),
                [SAM_MLP_RATIO * dim, dim],
                true,
                ops,
            )?,
            window: if global { 0 } else { SAM_WINDOW },
        })
    }

    /// `x` `[B, H, W, C]` -> same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.norm1.forward(x)?;
        let y = if self.window > 0 {
            self.attn.forward_windowed(&y, self.window)?
        } else {
            self.attn.forward(&y)?
        };
        let x = x.f_add(&y)?;
        // GELU in place: the hidden activations are the largest tensor of the block (4096 x
        // 3072 at 1024 px), and nothing else holds them.
        let mut mlp = self.lin1.forward(&self.norm2.forward(&x)?)?;
        let _ = mlp.f_gelu_("none")?;
        Ok(x.f_add(&self.lin2.forward(&mlp)?)?)
    }
}

/// `LayerNorm2d` of the SAM neck: normalise over channels of `[B, C, H, W]`, written out as the
/// reference does (mean, biased variance, `(x - u) / sqrt(s + eps)`, per-channel affine).
struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm2d {
    fn load(w: &mut Vars, prefix: &str, dim: i64, compute: Kind) -> Result<Self> {
        let shape = [dim, 1, 1];
        Ok(Self {
            weight: get_small(w, &format!("{prefix}.weight"), &[dim], compute)?.f_reshape(shape)?,
            bias: get_small(w, &format!("{prefix}.bias"), &[dim], compute)?.f_reshape(shape)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let u = x.f_mean_dim(1, true, None)?;
        let d = x.f_sub(&u)?;
        let s = d.f_square()?.f_mean_dim(1, true, None)?;
        let n = d.f_div(&s.f_add_scalar(SAM_LN_EPS)?.f_sqrt()?)?;
        Ok(n.f_mul(&self.weight)?.f_add(&self.bias)?)
    }
}

/// The SAM encoder with its neck and compressor.
pub(crate) struct Sam {
    patch_w: Tensor,
    patch_b: Tensor,
    /// `[1, C, P, P]` (channels first, ready for resizing).
    pos_embed: Tensor,
    blocks: Vec<Block>,
    neck_conv1: Tensor,
    neck_ln1: LayerNorm2d,
    neck_conv2: Tensor,
    neck_ln2: LayerNorm2d,
    net_2: Tensor,
    net_3: Tensor,
}

impl Sam {
    /// Small tensors are converted to `compute`; convolution and linear weights keep their
    /// stored dtype and are widened per call when it differs.
    pub(crate) fn load(cfg: &Config, w: &mut Vars, ops: Ops) -> Result<Self> {
        let sam = &cfg.vision_config.width.sam;
        let dim = sam.width;
        let grid = cfg.sam_pos_grid();
        let neck = SAM_NECK_CHANNELS;
        let [c2, c3] = [sam.downsample_channels[0], cfg.sam_out_channels()];
        let pos = get_small(
            w,
            &format!("{PREFIX}.pos_embed"),
            &[1, grid, grid, dim],
            ops.kind,
        )?;
        Ok(Self {
            patch_w: w.get(
                &format!("{PREFIX}.patch_embed.proj.weight"),
                &[dim, 3, SAM_PATCH, SAM_PATCH],
            )?,
            patch_b: get_small(
                w,
                &format!("{PREFIX}.patch_embed.proj.bias"),
                &[dim],
                ops.kind,
            )?,
            pos_embed: pos.f_permute([0, 3, 1, 2])?,
            blocks: (0..sam.layers)
                .map(|i| Block::load(w, cfg, i, ops))
                .collect::<Result<_>>()?,
            neck_conv1: w.get(&format!("{PREFIX}.neck.0.weight"), &[neck, dim, 1, 1])?,
            neck_ln1: LayerNorm2d::load(w, &format!("{PREFIX}.neck.1"), neck, ops.kind)?,
            neck_conv2: w.get(&format!("{PREFIX}.neck.2.weight"), &[neck, neck, 3, 3])?,
            neck_ln2: LayerNorm2d::load(w, &format!("{PREFIX}.neck.3"), neck, ops.kind)?,
            net_2: w.get(&format!("{PREFIX}.net_2.weight"), &[c2, neck, 3, 3])?,
            net_3: w.get(&format!("{PREFIX}.net_3.weight"), &[c3, c2, 3, 3])?,
        })
    }

    /// The device the weights live on (inputs are moved there).
    pub(crate) fn device(&self) -> tch::Device {
        self.patch_w.device()
    }

    /// Pixels `[B, 3, S, S]` -> features `[B, C, g, g]` (after `net_3`).
    pub(crate) fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = pixels.f_conv2d(
            &self.patch_w.f_to_kind(pixels.kind())?,
            Some(&self.patch_b),
            [SAM_PATCH, SAM_PATCH],
            [0, 0],
            [1, 1],
            1,
        )?;
        let grid = x.size()[2];
        let pos = if grid == self.pos_embed.size()[2] {
            self.pos_embed.shallow_clone()
        } else {
            resize_grid_bicubic_aa(&self.pos_embed, grid)?
        };
        // Channels last in memory, not only in shape: elementwise results keep their input's
        // layout, so a permuted view here made every block's LayerNorms and residual adds run on
        // strided data (LayerNorm copying its input first): 12 + 12 + 19 ms per block where a
        // contiguous tensor takes a few.
        let mut x = x.f_add(&pos)?.f_permute([0, 2, 3, 1])?.f_contiguous()?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = x.f_permute([0, 3, 1, 2])?;
        let x = conv(&x, &self.neck_conv1, 1, 0)?;
        let x = conv(&self.neck_ln1.forward(&x)?, &self.neck_conv2, 1, 1)?;
        let x = self.neck_ln2.forward(&x)?;
        conv(&conv(&x, &self.net_2, 2, 1)?, &self.net_3, 2, 1)
    }
}

/// Bias-free square convolution, the weight widened to the input's dtype when stored narrower.
fn conv(x: &Tensor, weight: &Tensor, stride: i64, padding: i64) -> Result<Tensor> {
    Ok(x.f_conv2d(
        &weight.f_to_kind(x.kind())?,
        None::<&Tensor>,
        [stride, stride],
        [padding, padding],
        [1, 1],
        1,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_split_heads_pad_and_merge_back() {
        // 2 images of 5x7, 2 heads of 2 features (C = 4, 3C = 12), window 3: padded to 6x9,
        // 2*3 windows per image.
        let (b, h, w, heads, d) = (2, 5, 7, 2, 2);
        let c = heads * d;
        let x = Tensor::arange(b * h * w * 3 * c, (Kind::Float, tch::Device::Cpu)).view([
            b,
            h,
            w,
            3 * c,
        ]);
        let win = window_heads(&x, (3, 3), heads).expect("windows");
        assert_eq!(win.size(), [3, 12, heads, 9, d]);
        // Part p, window n, head hd, position r * 3 + col, feature f comes from row r and column
        // col of the window's cell, channel p * C + hd * d + f; padding is zero.
        for p in 0..3 {
            for (n, img, row0, col0) in [(1, 0, 0, 3), (2, 0, 0, 6), (6, 1, 0, 0), (11, 1, 3, 6)] {
                for hd in 0..heads {
                    for pos in 0..9 {
                        for f in 0..d {
                            let (r, col) = (row0 + pos / 3, col0 + pos % 3);
                            let want = if r < h && col < w {
                                x.double_value(&[img, r, col, p * c + hd * d + f])
                            } else {
                                0.0
                            };
                            let got = win.double_value(&[p, n, hd, pos, f]);
                            assert_eq!(got, want, "part {p} window {n} head {hd} pos {pos} f {f}");
                        }
                    }
                }
            }
            let back = window_merge(&win.get(p), (3, 3), h, w).expect("merge");
            assert!(back.equal(&x.narrow(3, p * c, c)), "part {p}");
        }
    }

    #[test]
    fn rel_pos_indexes_by_offset() {
        // Table row r holds the value r, so R[q, k] must be q - k + size - 1.
        let table = Tensor::arange(5, (Kind::Float, tch::Device::Cpu)).view([5, 1]);
        let r = rel_pos_for(&table, 3).expect("rel pos");
        let expected = Tensor::from_slice(&[2.0f32, 1.0, 0.0, 3.0, 2.0, 1.0, 4.0, 3.0, 2.0]);
        assert!(r.view([-1]).equal(&expected));
    }
}
