//! `dsocr bench`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub fn run(_: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsocr bench` is not implemented in this version yet")
}
