//! Writes the seeded tiny test model (tiny dimensions, the real vocabulary, the fixture
//! tokenizer, bf16 safetensors) into a folder, exactly as the tests make it, for trying the OCR
//! pane by hand or for `scripts/screenshots.sh`. Its weights are random: it runs the real engine
//! but writes nonsense.
//!
//! ```text
//! cargo run --release --example test_model -- /tmp/dsocr-test-model
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: test_model DIR");
        return std::process::ExitCode::FAILURE;
    };
    common::make_model(std::path::Path::new(&dir));
    println!("{}", std::path::Path::new(&dir).display());
    std::process::ExitCode::SUCCESS
}
