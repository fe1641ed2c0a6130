//! Matrix-vector products with bf16 (or f32) weights and f32 activations on the CPU.
//!
//! A decode step multiplies one token's activations by every weight matrix it uses, so it is
//! bound by how fast the weights stream from memory. Keeping them in bf16 halves that traffic,
//! but libtorch's own bf16 kernels are slow on CPUs without bf16 instructions (avx512_bf16 or
//! AMX): a bf16 `linear` of one row ran slower than the f32 one on such a machine. Here each
//! bf16 weight is widened to f32 in registers (a 16-bit shift), multiplied with the f32
//! activations and accumulated in f32: the bytes read are those of bf16, the arithmetic is
//! that of f32, and the result is at least as accurate as a bf16 matmul.
//!
//! Work is split into blocks of output rows run in parallel through [`par`] (on libtorch's own
//! OpenMP threads where they can be reached). A matrix of stacked ones (an expert of the MoE's
//! stacked weights) is read in place ([`Matrix::stacked`]): no copy of expert weights.
//!
//! Every entry point takes the [`Isa`] to run: AVX-512 and AVX2 kernels on x86-64, and a
//! portable one (several independent accumulators, which the compiler vectorises for the
//! target's baseline SIMD) everywhere.

use tch::{Device, Kind, Tensor};

use super::features::{Isa, Path, Tier};
use super::par;
use crate::ocr::error::{OcrError, Result};

/// Output rows per parallel task (a block of `ROWS_PER_TASK * K` weights, ~160 KB at K = 1280).
const ROWS_PER_TASK: usize = 64;

/// One product `out = W x`: `W` `[N, K]` bf16 or f32 (row-major), `x` `[K]` f32, `out` `[N]`
/// f32.
pub struct Product<'a> {
    pub weight: &'a Tensor,
    pub x: &'a Tensor,
}

/// True when [`products`] can compute `x W^T` for this pair: a bf16 or f32 weight and f32
/// activations, both on the CPU.
pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
    x.device() == Device::Cpu
        && weight.device() == Device::Cpu
        && x.kind() == Kind::Float
        && matches!(weight.kind(), Kind::BFloat16 | Kind::Float)
}

/// Rows of a weight matrix as stored: bf16 bits or f32.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Bf16(&'a [u16]),
    F32(&'a [f32]),
}

impl<'a> Rows<'a> {
    /// The rows of a contiguous CPU bf16 or f32 tensor.
    ///
    /// # Safety
    /// `t` must be contiguous, on the CPU, of kind bf16 or f32, and outlive the result.
    unsafe fn of(t: &'a Tensor) -> Self {
        let n = t.numel();
        // SAFETY: per the contract; bf16 has the size and alignment of u16.
        unsafe {
            match t.kind() {
                Kind::BFloat16 => {
                    Rows::Bf16(std::slice::from_raw_parts(t.data_ptr() as *const u16, n))
                }
                _ => Rows::F32(std::slice::from_raw_parts(t.data_ptr() as *const f32, n)),
            }
        }
    }

    /// Elements `start..start + len`.
    fn range(self, start: usize, len: usize) -> Self {
        match self {
            Rows::Bf16(w) => Rows::Bf16(&w[start..start + len]),
            Rows::F32(w) => Rows::F32(&w[start..start + len]),
        }
    }

    /// `out[r] = dot(row r, x)` for every row.
    fn dot(self, isa: Isa, x: &[f32], out: &mut [f32]) {
        match self {
            Rows::Bf16(w) => dot_rows(isa, w, x, out),
            Rows::F32(w) => dot_rows_f32(isa, w, x, out),
        }
    }
}

/// Run every product, split into blocks of [`ROWS_PER_TASK`] output rows, in parallel.
fn run(isa: Isa, jobs: Vec<MatVec<'_>>) {
    let mut blocks = Vec::new();
    for MatVec { m, x, out } in jobs {
        for (i, o) in out.chunks_mut(ROWS_PER_TASK).enumerate() {
            blocks.push((m.first_rows(i * ROWS_PER_TASK, o.len()).rows, x, o));
        }
    }
    par::for_each(blocks, &|(rows, x, out)| rows.dot(isa, x, out));
}

/// Compute every product of `jobs` (in parallel across all of their rows); returns one f32
/// tensor `[N_i]` per job, in order.
pub fn products(isa: Isa, jobs: &[Product<'_>]) -> Result<Vec<Tensor>> {
    let mut xs = Vec::with_capacity(jobs.len());
    let mut ws = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (w, x) = check(job)?;
        ws.push(w);
        xs.push(x);
    }
    let outs: Vec<Tensor> = ws
        .iter()
        .map(|w| Tensor::f_empty([w.size()[0]], (Kind::Float, Device::Cpu)))
        .collect::<std::result::Result<_, _>>()?;
    let mut jobs = Vec::with_capacity(ws.len());
    for ((w, x), out) in ws.iter().zip(&xs).zip(&outs) {
        // SAFETY: `check` made `x` a contiguous CPU f32 `[K]` tensor; `out` is a fresh
        // contiguous f32 `[N]` tensor that nothing else references. Both outlive the products,
        // which end in `matvecs`.
        let (x, out) = unsafe { (f32_slice(x), f32_slice_mut(out)) };
        jobs.push(MatVec {
            m: Matrix::of(w)?,
            x,
            out,
        });
    }
    matvecs(isa, jobs)?;
    Ok(outs)
}

/// A row-major matrix `[N, K]` of bf16 or f32 values borrowed from a CPU tensor (or a slice),
/// for products on plain slices ([`matvecs`]).
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    rows: Rows<'a>,
    n: usize,
    k: usize,
}

impl<'a> Matrix<'a> {
    /// The matrix `t` `[N, K]`, or each of the stacked matrices of `t` `[E, N, K]` one after
    /// the other (select one with [`Matrix::stacked`]). Errors unless `t` is a contiguous CPU
    /// bf16 or f32 tensor of two or three dimensions.
    pub fn of(t: &'a Tensor) -> Result<Self> {
        let size = t.size();
        let ok = t.device() == Device::Cpu
            && matches!(t.kind(), Kind::BFloat16 | Kind::Float)
            && (size.len() == 2 || size.len() == 3)
            && t.is_contiguous();
        if !ok {
            return Err(OcrError::Invalid(format!(
                "matrix-vector product needs a contiguous CPU bf16 or f32 matrix, got {:?} {:?}",
                t.kind(),
                size
            )));
        }
        let k = size[size.len() - 1] as usize;
        // SAFETY: checked just above: contiguous, CPU, bf16 or f32; borrowed for 'a.
        let rows = unsafe { Rows::of(t) };
        Ok(Self {
            rows,
            n: t.numel() / k.max(1),
            k,
        })
    }

    /// An f32 matrix over `data` with rows of `k` values.
    pub fn f32(data: &'a [f32], k: usize) -> Self {
        Self {
            rows: Rows::F32(data),
            n: data.len() / k.max(1),
            k,
        }
    }

    /// Matrix `e` of `count` equal matrices stored one after the other (`[E, N, K]` read as
    /// `[E * N, K]`).
    pub fn stacked(self, e: usize, count: usize) -> Result<Self> {
        let n = self.n / count.max(1);
        if e >= count || n * count != self.n {
            return Err(OcrError::Invalid(format!(
                "matrix {e} of {count} stacked in {} rows",
                self.n
            )));
        }
        Ok(self.first_rows(e * n, n))
    }

    /// Rows `start..start + len`.
    pub fn first_rows(self, start: usize, len: usize) -> Self {
        Self {
            rows: self.rows.range(start * self.k, len * self.k),
            n: len,
            k: self.k,
        }
    }

    /// Rows `[N]` and columns `[K]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

/// One product on slices: `out = m x`.
pub struct MatVec<'a> {
    pub m: Matrix<'a>,
    pub x: &'a [f32],
    pub out: &'a mut [f32],
}

/// Compute every product of `jobs`, in parallel across all of their rows.
/// Errors (before computing anything) when a job's sizes do not match.
pub fn matvecs(isa: Isa, jobs: Vec<MatVec<'_>>) -> Result<()> {
    if let Some(bad) = jobs
        .iter()
        .find(|j| j.x.len() != j.m.k || j.out.len() != j.m.n || j.m.k == 0)
    {
        return Err(OcrError::Invalid(format!(
            "matrix-vector product of [{}, {}] by [{}] into [{}]: sizes do not match",
            bad.m.n,
            bad.m.k,
            bad.x.len(),
            bad.out.len()
        )));
    }
    run(isa, jobs);
    Ok(())
}

/// `out = m x`, its rows shared out in parallel.
pub fn matvec_pool(isa: Isa, m: Matrix<'_>, x: &[f32], out: &mut [f32]) -> Result<()> {
    matvecs(isa, vec![MatVec { m, x, out }])
}

/// `out = m x` on the calling thread (for products too small to share out).
pub fn matvec_here(isa: Isa, m: Matrix<'_>, x: &[f32], out: &mut [f32]) -> Result<()> {
    if x.len() != m.k || out.len() != m.n || m.k == 0 {
        return Err(OcrError::Invalid(format!(
            "matrix-vector product of [{}, {}] by [{}] into [{}]: sizes do not match",
            m.n,
            m.k,
            x.len(),
            out.len()
        )));
    }
    m.rows.dot(isa, x, out);
    Ok(())
}

/// `x W^T` for `x` `[T, K]` f32 and `weight` `[N, K]` bf16 or f32: `[T, N]` f32, each row one
/// product.
pub fn linear(isa: Isa, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let rows: Vec<Tensor> = (0..x.size()[0]).map(|t| x.get(t)).collect();
    let jobs: Vec<Product<'_>> = rows.iter().map(|x| Product { weight, x }).collect();
    Ok(Tensor::f_stack(&products(isa, &jobs)?, 0)?)
}

/// Largest number of rows of activations sent through [`linear`] by [`linear_any`]; above it
/// the weight is widened once and libtorch's f32 matmul runs (it reuses each weight across rows).
pub const GEMV_MAX_ROWS: i64 = 4;

/// `x W^T (+ b)` whatever the two dtypes. On the kernels' path: bf16 weights with 2 to
/// [`FEW_ROWS_MAX`] rows of f32 activations go through [`few_rows`]; up to [`GEMV_MAX_ROWS`] rows
/// of f32 activations on the CPU otherwise through [`linear`] (bf16 or f32 weights, in
/// parallel). Everything else, and everything on libtorch's path, is libtorch's `linear`: equal
/// dtypes directly, a weight stored narrower than the activations (bf16 weights, f32
/// arithmetic) through an f32 copy made for this call. `x` is `[..., K]`, `weight` `[N, K]`,
/// `bias` `[N]`.
pub fn linear_any(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    path: Path,
) -> Result<Tensor> {
    if let Path::Kernels(isa) = path {
        let matrices = x.dim() == 2 && weight.dim() == 2 && applies(x, weight);
        let rows = if matrices { x.size()[0] } else { 0 };
        let plus_bias = |y: Tensor| -> Result<Tensor> {
            Ok(match bias {
                Some(b) => y.f_add(&b.f_to_kind(Kind::Float)?)?,
                None => y,
            })
        };
        // Two rows or more: `few_rows` reads the weight once where `linear` reads it once per
        // row (the prefill's experts with a few tokens each).
        if (2..=FEW_ROWS_MAX).contains(&rows) && weight.kind() == Kind::BFloat16 {
            return plus_bias(few_rows(isa, x, weight)?);
        }
        if matrices && rows <= GEMV_MAX_ROWS {
            return plus_bias(linear(isa, x, weight)?);
        }
    }
    if x.kind() == weight.kind() {
        return Ok(x.f_linear(weight, bias)?);
    }
    let bias = bias.map(|b| b.f_to_kind(x.kind())).transpose()?;
    Ok(x.f_linear(&weight.f_to_kind(x.kind())?, bias.as_ref())?)
}

/// Largest number of rows of activations [`linear_any`] multiplies by bf16 weights with
/// [`few_rows`]; above it, libtorch's f32 matmul over a widened copy of the weight wins.
pub const FEW_ROWS_MAX: i64 = 64;

/// `x W^T` for a few rows of f32 activations `x` `[T, K]` and bf16 weights `[N, K]`: `[T, N]`
/// f32. The prefill's experts see a few dozen tokens each; widening each expert's weights to an
/// f32 copy for libtorch's matmul wrote twice the weight's bytes per call and cost as much as the
/// products. Here each block of four weight rows is widened in registers and used against four
/// rows of `x` at a time. Blocks of output columns run in parallel.
pub fn few_rows(isa: Isa, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (t, k) = x.size2()?;
    let w = Matrix::of(weight)?;
    if !applies(x, weight) || w.k != k as usize || weight.kind() != Kind::BFloat16 {
        return Err(OcrError::Invalid(format!(
            "few-row product of {:?} {:?} by {:?} {:?}: needs f32 [T, K] by bf16 [N, K] on the CPU",
            x.kind(),
            x.size(),
            weight.kind(),
            weight.size()
        )));
    }
    let x = x.f_contiguous()?;
    let (t, n) = (t as usize, w.n);
    // Output transposed, [N, T]: each task writes whole rows of it.
    let out = Tensor::f_empty([n as i64, t as i64], (Kind::Float, Device::Cpu))?;
    // SAFETY: `x` is a contiguous CPU f32 tensor and `out` a fresh one nothing else references;
    // both live until the end of this function, after the tasks.
    let (xs, outs) = unsafe { (f32_slice(&x), f32_slice_mut(&out)) };
    let Rows::Bf16(ws) = w.rows else {
        unreachable!("checked bf16 above")
    };
    let k = k as usize;
    let blocks: Vec<(&[u16], &mut [f32])> = ws
        .chunks(ROWS_PER_TASK * k)
        .zip(outs.chunks_mut(ROWS_PER_TASK * t))
        .collect();
    let work = |(w, o): (&[u16], &mut [f32])| few_rows_block(isa, w, xs, k, o);
    par::for_each(blocks, &work);
    Ok(out.f_transpose(0, 1)?.f_contiguous()?)
}

/// `o[r * T + m] = dot(w row r, x row m)` for whole weight rows `w` (of `k`) and the `T` rows of
/// `x`, on the tier of `isa`.
fn few_rows_block(isa: Isa, w: &[u16], x: &[f32], k: usize, o: &mut [f32]) {
    match isa.tier() {
        // SAFETY: `isa` proves the CPU has AVX-512F; `w` holds whole rows of `k`, `o` the
        // matching rows of `T` outputs, `x` `T` rows of `k`.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => unsafe { x86::few_rows_avx512(w, x, k, o) },
        // SAFETY: `isa` proves the CPU has AVX2 and FMA; sizes as above.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { x86::few_rows_avx2(w, x, k, o) },
        _ => few_rows_portable(w, x, k, o),
    }
}

/// [`few_rows_block`] in portable code: each weight row against each row of `x`.
#[inline(always)]
fn few_rows_portable(w: &[u16], x: &[f32], k: usize, o: &mut [f32]) {
    let t = x.len() / k;
    for (row, out) in w.chunks_exact(k).zip(o.chunks_exact_mut(t)) {
        for (xm, om) in x.chunks_exact(k).zip(out.iter_mut()) {
            *om = dot_bf16(row, xm);
        }
    }
}

/// Validate one job; returns contiguous versions of its tensors.
fn check(job: &Product<'_>) -> Result<(Tensor, Tensor)> {
    if !applies(job.x, job.weight) || job.x.dim() != 1 || job.weight.dim() != 2 {
        return Err(OcrError::Invalid(format!(
            "matrix-vector product needs a CPU bf16 or f32 [N, K] weight and a CPU f32 [K] \
             vector, got {:?} {:?} and {:?} {:?}",
            job.weight.kind(),
            job.weight.size(),
            job.x.kind(),
            job.x.size()
        )));
    }
    let (n, k) = (job.weight.size()[0], job.weight.size()[1]);
    if job.x.size()[0] != k || n == 0 || k == 0 {
        return Err(OcrError::Invalid(format!(
            "matrix-vector product of [{n}, {k}] by {:?}: sizes do not match",
            job.x.size()
        )));
    }
    Ok((job.weight.f_contiguous()?, job.x.f_contiguous()?))
}

unsafe fn f32_slice(t: &Tensor) -> &[f32] {
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

#[allow(clippy::mut_from_ref)]
unsafe fn f32_slice_mut(t: &Tensor) -> &mut [f32] {
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }
}

/// While alive, libtorch's own CPU pool runs one thread (restored on drop). Decode steps on
/// the CPU do their heavy work in this module's kernels; libtorch's remaining work there is
/// tiny. When the kernels ran on a pool of their own, libtorch's idle OpenMP workers spun after
/// every parallel op and took the cores from them (f32 decode lost a quarter of its speed);
/// on libtorch's own threads ([`par`]) narrowing makes no measurable difference (15.9 against
/// 15.8 tokens/s), but the rayon fallback still needs it.
pub struct SoloTorch {
    threads: i32,
}

impl SoloTorch {
    /// Fix the kernels' thread count at the current one, then narrow libtorch to one thread.
    pub fn new() -> Self {
        let threads = tch::get_num_threads();
        let _ = par::threads();
        tch::set_num_threads(1);
        Self { threads }
    }
}

impl Default for SoloTorch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SoloTorch {
    fn drop(&mut self) {
        tch::set_num_threads(self.threads);
    }
}

/// `out[r] = dot(w[r*K..(r+1)*K], x)` for every row of the block `w` (bf16 bits).
fn dot_rows(isa: Isa, w: &[u16], x: &[f32], out: &mut [f32]) {
    match isa.tier() {
        // SAFETY: `isa` proves the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => unsafe { x86::dot_rows_avx512(w, x, out) },
        // SAFETY: `isa` proves the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { x86::dot_rows_avx2(w, x, out) },
        _ => dot_rows_portable(w, x, out),
    }
}

/// bf16 bits to f32: the bf16 value is the upper half of the f32 one.
fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 weights: `out[r] = dot(row r, x)`.
fn dot_rows_f32(isa: Isa, w: &[f32], x: &[f32], out: &mut [f32]) {
    match isa.tier() {
        // SAFETY: `isa` proves the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => unsafe { x86::dot_rows_f32_avx512(w, x, out) },
        // SAFETY: `isa` proves the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { x86::dot_rows_f32_avx2(w, x, out) },
        _ => dot_rows_f32_portable(w, x, out),
    }
}

/// Lanes of the portable kernels' accumulators: eight independent sums, which the compiler
/// keeps in SIMD registers (two SSE2 or NEON registers, one AVX register).
const LANES: usize = 8;

/// `dot(row, x)` over values read through `get`, in [`LANES`] independent sums (a single
/// running sum would pin the additions to one order, which the compiler may not vectorise).
#[inline(always)]
fn dot_lanes<T: Copy>(row: &[T], x: &[f32], get: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (rows, xs) = (row.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail: f32 = rows
        .remainder()
        .iter()
        .zip(xs.remainder())
        .map(|(&w, &v)| get(w) * v)
        .sum();
    for (r, v) in rows.zip(xs) {
        for l in 0..LANES {
            acc[l] += get(r[l]) * v[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `dot(row, x)` of bf16 weights and f32 activations, portable.
#[inline(always)]
fn dot_bf16(row: &[u16], x: &[f32]) -> f32 {
    dot_lanes(row, x, widen)
}

#[inline(always)]
fn dot_rows_portable(w: &[u16], x: &[f32], out: &mut [f32]) {
    for (row, o) in w.chunks_exact(x.len()).zip(out.iter_mut()) {
        *o = dot_bf16(row, x);
    }
}

#[inline(always)]
fn dot_rows_f32_portable(w: &[f32], x: &[f32], out: &mut [f32]) {
    for (row, o) in w.chunks_exact(x.len()).zip(out.iter_mut()) {
        *o = dot_lanes(row, x, |v| v);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{dot_rows_f32_portable, widen};

    /// `dot(row, x)`: 32 columns per step with two accumulators, `load` reading 16 weights as
    /// f32 lanes and `scalar` widening one weight for the tail.
    #[target_feature(enable = "avx512f")]
    fn dot_row_avx512<T: Copy>(
        row: &[T],
        x: &[f32],
        load: impl Fn(*const T) -> __m512,
        scalar: impl Fn(T) -> f32,
    ) -> f32 {
        let k = x.len();
        let body = k - k % 32;
        let (wp, xp) = (row.as_ptr(), x.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut i = 0;
        while i < body {
            // SAFETY: i + 32 <= body <= k, the length of both `row` and `x`.
            unsafe {
                a0 = _mm512_fmadd_ps(load(wp.add(i)), _mm512_loadu_ps(xp.add(i)), a0);
                a1 = _mm512_fmadd_ps(load(wp.add(i + 16)), _mm512_loadu_ps(xp.add(i + 16)), a1);
            }
            i += 32;
        }
        let tail: f32 = (body..k).map(|j| scalar(row[j]) * x[j]).sum();
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + tail
    }

    /// bf16 weights, one row at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows_avx512(w: &[u16], x: &[f32], out: &mut [f32]) {
        let wide = |p: *const u16| {
            // SAFETY: callers pass pointers with 16 readable u16 values.
            unsafe {
                let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
            }
        };
        for (row, o) in w.chunks_exact(x.len()).zip(out.iter_mut()) {
            *o = dot_row_avx512(row, x, wide, widen);
        }
    }

    /// f32 weights.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows_f32_avx512(w: &[f32], x: &[f32], out: &mut [f32]) {
        let k = x.len();
        // Four rows at a time: four independent streams of weights, `x` loaded once (faster for
        // f32 weights; the bf16 kernel reads one row at a time, where this blocking was slower:
        // BENCHMARKS.md).
        let quads = out.len() / 4;
        let body16 = k - k % 16;
        for (rows, o) in w
            .chunks_exact(4 * k)
            .zip(out.chunks_exact_mut(4))
            .take(quads)
        {
            let (wp, xp) = (rows.as_ptr(), x.as_ptr());
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i < body16 {
                // SAFETY: i + 16 <= k; row r spans r*k..(r+1)*k of `rows` (4k long).
                unsafe {
                    let xv = _mm512_loadu_ps(xp.add(i));
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(r * k + i)), xv, *a);
                    }
                }
                i += 16;
            }
            for (r, a) in acc.iter().enumerate() {
                let row = &rows[r * k..(r + 1) * k];
                o[r] = _mm512_reduce_add_ps(*a) + (body16..k).map(|j| row[j] * x[j]).sum::<f32>();
            }
        }
        let (w, out) = (&w[quads * 4 * k..], &mut out[quads * 4..]);
        // SAFETY (of the load): callers pass pointers with 16 readable f32 values.
        let load = |p: *const f32| unsafe { _mm512_loadu_ps(p) };
        for (row, o) in w.chunks_exact(k).zip(out.iter_mut()) {
            *o = dot_row_avx512(row, x, load, |v| v);
        }
    }

    /// The operands of a few-row product: `w` `[rows, k]` (bf16 bits) against `x` `[t, k]`.
    #[derive(Clone, Copy)]
    struct FewRows<'a> {
        w: &'a [u16],
        x: &'a [f32],
        k: usize,
        t: usize,
    }

    impl<'a> FewRows<'a> {
        fn new(w: &'a [u16], x: &'a [f32], k: usize) -> Self {
            Self {
                w,
                x,
                k,
                t: x.len() / k,
            }
        }

        /// The register blocks `(r0, nr, m0, mr)`: activation rows `m0..m0 + mr` in groups of
        /// up to `mr_max` outside (they stay in L1), weight rows inside, four at a time and the
        /// last ones singly (the task's weights stay in L2 and are read as bf16, half the bytes
        /// of f32); the faster of the two orders (BENCHMARKS.md).
        fn blocks(self, mr_max: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
            let (rows, t) = (self.w.len() / self.k, self.t);
            let fours = rows - rows % 4;
            (0..t).step_by(mr_max).flat_map(move |m0| {
                let mr = (t - m0).min(mr_max);
                let quads = (0..fours).step_by(4).map(move |r0| (r0, 4, m0, mr));
                quads.chain((fours..rows).map(move |r0| (r0, 1, m0, mr)))
            })
        }
    }

    /// Stores a few-row block's products at `o[(r0 + r) * t + m0 + m]`: `sums[r][m]`, the SIMD
    /// part over `0..body`, plus the rest `body..k` of each dot product.
    fn store_block<const NR: usize, const MR: usize>(
        FewRows { w, x, k, t }: FewRows,
        body: usize,
        (r0, m0): (usize, usize),
        sums: &[[f32; MR]; NR],
        o: &mut [f32],
    ) {
        for (r, row_sums) in sums.iter().enumerate() {
            let row = &w[(r0 + r) * k..][..k];
            for (m, &sum) in row_sums.iter().enumerate() {
                let xm = &x[(m0 + m) * k..][..k];
                let tail: f32 = (body..k).map(|j| widen(row[j]) * xm[j]).sum();
                o[(r0 + r) * t + m0 + m] = sum + tail;
            }
        }
    }

    /// `NR` weight rows by `MR` activation rows: `o[r * t + m] += dot(w row r, x row m)` for
    /// the block at weight row `r0` and activation row `m0`, `k` a multiple of 16 handled here
    /// and the rest by the caller.
    // Indexing the accumulator grid by (row, column) is the clearest form of a register block.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn few_rows_block<const NR: usize, const MR: usize>(
        p: FewRows,
        (r0, m0): (usize, usize),
        o: &mut [f32],
    ) {
        let FewRows { w, x, k, .. } = p;
        let body = k - k % 16;
        let mut acc = [[_mm512_setzero_ps(); MR]; NR];
        let mut i = 0;
        while i < body {
            let mut wv = [_mm512_setzero_ps(); NR];
            for (r, v) in wv.iter_mut().enumerate() {
                // SAFETY: row r0 + r exists (the caller's block) and i + 16 <= k.
                unsafe {
                    let p = w.as_ptr().add((r0 + r) * k + i);
                    let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                    *v = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits));
                }
            }
            for m in 0..MR {
                // SAFETY: row m0 + m of x exists and i + 16 <= k.
                let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add((m0 + m) * k + i)) };
                for r in 0..NR {
                    acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
                }
            }
            i += 16;
        }
        let mut sums = [[0f32; MR]; NR];
        for r in 0..NR {
            for m in 0..MR {
                sums[r][m] = _mm512_reduce_add_ps(acc[r][m]);
            }
        }
        store_block(p, body, (r0, m0), &sums, o);
    }

    /// Every weight row of `w` against every row of `x` (`t` rows of `k`): `o` `[rows, t]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn few_rows_avx512(w: &[u16], x: &[f32], k: usize, o: &mut [f32]) {
        let p = FewRows::new(w, x, k);
        for (r0, nr, m0, mr) in p.blocks(4) {
            let at = (r0, m0);
            // SAFETY: the block lies inside `w`, `x` and `o` (nr, mr within bounds).
            unsafe {
                match (nr, mr) {
                    (4, 4) => few_rows_block::<4, 4>(p, at, o),
                    (4, 3) => few_rows_block::<4, 3>(p, at, o),
                    (4, 2) => few_rows_block::<4, 2>(p, at, o),
                    (4, _) => few_rows_block::<4, 1>(p, at, o),
                    (_, 4) => few_rows_block::<1, 4>(p, at, o),
                    (_, 3) => few_rows_block::<1, 3>(p, at, o),
                    (_, 2) => few_rows_block::<1, 2>(p, at, o),
                    _ => few_rows_block::<1, 1>(p, at, o),
                }
            }
        }
    }

    /// Eight columns per step with two accumulators per row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_avx2(w: &[u16], x: &[f32], out: &mut [f32]) {
        let k = x.len();
        let body = k - k % 16;
        let wide = |p: *const u16| {
            // SAFETY: callers pass pointers with 8 readable u16 values.
            unsafe {
                let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
            }
        };
        for (row, o) in w.chunks_exact(k).zip(out.iter_mut()) {
            let (wp, xp) = (row.as_ptr(), x.as_ptr());
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut i = 0;
            while i < body {
                // SAFETY: i + 16 <= body <= k, the length of both `row` and `x`.
                unsafe {
                    a0 = _mm256_fmadd_ps(wide(wp.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
                    a1 = _mm256_fmadd_ps(wide(wp.add(i + 8)), _mm256_loadu_ps(xp.add(i + 8)), a1);
                }
                i += 16;
            }
            let s = _mm256_add_ps(a0, a1);
            *o = hsum256(s) + (body..k).map(|j| widen(row[j]) * x[j]).sum::<f32>();
        }
    }

    /// The sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(s: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
        _mm_cvtss_f32(q)
    }

    /// f32 weights: the portable kernel compiled for AVX2 and FMA (the compiler vectorises its
    /// eight lanes into one register).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_f32_avx2(w: &[f32], x: &[f32], out: &mut [f32]) {
        dot_rows_f32_portable(w, x, out)
    }

    /// Eight bf16 weights at `p` widened to f32 lanes.
    ///
    /// # Safety
    /// `p` points to 8 readable u16 values; the CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn wide8(p: *const u16) -> __m256 {
        // SAFETY: per the contract.
        unsafe {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }
    }

    /// [`few_rows_block`]'s AVX2 form: `NR` weight rows by `MR` activation rows, eight columns
    /// per step (`NR * MR` accumulators, `NR` widened weights and one activation vector in the
    /// sixteen registers).
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn few_rows_block_avx2<const NR: usize, const MR: usize>(
        p: FewRows,
        (r0, m0): (usize, usize),
        o: &mut [f32],
    ) {
        let FewRows { w, x, k, .. } = p;
        let body = k - k % 8;
        let mut acc = [[_mm256_setzero_ps(); MR]; NR];
        let mut i = 0;
        while i < body {
            let mut wv = [_mm256_setzero_ps(); NR];
            for (r, v) in wv.iter_mut().enumerate() {
                // SAFETY: row r0 + r exists (the caller's block) and i + 8 <= k.
                *v = unsafe { wide8(w.as_ptr().add((r0 + r) * k + i)) };
            }
            for m in 0..MR {
                // SAFETY: row m0 + m of x exists and i + 8 <= k.
                let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add((m0 + m) * k + i)) };
                for r in 0..NR {
                    acc[r][m] = _mm256_fmadd_ps(wv[r], xv, acc[r][m]);
                }
            }
            i += 8;
        }
        let mut sums = [[0f32; MR]; NR];
        for r in 0..NR {
            for m in 0..MR {
                sums[r][m] = hsum256(acc[r][m]);
            }
        }
        store_block(p, body, (r0, m0), &sums, o);
    }

    /// Every weight row of `w` against every row of `x` (`t` rows of `k`): `o` `[rows, t]`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn few_rows_avx2(w: &[u16], x: &[f32], k: usize, o: &mut [f32]) {
        let p = FewRows::new(w, x, k);
        for (r0, nr, m0, mr) in p.blocks(2) {
            let at = (r0, m0);
            // SAFETY: the block lies inside `w`, `x` and `o` (nr, mr within bounds).
            unsafe {
                match (nr, mr) {
                    (4, 2) => few_rows_block_avx2::<4, 2>(p, at, o),
                    (4, _) => few_rows_block_avx2::<4, 1>(p, at, o),
                    (_, 2) => few_rows_block_avx2::<1, 2>(p, at, o),
                    _ => few_rows_block_avx2::<1, 1>(p, at, o),
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::FewRows;

        /// The register blocks of every tier cover each (weight row, activation row) once, in
        /// blocks of four weight rows or one, and of at most `mr_max` activation rows.
        #[test]
        fn blocks_cover_the_product_once() {
            for (rows, t) in [(1, 1), (3, 1), (4, 4), (9, 5), (13, 7), (64, 2)] {
                let (k, w, x) = (3, vec![0u16; rows * 3], vec![0f32; t * 3]);
                for mr_max in [2, 4] {
                    let mut seen = vec![0u8; rows * t];
                    for (r0, nr, m0, mr) in FewRows::new(&w, &x, k).blocks(mr_max) {
                        assert!(nr == 4 || nr == 1, "{nr} weight rows");
                        assert!((1..=mr_max).contains(&mr), "{mr} activation rows");
                        for r in r0..r0 + nr {
                            for m in m0..m0 + mr {
                                seen[r * t + m] += 1;
                            }
                        }
                    }
                    assert!(
                        seen.iter().all(|&n| n == 1),
                        "{rows}x{t} by {mr_max}: {seen:?}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bad shapes, kinds and expert ids are errors on every tier (checked before any kernel).
    #[test]
    fn wrong_inputs_are_errors() {
        let isa = Isa::scalar();
        let w = Tensor::zeros([4, 8], (Kind::BFloat16, Device::Cpu));
        let f = Tensor::ones([4, 8], (Kind::Float, Device::Cpu));
        let int = Tensor::zeros([4, 8], (Kind::Int, Device::Cpu));
        let x = Tensor::ones([8], (Kind::Float, Device::Cpu));
        let short = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        assert!(
            products(
                isa,
                &[Product {
                    weight: &int,
                    x: &x
                }]
            )
            .is_err()
        );
        assert!(
            products(
                isa,
                &[Product {
                    weight: &w,
                    x: &short
                }]
            )
            .is_err()
        );
        assert!(products(isa, &[Product { weight: &w, x: &w }]).is_err());
        assert!(products(isa, &[Product { weight: &w, x: &x }]).is_ok());
        let out = products(isa, &[Product { weight: &f, x: &x }]).expect("f32 weights");
        assert_eq!(Vec::<f32>::try_from(&out[0]).expect("out"), vec![8.0; 4]);
    }
}
