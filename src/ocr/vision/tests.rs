//! Vision checks against values computed by the reference (PyTorch): a bf16 run of a fixture
//! case, large mode on the tiny model, and torch's own interpolation of small tables. The f32
//! stages of every fixture case are checked by the parity harness (tests/engine.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::layers::{resize_grid_bicubic_aa, resize_table_linear};
use super::*;
use crate::ocr::cpu::{Isa, Plan};
use crate::ocr::weights::Weights;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixtures' float32 tolerance: max |a - b| <= 1e-3 * max(1, max |b|).
const PARITY_TOL: f64 = 1e-3;

/// Tolerance of a bf16 run against the f32 reference.
const BF16_TOL: f64 = 3e-2;

/// Max |a - b| <= tol * max(1, max |b|).
fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) {
    assert_eq!(actual.numel(), expected.numel(), "{what}: element count");
    let actual = actual.to_kind(Kind::Float).reshape(expected.size());
    let expected = expected.to_kind(Kind::Float);
    let err = (&actual - &expected).abs().max().double_value(&[]);
    let scale = expected.abs().max().double_value(&[]).max(1.0);
    println!("{what}: max err {err:.3e} (scale {scale:.3})");
    assert!(
        err <= tol * scale,
        "{what}: max err {err} > {}",
        tol * scale
    );
}

/// A PNG as normalised CHW pixels: (u8 / 255 - 0.5) / 0.5.
fn load_png(path: &Path) -> Tensor {
    let img = image::open(path).expect("fixture png").to_rgb8();
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        .divide_scalar(255.0)
        .g_sub_scalar(0.5)
        .divide_scalar(0.5)
}

fn tiny_model() -> VisionModel {
    tiny_model_in(Kind::Float)
}

fn tiny_model_in(kind: Kind) -> VisionModel {
    let dir = fixtures().join("tiny-model");
    let cfg = Config::from_file(&dir.join("config.json")).expect("tiny config");
    // SAFETY: the vision model keeps the weights' mapping alive itself.
    let mut w = unsafe { Weights::load(&dir.join("model.safetensors"), kind, Device::Cpu) }
        .expect("tiny weights");
    let plan = Plan::all(Isa::best());
    let compute = plan.compute_kind(Device::Cpu, kind);
    VisionModel::load(&cfg, &mut Vars::load(&mut w), compute, plan.vision).expect("vision model")
}

fn check_case(name: &str, kind: Kind, tol: f64) {
    let dir = fixtures().join("cases").join(name);
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).expect("case.json"))
            .expect("case json");
    let crop: Vec<i64> = serde_json::from_value(case["spatial_crop"].clone()).expect("crop");
    let expected: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors"))
            .expect("expected.safetensors")
            .into_iter()
            .collect();
    let global = load_png(&dir.join("global.png")).unsqueeze(0);
    let tiles_png = dir.join("tiles.png");
    let tiles = tiles_png.exists().then(|| {
        let s = case["image_size"].as_i64().expect("image_size");
        let (across, down) = (crop[0], crop[1]);
        load_png(&tiles_png)
            .view([3, down, s, across, s])
            .permute([1, 3, 0, 2, 4])
            .reshape([down * across, 3, s, s])
    });
    let model = tiny_model_in(kind);
    let out = model
        .embed_image(&global, tiles.as_ref(), [crop[0], crop[1]])
        .expect("embed_image");
    assert_eq!(
        out.embeds.kind(),
        Plan::all(Isa::best()).compute_kind(Device::Cpu, kind),
        "{name}: embeds are in the compute dtype"
    );
    let mut stages = vec![
        ("sam_global", &out.global.sam),
        ("clip_global", &out.global.clip),
        ("proj_global", &out.global.proj),
        ("vision_embeds", &out.embeds),
    ];
    if let Some(l) = &out.local {
        stages.extend([
            ("sam_local", &l.sam),
            ("clip_local", &l.clip),
            ("proj_local", &l.proj),
        ]);
    }
    assert_eq!(
        tiles.is_some(),
        expected.contains_key("sam_local"),
        "{name}: tiles"
    );
    for (key, actual) in stages {
        let want = expected
            .get(key)
            .unwrap_or_else(|| panic!("{name}: no {key}"));
        assert_close(&format!("{name} {key}"), actual, want, tol);
    }
}

/// Large mode (1280 px, no tiles): positions interpolated up (64 -> 80 grid), windows padded
/// (80 -> 84), global rel-pos tables stretched (127 -> 159). The input is an integer pattern;
/// the expected values come from the reference code on the tiny model (tests/fixtures/vision/).
#[test]
fn large_mode_matches_the_reference() {
    let s = 1280;
    let opts = (Kind::Int64, Device::Cpu);
    let i = Tensor::arange(s, opts).view([1, s, 1]);
    let j = Tensor::arange(s, opts).view([1, 1, s]);
    let c = Tensor::arange(3, opts).view([3, 1, 1]);
    let pattern = (&i * 7 + &j * 13 + &c * 29 + (&i * &j).remainder(31)).remainder(256);
    let global = pattern
        .to_kind(Kind::Float)
        .divide_scalar(255.0)
        .g_sub_scalar(0.5)
        .divide_scalar(0.5)
        .unsqueeze(0);
    let expected: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("vision/large-1280.safetensors"))
            .expect("large-1280.safetensors")
            .into_iter()
            .collect();
    let out = tiny_model()
        .embed_image(&global, None, [1, 1])
        .expect("embed_image");
    assert_eq!(out.embeds.size(), [20 * 21 + 1, 64]);
    for (key, actual) in [
        ("sam_global", &out.global.sam),
        ("clip_global", &out.global.clip),
        ("proj_global", &out.global.proj),
        ("vision_embeds", &out.embeds),
    ] {
        assert_close(&format!("large {key}"), actual, &expected[key], PARITY_TOL);
    }
}

#[test]
fn bf16_tracks_the_f32_reference() {
    // bf16 keeps ~3 significant digits; through SAM, CLIP and the projector the tiny model
    // drifts by ~1.5% of the largest value, a wrong op would drift by far more.
    check_case("gundam-2x3", Kind::BFloat16, BF16_TOL);
}

fn json_tensor(v: &serde_json::Value, key: &str, shape: &[i64]) -> Tensor {
    let data: Vec<f32> = serde_json::from_value(v[key].clone()).expect("float list");
    Tensor::from_slice(&data).view(shape)
}

#[test]
fn resizes_match_torch_interpolate() {
    let text = std::fs::read_to_string(fixtures().join("vision/resize.json")).expect("resize.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let grid = json_tensor(&v, "grid", &[1, 2, 6, 6]);
    let table = json_tensor(&v, "table", &[7, 3]);
    for s in [4, 9] {
        let got = resize_grid_bicubic_aa(&grid, s).expect("bicubic");
        assert_close(
            &format!("grid_to_{s}"),
            &got,
            &json_tensor(&v, &format!("grid_to_{s}"), &[1, 2, s, s]),
            1e-6,
        );
    }
    for n in [5, 11] {
        let got = resize_table_linear(&table, n).expect("linear");
        assert_close(
            &format!("table_to_{n}"),
            &got,
            &json_tensor(&v, &format!("table_to_{n}"), &[n, 3]),
            1e-6,
        );
    }
}

#[test]
fn rejects_bad_views() {
    let model = tiny_model();
    let not_square = Tensor::zeros([1, 3, 32, 48], (Kind::Float, Device::Cpu));
    let err = model.encode(&not_square).err().expect("must fail");
    assert!(err.to_string().contains("[B, 3, S, S]"), "{err}");
    let global = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let tiles = Tensor::zeros([5, 3, 32, 32], (Kind::Float, Device::Cpu));
    let err = model
        .embed_image(&global, Some(&tiles), [2, 3])
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("5 tiles"), "{err}");
}
