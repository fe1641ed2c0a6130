//! Helpers shared by the integration tests (each test binary includes this module).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `tests/fixtures` of this checkout.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A JSON file, parsed (panics with the path on failure).
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A model folder: the tiny architecture with the real vocabulary size (so the fixture
/// tokenizer's ids fit), the fixture tokenizer and seeded weights written as safetensors.
pub fn make_model(dir: &Path) {
    use dsocr::ocr::{Config, weights::Weights};
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
    let weights = Weights::seeded(&config, 1234, tch::Kind::BFloat16, tch::Device::Cpu)
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
