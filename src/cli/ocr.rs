//! `dsocr ocr`: run DeepSeek-OCR on images, PDFs and folders of them.
//!
//! One model load for the whole batch; per image (or rendered PDF page): load and preprocess,
//! vision, prefill, greedy decoding streamed to stdout, then the reference's outputs in
//! `OUT/<image name>/` (a PDF's pages in `OUT/<name>/page-N/`, beside `<name>.mmd` and
//! `report.json`). Progress goes to stderr. A failing image, document or page is reported and
//! the batch goes on; the summary lists the failures and the exit code is non-zero when there
//! were any.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use image::RgbImage;
use tch::Kind;

use crate::document::{
    DEFAULT_DPI, Document, DocumentError, DocumentReport, PAGE_SPLIT, PageEntry, PageSelection,
    page_dir, page_name,
};
use crate::hub::HubEnv;
use crate::hub::cache::RepoPaths;
use crate::ocr::cpu::Kernels;
use crate::ocr::device::{device_name, kind_name, parse_device, parse_kind};
use crate::ocr::generate::{DEFAULT_NGRAM_WHITELIST, NoRepeatNgram};
use crate::ocr::preprocess::{self, DEFAULT_MAX_TILES, Mode};
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
    /// Image files, PDFs and/or folders of them (png, jpg, webp, tiff, bmp, gif, pdf)
    #[arg(required = true, value_name = "IMAGE_PDF_OR_DIR")]
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
    /// Pages of each PDF to run, 1-based: e.g. 1-3,7 or 5- (to the end) [default: all]
    #[arg(long, value_name = "LIST")]
    pub pages: Option<PageSelection>,
    /// Resolution PDF pages are rendered at (DeepSeek-OCR's PDF script uses 144)
    #[arg(long, default_value_t = DEFAULT_DPI, value_parser = clap::value_parser!(u32).range(18..=1200))]
    pub dpi: u32,
    /// Password of encrypted PDFs (or set DSOCR_PDF_PASSWORD, which keeps it out of `ps`)
    #[arg(long, env = "DSOCR_PDF_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Leave PDF pages that hit the token limit (usually a repetition loop) out of the joined
    /// <name>.mmd, as DeepSeek-OCR's PDF script does; their page-N/ folder is still written
    #[arg(long)]
    pub skip_repeat: bool,
}

/// One input: an image file or a PDF.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Image(PathBuf),
    Pdf(PathBuf),
}

impl Input {
    fn path(&self) -> &Path {
        match self {
            Self::Image(p) | Self::Pdf(p) => p,
        }
    }
}

/// What the batch produced so far: every image's and page's report (for the summary), one JSON
/// value per input (for `--format json`), and the failures.
#[derive(Default)]
struct Outcome {
    reports: Vec<Report>,
    json: Vec<serde_json::Value>,
    failures: Vec<String>,
}

impl Outcome {
    fn fail(&mut self, what: String) {
        eprintln!("  failed: {what}");
        self.failures.push(what);
    }
}

pub fn run(args: OcrArgs) -> anyhow::Result<ExitCode> {
    let inputs = collect_inputs(&args.inputs)?;
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

    let mut outcome = Outcome::default();
    let mut used_dirs = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, inputs.len(), input.path().display());
        let out_dir = unique_dir(&args.out, input.path(), &mut used_dirs);
        match input {
            Input::Image(image) => {
                let start = Instant::now();
                let result = preprocess::load_image(image)
                    .map_err(anyhow::Error::from)
                    .and_then(|img| run_one(&session, image, img, start, &out_dir, &args, &opts));
                match result {
                    Ok(report) => {
                        outcome.json.push(serde_json::to_value(&report)?);
                        outcome.reports.push(report);
                    }
                    Err(e) => outcome.fail(format!("{}: {e:#}", image.display())),
                }
            }
            Input::Pdf(pdf) => {
                if let Some(report) =
                    run_document(&session, pdf, &out_dir, &args, &opts, &mut outcome)
                {
                    outcome.json.push(serde_json::to_value(&report)?);
                }
            }
        }
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&outcome.json)?);
    }
    print_summary(&outcome.reports, &outcome.failures);
    Ok(if outcome.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The files named on the command line, and the image files and PDFs in the folders named there
/// (sorted, not recursive). A file is a PDF by its `.pdf` extension or its `%PDF-` header. A
/// missing path is an error before anything is loaded.
fn collect_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut found_inputs = Vec::new();
    let kind = |p: PathBuf| {
        if crate::document::is_pdf(&p) {
            Input::Pdf(p)
        } else {
            Input::Image(p)
        }
    };
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list the folder {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && (has_image_extension(p) || has_pdf_extension(p)))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!(
                    "the folder {} has no image files or PDFs ({}, pdf)",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            found_inputs.extend(found.into_iter().map(kind));
        } else if input.exists() {
            found_inputs.push(kind(input.clone()));
        } else {
            bail!("{} does not exist; check the path", input.display());
        }
    }
    Ok(found_inputs)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn has_pdf_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pdf"))
}

/// Open a PDF, render and run each selected page into `out_dir/page-N/`, then write
/// `out_dir/<name>.mmd` and `out_dir/report.json`. Failures (the document, a page, a page past
/// the end) go into `outcome`; the report is `None` when the document could not be opened.
fn run_document(
    session: &Session,
    pdf: &Path,
    out_dir: &Path,
    args: &OcrArgs,
    opts: &RunOptions,
    outcome: &mut Outcome,
) -> Option<DocumentReport> {
    let start = Instant::now();
    let doc = match Document::open(pdf, args.password.as_deref()) {
        Ok(doc) => doc,
        Err(e) => {
            outcome.fail(e.to_string());
            return None;
        }
    };
    let selection = args.pages.clone().unwrap_or_else(PageSelection::all);
    let pages = selection.resolve(doc.page_count());
    eprintln!(
        "  {} page{}; running {} at {} dpi",
        doc.page_count(),
        if doc.page_count() == 1 { "" } else { "s" },
        pages.inside.len(),
        args.dpi
    );
    let mut report = DocumentReport::new(pdf, out_dir, doc.page_count(), args.dpi);
    for &page in &pages.outside {
        let e = DocumentError::PageOutside {
            path: pdf.to_path_buf(),
            page,
            pages: doc.page_count(),
        };
        outcome.fail(e.to_string());
        report.push(PageEntry {
            page,
            render_s: 0.0,
            skipped_in_mmd: false,
            error: Some(e.to_string()),
            report: None,
        });
    }
    for (k, &page) in pages.inside.iter().enumerate() {
        eprintln!("  page {page} ({}/{})", k + 1, pages.inside.len());
        if k > 0 && args.format != Format::Json {
            // The streamed pages are separated as the joined markdown is.
            Printer::new(false).print(PAGE_SPLIT.trim_start_matches('\n'));
        }
        let render_start = Instant::now();
        let rendered = doc.render(page, args.dpi);
        let render_s = render_start.elapsed().as_secs_f64();
        let result = rendered.map_err(anyhow::Error::from).and_then(|img| {
            let name = page_name(pdf, page);
            run_one(
                session,
                &name,
                img,
                render_start,
                &page_dir(out_dir, page),
                args,
                opts,
            )
        });
        let entry = match result {
            Ok(r) => {
                let skip = args.skip_repeat && r.hit_token_limit;
                if skip {
                    eprintln!("  left out of the joined markdown (--skip-repeat)");
                }
                outcome.reports.push(r.clone());
                PageEntry {
                    page,
                    render_s,
                    skipped_in_mmd: skip,
                    error: None,
                    report: Some(r),
                }
            }
            Err(e) => {
                let what = format!("{}: page {page}: {e:#}", pdf.display());
                outcome.fail(what.clone());
                PageEntry {
                    page,
                    render_s,
                    skipped_in_mmd: false,
                    error: Some(format!("{e:#}")),
                    report: None,
                }
            }
        };
        report.push(entry);
    }
    report.pages.sort_by_key(|p| p.page);
    report.totals.elapsed_s = start.elapsed().as_secs_f64();
    match report.write() {
        Ok(()) => eprintln!(
            "  wrote {} and report.json ({} of {} pages ok)",
            report.mmd.display(),
            report.totals.pages_ok,
            report.pages.len()
        ),
        Err(e) => outcome.fail(format!(
            "{}: cannot write {} or report.json: {e}",
            pdf.display(),
            report.mmd.display()
        )),
    }
    Some(report)
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

/// Run one image or rendered page (text streamed to stdout, phases to stderr) and write its
/// outputs into `out_dir`; `name` stands for it in the report, `start` is when loading or
/// rendering it began. Every image and page of the batch goes through here. Outputs that
/// could not all be written are removed, never left looking complete.
fn run_one(
    session: &Session,
    name: &Path,
    image: RgbImage,
    start: Instant,
    out_dir: &Path,
    args: &OcrArgs,
    opts: &RunOptions,
) -> anyhow::Result<Report> {
    let mut printer = Printer::new(args.format == Format::Json);
    let mut prompt_tokens = 0;
    // `dsocr ocr` is stopped with the process; nothing sets the flag.
    let cancel = AtomicBool::new(false);
    let output = session.run_image(name, image, start, opts, &cancel, |event| match event {
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
    let report = match output.write(out_dir) {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_dir_all(out_dir);
            return Err(e.into());
        }
    };
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
    fn new(quiet: bool) -> Self {
        Self { quiet, error: None }
    }

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
