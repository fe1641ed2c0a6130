//! Helpers shared by the integration tests (each test binary includes this module, and so do
//! the `test_model` and `tui_bench` examples).

// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `tests/fixtures` of this checkout, or `$DSOCR_FIXTURES` (a test binary run on another machine,
/// e.g. by scripts/gpu-check.sh).
pub fn fixtures() -> PathBuf {
    std::env::var_os("DSOCR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// Proxy variables: a spawned `dsocr` or Python must reach the local servers directly.
pub const PROXY_VARIABLES: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Removes from `cmd`'s environment every variable from the outside that changes what a
/// spawned `dsocr` (or Python's hub client) does with the hub: the hub's own
/// ([`dsocr::hub::env::VARIABLES`]: endpoint, home, cache, tokens, offline) and the proxies.
/// The caller then sets what its test needs.
pub fn remove_outside_hub_env(cmd: &mut std::process::Command) {
    for v in dsocr::hub::env::VARIABLES.iter().chain(PROXY_VARIABLES) {
        cmd.env_remove(v);
    }
}

/// A fresh scratch folder for one test, `dsocr-<name>-XXXXXX` under the system temp dir,
/// removed when the returned value is dropped (also when the test fails).
pub fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("dsocr-{name}-"))
        .tempdir()
        .expect("create scratch dir")
}

/// A JSON file, parsed (panics with the path on failure).
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A model folder: the tiny architecture with the real vocabulary size (so the fixture
/// tokenizer's ids fit), the fixture tokenizer and seeded weights written as safetensors.
pub fn make_model(dir: &Path) {
    use dsocr::ocr::{Config, model::DeepseekOcr, weights::Weights};
    std::fs::create_dir_all(dir).expect("model dir");
    let mut cfg = read_json(&fixtures().join("tiny-model/config.json"));
    let real = read_json(&fixtures().join("real-checkpoint/config.json"));
    cfg["language_config"]["vocab_size"] = real["language_config"]["vocab_size"].clone();
    // The real model has no image_token_id key: `<image>` (128815) is used.
    cfg.as_object_mut()
        .expect("object")
        .remove("image_token_id");
    let text = serde_json::to_string_pretty(&cfg).expect("json");
    std::fs::write(dir.join("config.json"), &text).expect("config");
    std::fs::copy(
        fixtures().join("tokenizer/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("tokenizer");
    let config = Config::from_json(&text).expect("valid config");
    let weights = Weights::seeded(
        &DeepseekOcr::checkpoint_shapes(&config).expect("declared"),
        1234,
        tch::Kind::BFloat16,
        tch::Device::Cpu,
    )
    .expect("seeded weights");
    let tensors: Vec<(String, tch::Tensor)> = weights
        .shapes()
        .into_keys()
        .map(|name| {
            let t = weights.get(&name).expect("tensor");
            (name, t)
        })
        .collect();
    tch::Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).expect("write");
}
