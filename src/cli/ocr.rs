//! `dsocr ocr`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct OcrArgs {}

pub fn run(_: OcrArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsocr ocr` is not implemented in this version yet")
}
