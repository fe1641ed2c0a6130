//! `dsocr ocr`: run DeepSeek-OCR on images or folders of images.
//!
//! One model load for the whole batch; per image: load and preprocess, vision, prefill, greedy
//! decoding streamed to stdout, then the reference's outputs in `OUT/<image name>/`. Progress
//! goes to stderr. A failing image is reported and the batch goes on; the summary lists the
//! failures and the exit code is non-zero when there were any.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tch::Kind;

use crate::hub::HubEnv;
use crate::hub::cache::RepoPaths;
use crate::ocr::cpu::Kernels;
use crate::ocr::device::{device_name, kind_name, parse_device, parse_kind};
use crate::ocr::generate::{DEFAULT_NGRAM_WHITELIST, NoRepeatNgram};
use crate::ocr::preprocess::{DEFAULT_MAX_TILES, Mode};
use crate::ocr::prompt::Preset;
use crate::ocr::session::{Event, Phase, Report, RunOptions, Session};

/// The model used when `--model` is not given.
pub const DEFAULT_MODEL: &str = "deepseek-ai/DeepSeek-OCR";
/// File extensions taken from a folder (files named on the command line are always tried).
const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp", "gif"];

/// What goes to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Stream the model's output as it is generated, grounding tags included (as the reference
    /// prints it); the cleaned markdown goes to result.mmd.
    Md,
    /// Stream the output with special tokens (grounding tags) left out.
    Text,
    /// Print nothing while generating; one JSON document with every result at the end.
    Json,
}

#[derive(Debug, Args)]
pub struct OcrArgs {
    /// Image files and/or folders of images (png, jpg, webp, tiff, bmp, gif)
    #[arg(required = true, value_name = "IMAGE_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Model folder (config.json, tokenizer.json, *.safetensors) or a repo id in the local
    /// Hugging Face cache
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Resolution mode: tiny (512), small (640), base (1024), large (1280), gundam (1024 + 640 tiles)
    #[arg(long, default_value = "gundam")]
    pub mode: Mode,
    /// Most tiles in gundam mode (2..=9 by default; the vLLM scripts use 6)
    #[arg(long, default_value_t = DEFAULT_MAX_TILES, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub max_tiles: u32,
    /// Prompt preset: document, ocr, free, figure, describe, locate:TEXT
    #[arg(long, default_value = "document", conflicts_with = "prompt")]
    pub preset: Preset,
    /// Custom prompt; `<image>` marks where the image goes, e.g. "<image>\nFree OCR."
    #[arg(long)]
    pub prompt: Option<String>,
    /// Stop after this many new tokens (a result that hits it without EOS is flagged)
    #[arg(long, default_value_t = 8192)]
    pub max_new_tokens: usize,
    /// No-repeat n-gram size over generated tokens (0 turns the rule off)
    #[arg(long, default_value_t = 30)]
    pub no_repeat_ngram: usize,
    /// How many recent tokens the no-repeat rule looks at
    #[arg(long, default_value_t = 90)]
    pub ngram_window: usize,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// bf16, f16 or f32 (default: bf16; where dsocr's CPU kernels run, the bf16 weights are
    /// multiplied in f32)
    #[arg(long)]
    pub dtype: Option<String>,
    /// Compute path: auto, libtorch (the op sequence CUDA runs), or a CPU tier (avx512, avx2,
    /// scalar) [default: the config file's [ocr] kernels, else auto]
    #[arg(long, env = "DSOCR_KERNELS", value_parser = super::parse_kernels)]
    pub kernels: Option<Kernels>,
    /// Output folder; each image gets OUT/<image name>/
    #[arg(long, default_value = "dsocr-out")]
    pub out: PathBuf,
    /// What goes to stdout: md (stream the raw output), text (stream without tags), json
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
}

pub fn run(args: OcrArgs) -> anyhow::Result<ExitCode> {
    let images = collect_images(&args.inputs)?;
    let prompt = args.prompt.clone().unwrap_or_else(|| args.preset.prompt());
    let device = parse_device(&args.device)?;
    let kind = match &args.dtype {
        Some(d) => parse_kind(d)?,
        None => Kind::BFloat16,
    };
    let plan = super::kernels_choice(args.kernels)?.plan(device)?;
    let model_dir = resolve_model(&args.model)?;
    eprintln!(
        "loading {} on {} ({}, kernels {})",
        model_dir.display(),
        device_name(device),
        kind_name(kind),
        plan.describe()
    );
    let start = Instant::now();
    let session = Session::load_with(&model_dir, device, kind, plan)?;
    eprintln!("  loaded in {:.1} s", start.elapsed().as_secs_f64());
    let opts = run_options(&args, prompt);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output folder {}", args.out.display()))?;

    let mut reports = Vec::new();
    let mut failures = Vec::new();
    let mut used_dirs = Vec::new();
    for (i, image) in images.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, images.len(), image.display());
        let out_dir = unique_dir(&args.out, image, &mut used_dirs);
        match run_image(&session, image, &out_dir, &args, &opts) {
            Ok(report) => reports.push(report),
            Err(e) => {
                eprintln!("  failed: {e:#}");
                failures.push(format!("{}: {e:#}", image.display()));
            }
        }
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    print_summary(&reports, &failures);
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The image files named on the command line, and those in the folders named there (sorted,
/// not recursive). A missing path is an error before anything is loaded.
fn collect_images(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list the folder {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && has_image_extension(p))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!(
                    "the folder {} has no image files ({})",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            images.extend(found);
        } else if input.exists() {
            images.push(input.clone());
        } else {
            bail!("{} does not exist; check the path", input.display());
        }
    }
    Ok(images)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A model folder as given, or the snapshot of a repo id in the local Hugging Face cache.
fn resolve_model(model: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!(
            "--model {model} is a file; give the model folder (config.json, tokenizer.json, *.safetensors)"
        );
    }
    let not_found = || {
        format!(
            "{model} is neither a model folder nor a repo in the local Hugging Face cache; run `dsocr download {model}` or pass --model DIR"
        )
    };
    let env = HubEnv::from_process();
    let paths = RepoPaths::new(&env.hub_cache, model).with_context(not_found)?;
    let commit = paths.resolve_revision("main").with_context(not_found)?;
    Ok(paths.snapshot_dir(&commit))
}

/// What every image of the batch is run with.
fn run_options(args: &OcrArgs, prompt: String) -> RunOptions {
    RunOptions {
        mode: args.mode,
        max_tiles: args.max_tiles,
        prompt,
        max_new_tokens: args.max_new_tokens,
        no_repeat_ngram: (args.no_repeat_ngram > 0).then(|| NoRepeatNgram {
            size: args.no_repeat_ngram,
            window: args.ngram_window,
            whitelist: DEFAULT_NGRAM_WHITELIST.to_vec(),
        }),
        skip_special: args.format == Format::Text,
    }
}

/// `OUT/<file stem>`, with `-2`, `-3`... when two inputs share a name.
fn unique_dir(out: &Path, image: &Path, used: &mut Vec<PathBuf>) -> PathBuf {
    let stem = image
        .file_stem()
        .map_or_else(|| "image".to_string(), |s| s.to_string_lossy().into_owned());
    let mut dir = out.join(&stem);
    let mut n = 2;
    while used.contains(&dir) {
        dir = out.join(format!("{stem}-{n}"));
        n += 1;
    }
    used.push(dir.clone());
    dir
}

/// Run one image (text streamed to stdout, phases to stderr) and write its outputs.
fn run_image(
    session: &Session,
    image: &Path,
    out_dir: &Path,
    args: &OcrArgs,
    opts: &RunOptions,
) -> anyhow::Result<Report> {
    let mut printer = Printer {
        quiet: args.format == Format::Json,
        error: None,
    };
    let mut prompt_tokens = 0;
    // `dsocr ocr` is stopped with the process; nothing sets the flag.
    let cancel = AtomicBool::new(false);
    let output = session.run(image, opts, &cancel, |event| match event {
        Event::Phase(Phase::Preprocess) => {}
        Event::Prepared(p) => {
            prompt_tokens = p.prompt_tokens;
            eprintln!(
                "  preprocess: {}x{} {} mode, tiles {}x{}, {} image tokens, {} prompt tokens ({:.2} s)",
                p.width,
                p.height,
                opts.mode,
                p.spatial_crop[0],
                p.spatial_crop[1],
                p.image_tokens,
                p.prompt_tokens,
                p.elapsed.as_secs_f64()
            );
        }
        Event::Phase(Phase::Vision) => eprintln!("  vision..."),
        Event::Phase(Phase::Prefill) => eprintln!("  prefill ({prompt_tokens} tokens)..."),
        Event::Phase(Phase::Decode) => eprintln!("  decoding..."),
        Event::Text { piece, .. } => printer.print(&piece),
    })?;
    printer.print("\n");
    if let Some(e) = printer.error {
        return Err(e);
    }
    let report = output.write(out_dir)?;
    eprintln!(
        "  {} tokens, vision {:.2} s, prefill {:.2} s, decode {:.2} s ({:.1} tokens/s), stop: {}",
        report.generated_tokens,
        report.vision_s,
        report.prefill_s,
        report.decode_s,
        report.tokens_per_s,
        report.stop
    );
    if report.hit_token_limit {
        eprintln!(
            "  warning: hit the token limit ({}) without end of sentence; the output is probably a repetition loop",
            args.max_new_tokens
        );
    }
    eprintln!("  wrote {}", out_dir.display());
    Ok(report)
}

/// Writes streamed text to stdout (unless quiet); keeps the first error for later.
struct Printer {
    quiet: bool,
    error: Option<anyhow::Error>,
}

impl Printer {
    fn print(&mut self, piece: &str) {
        if self.quiet || piece.is_empty() || self.error.is_some() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out
            .write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write to stdout")
        {
            self.error = Some(e);
        }
    }
}

/// One line per outcome on stderr.
fn print_summary(reports: &[Report], failures: &[String]) {
    let limited = reports.iter().filter(|r| r.hit_token_limit).count();
    eprintln!(
        "done: {} ok ({} hit the token limit), {} failed",
        reports.len(),
        limited,
        failures.len()
    );
    for r in reports.iter().filter(|r| r.hit_token_limit) {
        eprintln!("  token limit: {}", r.image.display());
    }
    for f in failures {
        eprintln!("  failed: {f}");
    }
}
