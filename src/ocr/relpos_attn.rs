//! SAM's attention with decomposed relative positions, fused on the CPU:
//! `softmax(q k^T / sqrt(d) + rel_h[q, kh] + rel_w[q, kw]) v`, key `kh * KW + kw`.
//!
//! Through libtorch the additive mask is a `[L, KH * KW]` tensor per head (32 MB per head for a
//! 1024-px global block) that is written, then read by SDPA; and libtorch's CPU flash attention
//! reached about 110 GFLOP/s on this workload against 250 for its plain f32 GEMMs (2 threads,
//! this machine). Here the mask is never built. A block of 32 queries (four tiles of eight)
//! computes its scores against all keys (register-blocked AVX-512, keys packed in panels of 32
//! and scaled by `1/sqrt(d)` once per call, each panel used by the four tiles while it is in
//! L1), adds `rel_h` (one value per row of the key grid) and `rel_w` (one vector per row) while
//! finding each row's maximum, exponentiates in place, and multiplies by `v` in blocks of 64
//! keys (register-blocked again). Tasks of query rows run in parallel through [`par`].
//!
//! Tried and not kept (alternated on the 1024-px global shape): tiles of twelve rows instead of
//! eight (no difference) and flash-style blocks of 512 keys with a running maximum, so that a
//! block's scores, keys and values would all stay in L2 (slower: 525-550 ms against 395-445 ms
//! per 12-head global block).
//!
//! Used for f32 activations on CPUs with AVX-512F and head dimensions that are multiples of 16
//! ([`applies`]); elsewhere the caller keeps libtorch's SDPA with a mask.

use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, Tensor};

use crate::ocr::error::{OcrError, Result};
use crate::ocr::{cpu_step, par};

/// Query rows per register tile.
const TILE_ROWS: usize = 8;
/// Keys per packed panel of `k` (two AVX-512 vectors).
const PANEL: usize = 32;
/// Query rows per parallel task (whole windows of 196 rows fit one task).
const TASK_ROWS: usize = 256;
/// Tiles of queries that share each panel of keys and each block of values.
const BLOCK_TILES: usize = 4;
/// Keys per block of values (64 keys x 64 features: 16 KB, in L1 while the block's tiles use it).
const VALUE_BLOCK: usize = 64;

static FUSED: AtomicBool = AtomicBool::new(true);

/// Use the fused kernel where it applies (the default), or leave every call to libtorch (to
/// compare the two).
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether [`relpos_attention`] runs for queries `q` `[.., L, d]`: f32 on the CPU, `d` a
/// multiple of 16, a CPU with AVX-512F, and the kernel not switched off.
pub fn applies(q: &Tensor) -> bool {
    let d = q.size().last().copied().unwrap_or(0);
    FUSED.load(Ordering::Relaxed)
        && q.device() == Device::Cpu
        && q.kind() == Kind::Float
        && d > 0
        && d % 16 == 0
        && avx512()
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `softmax(q k^T / sqrt(d) + rel_h[.., kh] + rel_w[.., kw]) v` for `G` independent groups
/// (batch x heads): `q` `[G, L, d]`, `k` and `v` `[G, S, d]`, `rel_h` `[G, L, KH]`, `rel_w`
/// `[G, L, KW]` with `S = KH * KW` (key `s` sits at row `s / KW`, column `s % KW` of the key
/// grid). Returns `[G, L, d]` f32. Errors when [`applies`] does not hold or shapes disagree.
pub fn relpos_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_h: &Tensor,
    rel_w: &Tensor,
) -> Result<Tensor> {
    let shapes = || {
        format!(
            "q {:?}, k {:?}, v {:?}, rel_h {:?}, rel_w {:?}",
            q.size(),
            k.size(),
            v.size(),
            rel_h.size(),
            rel_w.size()
        )
    };
    let all_f32 = [k, v, rel_h, rel_w]
        .iter()
        .all(|t| t.kind() == Kind::Float && t.device() == Device::Cpu && t.dim() == 3);
    if !applies(q) || q.dim() != 3 || !all_f32 {
        return Err(OcrError::Invalid(format!(
            "fused relative-position attention needs CPU f32 [G, L, d] tensors with d a \
             multiple of 16 on an AVX-512 CPU: {}",
            shapes()
        )));
    }
    let (g, l, d) = q.size3()?;
    let (s, kh, kw) = (k.size()[1], rel_h.size()[2], rel_w.size()[2]);
    if k.size() != [g, s, d]
        || v.size() != [g, s, d]
        || rel_h.size()[..2] != [g, l]
        || rel_w.size()[..2] != [g, l]
        || kh * kw != s
        || s == 0
    {
        return Err(OcrError::Invalid(format!(
            "fused relative-position attention: shapes disagree: {}",
            shapes()
        )));
    }
    let dims = Dims {
        l: l as usize,
        s: s as usize,
        d: d as usize,
        kh: kh as usize,
        kw: kw as usize,
    };
    let (q, k, v) = (q.f_contiguous()?, k.f_contiguous()?, v.f_contiguous()?);
    let (rel_h, rel_w) = (rel_h.f_contiguous()?, rel_w.f_contiguous()?);
    let mut out = Tensor::f_empty([g, l, d], (Kind::Float, Device::Cpu))?;
    let values = cpu_step::f32_values;
    let (qs, ks, vs) = (values(&q)?, values(&k)?, values(&v)?);
    let (hs, ws) = (values(&rel_h)?, values(&rel_w)?);
    // SAFETY: `out` is fresh and referenced nowhere else; the slice lives in this function.
    let outs = unsafe { cpu_step::f32_values_mut(&mut out)? };
    let scale = 1.0 / (d as f32).sqrt();
    let panels = dims.s.div_ceil(PANEL);
    let group_packed = panels * dims.d * PANEL;
    let mut packed = vec![0f32; g as usize * group_packed];
    let pack_jobs: Vec<(&mut [f32], &[f32])> = packed
        .chunks_mut(group_packed)
        .zip(ks.chunks(dims.s * dims.d))
        .collect();
    par::for_each(pack_jobs, &|(p, k)| pack_keys(k, dims.d, scale, p));
    let mut tasks = Vec::new();
    for (gi, o) in outs.chunks_mut(dims.l * dims.d).enumerate() {
        for (ti, rows) in o.chunks_mut(TASK_ROWS * dims.d).enumerate() {
            tasks.push((gi, ti * TASK_ROWS, rows));
        }
    }
    let packed = &packed;
    par::for_each(tasks, &|(gi, row0, o)| {
        let group = Group {
            q: &qs[gi * dims.l * dims.d..][..dims.l * dims.d],
            packed: &packed[gi * group_packed..][..group_packed],
            v: &vs[gi * dims.s * dims.d..][..dims.s * dims.d],
            rel_h: &hs[gi * dims.l * dims.kh..][..dims.l * dims.kh],
            rel_w: &ws[gi * dims.l * dims.kw..][..dims.l * dims.kw],
        };
        rows_of_group(&dims, &group, row0, o);
    });
    Ok(out)
}

#[derive(Clone, Copy)]
struct Dims {
    l: usize,
    s: usize,
    d: usize,
    kh: usize,
    kw: usize,
}

/// One group's inputs, `k` packed by [`pack_keys`].
struct Group<'a> {
    q: &'a [f32],
    packed: &'a [f32],
    v: &'a [f32],
    rel_h: &'a [f32],
    rel_w: &'a [f32],
}

/// `k` `[S, d]` times `scale` into panels `[ceil(S / 32)][d][32]` (key-minor, zero-padded), so
/// that the score kernel reads 32 keys of one feature as two vectors.
fn pack_keys(k: &[f32], d: usize, scale: f32, packed: &mut [f32]) {
    for (panel, keys) in packed.chunks_exact_mut(d * PANEL).zip(k.chunks(PANEL * d)) {
        for (j, key) in keys.chunks_exact(d).enumerate() {
            for (f, &x) in key.iter().enumerate() {
                panel[f * PANEL + j] = x * scale;
            }
        }
    }
}

/// Output rows `row0..row0 + o.len() / d` of one group, [`BLOCK_TILES`] tiles of queries at a
/// time: each panel of keys and each block of values is read once per block and used by all
/// its tiles while it is in L1 (tiles one at a time, 1 MB of keys and 1 MB of values per head
/// at 1024 px were read for every eight queries: 485 against 350 ms per global block).
fn rows_of_group(dims: &Dims, g: &Group<'_>, row0: usize, o: &mut [f32]) {
    let d = dims.d;
    let panels = dims.s.div_ceil(PANEL);
    // One cache line past whole panels: rows of scores 2^k floats apart share L1 sets.
    let stride = panels * PANEL + 16;
    let block_rows = BLOCK_TILES * TILE_ROWS;
    let mut scores = vec![0f32; block_rows * stride];
    let mut tiles = vec![0f32; block_rows * d];
    let mut acc = vec![0f32; block_rows * d];
    let mut inv_sum = [0f32; BLOCK_TILES * TILE_ROWS];
    for (b, out) in o.chunks_mut(block_rows * d).enumerate() {
        let r0 = row0 + b * block_rows;
        let n = out.len() / d;
        let nt = n.div_ceil(TILE_ROWS);
        tiles.fill(0.0);
        tiles[..n * d].copy_from_slice(&g.q[r0 * d..(r0 + n) * d]);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: [`applies`] checked AVX-512F. Every kernel asserts that its ranges lie inside
        // the slices it is given.
        unsafe {
            for p in 0..panels {
                let panel = &g.packed[p * d * PANEL..][..d * PANEL];
                for t in 0..nt {
                    let rows = t * TILE_ROWS;
                    x86::scores_panel(
                        &tiles[rows * d..][..TILE_ROWS * d],
                        panel,
                        &mut scores[rows * stride + p * PANEL..],
                        stride,
                    );
                }
            }
            for (r, inv) in inv_sum.iter_mut().enumerate().take(n) {
                let q = r0 + r;
                *inv = x86::softmax_rel(
                    &mut scores[r * stride..][..dims.s],
                    &g.rel_h[q * dims.kh..][..dims.kh],
                    &g.rel_w[q * dims.kw..][..dims.kw],
                );
            }
            let mut j0 = 0;
            while j0 < dims.s {
                let j1 = (j0 + VALUE_BLOCK).min(dims.s);
                for t in 0..nt {
                    let rows = t * TILE_ROWS;
                    x86::values_block(
                        &scores[rows * stride..],
                        stride,
                        g.v,
                        j0..j1,
                        &mut acc[rows * d..][..TILE_ROWS * d],
                    );
                }
                j0 = j1;
            }
            for (r, (row, o)) in acc.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
                for (o, a) in o.iter_mut().zip(row) {
                    *o = a * inv_sum[r];
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("`applies` is false without AVX-512 ({n} rows, {nt} tiles)");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PANEL, TILE_ROWS};

    /// `scores[r * stride + j] = tile[r] . key j` for the tile's eight rows and one packed
    /// panel of 32 keys: 8 x 2 accumulators over the features.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores_panel(
        tile: &[f32],
        panel: &[f32],
        scores: &mut [f32],
        stride: usize,
    ) {
        let d = panel.len() / PANEL;
        assert!(tile.len() >= TILE_ROWS * d && panel.len() == d * PANEL);
        assert!(scores.len() >= (TILE_ROWS - 1) * stride + PANEL);
        let (tp, kp, sp) = (tile.as_ptr(), panel.as_ptr(), scores.as_mut_ptr());
        let mut acc = [[_mm512_setzero_ps(); 2]; TILE_ROWS];
        for f in 0..d {
            // SAFETY: feature f < d of the panel and of each of the tile's rows (asserted).
            unsafe {
                let b0 = _mm512_loadu_ps(kp.add(f * PANEL));
                let b1 = _mm512_loadu_ps(kp.add(f * PANEL + 16));
                for r in 0..TILE_ROWS {
                    let a = _mm512_set1_ps(*tp.add(r * d + f));
                    acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
                }
            }
        }
        for r in 0..TILE_ROWS {
            // SAFETY: r * stride + 32 <= scores.len() (asserted).
            unsafe {
                let o = sp.add(r * stride);
                _mm512_storeu_ps(o, acc[r][0]);
                _mm512_storeu_ps(o.add(16), acc[r][1]);
            }
        }
    }

    /// One row of scores (`KH * KW` keys): add `rel_h[kh] + rel_w[kw]`, then replace each
    /// value by `exp(value - max)`; returns `1 / sum`. Four accumulators each for the maximum
    /// and the sum, so that consecutive vectors do not wait on one another.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_rel(row: &mut [f32], rel_h: &[f32], rel_w: &[f32]) -> f32 {
        let kw = rel_w.len();
        assert_eq!(row.len(), rel_h.len() * kw);
        let lanes = |left: usize| -> __mmask16 {
            if left >= 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            }
        };
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        for (keys, &h) in row.chunks_exact_mut(kw).zip(rel_h) {
            let hv = _mm512_set1_ps(h);
            for (i, c) in (0..kw).step_by(16).enumerate() {
                let m = lanes(kw - c);
                // SAFETY: lanes under `m` are c..min(c + 16, kw), inside `keys` and `rel_w`.
                unsafe {
                    let p = keys.as_mut_ptr().add(c);
                    let x = _mm512_maskz_loadu_ps(m, p);
                    let w = _mm512_maskz_loadu_ps(m, rel_w.as_ptr().add(c));
                    let y = _mm512_add_ps(x, _mm512_add_ps(w, hv));
                    _mm512_mask_storeu_ps(p, m, y);
                    max[i % 4] = _mm512_mask_max_ps(max[i % 4], m, max[i % 4], y);
                }
            }
        }
        let max = _mm512_max_ps(_mm512_max_ps(max[0], max[1]), _mm512_max_ps(max[2], max[3]));
        let mv = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = [_mm512_setzero_ps(); 4];
        let n = row.len();
        let p = row.as_mut_ptr();
        let body = n - n % 64;
        let mut c = 0;
        while c < body {
            for (i, s) in sum.iter_mut().enumerate() {
                // SAFETY: c + 64 <= body <= n.
                unsafe {
                    let q = p.add(c + 16 * i);
                    let e = exp(_mm512_sub_ps(_mm512_loadu_ps(q), mv));
                    _mm512_storeu_ps(q, e);
                    *s = _mm512_add_ps(*s, e);
                }
            }
            c += 64;
        }
        while c < n {
            let m = lanes(n - c);
            // SAFETY: lanes under `m` are c..min(c + 16, n), inside `row`.
            unsafe {
                let q = p.add(c);
                let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, q), mv));
                _mm512_mask_storeu_ps(q, m, e);
                sum[0] = _mm512_mask_add_ps(sum[0], m, sum[0], e);
            }
            c += 16;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(sum[0], sum[1]), _mm512_add_ps(sum[2], sum[3]));
        1.0 / _mm512_reduce_add_ps(sum)
    }

    /// `e^x` for `x <= 0` (scores minus their maximum): `2^n * p(r)` with `x = n ln 2 + r`,
    /// `|r| <= ln(2) / 2`, `p` the degree-6 Taylor polynomial (relative error under 2e-7);
    /// inputs below -87 give 0 or a denormal-free tiny value.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// `acc[r] += sum_{j in keys} scores[r * stride + j] v[j]` for the tile's eight rows (`acc`
    /// `[8, d]`, set instead of added to when the range starts at key 0), 8 rows x 32 (or 16)
    /// features of accumulators per pass over the keys.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn values_block(
        scores: &[f32],
        stride: usize,
        v: &[f32],
        keys: std::ops::Range<usize>,
        acc: &mut [f32],
    ) {
        let d = acc.len() / TILE_ROWS;
        assert!(d.is_multiple_of(16) && acc.len() == TILE_ROWS * d && keys.start < keys.end);
        assert!(scores.len() >= (TILE_ROWS - 1) * stride + keys.end && v.len() >= keys.end * d);
        let (sp, vp, ap) = (scores.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
        let mut f0 = 0;
        while f0 < d {
            let two = d - f0 >= 32;
            let mut a = [[_mm512_setzero_ps(); 2]; TILE_ROWS];
            if keys.start > 0 {
                for r in 0..TILE_ROWS {
                    // SAFETY: row r < 8 of `acc` has d >= f0 + 16 (32 when `two`) features.
                    unsafe {
                        a[r][0] = _mm512_loadu_ps(ap.add(r * d + f0));
                        if two {
                            a[r][1] = _mm512_loadu_ps(ap.add(r * d + f0 + 16));
                        }
                    }
                }
            }
            for j in keys.clone() {
                // SAFETY: key j < keys.end has features f0..f0 + 16 (+ 32 when `two`) inside
                // `v`; row r < 8 of `scores` has at least keys.end values (asserted).
                unsafe {
                    let b0 = _mm512_loadu_ps(vp.add(j * d + f0));
                    if two {
                        let b1 = _mm512_loadu_ps(vp.add(j * d + f0 + 16));
                        for r in 0..TILE_ROWS {
                            let s = _mm512_set1_ps(*sp.add(r * stride + j));
                            a[r][0] = _mm512_fmadd_ps(s, b0, a[r][0]);
                            a[r][1] = _mm512_fmadd_ps(s, b1, a[r][1]);
                        }
                    } else {
                        for r in 0..TILE_ROWS {
                            let s = _mm512_set1_ps(*sp.add(r * stride + j));
                            a[r][0] = _mm512_fmadd_ps(s, b0, a[r][0]);
                        }
                    }
                }
            }
            for r in 0..TILE_ROWS {
                // SAFETY: as for the loads above.
                unsafe {
                    _mm512_storeu_ps(ap.add(r * d + f0), a[r][0]);
                    if two {
                        _mm512_storeu_ps(ap.add(r * d + f0 + 16), a[r][1]);
                    }
                }
            }
            f0 += if two { 32 } else { 16 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's own computation of the same attention: the mask built and passed to SDPA.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, rel_h: &Tensor, rel_w: &Tensor) -> Tensor {
        let (g, l, _) = q.size3().unwrap();
        let (kh, kw) = (rel_h.size()[2], rel_w.size()[2]);
        let mask =
            (rel_h.reshape([g, l, kh, 1]) + rel_w.reshape([g, l, 1, kw])).reshape([g, l, kh * kw]);
        Tensor::scaled_dot_product_attention(q, k, v, Some(&mask), 0.0, false, None, false)
    }

    fn case(g: i64, l: i64, d: i64, kh: i64, kw: i64) {
        tch::manual_seed(7);
        let opts = (Kind::Float, Device::Cpu);
        let s = kh * kw;
        let q = Tensor::randn([g, l, d], opts);
        let k = Tensor::randn([g, s, d], opts);
        let v = Tensor::randn([g, s, d], opts);
        let rel_h = Tensor::randn([g, l, kh], opts);
        let rel_w = Tensor::randn([g, l, kw], opts);
        let want = reference(&q, &k, &v, &rel_h, &rel_w);
        let got = relpos_attention(&q, &k, &v, &rel_h, &rel_w).unwrap();
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(
            err <= 2e-5 * scale.max(1.0),
            "g {g} l {l} d {d} grid {kh}x{kw}: max error {err:e} (values up to {scale})"
        );
    }

    #[test]
    fn matches_sdpa_with_the_mask() {
        if !avx512() {
            eprintln!("no AVX-512F: the fused kernel does not run on this CPU");
            return;
        }
        // Window-like (14 x 14 keys, 196 queries: a tail tile of 4 rows, a tail panel of 4
        // keys and masked key-grid rows), global-like with 16-wide heads (the tiny model), and
        // odd sizes everywhere.
        case(3, 196, 64, 14, 14);
        case(2, 300, 16, 16, 20);
        case(1, 5, 48, 3, 7);
        case(2, 33, 32, 1, 1);
    }

    #[test]
    fn large_scores_do_not_overflow() {
        if !avx512() {
            return;
        }
        let opts = (Kind::Float, Device::Cpu);
        tch::manual_seed(3);
        let q = Tensor::randn([1, 20, 32], opts) * 30.0;
        let k = Tensor::randn([1, 36, 32], opts) * 30.0;
        let v = Tensor::randn([1, 36, 32], opts);
        let rel_h = Tensor::randn([1, 20, 6], opts) * 50.0;
        let rel_w = Tensor::randn([1, 20, 6], opts) * 50.0;
        let want = reference(&q, &k, &v, &rel_h, &rel_w);
        let got = relpos_attention(&q, &k, &v, &rel_h, &rel_w).unwrap();
        assert!(bool::try_from(got.isfinite().all()).unwrap());
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err < 1e-4, "max error {err:e}");
    }

    #[test]
    fn wrong_inputs_are_errors() {
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::zeros([1, 4, 16], opts);
        let kv = Tensor::zeros([1, 6, 16], opts);
        let (h, w) = (
            Tensor::zeros([1, 4, 2], opts),
            Tensor::zeros([1, 4, 3], opts),
        );
        // 2 x 4 grid for 6 keys.
        let w4 = Tensor::zeros([1, 4, 4], opts);
        assert!(relpos_attention(&q, &kv, &kv, &h, &w4).is_err());
        // Head dimension not a multiple of 16.
        let q12 = Tensor::zeros([1, 4, 12], opts);
        let kv12 = Tensor::zeros([1, 6, 12], opts);
        assert!(relpos_attention(&q12, &kv12, &kv12, &h, &w).is_err());
        // bf16 queries.
        let qb = q.to_kind(Kind::BFloat16);
        assert!(relpos_attention(&qb, &kv, &kv, &h, &w).is_err());
    }
}
