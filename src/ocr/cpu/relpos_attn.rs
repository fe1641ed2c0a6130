//! SAM's attention with decomposed relative positions, fused on the CPU, straight from the
//! `[B, H, W, 3C]` projections: `softmax(q k^T / sqrt(d) + rel_h[q, kh] + rel_w[q, kw]) v` per
//! window and head, key `kh * KW + kw` of the window, written straight into `[B, H, W, C]`.
//!
//! Through libtorch the additive mask is a `[L, KH * KW]` tensor per head (32 MB per head for a
//! 1024-px global block) that is written, then read by SDPA, whose CPU flash attention runs
//! well below libtorch's plain f32 GEMMs on this workload (BENCHMARKS.md). Here the mask is never built, and neither are the windows: a window's keys are
//! read from the grid (rows past its edge are padding, whose projections are the bias alone),
//! scaled by `1/sqrt(d)` and packed in panels of 32, its values gathered contiguously (inside
//! the task for windows that fit one task, once per head before the tasks for global
//! attention); the queries are read from the grid as well, padding queries (whose outputs the
//! reference crops) are skipped, and each output row lands in its place in the grid. A block of
//! 32 queries (four tiles of eight) computes its products with every row of the two
//! relative-position tables (packed like the keys, through the same score kernel; a query's term
//! for key row `kh` is its product with table row `qh - kh + size - 1`), its scores against all
//! keys (register-blocked AVX-512, each panel used by the four tiles while it is in L1), adds the
//! terms while finding each row's maximum, exponentiates in place, and multiplies by `v` in
//! blocks of 64 keys (register-blocked again). Buffers start on cache lines and are kept per
//! thread.
//! Tasks of query rows run in parallel through [`par`].
//!
//! Tried and not kept (alternated on the 1024-px global shape): tiles of twelve rows instead of
//! eight (no difference), blocks of 2, 6 or 8 tiles instead of 4 (no better), and flash-style
//! blocks of 512 keys with a running maximum, so that a block's scores, keys and values would
//! all stay in L2 (slower; BENCHMARKS.md has the figures).
//!
//! Used for f32 activations on the AVX-512 tier and head dimensions that are multiples of 16
//! ([`applies`]); elsewhere the caller keeps libtorch's SDPA with a mask.

use tch::{Device, Kind, Tensor};

use super::features::{Isa, Tier};
use super::{par, step as cpu_step};
use crate::ocr::error::{OcrError, Result};

/// Query rows per register tile.
const TILE_ROWS: usize = 8;
/// Keys per packed panel of `k` (two AVX-512 vectors).
const PANEL: usize = 32;
/// Query rows per parallel task (whole windows of 196 rows fit one task).
const TASK_ROWS: usize = 256;
/// Tiles of queries that share each panel of keys and each block of values.
const BLOCK_TILES: usize = 4;
/// Query rows per block.
const BLOCK_ROWS: usize = BLOCK_TILES * TILE_ROWS;
/// Keys per block of values (64 keys x 64 features: 16 KB, in L1 while the block's tiles use it).
const VALUE_BLOCK: usize = 64;

/// Whether [`grid_attention`] runs for activations like `x` with heads of `head_dim` features
/// on `isa`: f32 on the CPU, `head_dim` a multiple of 16, and the AVX-512 tier (the kernel has
/// no other form; elsewhere SAM keeps libtorch's SDPA).
pub fn applies(isa: Isa, x: &Tensor, head_dim: i64) -> bool {
    x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && head_dim > 0
        && head_dim % 16 == 0
        && isa.tier() == Tier::Avx512
}

/// Attention with decomposed relative positions over `window`-sized windows of a grid of
/// projections `qkv` `[B, H, W, 3C]` (q, k and v side by side, `heads` heads of `C / heads`
/// features each; a window of `(H, W)` is global attention). The grid is padded to whole
/// windows with rows equal to `pad` `[3C]` (the projections of a zero row: the bias, or zeros
/// when `None`); padding keys are attended to as in the reference, padding queries are not
/// computed (their outputs are cropped there). `rel_h` `[2 * wh - 1, d]` and `rel_w`
/// `[2 * ww - 1, d]` are the relative-position tables already sized to the window:
/// `rel_h[q, k] = q . rel_h[qh - kh + wh - 1]` over the query's and key's rows inside the
/// window (the same for columns). Returns `[B, H, W, C]` f32. Errors when [`applies`] does not
/// hold or shapes disagree.
pub fn grid_attention(
    isa: Isa,
    qkv: &Tensor,
    pad: Option<&Tensor>,
    heads: i64,
    window: (i64, i64),
    rel_h: &Tensor,
    rel_w: &Tensor,
) -> Result<Tensor> {
    let shapes = || {
        format!(
            "qkv {:?}, pad {:?}, {heads} heads, window {window:?}, rel_h {:?}, rel_w {:?}",
            qkv.size(),
            pad.map(Tensor::size),
            rel_h.size(),
            rel_w.size()
        )
    };
    let (b, h, w, c3) = qkv.size4()?;
    let c = c3 / 3;
    let d = if heads > 0 { c / heads } else { 0 };
    let cpu_f32 = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu;
    if !applies(isa, qkv, d) || !cpu_f32(rel_h) || !cpu_f32(rel_w) || !pad.is_none_or(cpu_f32) {
        return Err(OcrError::Invalid(format!(
            "fused relative-position attention needs CPU f32 tensors with a head dimension that \
             is a multiple of 16, on an AVX-512 CPU: {}",
            shapes()
        )));
    }
    let (wh, ww) = window;
    if c3 != 3 * c
        || c != heads * d
        || wh <= 0
        || ww <= 0
        || b * h * w == 0
        || rel_h.size() != [2 * wh - 1, d]
        || rel_w.size() != [2 * ww - 1, d]
        || pad.is_some_and(|p| p.size() != [c3])
    {
        return Err(OcrError::Invalid(format!(
            "fused relative-position attention: shapes disagree: {}",
            shapes()
        )));
    }
    let geo = Geometry {
        b: b as usize,
        h: h as usize,
        w: w as usize,
        c: c as usize,
        heads: heads as usize,
        d: d as usize,
        wh: wh as usize,
        ww: ww as usize,
        nh: (h as usize).div_ceil(wh as usize),
        nw: (w as usize).div_ceil(ww as usize),
    };
    let qkv = qkv.f_contiguous()?;
    let pad = match pad {
        Some(p) => p.f_contiguous()?,
        None => Tensor::f_zeros([c3], (Kind::Float, Device::Cpu))?,
    };
    let (rel_h, rel_w) = (rel_h.f_contiguous()?, rel_w.f_contiguous()?);
    let values = cpu_step::f32_values;
    let (grid, pad_row) = (values(&qkv)?, values(&pad)?);
    let tables = [
        Table::new(values(&rel_h)?, geo.wh, geo.d),
        Table::new(values(&rel_w)?, geo.ww, geo.d),
    ];
    let mut out = Tensor::f_empty([b, h, w, c], (Kind::Float, Device::Cpu))?;
    // SAFETY: `out` is fresh and referenced nowhere else; the slice lives in this function.
    let outs = unsafe { cpu_step::f32_values_mut(&mut out)? };

    let scale = 1.0 / (geo.d as f32).sqrt();
    let (keys, panels) = (geo.keys(), geo.keys().div_ceil(PANEL));
    let (group_packed, group_values) = (panels * PANEL * geo.d, keys * geo.d);
    let mut tasks = Vec::new();
    for g in 0..geo.groups() {
        let (_, wy, wx, _) = geo.group(g);
        let (vh, vw) = geo.valid(wy, wx);
        for start in (0..vh * vw).step_by(TASK_ROWS) {
            tasks.push((g, start..(start + TASK_ROWS).min(vh * vw)));
        }
    }
    // Windows whose queries fit one task (SAM's 14 x 14 windows) pack their own keys and
    // values inside the task, into that thread's buffers, and use them while they are in cache.
    // Larger ones (global attention) are shared by several tasks: their keys and values are
    // packed once for every head first.
    let shared = if tasks.len() > geo.groups() {
        let mut packed = Aligned::zeros(geo.groups() * group_packed);
        let mut gathered = Aligned::zeros(geo.groups() * group_values);
        let pack_jobs: Vec<_> = packed
            .floats_mut()
            .chunks_mut(group_packed)
            .zip(gathered.floats_mut().chunks_mut(group_values))
            .enumerate()
            .collect();
        par::for_each(pack_jobs, &|(g, (p, v))| {
            pack_window(&geo, geo.group(g), grid, pad_row, scale, p, v);
        });
        Some((packed, gathered))
    } else {
        None
    };
    let out_rows = OutRows(outs.as_mut_ptr());
    let (shared, tables) = (shared.as_ref(), &tables);
    par::for_each(tasks, &|(g, rows)| {
        SCRATCH.with_borrow_mut(|scratch| {
            let at = geo.group(g);
            let (packed, v) = match shared {
                Some((packed, gathered)) => (
                    &packed.floats()[g * group_packed..][..group_packed],
                    &gathered.floats()[g * group_values..][..group_values],
                ),
                None => {
                    let (p, v) = (
                        scratch.keys.at_least(group_packed),
                        scratch.values.at_least(group_values),
                    );
                    pack_window(&geo, at, grid, pad_row, scale, p, v);
                    (&*p, &*v)
                }
            };
            let inputs = Inputs {
                grid,
                packed,
                v,
                tables,
            };
            // SAFETY: `applies` checked that `isa` is the AVX-512 tier, so the CPU has AVX-512F.
            // Each (query position, head) belongs to exactly one window and one task, so the
            // rows this task writes are written by no other; `outs` outlives the tasks.
            unsafe { rows_of_window(&geo, &inputs, at, rows, out_rows, &mut scratch.block) };
        });
    });
    Ok(out)
}

/// The shape of one call: the grid, its heads and its windows.
#[derive(Clone, Copy)]
struct Geometry {
    b: usize,
    h: usize,
    w: usize,
    /// Channels of each of q, k and v (`heads * d`).
    c: usize,
    heads: usize,
    d: usize,
    /// Window rows and columns.
    wh: usize,
    ww: usize,
    /// Windows down and across.
    nh: usize,
    nw: usize,
}

impl Geometry {
    /// Keys per window (padding included).
    fn keys(&self) -> usize {
        self.wh * self.ww
    }

    /// Windows times heads.
    fn groups(&self) -> usize {
        self.b * self.nh * self.nw * self.heads
    }

    /// Group `g` as (image, window row, window column, head).
    fn group(&self, g: usize) -> (usize, usize, usize, usize) {
        let head = g % self.heads;
        let g = g / self.heads;
        let wx = g % self.nw;
        let g = g / self.nw;
        (g / self.nh, g % self.nh, wx, head)
    }

    /// Rows and columns of window `(wy, wx)` that lie inside the grid.
    fn valid(&self, wy: usize, wx: usize) -> (usize, usize) {
        (
            self.wh.min(self.h - wy * self.wh),
            self.ww.min(self.w - wx * self.ww),
        )
    }

    /// Index of grid cell `(y, x)` of image `bi` among all cells, or `None` past the grid.
    fn cell(&self, bi: usize, y: usize, x: usize) -> Option<usize> {
        (y < self.h && x < self.w).then(|| (bi * self.h + y) * self.w + x)
    }

    /// The `d` features of head `head` of part `part` (0 q, 1 k, 2 v) at window position `s`
    /// of window `(bi, wy, wx)`: from the grid, or from the padding row past its edge.
    fn row<'a>(
        &self,
        (bi, wy, wx, head): (usize, usize, usize, usize),
        s: usize,
        part: usize,
        grid: &'a [f32],
        pad: &'a [f32],
    ) -> &'a [f32] {
        let (y, x) = (wy * self.wh + s / self.ww, wx * self.ww + s % self.ww);
        let offset = part * self.c + head * self.d;
        match self.cell(bi, y, x) {
            Some(cell) => &grid[cell * 3 * self.c + offset..][..self.d],
            None => &pad[offset..][..self.d],
        }
    }
}

/// A relative-position table `[2 * size - 1, d]` packed like the keys (unscaled), so that a
/// block's products with all its rows come from the score kernel: for a query at row (or
/// column) `i` of its window and a key at `k`, the term is the product with table row
/// `i - k + size - 1`.
struct Table {
    packed: Aligned,
    panels: usize,
    size: usize,
}

impl Table {
    fn new(table: &[f32], size: usize, d: usize) -> Self {
        let rows = 2 * size - 1;
        let panels = rows.div_ceil(PANEL);
        let mut packed = Aligned::zeros(panels * d * PANEL);
        pack_panels(rows, d, 1.0, |r| &table[r * d..][..d], packed.floats_mut());
        Self {
            packed,
            panels,
            size,
        }
    }

    /// Row stride of a block's products with the table.
    fn stride(&self) -> usize {
        row_stride(self.panels)
    }
}

/// Row stride of a block's products with `panels` panels: one cache line past whole panels, as
/// rows of scores 2^k floats apart share L1 sets.
fn row_stride(panels: usize) -> usize {
    panels * PANEL + 16
}

/// `rows` rows of `d` features (`row(i)`) times `scale` into panels `[ceil(rows / 32)][d][32]`
/// (row-minor, zero-padded past the last row), so that the score kernel reads 32 rows of one
/// feature as two vectors.
fn pack_panels<'a>(
    rows: usize,
    d: usize,
    scale: f32,
    row: impl Fn(usize) -> &'a [f32],
    packed: &mut [f32],
) {
    for (p, panel) in packed.chunks_exact_mut(d * PANEL).enumerate() {
        let filled = PANEL.min(rows.saturating_sub(p * PANEL));
        for j in 0..filled {
            for (f, &x) in row(p * PANEL + j).iter().enumerate() {
                panel[f * PANEL + j] = x * scale;
            }
        }
        if filled < PANEL {
            for lanes in panel.chunks_exact_mut(PANEL) {
                lanes[filled..].fill(0.0);
            }
        }
    }
}

/// One window's (and head's) keys times `scale` packed into `packed` ([`pack_panels`]) and its
/// values gathered into `values` `[S][d]`.
fn pack_window(
    geo: &Geometry,
    at: (usize, usize, usize, usize),
    grid: &[f32],
    pad: &[f32],
    scale: f32,
    packed: &mut [f32],
    values: &mut [f32],
) {
    pack_panels(
        geo.keys(),
        geo.d,
        scale,
        |s| geo.row(at, s, 1, grid, pad),
        packed,
    );
    for (s, out) in values.chunks_exact_mut(geo.d).enumerate() {
        out.copy_from_slice(geo.row(at, s, 2, grid, pad));
    }
}

/// One window's (and head's) inputs.
struct Inputs<'a> {
    grid: &'a [f32],
    /// Keys packed by [`pack_panels`], scaled by `1/sqrt(d)`.
    packed: &'a [f32],
    /// Values gathered by [`pack_window`].
    v: &'a [f32],
    /// The relative-position tables of rows and of columns.
    tables: &'a [Table; 2],
}

/// A cache line of floats: [`Aligned`]'s unit.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// Zeroed floats starting on a cache line, so that the kernels' 64-byte vectors of keys,
/// values, queries and scores never straddle two lines (a `Vec<f32>` is only 16-byte aligned:
/// the 1024-px global shape took 357-363 ms per 12-head call with such buffers, 329-335 ms
/// aligned).
#[derive(Default)]
struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

impl Aligned {
    fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    fn floats(&self) -> &[f32] {
        // SAFETY: `Line` is 16 f32 without padding (repr(C)), so the lines are
        // `16 * lines.len() >= len` initialised, contiguous floats.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `floats`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }

    /// The first `len` floats, the buffer grown (with zeros) if it is shorter; what earlier
    /// users left in it stays.
    fn at_least(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(16);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0.0; 16]));
        }
        self.len = len;
        self.floats_mut()
    }
}

/// A thread's working buffers, kept between tasks and calls: fresh ones cost page faults and
/// zeroing in every task (SAM's windowed blocks run 300 tasks of one window and head each).
#[derive(Default)]
struct Scratch {
    /// A window's packed keys and gathered values, when its task packs them itself.
    keys: Aligned,
    values: Aligned,
    block: BlockScratch,
}

/// [`rows_of_window`]'s buffers for one block of queries.
#[derive(Default)]
struct BlockScratch {
    scores: Aligned,
    tiles: Aligned,
    acc: Aligned,
    products: [Aligned; 2],
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The output's storage, shared by the tasks, each writing its own rows.
#[derive(Clone, Copy)]
struct OutRows(*mut f32);

// SAFETY: a raw pointer to the output tensor's storage, which outlives the tasks; the tasks
// write disjoint elements (see `rows_of_window`).
unsafe impl Send for OutRows {}
unsafe impl Sync for OutRows {}

/// Query rows `rows` (indices among the window's in-grid positions, row-major) of one window
/// and head, [`BLOCK_TILES`] tiles of queries at a time: each panel of keys and each block of
/// values is read once per block and used by all its tiles while it is in L1 (tiles one at a
/// time, 1 MB of keys and 1 MB of values per head at 1024 px were read for every eight queries).
///
/// # Safety
/// The CPU has AVX-512F (the caller's [`Isa`], checked by [`applies`]). `out` points to the
/// `[B, H, W, C]` output; no other thread writes the elements of these query positions and this
/// head, and nothing reads them meanwhile.
unsafe fn rows_of_window(
    geo: &Geometry,
    inp: &Inputs<'_>,
    at: (usize, usize, usize, usize),
    rows: std::ops::Range<usize>,
    out: OutRows,
    scratch: &mut BlockScratch,
) {
    let (bi, wy, wx, head) = at;
    let (d, keys) = (geo.d, geo.keys());
    let (_, vw) = geo.valid(wy, wx);
    let panels = keys.div_ceil(PANEL);
    let stride = row_stride(panels);
    let scores = scratch.scores.at_least(BLOCK_ROWS * stride);
    let tiles = scratch.tiles.at_least(BLOCK_ROWS * d);
    let acc = scratch.acc.at_least(BLOCK_ROWS * d);
    // Each row's products with the table rows, then its terms per key row and key column.
    let [th, tw] = inp.tables;
    let [ph, pw] = &mut scratch.products;
    let mut products = [
        ph.at_least(BLOCK_ROWS * th.stride()),
        pw.at_least(BLOCK_ROWS * tw.stride()),
    ];
    let (mut rel_h, mut rel_w) = (vec![0f32; th.size], vec![0f32; tw.size]);
    let mut cells = [0usize; BLOCK_ROWS];
    let mut inv_sum = [0f32; BLOCK_ROWS];
    for first in rows.clone().step_by(BLOCK_ROWS) {
        let n = BLOCK_ROWS.min(rows.end - first);
        let nt = n.div_ceil(TILE_ROWS);
        tiles[n * d..].fill(0.0);
        for (r, cell) in cells.iter_mut().enumerate().take(n) {
            let (y, x) = (
                wy * geo.wh + (first + r) / vw,
                wx * geo.ww + (first + r) % vw,
            );
            *cell = geo.cell(bi, y, x).expect("in-grid query");
            tiles[r * d..][..d].copy_from_slice(&inp.grid[*cell * 3 * geo.c + head * d..][..d]);
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (this function's contract). Every kernel asserts that its ranges lie inside
        // the slices it is given.
        unsafe {
            let products_of = |packed: &[f32], panels: usize, out: &mut [f32], stride: usize| {
                for p in 0..panels {
                    let panel = &packed[p * d * PANEL..][..d * PANEL];
                    for t in 0..nt {
                        let rows = t * TILE_ROWS;
                        x86::scores_panel(
                            &tiles[rows * d..][..TILE_ROWS * d],
                            panel,
                            &mut out[rows * stride + p * PANEL..],
                            stride,
                        );
                    }
                }
            };
            products_of(inp.packed, panels, scores, stride);
            for (table, out) in [th, tw].into_iter().zip(products.iter_mut()) {
                products_of(table.packed.floats(), table.panels, out, table.stride());
            }
            for (r, inv) in inv_sum.iter_mut().enumerate().take(n) {
                let (qy, qx) = ((first + r) / vw, (first + r) % vw);
                for (terms, (table, at, products)) in [
                    (&mut rel_h, (th, qy, &*products[0])),
                    (&mut rel_w, (tw, qx, &*products[1])),
                ] {
                    // Key k takes table row at - k + size - 1.
                    let row = &products[r * table.stride() + at..][..table.size];
                    for (t, &p) in terms.iter_mut().zip(row.iter().rev()) {
                        *t = p;
                    }
                }
                *inv = x86::softmax_rel(&mut scores[r * stride..][..keys], &rel_h, &rel_w);
            }
            let mut j0 = 0;
            while j0 < keys {
                let j1 = (j0 + VALUE_BLOCK).min(keys);
                for t in 0..nt {
                    let rows = t * TILE_ROWS;
                    x86::values_block(
                        &scores[rows * stride..],
                        stride,
                        inp.v,
                        j0..j1,
                        &mut acc[rows * d..][..TILE_ROWS * d],
                    );
                }
                j0 = j1;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("`applies` is false without AVX-512 ({n} rows, {nt} tiles)");
        for (r, &cell) in cells.iter().enumerate().take(n) {
            let o = cell * geo.c + head * d;
            for (f, a) in acc[r * d..][..d].iter().enumerate() {
                // SAFETY: element `o + f` lies in the output (cell < B * H * W, head * d + f <
                // C) and belongs to this task alone (the caller's contract).
                unsafe { *out.0.add(o + f) = a * inv_sum[r] };
            }
        }
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
    /// and the sum, taken in turn, so that consecutive vectors do not wait on one another (also
    /// across rows of the key grid narrower than a vector, as in 14-wide windows).
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
        let mut i = 0;
        for (keys, &h) in row.chunks_exact_mut(kw).zip(rel_h) {
            let hv = _mm512_set1_ps(h);
            for c in (0..kw).step_by(16) {
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
                i += 1;
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
