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
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::document::{
    DEFAULT_DPI, Document, DocumentError, DocumentReport, PAGE_SPLIT, PageEntry, PageSelection,
    page_dir, page_name,
};
use crate::ocr::cpu::Kernels;
use crate::ocr::device::{device_name, kind_name, kind_or_default, parse_device};
use crate::ocr::generate::{DEFAULT_NGRAM_WHITELIST, NoRepeatNgram};
use crate::ocr::preprocess::{DEFAULT_MAX_TILES, Mode};
use crate::ocr::prompt::{Preset, user_prompt};
use crate::ocr::session::{Event, Job, JobPhase, Jobs, OcrOutput, Report, RunOptions, Session};

/// The model used when `--model` is not given.
pub const DEFAULT_MODEL: &str = crate::hub::download::DEFAULT_REPO;
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
    /// Custom prompt; `<image>` marks where the image goes (without it the image comes first,
    /// on its own line), e.g. "Free OCR." or "<image>\nFree OCR."
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
    /// Pages decoded together (1 to 16); the text still comes out in input order. Default: as
    /// many as free memory allows (at most 4 on the CPU), printed at the start
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub batch: Option<u32>,
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
    /// By input; `None` for an input that failed as a whole.
    json: Vec<Option<serde_json::Value>>,
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
    let prompt = match &args.prompt {
        Some(p) => user_prompt(p)?,
        None => args.preset.prompt(),
    };
    let device = parse_device(&args.device)?;
    let kind = kind_or_default(args.dtype.as_deref(), device)?;
    let plan = super::kernels_choice(args.kernels)?.plan(device)?;
    let model_dir = super::model_folder(&args.model)?;
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

    let batch = match args.batch {
        Some(n) => n as usize,
        None => {
            let choice = session.default_batch(args.max_new_tokens);
            eprintln!("{}", super::describe_batch(&choice));
            choice.batch
        }
    };
    let mut runner = Runner::plan(&inputs, &args, &opts, batch);
    session.run_batch(batch, &mut runner);
    let outcome = runner.finish();
    if args.format == Format::Json {
        let json: Vec<&serde_json::Value> = outcome.json.iter().flatten().collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
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

/// One image or PDF page to run, in input order.
struct Unit {
    /// Index of its input on the command line (after folders are expanded).
    input: usize,
    /// The PDF it belongs to (index into [`Runner::docs`]) and its page number.
    page: Option<(usize, usize)>,
    /// The image file, or the name that stands for the page.
    name: PathBuf,
    out_dir: PathBuf,
    /// Text printed before its own: the page split between two pages of a document.
    lead: &'static str,
}

/// A PDF being run: its pages' entries gather in `report`, written when the last one is over.
struct Doc {
    path: PathBuf,
    doc: Document,
    report: DocumentReport,
    /// Pages not over yet.
    remaining: usize,
    input: usize,
    start: Instant,
}

/// A unit that has been handed to the session.
struct Started {
    unit: usize,
    render_s: f64,
    prompt_tokens: usize,
}

/// `dsocr ocr`'s [`Jobs`]: hands out images and rendered pages in input order as batch slots
/// free up, prints progress (stderr) and text (stdout, in input order whatever order the batch
/// finishes in), writes each result's folder when it is over and a document's joined markdown
/// and report when its last page is.
struct Runner<'a> {
    args: &'a OcrArgs,
    opts: &'a RunOptions,
    batch: usize,
    units: Vec<Unit>,
    next_unit: usize,
    docs: Vec<Doc>,
    /// By job number.
    jobs: Vec<Started>,
    out: Ordered,
    outcome: Outcome,
}

impl<'a> Runner<'a> {
    /// Open the PDFs (a document that cannot be opened, or pages outside it, fail here) and
    /// list every image and page to run.
    fn plan(inputs: &[Input], args: &'a OcrArgs, opts: &'a RunOptions, batch: usize) -> Self {
        let mut outcome = Outcome {
            json: inputs.iter().map(|_| None).collect(),
            ..Outcome::default()
        };
        let mut units = Vec::new();
        let mut docs = Vec::new();
        let mut used_dirs = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let out_dir = unique_dir(&args.out, input.path(), &mut used_dirs);
            match input {
                Input::Image(image) => units.push(Unit {
                    input: i,
                    page: None,
                    name: image.clone(),
                    out_dir,
                    lead: "",
                }),
                Input::Pdf(pdf) => {
                    let doc = match Document::open(pdf, args.password.as_deref()) {
                        Ok(doc) => doc,
                        Err(e) => {
                            outcome.fail(e.to_string());
                            continue;
                        }
                    };
                    let count = doc.page_count();
                    let selection = args.pages.clone().unwrap_or_else(PageSelection::all);
                    let pages = selection.resolve(count);
                    eprintln!(
                        "{}: {count} page{}; running {} at {} dpi",
                        pdf.display(),
                        if count == 1 { "" } else { "s" },
                        pages.inside.len(),
                        args.dpi
                    );
                    let mut report = DocumentReport::new(pdf, &out_dir, count, args.dpi);
                    for &page in &pages.outside {
                        let e = DocumentError::PageOutside {
                            path: pdf.to_path_buf(),
                            page,
                            pages: count,
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
                        units.push(Unit {
                            input: i,
                            page: Some((docs.len(), page)),
                            name: page_name(pdf, page),
                            out_dir: page_dir(&out_dir, page),
                            lead: if k > 0 {
                                PAGE_SPLIT.trim_start_matches('\n')
                            } else {
                                ""
                            },
                        });
                    }
                    docs.push(Doc {
                        path: pdf.clone(),
                        doc,
                        report,
                        remaining: pages.inside.len(),
                        input: i,
                        start: Instant::now(),
                    });
                }
            }
        }
        let mut runner = Self {
            args,
            opts,
            batch,
            out: Ordered::new(units.len(), args.format == Format::Json),
            units,
            next_unit: 0,
            docs,
            jobs: Vec::new(),
            outcome,
        };
        // Documents with no page to run are complete already.
        for d in 0..runner.docs.len() {
            if runner.docs[d].remaining == 0 {
                runner.write_document(d);
            }
        }
        runner
    }

    /// Every result, once the session is done.
    fn finish(mut self) -> Outcome {
        if let Some(e) = self.out.printer.error.take() {
            self.outcome.fail(format!("{e:#}"));
        }
        self.outcome
    }

    /// `[k/n] name` for progress lines.
    fn label(&self, unit: usize) -> String {
        format!(
            "[{}/{}] {}",
            unit + 1,
            self.units.len(),
            self.units[unit].name.display()
        )
    }

    /// A progress line: indented under its unit's header at batch 1, prefixed by its label
    /// otherwise (lines of several pages interleave).
    fn progress(&self, unit: usize, line: &str) {
        if self.batch == 1 {
            eprintln!("  {line}");
        } else {
            eprintln!("{}: {line}", self.label(unit));
        }
    }

    /// The job of `unit`: the image file, or its page rendered now. `None` (after reporting
    /// the failure) when the page cannot be rendered.
    fn job(&mut self, unit: usize) -> Option<(Job, f64)> {
        let start = Instant::now();
        let u = &self.units[unit];
        let Some((d, page)) = u.page else {
            return Some((Job::file(&u.name, self.opts.clone()), 0.0));
        };
        let rendered = self.docs[d].doc.render(page, self.args.dpi);
        let render_s = start.elapsed().as_secs_f64();
        match rendered {
            Ok(image) => {
                let mut job = Job::image(&u.name, image, self.opts.clone());
                job.started = Some(start);
                Some((job, render_s))
            }
            Err(e) => {
                let what = format!("{}: page {page}: {e}", self.docs[d].path.display());
                self.page_over(unit, render_s, Err(what));
                None
            }
        }
    }

    /// An image's result: its folder written (removed again when that fails).
    fn write_result(&self, unit: usize, output: OcrOutput) -> anyhow::Result<Report> {
        let out_dir = &self.units[unit].out_dir;
        let report = match output.write(out_dir) {
            Ok(report) => report,
            Err(e) => {
                let _ = std::fs::remove_dir_all(out_dir);
                return Err(e.into());
            }
        };
        self.progress(
            unit,
            &format!(
                "{} tokens, vision {:.2} s, prefill {:.2} s, decode {:.2} s ({:.1} tokens/s), stop: {}",
                report.generated_tokens,
                report.vision_s,
                report.prefill_s,
                report.decode_s,
                report.tokens_per_s,
                report.stop
            ),
        );
        if report.hit_token_limit {
            self.progress(
                unit,
                &format!(
                    "warning: hit the token limit ({}) without end of sentence; the output is \
                     probably a repetition loop",
                    self.args.max_new_tokens
                ),
            );
        }
        self.progress(unit, &format!("wrote {}", out_dir.display()));
        Ok(report)
    }

    /// A unit is over: record its report or failure; a page also goes into its document.
    fn unit_over(&mut self, unit: usize, render_s: f64, result: anyhow::Result<Report>) {
        let u = &self.units[unit];
        match u.page {
            None => match result {
                Ok(report) => {
                    self.outcome.json[u.input] = serde_json::to_value(&report).ok();
                    self.outcome.reports.push(report);
                }
                Err(e) => {
                    let what = format!("{}: {e:#}", u.name.display());
                    self.outcome.fail(what);
                }
            },
            Some((d, page)) => {
                let result = result
                    .map_err(|e| format!("{}: page {page}: {e:#}", self.docs[d].path.display()));
                self.page_over(unit, render_s, result);
            }
        }
        self.out.done(unit);
    }

    /// A page is over: its entry goes into its document, written once its last page is over.
    fn page_over(&mut self, unit: usize, render_s: f64, result: Result<Report, String>) {
        let Some((d, page)) = self.units[unit].page else {
            return;
        };
        let entry = match result {
            Ok(r) => {
                let skip = self.args.skip_repeat && r.hit_token_limit;
                if skip {
                    self.progress(unit, "left out of the joined markdown (--skip-repeat)");
                }
                self.outcome.reports.push(r.clone());
                PageEntry {
                    page,
                    render_s,
                    skipped_in_mmd: skip,
                    error: None,
                    report: Some(r),
                }
            }
            Err(what) => {
                self.outcome.fail(what.clone());
                PageEntry {
                    page,
                    render_s,
                    skipped_in_mmd: false,
                    error: Some(what),
                    report: None,
                }
            }
        };
        let doc = &mut self.docs[d];
        doc.report.push(entry);
        doc.remaining -= 1;
        if doc.remaining == 0 {
            self.write_document(d);
        }
    }

    /// Write a document's joined markdown and report.json.
    fn write_document(&mut self, d: usize) {
        let doc = &mut self.docs[d];
        doc.report.pages.sort_by_key(|p| p.page);
        doc.report.totals.elapsed_s = doc.start.elapsed().as_secs_f64();
        match doc.report.write() {
            Ok(()) => eprintln!(
                "{}: wrote {} and report.json ({} of {} pages ok)",
                doc.path.display(),
                doc.report.mmd.display(),
                doc.report.totals.pages_ok,
                doc.report.pages.len()
            ),
            Err(e) => {
                let what = format!(
                    "{}: cannot write {} or report.json: {e}",
                    doc.path.display(),
                    doc.report.mmd.display()
                );
                self.outcome.fail(what);
            }
        }
        self.outcome.json[doc.input] = serde_json::to_value(&doc.report).ok();
    }
}

impl Jobs for Runner<'_> {
    fn next(&mut self) -> Option<Job> {
        while self.next_unit < self.units.len() {
            let unit = self.next_unit;
            self.next_unit += 1;
            if self.batch == 1 {
                eprintln!("{}", self.label(unit));
            } else {
                self.progress(unit, "started");
            }
            self.out.text(unit, self.units[unit].lead);
            if let Some((job, render_s)) = self.job(unit) {
                self.jobs.push(Started {
                    unit,
                    render_s,
                    prompt_tokens: 0,
                });
                return Some(job);
            }
            self.out.done(unit);
        }
        None
    }

    fn event(&mut self, job: usize, event: Event) {
        let unit = self.jobs[job].unit;
        match event {
            Event::Phase(JobPhase::Preprocess) => {}
            Event::Prepared(p) => {
                self.jobs[job].prompt_tokens = p.prompt_tokens;
                self.progress(
                    unit,
                    &format!(
                        "preprocess: {}x{} {} mode, tiles {}x{}, {} image tokens, {} prompt \
                         tokens ({:.2} s)",
                        p.width,
                        p.height,
                        self.opts.mode,
                        p.spatial_crop[0],
                        p.spatial_crop[1],
                        p.image_tokens,
                        p.prompt_tokens,
                        p.elapsed.as_secs_f64()
                    ),
                );
            }
            Event::Phase(JobPhase::Vision) => self.progress(unit, "vision..."),
            Event::Phase(JobPhase::Prefill) => {
                let tokens = self.jobs[job].prompt_tokens;
                self.progress(unit, &format!("prefill ({tokens} tokens)..."));
            }
            Event::Phase(JobPhase::Decode) => self.progress(unit, "decoding..."),
            Event::Text { piece, .. } => self.out.text(unit, &piece),
        }
    }

    fn done(&mut self, job: usize, result: crate::ocr::Result<OcrOutput>) {
        let Started { unit, render_s, .. } = self.jobs[job];
        self.out.text(unit, "\n");
        let result = result
            .map_err(anyhow::Error::from)
            .and_then(|output| self.write_result(unit, output));
        self.unit_over(unit, render_s, result);
    }
}

/// Text of units that run together, printed in unit order: the oldest unit not over yet
/// streams straight to stdout; the others' text waits until every unit before them is over.
struct Ordered {
    printer: Printer,
    /// The unit whose text goes straight out.
    head: usize,
    waiting: Vec<String>,
    over: Vec<bool>,
}

impl Ordered {
    fn new(units: usize, quiet: bool) -> Self {
        Self {
            printer: Printer::new(quiet),
            head: 0,
            waiting: vec![String::new(); units],
            over: vec![false; units],
        }
    }

    fn text(&mut self, unit: usize, piece: &str) {
        if unit == self.head {
            self.printer.print(piece);
        } else if let Some(w) = self.waiting.get_mut(unit) {
            w.push_str(piece);
        }
    }

    fn done(&mut self, unit: usize) {
        if let Some(o) = self.over.get_mut(unit) {
            *o = true;
        }
        while self.over.get(self.head) == Some(&true) {
            self.head += 1;
            if let Some(w) = self.waiting.get_mut(self.head) {
                let w = std::mem::take(w);
                self.printer.print(&w);
            }
        }
    }
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
