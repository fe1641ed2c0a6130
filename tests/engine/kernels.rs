//! The CPU kernels one by one, on a given tier, against libtorch's f32 arithmetic on the same
//! numbers. `main` (engine.rs) runs each on every tier this CPU has and reports the others as
//! ignored.

use dsocr::ocr::cpu::{Isa, gemv, relpos_attn, step};
use tch::{Device, Kind, Tensor};

/// A kernel test on one tier.
pub type KernelTest = fn(Isa);

/// Every kernel test, by name; the `relpos_attn` ones apply to the AVX-512 tier only (the fused
/// attention has no other form).
pub const TESTS: &[(&str, KernelTest)] = &[
    ("gemv_matches_f32_matmul", gemv_matches_f32_matmul),
    ("few_rows_match_f32_matmul", few_rows_match_f32_matmul),
    (
        "several_products_keep_their_order",
        several_products_keep_their_order,
    ),
    ("step_kernels_match_libtorch", step_kernels_match_libtorch),
    (
        "relpos_attn_matches_libtorch_per_window",
        relpos_attn_matches_libtorch_per_window,
    ),
    (
        "relpos_attn_large_scores_do_not_overflow",
        relpos_attn_large_scores_do_not_overflow,
    ),
    (
        "relpos_attn_wrong_inputs_are_errors",
        relpos_attn_wrong_inputs_are_errors,
    ),
];

/// Matrix-vector products against libtorch's f32 matmul of the same (bf16-representable)
/// numbers, bf16 and f32 weights, for sizes with and without a SIMD tail.
fn gemv_matches_f32_matmul(isa: Isa) {
    tch::manual_seed(11);
    for (n, k) in [(1, 1), (3, 17), (130, 1280), (70, 896), (5, 6848), (64, 33)] {
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let x = Tensor::randn([2, k], (Kind::Float, Device::Cpu));
        let want = x.matmul(&w.to_kind(Kind::Float).tr());
        let scale = want.abs().max().double_value(&[]).max(1.0);
        for (what, weight) in [("bf16", w.shallow_clone()), ("f32", w.to_kind(Kind::Float))] {
            let got = gemv::linear(isa, &x, &weight).expect("product");
            let diff = (&got - &want).abs().max().double_value(&[]) / scale;
            assert!(diff < 1e-5, "{what} [{n}, {k}]: relative difference {diff}");
        }
    }
}

/// The few-row kernel against libtorch's f32 matmul of the same numbers, over row counts that
/// exercise every block shape, column counts with partial blocks and tasks, and depths with and
/// without a SIMD tail; then through `linear_any` with a bias.
fn few_rows_match_f32_matmul(isa: Isa) {
    tch::manual_seed(13);
    for (t, n, k) in [
        (1, 1, 16),
        (5, 7, 17),
        (26, 130, 1280),
        (9, 67, 896),
        (64, 64, 48),
        (3, 5, 7),
    ] {
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let x = Tensor::randn([t, k], (Kind::Float, Device::Cpu));
        let want = x.matmul(&w.to_kind(Kind::Float).tr());
        let scale = want.abs().max().double_value(&[]).max(1.0);
        let got = gemv::few_rows(isa, &x, &w).expect("few rows");
        assert_eq!(got.size(), [t, n]);
        let diff = (&got - &want).abs().max().double_value(&[]) / scale;
        assert!(
            diff < 1e-5,
            "[{t}, {k}] x [{n}, {k}]: relative difference {diff}"
        );
    }
    // linear_any with a bias: one row (matrix-vector products), two and three rows (the
    // few-row kernel), forty rows; and on libtorch's path.
    let w = Tensor::randn([24, 32], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let b = Tensor::randn([24], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    for rows in [1, 2, 3, 40] {
        let x = Tensor::randn([rows, 32], (Kind::Float, Device::Cpu));
        let want = x.linear(&w.to_kind(Kind::Float), Some(&b.to_kind(Kind::Float)));
        for path in [gemv_path(isa), dsocr::ocr::cpu::Path::Libtorch] {
            let got = gemv::linear_any(&x, &w, Some(&b), path).expect("linear_any");
            assert!(
                got.allclose(&want, 1e-5, 1e-4, false),
                "{rows} rows on {path:?}"
            );
        }
    }
    let x = Tensor::randn([40, 32], (Kind::Float, Device::Cpu));
    assert!(gemv::few_rows(isa, &x, &w.to_kind(Kind::Float)).is_err());
}

fn gemv_path(isa: Isa) -> dsocr::ocr::cpu::Path {
    dsocr::ocr::cpu::Path::Kernels(isa)
}

/// Several products in one call come back in order, each equal to its own product.
fn several_products_keep_their_order(isa: Isa) {
    use gemv::Product;
    tch::manual_seed(12);
    let w1 = Tensor::randn([200, 64], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let w2 = Tensor::randn([7, 48], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let x1 = Tensor::randn([64], (Kind::Float, Device::Cpu));
    let x2 = Tensor::randn([48], (Kind::Float, Device::Cpu));
    let job = |weight, x| Product { weight, x };
    let outs =
        gemv::products(isa, &[job(&w1, &x1), job(&w2, &x2), job(&w1, &x1)]).expect("products");
    let want1 = w1.to_kind(Kind::Float).mv(&x1);
    let want2 = w2.to_kind(Kind::Float).mv(&x2);
    assert_eq!(outs[0].size(), [200]);
    assert!(outs[0].allclose(&want1, 1e-5, 1e-4, false));
    assert!(outs[1].allclose(&want2, 1e-5, 1e-4, false));
    assert!(outs[2].equal(&outs[0]));
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.contiguous().view([-1])).expect("values")
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// The decode step's slice kernels against the same operations in libtorch.
fn step_kernels_match_libtorch(isa: Isa) {
    tch::manual_seed(21);
    let opts = (Kind::Float, Device::Cpu);
    // RMSNorm.
    let x = Tensor::randn([48], opts);
    let w = Tensor::randn([48], opts);
    let want = &w * (&x * (x.square().mean(Kind::Float) + 1e-6).rsqrt());
    let mut got = vec![0f32; 48];
    step::rms_norm(&values(&x), &values(&w), 1e-6, &mut got);
    assert!(close(&got, &values(&want), 1e-5));
    // Rotate-half.
    let (heads, d) = (3usize, 8usize);
    let q = Tensor::randn([heads as i64, d as i64], opts);
    let angles = Tensor::randn([d as i64], opts);
    let (cos, sin) = (angles.cos(), angles.sin());
    let rotated = Tensor::cat(&[-q.narrow(-1, 4, 4), q.narrow(-1, 0, 4)], -1);
    let want = &q * &cos + rotated * &sin;
    let signed = Tensor::cat(&[-sin.narrow(-1, 0, 4), sin.narrow(-1, 4, 4)], -1);
    let mut got = values(&q);
    step::rotate(&mut got, d, &values(&cos), &values(&signed));
    assert!(close(&got, &values(&want), 1e-5));
    // Attention over the first 5 of 7 cached positions against SDPA.
    let cap = 7;
    let keys = Tensor::randn([heads as i64, cap, d as i64], opts);
    let vals = Tensor::randn([heads as i64, cap, d as i64], opts);
    let want = Tensor::scaled_dot_product_attention(
        &q.view([1, heads as i64, 1, d as i64]),
        &keys.narrow(1, 0, 5).unsqueeze(0),
        &vals.narrow(1, 0, 5).unsqueeze(0),
        None::<Tensor>,
        0.0,
        false,
        None,
        false,
    );
    let mut got = vec![0f32; heads * d];
    step::attend(
        isa,
        &values(&q),
        &values(&keys),
        &values(&vals),
        d,
        5,
        &mut got,
    )
    .expect("attend");
    assert!(close(&got, &values(&want), 1e-5));
    assert!(
        step::attend(
            isa,
            &values(&q),
            &values(&keys),
            &values(&vals),
            d,
            8,
            &mut got
        )
        .is_err()
    );
    // Softmax and top-k.
    let logits = Tensor::randn([16], opts);
    let (p, i) = logits.softmax(-1, Kind::Float).topk(3, -1, true, true);
    let got = step::softmax_top_k(&values(&logits), 3);
    let ids: Vec<i64> = Vec::try_from(&i).expect("ids");
    assert_eq!(got.iter().map(|&(i, _)| i as i64).collect::<Vec<_>>(), ids);
    assert!(close(
        &got.iter().map(|&(_, p)| p).collect::<Vec<_>>(),
        &values(&p),
        1e-6
    ));
    // SiLU gate.
    let (g, u) = (Tensor::randn([9], opts), Tensor::randn([9], opts));
    let mut got = vec![0f32; 9];
    step::silu_mul(&values(&g), &values(&u), &mut got);
    assert!(close(&got, &values(&(g.silu() * &u)), 1e-6));
}

/// SAM's attention written out with libtorch, one window and head at a time: the grid padded
/// with `pad` rows, the relative-position terms gathered from the tables and added to the scaled
/// scores, softmax, values; padding positions cropped.
fn reference(
    qkv: &Tensor,
    pad: &Tensor,
    heads: i64,
    (wh, ww): (i64, i64),
    table_h: &Tensor,
    table_w: &Tensor,
) -> Tensor {
    let (b, h, w, c3) = qkv.size4().unwrap();
    let (c, nh, nw) = (c3 / 3, (h + wh - 1) / wh, (w + ww - 1) / ww);
    let d = c / heads;
    let padded = pad.view([1, 1, 1, c3]).repeat([b, nh * wh, nw * ww, 1]);
    padded.narrow(1, 0, h).narrow(2, 0, w).copy_(qkv);
    let out = Tensor::zeros([b, nh * wh, nw * ww, c], (Kind::Float, Device::Cpu));
    let rel = |table: &Tensor, size: i64| {
        let i = Tensor::arange(size, (Kind::Int64, Device::Cpu));
        let idx = i.unsqueeze(1) - i.unsqueeze(0) + (size - 1);
        table
            .index_select(0, &idx.flatten(0, 1))
            .view([size, size, d])
    };
    let (r_h, r_w) = (rel(table_h, wh), rel(table_w, ww));
    for bi in 0..b {
        for wy in 0..nh {
            for wx in 0..nw {
                let win = padded.get(bi).narrow(0, wy * wh, wh).narrow(1, wx * ww, ww);
                for hd in 0..heads {
                    let part = |p: i64| win.narrow(2, p * c + hd * d, d);
                    let (q, k, v) = (part(0), part(1), part(2));
                    let t_h = Tensor::einsum("hwc,hkc->hwk", &[&q, &r_h], None::<i64>);
                    let t_w = Tensor::einsum("hwc,wkc->hwk", &[&q, &r_w], None::<i64>);
                    let mask = (t_h.unsqueeze(-1) + t_w.unsqueeze(-2)).view([wh * ww, -1]);
                    let (q, k, v) = (q.reshape([-1, d]), k.reshape([-1, d]), v.reshape([-1, d]));
                    let scores = q.matmul(&k.tr()) / (d as f64).sqrt() + mask;
                    let o = scores.softmax(-1, Kind::Float).matmul(&v);
                    out.get(bi)
                        .narrow(0, wy * wh, wh)
                        .narrow(1, wx * ww, ww)
                        .narrow(2, hd * d, d)
                        .copy_(&o.view([wh, ww, d]));
                }
            }
        }
    }
    out.narrow(1, 0, h).narrow(2, 0, w)
}

/// Random projections on a `b x h x w` grid, `heads` heads of `d` features, checked against
/// [`reference`] with `window` (`(h, w)` for global attention); values scaled by `scale`.
fn case(isa: Isa, b: i64, (h, w): (i64, i64), heads: i64, d: i64, window: (i64, i64), scale: f64) {
    tch::manual_seed(7);
    let opts = (Kind::Float, Device::Cpu);
    let c3 = 3 * heads * d;
    let qkv = Tensor::randn([b, h, w, c3], opts) * scale;
    let pad = Tensor::randn([c3], opts) * scale;
    let table_h = Tensor::randn([2 * window.0 - 1, d], opts) * scale;
    let table_w = Tensor::randn([2 * window.1 - 1, d], opts) * scale;
    let want = reference(&qkv, &pad, heads, window, &table_h, &table_w);
    let got = relpos_attn::grid_attention(isa, &qkv, Some(&pad), heads, window, &table_h, &table_w)
        .unwrap();
    assert_eq!(got.size(), [b, h, w, heads * d]);
    assert!(bool::try_from(got.isfinite().all()).unwrap());
    let err = (&got - &want).abs().max().double_value(&[]);
    let top = want.abs().max().double_value(&[]);
    assert!(
        err <= 2e-5 * top.max(1.0),
        "{b}x{h}x{w}, {heads} heads of {d}, window {window:?}: max error {err:e} (values up \
         to {top})"
    );
}

/// The fused attention against the per-window reference.
fn relpos_attn_matches_libtorch_per_window(isa: Isa) {
    // Windows with padding on both axes (the last window row and column partly outside the
    // grid, padding keys attended to), a tail panel and tail tiles.
    case(isa, 2, (17, 19), 2, 16, (7, 7), 1.0);
    // SAM's window and head size on a grid that is not a multiple of the window.
    case(isa, 1, (16, 16), 2, 64, (14, 14), 1.0);
    // Global attention (the window is the grid): several tasks per head, 13 panels of keys
    // (400 keys), tables padded from 20 to 32 keys.
    case(isa, 1, (20, 20), 3, 32, (20, 20), 1.0);
    // One position.
    case(isa, 1, (1, 1), 1, 16, (1, 1), 1.0);
}

/// Scores far from zero stay finite and correct.
fn relpos_attn_large_scores_do_not_overflow(isa: Isa) {
    case(isa, 1, (6, 6), 1, 32, (6, 6), 8.0);
}

/// Bad shapes and kinds are errors, not reads out of bounds.
fn relpos_attn_wrong_inputs_are_errors(isa: Isa) {
    let opts = (Kind::Float, Device::Cpu);
    let qkv = Tensor::zeros([1, 4, 4, 96], opts);
    let table = Tensor::zeros([7, 16], opts);
    // The window of 4 needs tables of 7 rows of 16 features.
    let short = Tensor::zeros([5, 16], opts);
    assert!(relpos_attn::grid_attention(isa, &qkv, None, 2, (4, 4), &short, &table).is_err());
    // Eight heads of 4 features: not a multiple of 16.
    assert!(relpos_attn::grid_attention(isa, &qkv, None, 8, (4, 4), &table, &table).is_err());
    // A padding row of the wrong length.
    let pad = Tensor::zeros([95], opts);
    assert!(relpos_attn::grid_attention(isa, &qkv, Some(&pad), 2, (4, 4), &table, &table).is_err());
    // bf16 projections.
    let qkv_bf16 = qkv.to_kind(Kind::BFloat16);
    assert!(relpos_attn::grid_attention(isa, &qkv_bf16, None, 2, (4, 4), &table, &table).is_err());
    // The same call with good inputs runs on this tier, and is refused on the others.
    let table16 = Tensor::zeros([7, 16], opts);
    let ok = relpos_attn::grid_attention(isa, &qkv, None, 2, (4, 4), &table16, &table16);
    assert!(ok.is_ok(), "{:?}", ok.err());
    assert!(
        relpos_attn::grid_attention(Isa::scalar(), &qkv, None, 2, (4, 4), &table16, &table16)
            .is_err()
    );
}
