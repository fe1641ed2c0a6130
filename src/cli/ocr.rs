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
use serde::Serialize;
use tch::{Device, Kind};

use crate::hub::HubEnv;
use crate::hub::cache::RepoPaths;
use crate::ocr::device::{device_name, kind_name, parse_device, parse_kind};
use crate::ocr::generate::{
    DEFAULT_NGRAM_WHITELIST, GenerateEvent, GenerateOptions, GenerateOutput, NoRepeatNgram, Phase,
    StopReason, generate,
};
use crate::ocr::grounding::{self, LabeledBox};
use crate::ocr::model::{DeepseekOcr, ImageInput, PreparedInput};
use crate::ocr::preprocess::{self, DEFAULT_MAX_TILES, Mode};
use crate::ocr::prompt::{EOS_TEXT, Preset, PromptTokenizer, SpecialIds, StreamDecoder};

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
    /// bf16, f16 or f32 (default: bf16 on CUDA, f32 on CPU)
    #[arg(long)]
    pub dtype: Option<String>,
    /// Output folder; each image gets OUT/<image name>/
    #[arg(long, default_value = "dsocr-out")]
    pub out: PathBuf,
    /// What goes to stdout: md (stream the raw output), text (stream without tags), json
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
}

/// The result of one image, as written to the JSON outputs.
#[derive(Debug, Serialize)]
struct ImageReport {
    image: PathBuf,
    output_dir: PathBuf,
    width: u32,
    height: u32,
    mode: String,
    spatial_crop: [u32; 2],
    image_tokens: usize,
    prompt_tokens: usize,
    generated_tokens: usize,
    /// `eos`, `max_tokens` or `cancelled`.
    stop: &'static str,
    /// True when generation hit the token limit without EOS (usually a repetition loop).
    hit_token_limit: bool,
    vision_s: f64,
    prefill_s: f64,
    decode_s: f64,
    tokens_per_s: f64,
    markdown: String,
    boxes: Vec<BoxReport>,
}

/// A box plus the crop file written for it.
#[derive(Debug, Serialize)]
struct BoxReport {
    #[serde(flatten)]
    bbox: LabeledBox,
    /// `images/N.jpg` for `image` boxes with a non-empty crop.
    #[serde(skip_serializing_if = "Option::is_none")]
    crop: Option<String>,
}

/// Everything loaded once for the batch.
struct Session {
    model: DeepseekOcr,
    tokenizer: PromptTokenizer,
    prompt: String,
    options: GenerateOptions,
}

pub fn run(args: OcrArgs) -> anyhow::Result<ExitCode> {
    let images = collect_images(&args.inputs)?;
    let prompt = args.prompt.clone().unwrap_or_else(|| args.preset.prompt());
    let device = parse_device(&args.device)?;
    let kind = match &args.dtype {
        Some(d) => parse_kind(d)?,
        None if device == Device::Cpu => Kind::Float,
        None => Kind::BFloat16,
    };
    let model_dir = resolve_model(&args.model)?;
    let session = load_session(&model_dir, device, kind, prompt, &args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output folder {}", args.out.display()))?;

    let mut reports = Vec::new();
    let mut failures = Vec::new();
    let mut used_dirs = Vec::new();
    for (i, image) in images.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, images.len(), image.display());
        let out_dir = unique_dir(&args.out, image, &mut used_dirs);
        match run_image(&session, image, &out_dir, &args) {
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

/// Check the model folder, then load the tokenizer and the weights once.
fn load_session(
    dir: &Path,
    device: Device,
    kind: Kind,
    prompt: String,
    args: &OcrArgs,
) -> anyhow::Result<Session> {
    let has_weights = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the model folder {}", dir.display()))?
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"));
    for (ok, what) in [
        (dir.join("config.json").is_file(), "config.json"),
        (dir.join("tokenizer.json").is_file(), "tokenizer.json"),
        (has_weights, "*.safetensors weights"),
    ] {
        if !ok {
            bail!(
                "the model folder {} has no {what}; it needs config.json, tokenizer.json and *.safetensors",
                dir.display()
            );
        }
    }
    eprintln!(
        "loading {} on {} ({})",
        dir.display(),
        device_name(device),
        kind_name(kind)
    );
    let start = Instant::now();
    let tokenizer = PromptTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let model = DeepseekOcr::load(dir, device, kind)?;
    eprintln!("  loaded in {:.1} s", start.elapsed().as_secs_f64());
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        no_repeat_ngram: (args.no_repeat_ngram > 0).then(|| NoRepeatNgram {
            size: args.no_repeat_ngram,
            window: args.ngram_window,
            whitelist: DEFAULT_NGRAM_WHITELIST.to_vec(),
        }),
        ..GenerateOptions::default()
    };
    Ok(Session {
        model,
        tokenizer,
        prompt,
        options,
    })
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

/// Preprocess, generate (streaming to stdout) and write the outputs of one image.
fn run_image(
    session: &Session,
    image: &Path,
    out_dir: &Path,
    args: &OcrArgs,
) -> anyhow::Result<ImageReport> {
    let start = Instant::now();
    let original = preprocess::load_image(image)?;
    let views = preprocess::preprocess(&original, args.mode, args.max_tiles);
    let config = &session.model.config;
    let special = SpecialIds {
        bos: config.language_config.bos_token_id,
        image: config.image_token_id(),
    };
    let ids = session
        .tokenizer
        .build(&session.prompt, &[views.num_image_tokens], special)?;
    let input = PreparedInput {
        input_ids: ids.input_ids,
        image_mask: ids.images_seq_mask,
        images: vec![ImageInput {
            global: views.global_tensor(Kind::Float, Device::Cpu),
            tiles: views.tiles_tensor(Kind::Float, Device::Cpu),
            spatial_crop: views.spatial_crop.map(i64::from),
        }],
    };
    eprintln!(
        "  preprocess: {}x{} {} mode, tiles {}x{}, {} image tokens, {} prompt tokens ({:.2} s)",
        original.width(),
        original.height(),
        args.mode,
        views.spatial_crop[0],
        views.spatial_crop[1],
        views.num_image_tokens,
        input.input_ids.len(),
        start.elapsed().as_secs_f64()
    );
    let output = generate_streaming(session, &input, args.format)?;
    let report = write_outputs(session, &original, &views, &output, image, out_dir, args)?;
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

/// Prints decoded text to stdout as tokens arrive; keeps the first error for later.
struct Printer<'a> {
    stream: StreamDecoder<'a>,
    quiet: bool,
    error: Option<anyhow::Error>,
}

impl Printer<'_> {
    fn token(&mut self, id: i64) {
        let piece = u32::try_from(id)
            .map_err(|_| anyhow::anyhow!("the model produced an invalid token id {id}"))
            .and_then(|id| Ok(self.stream.push(id)?));
        self.print(piece);
    }

    fn finish(&mut self) {
        let rest = self.stream.finish().map_err(anyhow::Error::from);
        self.print(rest);
        self.print(Ok(Some("\n".into())));
    }

    fn print(&mut self, piece: anyhow::Result<Option<String>>) {
        let written = piece.and_then(|p| match p {
            Some(p) if !self.quiet => {
                let mut out = std::io::stdout().lock();
                out.write_all(p.as_bytes())
                    .and_then(|()| out.flush())
                    .context("cannot write to stdout")
            }
            _ => Ok(()),
        });
        if let Err(e) = written {
            self.error.get_or_insert(e);
        }
    }
}

/// Generate, printing text to stdout as it comes (md/text formats) and phases to stderr.
fn generate_streaming(
    session: &Session,
    input: &PreparedInput,
    format: Format,
) -> anyhow::Result<GenerateOutput> {
    let eos = session.model.config.language_config.eos_token_id;
    let mut printer = Printer {
        stream: session.tokenizer.stream(format == Format::Text),
        quiet: format == Format::Json,
        error: None,
    };
    let cancel = AtomicBool::new(false);
    let output = generate(&session.model, input, &session.options, &cancel, |event| {
        match event {
            GenerateEvent::Phase(Phase::Vision) => eprintln!("  vision..."),
            GenerateEvent::Phase(Phase::Prefill) => {
                eprintln!("  prefill ({} tokens)...", input.input_ids.len())
            }
            GenerateEvent::Phase(Phase::Decode) => eprintln!("  decoding..."),
            // The reference's streamer does not print the end-of-sentence marker.
            GenerateEvent::Token(id) if id == eos => {}
            GenerateEvent::Token(id) => printer.token(id),
        }
    })?;
    printer.finish();
    match printer.error {
        Some(e) => Err(e),
        None => Ok(output),
    }
}

/// Write result_raw.txt, result.mmd, boxes.json, result_with_boxes.jpg and images/N.jpg.
fn write_outputs(
    session: &Session,
    original: &image::RgbImage,
    views: &preprocess::Views,
    output: &GenerateOutput,
    image: &Path,
    out_dir: &Path,
    args: &OcrArgs,
) -> anyhow::Result<ImageReport> {
    let ids: Vec<u32> = output
        .tokens
        .iter()
        .filter_map(|&t| u32::try_from(t).ok())
        .collect();
    let raw = session.tokenizer.decode(&ids, false)?;
    // As the reference: drop the EOS marker, strip, then parse spans and clean up.
    let text = raw.strip_suffix(EOS_TEXT).unwrap_or(&raw).trim();
    let spans = grounding::find_spans(text);
    let markdown = grounding::markdown(text, &spans);
    let boxes = grounding::boxes(&spans, original.width(), original.height());

    let images_dir = out_dir.join("images");
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("cannot create {}", images_dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = out_dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write("result_raw.txt", raw.as_bytes())?;
    write("result.mmd", markdown.as_bytes())?;
    let mut crops = grounding::image_crops(original, &boxes).into_iter();
    let mut box_reports = Vec::new();
    for b in &boxes {
        let crop = if b.label == "image" {
            crops.next().and_then(|(i, crop)| crop.map(|c| (i, c)))
        } else {
            None
        };
        let crop = match crop {
            Some((i, c)) => {
                let name = format!("images/{i}.jpg");
                save_jpeg(&c, &out_dir.join(&name))?;
                Some(name)
            }
            None => None,
        };
        box_reports.push(BoxReport {
            bbox: b.clone(),
            crop,
        });
    }
    save_jpeg(
        &grounding::annotate(original, &boxes),
        &out_dir.join("result_with_boxes.jpg"),
    )?;
    let generated_tokens = output.tokens.len();
    let report = ImageReport {
        image: image.to_path_buf(),
        output_dir: out_dir.to_path_buf(),
        width: original.width(),
        height: original.height(),
        mode: args.mode.to_string(),
        spatial_crop: views.spatial_crop,
        image_tokens: views.num_image_tokens,
        prompt_tokens: output.prompt_tokens,
        generated_tokens,
        stop: match output.stop {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Cancelled => "cancelled",
        },
        hit_token_limit: output.stop == StopReason::MaxTokens,
        vision_s: output.timings.vision.as_secs_f64(),
        prefill_s: output.timings.prefill.as_secs_f64(),
        decode_s: output.timings.decode.as_secs_f64(),
        tokens_per_s: output
            .timings
            .tokens_per_second(generated_tokens.saturating_sub(1)),
        markdown,
        boxes: box_reports,
    };
    write(
        "boxes.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

fn save_jpeg(img: &image::RgbImage, path: &Path) -> anyhow::Result<()> {
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// One line per outcome on stderr.
fn print_summary(reports: &[ImageReport], failures: &[String]) {
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
