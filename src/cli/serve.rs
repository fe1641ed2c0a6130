//! `dsocr serve`: the OCR engine over HTTP (see `crate::serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::ocr::cpu::Kernels;
use crate::ocr::device::{kind_or_default, parse_device};
use crate::serve::{ApiKeys, DEFAULT_BIND, ServeConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --api-key-file
    #[arg(long, default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,
    /// Model folder (config.json, tokenizer.json, *.safetensors) or a repo id in the local
    /// Hugging Face cache (loaded as soon as `dsocr download` completes it)
    #[arg(long, default_value = super::ocr::DEFAULT_MODEL)]
    pub model: String,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// bf16, f16 or f32 [default: bf16]
    #[arg(long)]
    pub dtype: Option<String>,
    /// Compute path: auto, libtorch, avx512, avx2, scalar [default: the config file's
    /// [ocr] kernels, else auto]
    #[arg(long, env = "DSOCR_KERNELS", value_parser = super::parse_kernels)]
    pub kernels: Option<Kernels>,
    /// File with the API keys clients must send (`Authorization: Bearer KEY`), one per line
    #[arg(long, env = "DSOCR_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Most pages waiting for the engine; more get 429 with Retry-After
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_queue: u32,
    /// Largest request body in MB; larger ones get 413
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_body_mb: u32,
    /// Most seconds one request may take, queue included; then it is stopped (504)
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_s: u64,
    /// Seconds SIGTERM waits for the requests in flight before stopping them
    #[arg(long, default_value_t = 30)]
    pub grace_s: u64,
    /// Default and ceiling of a request's new tokens
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_new_tokens: u64,
    /// Pages decoded together: concurrent requests share each decode step [default: as many
    /// as free memory allows (at most 4 on the CPU), logged at start]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub batch: Option<u32>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let device = parse_device(&args.device)?;
    let kind = kind_or_default(args.dtype.as_deref(), device)?;
    let plan = super::kernels_choice(args.kernels)?.plan(device)?;
    let keys = match &args.api_key_file {
        Some(path) => ApiKeys::from_file(path)?,
        None => ApiKeys::default(),
    };
    crate::serve::run(ServeConfig {
        bind: args.bind,
        model: args.model,
        device,
        kind,
        plan,
        keys,
        max_queue: args.max_queue as usize,
        max_body: (args.max_body_mb as usize) * 1024 * 1024,
        timeout: Duration::from_secs(args.timeout_s),
        grace: Duration::from_secs(args.grace_s),
        max_new_tokens: usize::try_from(args.max_new_tokens).context("--max-new-tokens")?,
        batch: args.batch.map(|b| b as usize),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr (`DSOCR_LOG` sets the filter, default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DSOCR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
