//! Command line: `dsocr` with no arguments opens the dashboard; subcommands are scriptable.
//! Each subcommand lives in its own file and calls the same library functions as the dashboard.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod hub;
pub mod ocr;
pub mod serve;

#[derive(Debug, Parser)]
#[command(name = "dsocr", version, about = "DeepSeek-OCR on libtorch, with a Hugging Face login doctor and a dashboard", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check token, endpoint, repo access, local cache and libtorch; say what to fix
    Doctor(hub::DoctorArgs),
    /// Show who the active token belongs to
    Whoami(hub::WhoamiArgs),
    /// Validate a token with the hub and save it where the Python client reads it
    Login(hub::LoginArgs),
    /// Remove the saved token (one stored token, or all)
    Logout(hub::LogoutArgs),
    /// List or switch stored tokens
    Auth(hub::AuthArgs),
    /// Download a model into the Hugging Face cache (resumable, sha256-verified)
    Download(hub::DownloadArgs),
    /// List, verify or remove cached models
    Cache(hub::CacheArgs),
    /// Run DeepSeek-OCR on images or folders of images
    Ocr(ocr::OcrArgs),
    /// Time loading, vision, prefill and decode; report memory
    Bench(bench::BenchArgs),
    /// Serve OCR over HTTP (an OpenAI-compatible API too), with probes and metrics
    Serve(serve::ServeArgs),
}

/// `--kernels` as a clap argument (`auto|libtorch|avx512|avx2|scalar`).
pub fn parse_kernels(name: &str) -> Result<crate::ocr::cpu::Kernels, String> {
    crate::ocr::cpu::Kernels::parse(name).map_err(|e| e.to_string())
}

/// The compute path a command runs on (`crate::settings::choose_kernels`): `--kernels` (clap
/// reads `$DSOCR_KERNELS` into it too), else `[ocr] kernels` in the config file, else auto.
pub fn kernels_choice(
    flag: Option<crate::ocr::cpu::Kernels>,
) -> anyhow::Result<crate::ocr::cpu::Kernels> {
    use crate::settings::{OcrSettings, choose_kernels, config_path, kernels_env};
    if flag.is_some() {
        return Ok(choose_kernels(flag, None, None)?);
    }
    let ocr = OcrSettings::from_file(config_path().as_deref());
    Ok(choose_kernels(
        None,
        kernels_env().as_deref(),
        ocr.kernels.as_deref(),
    )?)
}

/// The model folder a `--model` value means (`crate::model_source`), with the command line's
/// fix when there is none.
pub fn model_folder(model: &str) -> anyhow::Result<std::path::PathBuf> {
    use crate::model_source::{ModelSource, SourceError};
    let hub_cache = crate::hub::HubEnv::from_process().hub_cache;
    ModelSource::parse(model)
        .and_then(|source| source.folder(&hub_cache))
        .map_err(|e| match e {
            SourceError::NotCached { .. } => {
                anyhow::anyhow!("{e}; run `dsocr download {model}` or pass --model DIR")
            }
            SourceError::NotARepoId { .. } | SourceError::NoFolder(_) => {
                anyhow::anyhow!("{e}; pass --model DIR (an existing folder) or a repo id")
            }
            SourceError::IsAFile(_) => anyhow::anyhow!("--model {e}"),
        })
}

/// One line saying which batch was chosen and from what (`ocr` and `bench` print it).
pub fn describe_batch(choice: &crate::ocr::generate::BatchChoice) -> String {
    let bytes = crate::units::human_bytes;
    match choice.free_bytes {
        Some(free) => format!(
            "batch {} (chosen from free memory: {} free, a page's KV cache up to {}; at most {} \
             here; --batch N to change)",
            choice.batch,
            bytes(free),
            bytes(choice.per_sequence_bytes),
            choice.limit
        ),
        None => format!(
            "batch {} (free memory unknown; --batch N to change)",
            choice.batch
        ),
    }
}

/// Entry point of the `dsocr` binary.
pub fn main() -> ExitCode {
    crate::document::silence_renderer_panics();
    let cli = Cli::parse();
    let result = match cli.command {
        None => crate::tui::run().map(|()| ExitCode::SUCCESS),
        Some(Command::Doctor(a)) => hub::doctor(a),
        Some(Command::Whoami(a)) => hub::whoami(a),
        Some(Command::Login(a)) => hub::login(a),
        Some(Command::Logout(a)) => hub::logout(a),
        Some(Command::Auth(a)) => hub::auth(a),
        Some(Command::Download(a)) => hub::download(a),
        Some(Command::Cache(a)) => hub::cache(a),
        Some(Command::Ocr(a)) => ocr::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Serve(a)) => serve::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Hub errors carry the same stable code as `doctor` and the dashboard.
            match err.downcast_ref::<crate::hub::HubError>() {
                Some(hub) => eprintln!("error [{}]: {err:#}", hub.code()),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
