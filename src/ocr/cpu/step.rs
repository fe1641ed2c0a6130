//! The small operations of a one-token decode step on the CPU, on plain f32 slices.
//!
//! In a CPU decode step the matrix products stream the weights ([`super::gemv`]); everything
//! else (RMSNorm, rotary positions, attention over the cached keys and values, the MoE gate's
//! softmax and top-k, SiLU) touches a few thousand numbers. Run as libtorch operations those
//! cost a sixth of a CPU step in dispatch and allocation (BENCHMARKS.md); here they are loops
//! over slices. The arithmetic is the reference's, in f32
//! (norm statistics, softmax and the gate in f32 as there).

use tch::{Device, Kind, Tensor};

use super::features::Isa;
use super::gemv::{self, Matrix};
use super::par;
use crate::ocr::error::{OcrError, Result};

/// The values of `t`, a contiguous CPU f32 tensor.
pub fn f32_values(t: &Tensor) -> Result<&[f32]> {
    check_f32(t)?;
    // SAFETY: checked: contiguous CPU f32; the slice borrows `t`, which owns (or shares) the
    // storage for at least that long, and nothing writes to it meanwhile (callers hold `&t`).
    Ok(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) })
}

/// The values of `t`, a contiguous CPU f32 tensor, for writing.
///
/// # Safety
/// No other tensor or slice may read or write `t`'s storage while the result is alive (the KV
/// cache, owned by one `KvCache`, qualifies).
pub unsafe fn f32_values_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    check_f32(t)?;
    // SAFETY: checked: contiguous CPU f32; exclusive per the contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) })
}

fn check_f32(t: &Tensor) -> Result<()> {
    if t.device() != Device::Cpu || t.kind() != Kind::Float || !t.is_contiguous() {
        return Err(OcrError::Invalid(format!(
            "expected a contiguous CPU f32 tensor, got {:?} {:?} on {:?}",
            t.kind(),
            t.size(),
            t.device()
        )));
    }
    Ok(())
}

/// `out = weight * x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f64, out: &mut [f32]) {
    let mean = x.iter().map(|&v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + eps as f32).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * scale);
    }
}

/// Rotary positions (rotate-half over the whole head) for `x` `[heads, d]` at one position,
/// with that position's `cos` and signed `sin` rows `[d]` (the first half of `sin` negated):
/// `x * cos + roll(x, d/2) * sin`.
pub fn rotate(x: &mut [f32], d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for head in x.chunks_exact_mut(d) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos[i] + b * sin[i];
            head[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/// Attention of one query per head over the first `len` cached positions: `q` `[heads, d]`,
/// `keys` and `values` `[heads, capacity, d]`, `out` `[heads, d]`; scores scaled by
/// `1/sqrt(d)`, softmax in f32. Heads run in parallel through [`par`]; the scores' products
/// on the tier of `isa`.
pub fn attend(
    isa: Isa,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    d: usize,
    len: usize,
    out: &mut [f32],
) -> Result<()> {
    let heads = q.len() / d;
    let capacity = keys.len() / (heads * d).max(1);
    if len == 0 || len > capacity || values.len() != keys.len() || out.len() != q.len() {
        return Err(OcrError::Invalid(format!(
            "attention over {len} of {capacity} cached positions with {heads} heads of {d}: \
             sizes do not match"
        )));
    }
    let scale = 1.0 / (d as f32).sqrt();
    let head = |h: usize, out: &mut [f32]| -> Result<()> {
        let (k, v) = (
            &keys[h * capacity * d..][..len * d],
            &values[h * capacity * d..][..len * d],
        );
        let mut scores = vec![0f32; len];
        gemv::matvec_here(isa, Matrix::f32(k, d), &q[h * d..][..d], &mut scores)?;
        let max = scores
            .iter()
            .fold(f32::NEG_INFINITY, |m, &s| m.max(s * scale));
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s * scale - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        for (&p, row) in scores.iter().zip(v.chunks_exact(d)) {
            let p = p / sum;
            for (o, &x) in out.iter_mut().zip(row) {
                *o += p * x;
            }
        }
        Ok(())
    };
    let failed = std::sync::Mutex::new(None);
    let heads: Vec<(usize, &mut [f32])> = out.chunks_mut(d).enumerate().collect();
    par::for_each(heads, &|(h, o)| {
        if let Err(e) = head(h, o)
            && let Ok(mut f) = failed.lock()
        {
            f.get_or_insert(e);
        }
    });
    match failed.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `out = silu(gate) * up`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Softmax of `logits` in f32, then the `k` largest probabilities with their indices, largest
/// first (ties: lower index first).
pub fn softmax_top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| (i, exps[i] / sum))
        .collect()
}
