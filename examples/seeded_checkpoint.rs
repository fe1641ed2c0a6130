//! Writes the full-size seeded weights (the fixtures' rule, see `Weights::seeded`) as a bf16
//! checkpoint folder, `config.json` + `model.safetensors` (6.7 GB), so that `dsocr bench
//! --model DIR` measures the real loading path (memory-mapped bf16, experts stacked) on a
//! machine that cannot download the real weights:
//!
//! ```text
//! cargo run --release --example seeded_checkpoint -- /tmp/seeded-ckpt 20261126
//! dsocr bench --model /tmp/seeded-ckpt --device cpu --dtype bf16 --mode base
//! ```
//! The config is the real checkpoint's (tests/fixtures/real-checkpoint/config.json).

use std::path::PathBuf;
use std::process::ExitCode;

use dsocr::ocr::Config;
use dsocr::ocr::model::DeepseekOcr;
use dsocr::ocr::weights::Weights;
use tch::{Device, Kind, Tensor};

const REAL_CONFIG: &str = include_str!("../tests/fixtures/real-checkpoint/config.json");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: seeded_checkpoint DIR [SEED]");
        return ExitCode::from(2);
    };
    let seed = match args.get(1).map(|s| s.parse::<i64>()) {
        None => 20261126,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            eprintln!("SEED must be an integer");
            return ExitCode::from(2);
        }
    };
    match write(&dir, seed) {
        Ok(()) => {
            println!("wrote {} (seed {seed})", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &std::path::Path, seed: i64) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::from_json(REAL_CONFIG)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), REAL_CONFIG)?;
    let weights = Weights::seeded(
        &DeepseekOcr::checkpoint_shapes(&cfg)?,
        seed,
        Kind::BFloat16,
        Device::Cpu,
    )?;
    let tensors = weights
        .shapes()
        .into_keys()
        .map(|name| Ok((weights.get(&name)?, name)))
        .collect::<Result<Vec<(Tensor, String)>, dsocr::ocr::OcrError>>()?;
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(t, n)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, dir.join("model.safetensors"))?;
    Ok(())
}
