//! `dsocr bench`: times weight loading, preprocessing, vision, prefill and decode on one page and
//! reports peak memory, with the machine, threads, device and dtype.
//!
//! With `--seeded SEED` no weights are needed: the full-size architecture (the real checkpoint's
//! `config.json`, embedded in the binary) gets the fixtures' seeded random weights. Decoding
//! ignores the EOS token so that every repeat times exactly `--new-tokens` tokens.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use image::{Rgb, RgbImage};
use serde::Serialize;
use tch::{Device, Kind};

use crate::ocr::Config;
use crate::ocr::cpu::{Kernels, Plan, Tier};
use crate::ocr::device::{device_name, kind_name, kind_or_default, parse_device};
use crate::ocr::generate::{
    Driver, GenerateEvent, GenerateOptions, GenerateOutput, Phase, Request, default_batch,
    generate_batch,
};
use crate::ocr::model::{DeepseekOcr, ImageInput, PreparedInput};
use crate::ocr::preprocess::{Mode, Views, load_image, preprocess};
use crate::ocr::prompt::{PromptTokenizer, SpecialIds};

/// The real checkpoint's `config.json` (DeepSeek-OCR), for `--seeded`.
const REAL_CONFIG: &str = include_str!("../../tests/fixtures/real-checkpoint/config.json");

/// The prompt of the benchmark (the reference's "Free OCR." prompt).
const PROMPT: &str = "<image>\nFree OCR.";

/// Ids of the text after the image run, `"\nFree OCR."`, as the DeepSeek-OCR tokenizer gives
/// them (tests/fixtures/full-seeded-base-1x1/case.json); used when no tokenizer.json is at hand.
const PROMPT_TAIL_IDS: [i64; 4] = [201, 21431, 126041, 16];

/// Most tiles of a Gundam page (the reference's `dynamic_preprocess` bound).
const MAX_TILES: u32 = 9;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model folder (config.json + *.safetensors [+ tokenizer.json]) or a repo id in the local
    /// Hugging Face cache
    #[arg(long, conflicts_with = "seeded")]
    model: Option<String>,
    /// Full-size model with the fixtures' seeded random weights (no download needed)
    #[arg(long)]
    seeded: Option<i64>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// bf16, f16 or f32 [default: bf16]
    #[arg(long)]
    dtype: Option<String>,
    /// tiny, small, base, large or gundam
    #[arg(long, default_value = "base")]
    mode: String,
    /// Page image to preprocess (default: a generated 1275x1650 page)
    #[arg(long)]
    image: Option<PathBuf>,
    /// Tokens generated per repeat (EOS is ignored)
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// How many times vision, prefill and decode run (after loading once)
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Pages decoded together: one number or a list (`1,4` times batch 1, then batch 4, in the
    /// same run; the report compares them). Each page of a batch is a different page. Default:
    /// chosen from free memory (printed)
    #[arg(long, value_delimiter = ',', value_parser = parse_batch)]
    batch: Vec<usize>,
    /// CPU threads for libtorch (default: libtorch's choice)
    #[arg(long)]
    threads: Option<i32>,
    /// Compute path: auto, libtorch (the op sequence CUDA runs), or a CPU tier (avx512, avx2,
    /// scalar) [default: the config file's [ocr] kernels, else auto]
    #[arg(long, env = "DSOCR_KERNELS", value_parser = super::parse_kernels)]
    kernels: Option<Kernels>,
    /// Print the report as one JSON object
    #[arg(long)]
    json: bool,
}

/// Min, median and max of a series.
#[derive(Debug, Serialize)]
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
        Self {
            min: at(0),
            median: at(v.len() / 2),
            max: at(v.len().saturating_sub(1)),
        }
    }
}

/// The machine the benchmark ran on.
#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    cpu_bf16: bool,
    /// The CPU kernel tiers this CPU has, fastest first.
    cpu_tiers: Vec<String>,
    threads: i32,
    /// Where dsocr's own CPU kernels run their parallel tasks.
    kernel_threads: String,
    device: String,
    gpu: Option<String>,
}

/// The whole report (`--json` prints it as is).
#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    weights: String,
    dtype: String,
    /// Dtype of the arithmetic (f32 over bf16 weights where dsocr's CPU kernels run).
    compute: String,
    /// Where each phase ran: `libtorch`, a CPU tier, or `vision X, prefill Y, decode Z`.
    kernels: String,
    mode: String,
    image: String,
    prompt_tokens: usize,
    image_tokens: usize,
    new_tokens: usize,
    repeat: usize,
    load_s: f64,
    preprocess_s: f64,
    vision_s: Stats,
    prefill_s: Stats,
    prefill_incl_vision_s: Stats,
    decode_tokens_per_s: Stats,
    /// Every batch size timed, in order (the fields above are the first one's).
    batches: Vec<BatchReport>,
    /// Peak resident memory of the whole run, in GB.
    peak_rss_gb: Option<f64>,
    /// Peak resident memory while loading, in GB.
    load_peak_rss_gb: Option<f64>,
    gpu_memory_gb: Option<f64>,
}

/// The figures of one batch size.
#[derive(Debug, Serialize)]
struct BatchReport {
    batch: usize,
    /// Vision per page.
    vision_s: Stats,
    /// Prefill per page.
    prefill_s: Stats,
    /// Tokens of all the batch's pages per second of decoding (the steps where all of them run).
    decode_tokens_per_s: Stats,
    /// That speed over batch 1's, when batch 1 was timed in the same run.
    speedup_over_batch_1: Option<f64>,
    /// Peak resident memory while this batch size ran (weights included), in GB.
    peak_rss_gb: Option<f64>,
}

/// One timed run of vision, prefill and decode of a batch.
struct Run {
    /// Per page.
    vision: f64,
    /// Per page.
    prefill: f64,
    /// Aggregate over the batch.
    decode_tps: f64,
}

fn parse_batch(s: &str) -> Result<usize, String> {
    let max = crate::ocr::decoder::MAX_BATCH;
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("a batch is a number of pages from 1 to {max}")),
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.repeat == 0 || args.new_tokens < 2 {
        bail!("--repeat must be at least 1 and --new-tokens at least 2");
    }
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n);
    }
    let device = parse_device(&args.device)?;
    let kind = kind_or_default(args.dtype.as_deref(), device)?;
    let model_dir = args.model.as_deref().map(super::model_folder).transpose()?;
    let mode: Mode = args.mode.parse().map_err(anyhow::Error::msg)?;
    let _no_grad = tch::no_grad_guard();

    let plan = super::kernels_choice(args.kernels)?.plan(device)?;
    let start = Instant::now();
    let (model, weights) = load_model(model_dir.as_deref(), args.seeded, device, kind, plan)?;
    sync(device);
    let load_s = start.elapsed().as_secs_f64();
    // From here on, peaks are per phase: the loading peak is kept, then the counter starts again.
    let load_peak_rss_gb = peak_rss_gb();
    let phase_peaks = reset_peak_rss();

    let (page, image_name) = page_image(args.image.as_deref())?;
    let sizes = if args.batch.is_empty() {
        let choice = default_batch(&model, args.new_tokens);
        eprintln!("{}", super::describe_batch(&choice));
        vec![choice.batch]
    } else {
        args.batch.clone()
    };
    let most = sizes.iter().copied().max().unwrap_or(1);
    let start = Instant::now();
    let views = preprocess(&page, mode, MAX_TILES);
    let input = prepared_input(&model, &views, model_dir.as_deref())?;
    let preprocess_s = start.elapsed().as_secs_f64();
    // The other pages of a batch: the same page shifted, so that every sequence differs.
    let mut inputs = vec![input];
    for i in 1..most {
        let views = preprocess(&shifted(&page, i), mode, MAX_TILES);
        inputs.push(prepared_input(&model, &views, model_dir.as_deref())?);
    }

    let mut batches: Vec<(usize, Vec<Run>, Option<f64>)> = Vec::new();
    for &b in &sizes {
        let runs = (0..args.repeat)
            .map(|i| {
                let r = timed_run(&model, &inputs[..b], args.new_tokens)?;
                if !args.json {
                    eprintln!(
                        "batch {b}, repeat {}/{}: vision {:.2} s/page, prefill {:.2} s/page, decode {:.2} tokens/s",
                        i + 1,
                        args.repeat,
                        r.vision,
                        r.prefill,
                        r.decode_tps
                    );
                }
                Ok(r)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let peak = phase_peaks.then(peak_rss_gb).flatten();
        reset_peak_rss();
        batches.push((b, runs, peak));
    }
    let series =
        |runs: &[Run], f: &dyn Fn(&Run) -> f64| Stats::of(&runs.iter().map(f).collect::<Vec<_>>());
    let single = batches
        .iter()
        .find(|(b, _, _)| *b == 1)
        .map(|(_, runs, _)| series(runs, &|r| r.decode_tps).median);
    let batch_reports: Vec<BatchReport> = batches
        .iter()
        .map(|(b, runs, peak)| {
            let decode = series(runs, &|r| r.decode_tps);
            BatchReport {
                batch: *b,
                vision_s: series(runs, &|r| r.vision),
                prefill_s: series(runs, &|r| r.prefill),
                speedup_over_batch_1: single.filter(|_| *b != 1).map(|s| decode.median / s),
                decode_tokens_per_s: decode,
                peak_rss_gb: *peak,
            }
        })
        .collect();
    let runs = &batches[0].1;
    let report = Report {
        machine: machine(device),
        weights,
        dtype: kind_name(kind).into(),
        compute: kind_name(model.compute).into(),
        kernels: model.plan.describe(),
        mode: mode.name().into(),
        image: image_name,
        prompt_tokens: inputs[0].input_ids.len(),
        image_tokens: views.num_image_tokens,
        new_tokens: args.new_tokens,
        repeat: args.repeat,
        load_s,
        preprocess_s,
        vision_s: series(runs, &|r| r.vision),
        prefill_s: series(runs, &|r| r.prefill),
        prefill_incl_vision_s: series(runs, &|r| r.vision + r.prefill),
        decode_tokens_per_s: series(runs, &|r| r.decode_tps),
        peak_rss_gb: batch_reports
            .iter()
            .filter_map(|b| b.peak_rss_gb)
            .chain(load_peak_rss_gb)
            .reduce(f64::max)
            .or_else(peak_rss_gb),
        load_peak_rss_gb,
        batches: batch_reports,
        gpu_memory_gb: gpu_memory_gb(device),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The model and a description of its weights.
fn load_model(
    dir: Option<&Path>,
    seeded: Option<i64>,
    device: Device,
    kind: Kind,
    plan: Plan,
) -> anyhow::Result<(DeepseekOcr, String)> {
    match (dir, seeded) {
        (Some(dir), _) => {
            let model = DeepseekOcr::load_with(dir, device, kind, plan)?;
            Ok((model, dir.display().to_string()))
        }
        (None, Some(seed)) => {
            let cfg = Config::from_json(REAL_CONFIG)
                .map_err(|e| anyhow::anyhow!("embedded config.json: {e}"))?;
            let model = DeepseekOcr::seeded_with(cfg, seed, device, kind, plan)?;
            Ok((model, format!("seeded full-size (seed {seed})")))
        }
        (None, None) => bail!("give --model DIR (a downloaded model) or --seeded SEED"),
    }
}

/// The page to preprocess: `path`, or a generated A4-like page (1275x1650) of text-like lines.
fn page_image(path: Option<&Path>) -> anyhow::Result<(RgbImage, String)> {
    if let Some(p) = path {
        return Ok((load_image(p)?, p.display().to_string()));
    }
    let page = RgbImage::from_fn(1275, 1650, |x, y| {
        let line = (y / 30) % 2 == 1 && (100..1175).contains(&x) && (100..1550).contains(&y);
        let ink = line && ((x / 9 + y / 30) % 7 != 0);
        if ink {
            Rgb([20, 20, 20])
        } else {
            Rgb([250, 250, 246])
        }
    });
    Ok((page, "generated 1275x1650 page".into()))
}

/// The benchmark prompt for `views`: tokenised by the model's tokenizer.json when the model
/// folder has one, else with the known ids of the prompt text.
fn prepared_input(
    model: &DeepseekOcr,
    views: &Views,
    dir: Option<&Path>,
) -> anyhow::Result<PreparedInput> {
    let bos = model.config.language_config.bos_token_id;
    let image = model.config.image_token_id();
    let run = views.num_image_tokens;
    let tokenizer = dir
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file());
    let (input_ids, image_mask) = match tokenizer {
        Some(path) => {
            let t = PromptTokenizer::from_file(&path)?;
            let ids = t.build(PROMPT, &[run], SpecialIds { bos, image })?;
            (ids.input_ids, ids.images_seq_mask)
        }
        None => {
            let mut ids = vec![bos];
            ids.extend(std::iter::repeat_n(image, run));
            ids.extend(PROMPT_TAIL_IDS);
            let mask = ids.iter().enumerate().map(|(i, _)| (1..=run).contains(&i));
            (ids.clone(), mask.collect())
        }
    };
    let [across, down] = views.spatial_crop;
    Ok(PreparedInput {
        input_ids,
        image_mask,
        images: vec![ImageInput {
            global: views.global_tensor(Kind::Float, Device::Cpu),
            tiles: views.tiles_tensor(Kind::Float, Device::Cpu),
            spatial_crop: [i64::from(across), i64::from(down)],
        }],
    })
}

/// `page` moved right and down by `i` times a few pixels (the background fills the gap).
fn shifted(page: &RgbImage, i: usize) -> RgbImage {
    let d = 7 * i as u32;
    let fill = *page.get_pixel(0, 0);
    RgbImage::from_fn(page.width(), page.height(), |x, y| {
        if x >= d && y >= d {
            *page.get_pixel(x - d, y - d)
        } else {
            fill
        }
    })
}

/// Vision and prefill of every page of `inputs`, then `new_tokens` greedy tokens (EOS ignored)
/// for each, all of them in one batch.
fn timed_run(
    model: &DeepseekOcr,
    inputs: &[PreparedInput],
    new_tokens: usize,
) -> anyhow::Result<Run> {
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        eos_token_id: Some(-1),
        no_repeat_ngram: None,
        record_logits: false,
    };
    let mut vision = Duration::ZERO;
    let mut requests = Vec::with_capacity(inputs.len());
    for input in inputs {
        let start = Instant::now();
        let images = model.encode_images(input).context("vision")?;
        sync(model.device);
        vision += start.elapsed();
        requests.push(Request {
            input: input.shallow_clone(),
            images: Some(images),
            opts: opts.clone(),
        });
    }
    let mut timer = BatchTimer {
        requests: requests.into_iter(),
        first_decode: None,
        outputs: Vec::new(),
    };
    generate_batch(model, inputs.len(), &mut timer);
    let decode_end = Instant::now();
    let outputs = timer
        .outputs
        .into_iter()
        .collect::<crate::ocr::Result<Vec<_>>>()
        .context("generation")?;
    // The first token of each page comes from its prefill; each further one is a decode step,
    // timed from the step where every page of the batch decodes.
    let steps: usize = outputs
        .iter()
        .map(|o| o.tokens.len().saturating_sub(1))
        .sum();
    let decode = timer
        .first_decode
        .map_or(Duration::ZERO, |t| decode_end.duration_since(t));
    let prefill: Duration = outputs.iter().map(|o| o.timings.prefill).sum();
    let pages = inputs.len() as f64;
    Ok(Run {
        vision: secs(vision) / pages,
        prefill: secs(prefill) / pages,
        decode_tps: if decode.is_zero() {
            0.0
        } else {
            steps as f64 / secs(decode)
        },
    })
}

/// The [`Driver`] of a benchmark batch: hands out its requests, keeps the outputs, and notes
/// when the last page starts decoding.
struct BatchTimer {
    requests: std::vec::IntoIter<Request>,
    first_decode: Option<Instant>,
    outputs: Vec<crate::ocr::Result<GenerateOutput>>,
}

impl Driver for BatchTimer {
    fn next(&mut self) -> Option<crate::ocr::Result<Request>> {
        self.requests.next().map(Ok)
    }

    fn event(&mut self, _seq: usize, event: GenerateEvent) {
        if event == GenerateEvent::Phase(Phase::Decode) {
            // Every page of the batch is admitted before the first step.
            if self.requests.len() == 0 && self.first_decode.is_none() {
                self.first_decode = Some(Instant::now());
            }
        }
    }

    fn done(&mut self, _seq: usize, result: crate::ocr::Result<GenerateOutput>) {
        self.outputs.push(result);
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Wait for queued CUDA work (timings would otherwise stop before the GPU finishes).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// CPU model, cores and threads, and the GPU's name on CUDA.
fn machine(device: Device) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpu_bf16 = crate::ocr::cpu::features::has_bf16_matmul();
    let cpu_tiers = Tier::ALL
        .into_iter()
        .filter(|t| t.supported())
        .map(|t| t.name().to_string())
        .collect();
    let gpu = matches!(device, Device::Cuda(_))
        .then(|| nvidia_smi(&["--query-gpu=name", "--format=csv,noheader"]))
        .flatten();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_bf16,
        cpu_tiers,
        threads: tch::get_num_threads(),
        kernel_threads: crate::ocr::cpu::par::runtime().to_string(),
        device: device_name(device),
        gpu,
    }
}

/// Peak resident memory of this process (`VmHWM`), in GB (10^9 bytes).
fn peak_rss_gb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024.0 / 1e9)
}

/// Start the peak resident memory (`VmHWM`) over from the current resident set (Linux 4.0+);
/// false when the kernel refuses.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The most GPU memory libtorch's caching allocator reserved during the run, in GB.
fn gpu_memory_gb(device: Device) -> Option<f64> {
    let Device::Cuda(i) = device else {
        return None;
    };
    // Peak reserved by libtorch's caching allocator (what the process held at most).
    crate::ocr::opcount::gpu_memory(i).map(|m| m.reserved_peak as f64 / 1e9)
}

fn nvidia_smi(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn print_table(r: &Report) {
    let m = &r.machine;
    println!(
        "machine: {} ({} cores, bf16 instructions: {}, kernel tiers: {}), {} threads (kernels \
         on {}), device {}{}",
        m.cpu,
        m.cores,
        if m.cpu_bf16 { "yes" } else { "no" },
        m.cpu_tiers.join(" "),
        m.threads,
        m.kernel_threads,
        m.device,
        m.gpu
            .as_deref()
            .map(|g| format!(" ({g})"))
            .unwrap_or_default()
    );
    println!(
        "weights: {}, dtype {} (compute {}, kernels {}), mode {}, image: {}",
        r.weights, r.dtype, r.compute, r.kernels, r.mode, r.image
    );
    println!(
        "prompt: {} tokens ({} image tokens), {} new tokens, {} repeats",
        r.prompt_tokens, r.image_tokens, r.new_tokens, r.repeat
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "stage", "min", "median", "max"
    );
    println!("{:<22} {:>10.2}", "load (s)", r.load_s);
    println!("{:<22} {:>10.3}", "preprocess (s)", r.preprocess_s);
    for (name, s) in [
        ("vision (s)", &r.vision_s),
        ("prefill (s)", &r.prefill_s),
        ("prefill+vision (s)", &r.prefill_incl_vision_s),
        ("decode (tokens/s)", &r.decode_tokens_per_s),
    ] {
        println!(
            "{name:<22} {:>10.2} {:>10.2} {:>10.2}",
            s.min, s.median, s.max
        );
    }
    // The report keeps GB as numbers (JSON); people read them as every size dsocr prints.
    let gb = |v: Option<f64>| {
        v.map_or("n/a".to_string(), |v| {
            crate::units::human_bytes((v * 1e9) as u64)
        })
    };
    if r.batches.len() > 1 || r.batches.iter().any(|b| b.batch > 1) {
        println!(
            "{:<8} {:>16} {:>16} {:>22} {:>10} {:>12}",
            "batch",
            "vision (s/page)",
            "prefill (s/page)",
            "decode (tokens/s, all)",
            "speedup",
            "peak RSS"
        );
        for b in &r.batches {
            println!(
                "{:<8} {:>16.2} {:>16.2} {:>22.2} {:>10} {:>12}",
                b.batch,
                b.vision_s.median,
                b.prefill_s.median,
                b.decode_tokens_per_s.median,
                b.speedup_over_batch_1
                    .map_or("-".to_string(), |s| format!("{s:.2}x")),
                gb(b.peak_rss_gb)
            );
        }
    }
    let running: Vec<String> = r
        .batches
        .iter()
        .map(|b| format!("batch {}: {}", b.batch, gb(b.peak_rss_gb)))
        .collect();
    println!(
        "peak RSS: {} (loading: {}; {})",
        gb(r.peak_rss_gb),
        gb(r.load_peak_rss_gb),
        running.join(", ")
    );
    if matches!(r.machine.device.as_str(), d if d.starts_with("cuda")) {
        println!(
            "GPU memory (peak reserved by libtorch): {}",
            gb(r.gpu_memory_gb)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_min_median_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        let one = Stats::of(&[5.0]);
        assert_eq!((one.min, one.median, one.max), (5.0, 5.0, 5.0));
    }

    #[test]
    fn embedded_config_is_the_full_size_model() {
        let cfg = Config::from_json(REAL_CONFIG).expect("embedded config parses");
        assert_eq!(cfg.language_config.vocab_size, 129280);
        assert_eq!(cfg.image_token_id(), 128815);
    }

    #[test]
    fn generated_page_has_ink_and_paper() {
        let (page, _) = page_image(None).expect("page");
        assert_eq!(page.dimensions(), (1275, 1650));
        let dark = page.pixels().filter(|p| p.0[0] < 128).count();
        assert!(dark > 10_000 && dark < 1275 * 1650 / 2, "{dark}");
    }
}
