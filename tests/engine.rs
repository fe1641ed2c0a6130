//! The engine against the reference: every fixture case stage by stage (tiny model cases and the
//! full-size seeded case, plus any folder listed in `DSOCR_EXTRA_CASES`), the checkpoint name
//! contract, and each loading error.
//!
//! Tolerance (fixtures README): `max|a - b| <= 1e-3 * max(1, max|b|)` per tensor; ids exactly.
//!
//! Every fixture case runs on every compute path: libtorch's ops (the sequence CUDA runs) and
//! each CPU kernel tier; the kernels are also checked one by one (`kernels.rs`). The binary
//! lists its own trials (`main`, libtest-mimic): a tier this CPU lacks is reported as ignored,
//! by name and with the reason (`parity_tiny::avx512::f32`, `kernels::avx512::...`), never as
//! passed. The CUDA trial is ignored unless run with `--ignored` on a GPU.

#[path = "engine/kernels.rs"]
mod kernels;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dsocr::ocr::Config;
use dsocr::ocr::cpu::{Isa, Kernels, Path as Compute, Plan, Tier};
use dsocr::ocr::generate::{
    Driver, GenerateEvent, GenerateOptions, GenerateOutput, NoRepeatNgram, Phase, Request,
    StopReason, generate, generate_batch, generate_with_images,
};
use dsocr::ocr::model::{DeepseekOcr, ImageInput, PreparedInput};
use dsocr::ocr::vision::{ImageFeatures, VisionStages};
use dsocr::ocr::weights::{ShapeMap, Weights};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

mod common;
use common::{fixtures, read_json};

const TOLERANCE: f64 = 1e-3;

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// Case folders from `DSOCR_EXTRA_CASES` (colon-separated), split into (tiny, seeded).
fn extra_cases() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let list = std::env::var("DSOCR_EXTRA_CASES").unwrap_or_default();
    list.split(':')
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from)
        .partition(|dir| read_json(&dir.join("case.json")).get("seed").is_none())
}

/// A PNG as `[1, 3, H, W]` f32 pixels: `(u8 / 255 - 0.5) / 0.5`.
fn load_png(path: &Path) -> Tensor {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = img.dimensions();
    let data = Tensor::from_slice(img.as_raw()).view([h as i64, w as i64, 3]);
    let pixels = data.permute([2, 0, 1]).to_kind(Kind::Float) / 255.0;
    ((pixels - 0.5) / 0.5).unsqueeze(0)
}

/// `tiles.png` (tiles across x tiles down squares of `size`) cut row-major into `[n, 3, s, s]`.
fn load_tiles(path: &Path, size: i64, [across, down]: [i64; 2]) -> Tensor {
    load_png(path)
        .view([3, down, size, across, size])
        .permute([1, 3, 0, 2, 4])
        .reshape([down * across, 3, size, size])
}

fn prepared_input(dir: &Path, case: &Value) -> PreparedInput {
    let mask: Vec<bool> = case["images_seq_mask"]
        .as_array()
        .map(|a| a.iter().map(|b| b.as_bool() == Some(true)).collect())
        .unwrap_or_default();
    let crop = ids(&case["spatial_crop"]);
    let spatial_crop = [
        crop.first().copied().unwrap_or(1),
        crop.get(1).copied().unwrap_or(1),
    ];
    let mut images = Vec::new();
    if dir.join("global.png").is_file() {
        let tiles_png = dir.join("tiles.png");
        let tiles = tiles_png.is_file().then(|| {
            let size = case["image_size"]
                .as_i64()
                .expect("image_size in case.json");
            load_tiles(&tiles_png, size, spatial_crop)
        });
        images.push(ImageInput {
            global: load_png(&dir.join("global.png")),
            tiles,
            spatial_crop,
        });
    }
    PreparedInput {
        input_ids: ids(&case["input_ids"]),
        image_mask: mask,
        images,
    }
}

/// Stage-by-stage comparison of one case.
struct Report {
    name: String,
    expected: BTreeMap<String, Tensor>,
    checked: Vec<(String, f64)>,
    failures: Vec<String>,
}

impl Report {
    fn new(dir: &Path) -> Self {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join("expected.safetensors");
        let expected = Tensor::read_safetensors(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .into_iter()
            .collect();
        Self {
            name,
            expected,
            checked: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The expected tensor `stage`; a case that lacks a stage this run computes fails.
    fn expected(&mut self, stage: &str) -> Option<Tensor> {
        let exp = self.expected.get(stage).map(Tensor::shallow_clone);
        if exp.is_none() {
            self.failures.push(format!(
                "{stage}: missing from the case's expected.safetensors"
            ));
        }
        exp
    }

    /// Compare `ours` with the expected tensor `stage` (which the case must provide).
    fn tensor(&mut self, stage: &str, ours: &Tensor) {
        if let Some(exp) = self.expected(stage) {
            self.close(stage, ours, &exp);
        }
    }

    fn close(&mut self, stage: &str, ours: &Tensor, exp: &Tensor) {
        let ours = ours.to_kind(Kind::Float).to_device(Device::Cpu);
        if ours.numel() != exp.numel() {
            self.failures.push(format!(
                "{stage}: shape {:?}, expected {:?}",
                ours.size(),
                exp.size()
            ));
            return;
        }
        let exp = exp.to_kind(Kind::Float);
        let diff = (ours.reshape(exp.size()) - &exp)
            .abs()
            .max()
            .double_value(&[]);
        let scale = exp.abs().max().double_value(&[]).max(1.0);
        let rel = diff / scale;
        self.checked.push((stage.to_string(), rel));
        if rel.is_nan() || rel > TOLERANCE {
            self.failures
                .push(format!("{stage}: max|a-b| / max(1,max|b|) = {rel:.3e}"));
        }
    }

    fn ids(&mut self, stage: &str, ours: &[i64], expected: &[i64]) {
        self.checked.push((stage.to_string(), 0.0));
        if ours != expected {
            self.failures
                .push(format!("{stage}: got {ours:?}, expected {expected:?}"));
        }
    }

    fn vision(&mut self, images: &[ImageFeatures]) {
        let Some(f) = images.first() else {
            return;
        };
        let stages = |s: &VisionStages| {
            [
                s.sam.shallow_clone(),
                s.clip.shallow_clone(),
                s.proj.shallow_clone(),
            ]
        };
        for (name, t) in ["sam_global", "clip_global", "proj_global"]
            .iter()
            .zip(stages(&f.global))
        {
            self.tensor(name, &t);
        }
        if let Some(local) = &f.local {
            for (name, t) in ["sam_local", "clip_local", "proj_local"]
                .iter()
                .zip(stages(local))
            {
                self.tensor(name, &t);
            }
        }
        self.tensor("vision_embeds", &f.embeds);
    }

    /// Print the case's line; returns whether it passed.
    fn finish(&self, extra: &str) -> bool {
        let worst = self
            .checked
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, e)| format!("{e:.2e} ({s})"))
            .unwrap_or_else(|| "-".into());
        let status = if self.failures.is_empty() && !self.checked.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.failures.join("; "))
        };
        println!(
            "case {}: {} stages checked, worst relative error {worst}{extra}, {status}",
            self.name,
            self.checked.len()
        );
        self.failures.is_empty() && !self.checked.is_empty()
    }
}

fn greedy(
    model: &DeepseekOcr,
    input: &PreparedInput,
    images: &[ImageFeatures],
    steps: usize,
    rule: Option<NoRepeatNgram>,
) -> dsocr::ocr::generate::GenerateOutput {
    let opts = GenerateOptions {
        max_new_tokens: steps,
        eos_token_id: None,
        no_repeat_ngram: rule,
        record_logits: true,
    };
    generate_with_images(model, input, images, &opts, &AtomicBool::new(false), |_| {})
        .unwrap_or_else(|e| panic!("generation failed: {e}"))
}

fn step_logits(out: &dsocr::ocr::generate::GenerateOutput) -> Tensor {
    out.step_logits
        .as_ref()
        .map(Tensor::shallow_clone)
        .unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu)))
}

fn run_tiny_case(model: &DeepseekOcr, dir: &Path) -> bool {
    let _no_grad = tch::no_grad_guard();
    let case = read_json(&dir.join("case.json"));
    let mut report = Report::new(dir);
    let input = prepared_input(dir, &case);
    let images = match model.encode_images(&input) {
        Ok(images) => images,
        Err(e) => {
            report.failures.push(format!("vision: {e}"));
            return report.finish("");
        }
    };
    report.vision(&images);
    let embeds = match model.input_embeds(&input, &images) {
        Ok(e) => e,
        Err(e) => {
            report.failures.push(format!("inputs_embeds: {e}"));
            return report.finish("");
        }
    };
    if !input.images.is_empty() {
        report.tensor("inputs_embeds", &embeds);
    }

    let t = embeds.size()[0];
    let mut cache = model.decoder.new_cache(t).expect("cache");
    let hidden = model.decoder.forward(&embeds, &mut cache).expect("prefill");
    let logits = model.decoder.logits(&hidden).expect("logits");
    if let Some(exp) = report.expected("prefill_logits_tail") {
        let tail = exp.size()[0];
        report.close(
            "prefill_logits_tail",
            &logits.narrow(0, t - tail, tail),
            &exp,
        );
    }
    if let Some(exp) = report.expected("prefill_argmax") {
        let exp = Vec::<i64>::try_from(exp).expect("prefill_argmax ids");
        let ours = Vec::<i64>::try_from(logits.argmax(-1, false)).expect("argmax ids");
        report.ids("prefill_argmax", &ours, &exp);
    }

    let expected_ids = ids(&case["greedy_ids"]);
    if !expected_ids.is_empty() {
        let out = greedy(model, &input, &images, expected_ids.len(), None);
        report.tensor("step_logits", &step_logits(&out));
        report.ids("greedy_ids", &out.tokens, &expected_ids);
    }
    let ngram = &case["no_repeat_ngram"];
    let ngram_ids = ids(&ngram["greedy_ids"]);
    if !ngram_ids.is_empty() {
        let rule = NoRepeatNgram {
            size: ngram["size"].as_u64().unwrap_or(0) as usize,
            window: ngram["window"].as_u64().unwrap_or(0) as usize,
            whitelist: ids(&ngram["whitelist"]),
        };
        let out = greedy(model, &input, &images, ngram_ids.len(), Some(rule));
        report.tensor("step_logits_ngram", &step_logits(&out));
        report.ids("no_repeat_ngram_greedy_ids", &out.tokens, &ngram_ids);
    }
    report.finish("")
}

fn tiny_model() -> DeepseekOcr {
    DeepseekOcr::load(&fixtures().join("tiny-model"), Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("tiny model: {e}"))
}

/// The tiny model in `kind` on the CPU, each phase on `plan`.
fn tiny_model_on(plan: Plan, kind: Kind) -> DeepseekOcr {
    DeepseekOcr::load_with(&fixtures().join("tiny-model"), Device::Cpu, kind, plan)
        .unwrap_or_else(|e| panic!("tiny model ({}): {e}", plan.describe()))
}

/// The case folders under `root`; only those named in `$DSOCR_TINY_CASES` (comma-separated)
/// when it is set (scripts/check-cpus.sh: emulated CPUs run far more slowly).
fn case_dirs(root: &Path) -> Vec<PathBuf> {
    let only = std::env::var("DSOCR_TINY_CASES").ok();
    let wanted = |p: &Path| {
        only.as_deref().is_none_or(|list| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            list.split(',').any(|c| Some(c.trim()) == name.as_deref())
        })
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").is_file() && wanted(p))
        .collect();
    dirs.sort();
    dirs
}

/// Every tiny case, stage by stage, on the path of `$DSOCR_KERNELS` (auto when unset).
fn parity_tiny_model_cases() {
    let model = tiny_model();
    println!("kernels: {} (DSOCR_KERNELS)", model.plan.describe());
    tiny_cases_f32(&model);
}

/// Every tiny case, stage by stage, on `model` (f32 weights).
fn tiny_cases_f32(model: &DeepseekOcr) {
    let mut dirs = case_dirs(&fixtures().join("cases"));
    let expected = match std::env::var("DSOCR_TINY_CASES") {
        Ok(list) => list.split(',').count(),
        Err(_) => 6,
    };
    assert!(
        dirs.len() >= expected,
        "the shipped tiny cases are missing: {dirs:?}"
    );
    dirs.extend(extra_cases().0);
    let failed: Vec<String> = dirs
        .iter()
        .filter(|dir| !run_tiny_case(model, dir))
        .map(|dir| dir.display().to_string())
        .collect();
    assert!(failed.is_empty(), "failing cases: {failed:?}");
}

/// Collects what [`generate_batch`] reports per sequence: the tokens of its events and its
/// output, and the most sequences that were decoding at once.
struct Collect {
    requests: std::vec::IntoIter<Request>,
    events: BTreeMap<usize, Vec<i64>>,
    outputs: BTreeMap<usize, GenerateOutput>,
    decoding: usize,
    most_decoding: usize,
}

impl Driver for Collect {
    fn next(&mut self) -> Option<dsocr::ocr::Result<Request>> {
        self.requests.next().map(Ok)
    }

    fn event(&mut self, seq: usize, event: GenerateEvent) {
        match event {
            GenerateEvent::Token(id) => self.events.entry(seq).or_default().push(id),
            GenerateEvent::Phase(Phase::Decode) => {
                self.decoding += 1;
                self.most_decoding = self.most_decoding.max(self.decoding);
            }
            GenerateEvent::Phase(_) => {}
        }
    }

    fn done(&mut self, seq: usize, result: dsocr::ocr::Result<GenerateOutput>) {
        self.decoding -= 1;
        let out = result.unwrap_or_else(|e| panic!("sequence {seq} failed: {e}"));
        assert!(
            self.outputs.insert(seq, out).is_none(),
            "sequence {seq} finished twice"
        );
    }
}

/// Batched greedy decoding gives every sequence exactly the tokens it gets alone: every tiny
/// case (f32), three at a time, each with its own token limit (so that sequences finish at
/// different steps and the next one takes the free slot) and its own repetition guard.
fn batch_matches_single(plan: Plan) {
    let model = tiny_model_on(plan, Kind::Float);
    let dirs = case_dirs(&fixtures().join("cases"));
    assert!(!dirs.is_empty(), "no tiny cases");
    let rule = NoRepeatNgram {
        size: 3,
        window: 16,
        whitelist: Vec::new(),
    };
    let mut inputs = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let input = prepared_input(dir, &read_json(&dir.join("case.json")));
        let opts = GenerateOptions {
            max_new_tokens: 5 + 4 * i,
            eos_token_id: Some(-1),
            no_repeat_ngram: (i % 2 == 0).then(|| rule.clone()),
            record_logits: false,
        };
        let images = model.encode_images(&input).expect("vision");
        let alone = generate_with_images(
            &model,
            &input,
            &images,
            &opts,
            &AtomicBool::new(false),
            |_| {},
        )
        .expect("generation alone");
        assert_eq!(alone.tokens.len(), opts.max_new_tokens);
        inputs.push((input, images, opts, alone.tokens));
    }
    let requests: Vec<Request> = inputs
        .iter()
        .map(|(input, images, opts, _)| Request {
            input: input.shallow_clone(),
            images: Some(images.iter().map(ImageFeatures::shallow_clone).collect()),
            opts: opts.clone(),
        })
        .collect();
    let mut collect = Collect {
        requests: requests.into_iter(),
        events: BTreeMap::new(),
        outputs: BTreeMap::new(),
        decoding: 0,
        most_decoding: 0,
    };
    generate_batch(&model, 3, &mut collect);
    assert_eq!(
        collect.outputs.len(),
        inputs.len(),
        "every sequence reports once"
    );
    assert_eq!(
        collect.most_decoding,
        3.min(inputs.len()),
        "sequences decoded together"
    );
    for (seq, (dir, (_, _, _, alone))) in dirs.iter().zip(&inputs).enumerate() {
        let out = &collect.outputs[&seq];
        println!(
            "{}: {} tokens, batch = alone: {}",
            dir.display(),
            out.tokens.len(),
            &out.tokens == alone
        );
        assert_eq!(
            &out.tokens,
            alone,
            "{}: batched tokens differ",
            dir.display()
        );
        assert_eq!(
            collect.events.get(&seq),
            Some(alone),
            "{}: streamed tokens",
            dir.display()
        );
        assert_eq!(out.stop, StopReason::MaxTokens);
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run_seeded_case(dir: &Path) -> bool {
    let _no_grad = tch::no_grad_guard();
    let case = read_json(&dir.join("case.json"));
    let mut report = Report::new(dir);
    let seed = case["seed"].as_i64().expect("seed in case.json");
    let cfg = Config::from_file(&fixtures().join("real-checkpoint/config.json")).expect("config");
    let start = Instant::now();
    let model = DeepseekOcr::seeded(cfg, seed, Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("seeded model: {e}"));
    let init = start.elapsed();
    println!("kernels: {} (DSOCR_KERNELS)", model.plan.describe());

    let input = prepared_input(dir, &case);
    let start = Instant::now();
    let images = model.encode_images(&input).expect("vision");
    let vision = start.elapsed();
    let head = images
        .first()
        .and_then(|f| Some((f, report.expected("proj_global_head")?)));
    if let Some((f, exp)) = head {
        let rows = exp.size()[0];
        let head = f
            .global
            .proj
            .reshape([-1, exp.size()[1]])
            .narrow(0, 0, rows);
        report.close("proj_global_head", &head, &exp);
    }
    let expected_ids = ids(&case["greedy_ids"]);
    let out = greedy(&model, &input, &images, expected_ids.len(), None);
    let logits = step_logits(&out);
    let first = logits.get(0);
    report.tensor("prefill_last_logits", &first);
    // Every greedy step's logits (f32, logit by logit): the case's row i holds the logits after
    // feeding greedy id i, our row i + 1.
    if let Some(exp) = report.expected("step_logits") {
        let n = (logits.size()[0] - 1).min(exp.size()[0]);
        report.close("step_logits", &logits.narrow(0, 1, n), &exp.narrow(0, 0, n));
    }
    let top_ids = ids(&case["prefill_top10_ids"]);
    let top_values: Vec<f32> = case["prefill_top10_logits"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|v| v as f32)
                .collect()
        })
        .unwrap_or_default();
    if !top_ids.is_empty() {
        let ours = first.index_select(0, &Tensor::from_slice(&top_ids));
        report.close(
            "prefill_top10_logits",
            &ours,
            &Tensor::from_slice(&top_values),
        );
    }
    report.ids("greedy_ids", &out.tokens, &expected_ids);

    let t = &out.timings;
    let steps = out.tokens.len().saturating_sub(1);
    let reference = &case["reference_cpu_seconds"];
    let timing = format!(
        "; seconds: init {:.1} (ref {}), vision {:.2} (ref {}), prefill incl. vision {:.2} \
         (ref {}), decode {} forward steps {:.2} = {:.2} tokens/s (ref {} s for {} steps), \
         threads {}",
        secs(init),
        reference["init"],
        secs(vision),
        reference["vision"],
        secs(vision + t.prefill),
        reference["prefill_incl_vision"],
        steps,
        secs(t.decode),
        t.tokens_per_second(steps),
        reference["decode"],
        reference["decode_steps"],
        tch::get_num_threads(),
    );
    report.finish(&timing)
}

/// Held by the trials that build a full-size model, so that two never share the memory.
static FULL_SIZE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The full-size architecture with seeded weights (about 14 GB in f32, a few minutes on 2 cores).
fn parity_full_size_seeded_cases() {
    let _one_at_a_time = FULL_SIZE.lock().unwrap_or_else(|e| e.into_inner());
    let mut dirs = vec![fixtures().join("full-seeded-base-1x1")];
    dirs.extend(extra_cases().1);
    let failed: Vec<String> = dirs
        .iter()
        .filter(|dir| !run_seeded_case(dir))
        .map(|dir| dir.display().to_string())
        .collect();
    assert!(failed.is_empty(), "failing cases: {failed:?}");
}

/// The checkpoint the model's loaders declare for `cfg`.
fn expected_shapes(cfg: &Config) -> ShapeMap {
    DeepseekOcr::checkpoint_shapes(cfg).expect("declared checkpoint")
}

fn contract_holds_for_the_real_checkpoint_index() {
    let dir = fixtures().join("real-checkpoint");
    let cfg = Config::from_file(&dir.join("config.json")).expect("real config");
    let index = read_json(&dir.join("model.safetensors.index.json"));
    let names: Vec<&String> = index["weight_map"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(names.len(), 2710);
    let expected = expected_shapes(&cfg);
    let ours: Vec<&String> = expected.keys().collect();
    let mut theirs = names.clone();
    theirs.sort();
    assert_eq!(
        ours, theirs,
        "tensor names implied by the config differ from the index"
    );
    // The shapes: the index gives the total size; every tensor is bf16 (2 bytes).
    let params: i64 = expected.values().map(|s| s.iter().product::<i64>()).sum();
    assert_eq!(Some(params * 2), index["metadata"]["total_size"].as_i64());
}

fn contract_holds_for_the_tiny_model() {
    let dir = fixtures().join("tiny-model");
    let cfg = Config::from_file(&dir.join("config.json")).expect("tiny config");
    let listed: BTreeMap<String, Vec<i64>> = read_json(&dir.join("tensor_shapes.json"))["names"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), ids(v))).collect())
        .unwrap_or_default();
    assert_eq!(expected_shapes(&cfg), listed);
    // SAFETY: the tensors are only compared while `w` lives.
    let w = unsafe { Weights::load(&dir.join("model.safetensors"), Kind::BFloat16, Device::Cpu) }
        .expect("tiny weights");
    assert_eq!(w.shapes(), listed);
}

fn seeded_weights_follow_the_fixture_rule() {
    // Draws for a small config, replayed here by hand: sorted names, one generator.
    let cfg = Config::from_file(&fixtures().join("tiny-model/config.json")).expect("config");
    let w = Weights::seeded(&expected_shapes(&cfg), 7, Kind::Float, Device::Cpu).expect("seeded");
    // Other tests of this binary draw from the same global generator at the same time.
    let rng = dsocr::ocr::weights::lock_global_rng();
    tch::manual_seed(7);
    for (name, shape) in expected_shapes(&cfg) {
        let z = Tensor::randn(&shape, (Kind::Float, Device::Cpu));
        let got = w.get(&name).expect("tensor");
        let want = if name == "model.embed_tokens.weight" {
            z
        } else if shape.len() == 1 && name.ends_with("weight") {
            z * 0.1 + 1.0
        } else if shape.len() == 1 {
            z * 0.02
        } else {
            z / (shape[1..].iter().product::<i64>() as f64).sqrt()
        };
        assert!(got.equal(&want), "{name} differs from the seeded rule");
    }
    drop(rng);
    let bf16 =
        Weights::seeded(&expected_shapes(&cfg), 7, Kind::BFloat16, Device::Cpu).expect("bf16");
    let a = bf16.get("lm_head.weight").expect("lm_head");
    let b = w
        .get("lm_head.weight")
        .expect("lm_head")
        .to_kind(Kind::BFloat16);
    assert!(
        a.equal(&b),
        "the bf16 seeded weights are not the f32 ones rounded"
    );
}

/// The text-only case's prompt (no image), for the generation API tests.
fn text_only_input() -> (PreparedInput, Vec<i64>) {
    let dir = fixtures().join("cases/text-only");
    let case = read_json(&dir.join("case.json"));
    (prepared_input(&dir, &case), ids(&case["greedy_ids"]))
}

fn generate_reports_phases_tokens_and_stops() {
    let model = tiny_model();
    let (input, expected) = text_only_input();
    let never = AtomicBool::new(false);
    let opts = GenerateOptions {
        max_new_tokens: 5,
        no_repeat_ngram: None,
        ..GenerateOptions::default()
    };
    let mut events = Vec::new();
    let out = generate(&model, &input, &opts, &never, |e| events.push(e)).expect("generate");
    assert_eq!(out.stop, StopReason::MaxTokens);
    assert_eq!(out.tokens, expected[..5]);
    assert_eq!(out.prompt_tokens, input.input_ids.len());
    let mut want = vec![
        GenerateEvent::Phase(Phase::Vision),
        GenerateEvent::Phase(Phase::Prefill),
        GenerateEvent::Phase(Phase::Decode),
    ];
    want.extend(expected[..5].iter().map(|&id| GenerateEvent::Token(id)));
    assert_eq!(events, want);

    // The third greedy token as the stop token: generation ends on it, and includes it.
    let eos = GenerateOptions {
        eos_token_id: Some(expected[2]),
        ..opts.clone()
    };
    let out = generate(&model, &input, &eos, &never, |_| {}).expect("generate");
    assert_eq!(out.stop, StopReason::Eos);
    assert_eq!(out.tokens, expected[..3]);
}

fn generate_honours_the_cancel_flag() {
    let model = tiny_model();
    let (input, _) = text_only_input();
    let opts = GenerateOptions {
        max_new_tokens: 20,
        ..GenerateOptions::default()
    };
    // Already set: nothing runs after the vision phase.
    let set = AtomicBool::new(true);
    let out = generate(&model, &input, &opts, &set, |_| {}).expect("generate");
    assert_eq!((out.stop, out.tokens.len()), (StopReason::Cancelled, 0));
    // Set from the callback after the third token: the next step sees it.
    let flag = AtomicBool::new(false);
    let mut seen = 0;
    let out = generate(&model, &input, &opts, &flag, |e| {
        if let GenerateEvent::Token(_) = e {
            seen += 1;
            if seen == 3 {
                flag.store(true, Ordering::Relaxed);
            }
        }
    })
    .expect("generate");
    assert_eq!((out.stop, out.tokens.len()), (StopReason::Cancelled, 3));
}

fn prompt_image_tokens_must_match_the_features() {
    let model = tiny_model();
    let dir = fixtures().join("cases/base");
    let case = read_json(&dir.join("case.json"));
    let mut input = prepared_input(&dir, &case);
    let images = model.encode_images(&input).expect("vision");
    // One placeholder fewer than the image's rows: a clear error, not a panic.
    if let Some(i) = input.image_mask.iter().position(|&m| m) {
        input.image_mask[i] = false;
    }
    let error_of = |input: &_| {
        model
            .input_embeds(input, &images)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = error_of(&input);
    assert!(
        err.contains("272 image tokens") && err.contains("273"),
        "{err}"
    );
    input.input_ids[0] = 100_000;
    let err = error_of(&input);
    assert!(
        err.contains("100000") && err.contains("vocabulary"),
        "{err}"
    );
}

/// A scratch folder (removed on drop) holding the tiny config and a safetensors file built by
/// `edit`.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = common::scratch(&format!("engine-{tag}"));
        std::fs::copy(
            fixtures().join("tiny-model/config.json"),
            dir.path().join("config.json"),
        )
        .expect("copy config");
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn weights(&self) -> PathBuf {
        self.path().join("model.safetensors")
    }

    fn write_tensors(&self, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
        let mut list = Tensor::read_safetensors(fixtures().join("tiny-model/model.safetensors"))
            .expect("tiny weights");
        edit(&mut list);
        Tensor::write_safetensors(&list, self.weights()).expect("write safetensors");
    }

    fn load_error(&self) -> String {
        match DeepseekOcr::load(self.path(), Device::Cpu, Kind::Float) {
            Ok(_) => panic!("loading {} should fail", self.path().display()),
            Err(e) => e.to_string(),
        }
    }
}

fn assert_names(err: &str, file: &Path, tensor: &str, what: &str) {
    assert!(
        err.contains(&file.display().to_string()),
        "no file in: {err}"
    );
    assert!(err.contains(tensor), "no tensor name in: {err}");
    assert!(err.contains(what), "no {what:?} in: {err}");
}

fn load_error_missing_tensor() {
    let s = Scratch::new("missing");
    let name = "model.layers.1.mlp.gate.weight";
    s.write_tensors(|l| l.retain(|(n, _)| n != name));
    assert_names(&s.load_error(), &s.weights(), name, "missing");
}

fn load_error_unexpected_tensor() {
    let s = Scratch::new("unexpected");
    let name = "model.layers.1.mlp.bonus.weight";
    s.write_tensors(|l| l.push((name.into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))));
    assert_names(&s.load_error(), &s.weights(), name, "unexpected");
}

fn load_error_misshaped_tensor() {
    let s = Scratch::new("misshaped");
    let name = "model.norm.weight";
    s.write_tensors(|l| {
        for (n, t) in l.iter_mut() {
            if n == name {
                *t = Tensor::ones([65], (Kind::BFloat16, Device::Cpu));
            }
        }
    });
    let err = s.load_error();
    assert_names(&err, &s.weights(), name, "[65]");
    assert!(err.contains("[64]"), "{err}");
}

fn load_error_truncated_file() {
    let s = Scratch::new("truncated");
    s.write_tensors(|_| {});
    let bytes = std::fs::read(s.weights()).expect("read");
    std::fs::write(s.weights(), &bytes[..bytes.len() - 100]).expect("truncate");
    // The tensor stored last is the one whose data is cut.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    let last = header
        .as_object()
        .and_then(|m| {
            m.iter()
                .filter(|(k, _)| *k != "__metadata__")
                .max_by_key(|(_, v)| v["data_offsets"][1].as_u64())
        })
        .map(|(k, _)| k.clone())
        .expect("a tensor");
    assert_names(&s.load_error(), &s.weights(), &last, "truncated");
}

fn load_error_bad_header() {
    let s = Scratch::new("header");
    let cases: [(&str, Vec<u8>); 3] = [
        ("tiny file", vec![1, 2, 3]),
        ("header length past the end", {
            let mut b = 1_000_000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("not JSON", {
            let mut b = 8u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"not json");
            b
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(s.weights(), bytes).expect("write");
        let err = s.load_error();
        assert!(err.contains("bad safetensors header"), "{what}: {err}");
        assert!(
            err.contains(&s.weights().display().to_string()),
            "{what}: {err}"
        );
    }
}

fn load_error_missing_files() {
    let s = Scratch::new("files");
    let err = s.load_error();
    assert!(err.contains("no *.safetensors"), "{err}");
    std::fs::remove_file(s.path().join("config.json")).expect("remove config");
    let err = s.load_error();
    assert!(err.contains("no config.json"), "{err}");
}

fn bf16_follows_f32_on_the_tiny_cases() {
    // bf16 weights and matmuls (norms, gate, logits in f32): prefill logits within bf16 accuracy
    // of the f32 run, on an image case and on the text-only case.
    let dir = fixtures().join("tiny-model");
    let f32 = tiny_model();
    let bf16 = DeepseekOcr::load(&dir, Device::Cpu, Kind::BFloat16).expect("bf16 tiny model");
    for case in ["base", "text-only"] {
        let cdir = fixtures().join("cases").join(case);
        let input = prepared_input(&cdir, &read_json(&cdir.join("case.json")));
        let run = |m: &DeepseekOcr| {
            let images = m.encode_images(&input).expect("vision");
            let out = greedy(m, &input, &images, 1, None);
            step_logits(&out).get(0)
        };
        let (a, b) = (run(&f32), run(&bf16));
        assert_eq!(b.kind(), Kind::Float, "logits are returned as f32");
        let rel =
            (&a - &b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]).max(1.0);
        println!("bf16 vs f32 {case}: relative max difference {rel:.3e}");
        assert!(
            rel < 0.05,
            "{case}: bf16 logits differ from f32 by {rel:.3e}"
        );
    }
}

/// A CPU decode step on `isa` runs on slice kernels (norms, rotary, attention, gate, experts)
/// and the product pool; the same steps as libtorch operations (the decode phase on libtorch's
/// path, the same f32 arithmetic) must give the same logits up to f32 summation order, over f32
/// and bf16 weights, for the whole greedy run of a case.
fn decode_step_matches_libtorch(isa: Isa) {
    let dir = fixtures().join("tiny-model");
    let cdir = fixtures().join("cases").join("tiny");
    let case = read_json(&cdir.join("case.json"));
    let input = prepared_input(&cdir, &case);
    let steps = ids(&case["greedy_ids"]).len().max(4);
    let kernels = Plan::all(isa);
    let torch_step = Plan {
        decode: Compute::Libtorch,
        ..kernels
    };
    for kind in [Kind::Float, Kind::BFloat16] {
        let load =
            |plan| DeepseekOcr::load_with(&dir, Device::Cpu, kind, plan).expect("tiny model");
        let (model, reference) = (load(kernels), load(torch_step));
        assert_eq!(
            model.compute, reference.compute,
            "same arithmetic on both paths"
        );
        let images = model.encode_images(&input).expect("vision");
        let ours = greedy(&model, &input, &images, steps, None);
        let libtorch = greedy(&reference, &input, &images, steps, None);
        let (a, b) = (step_logits(&ours), step_logits(&libtorch));
        assert_eq!(a.size(), [steps as i64, model.decoder.vocab_size()]);
        let rel =
            (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0);
        println!(
            "{kind:?} weights: {} one-token kernels vs libtorch, relative max difference {rel:.2e}",
            isa.tier()
        );
        assert!(
            rel < 1e-4,
            "{kind:?}: kernels differ from libtorch by {rel:.2e}"
        );
        assert_eq!(ours.tokens, libtorch.tokens, "{kind:?}: greedy ids differ");
    }
    // f16 weights on the CPU (f32 arithmetic) take the libtorch step: it must run too.
    let f16 = DeepseekOcr::load_with(&dir, Device::Cpu, Kind::Half, kernels).expect("f16 model");
    let images = f16.encode_images(&input).expect("f16 vision");
    assert_eq!(greedy(&f16, &input, &images, 3, None).tokens.len(), 3);
}

/// Tolerance of a bf16 run against the reference's f32 logits: `max|a - b| / max(1, max|b|)`.
/// bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3 per value); activations are
/// rounded after every matmul, residual add and norm, and the errors add up through SAM, CLIP,
/// the projector and the decoder layers. Measured on the tiny cases (CPU, bf16): 1e-2 without
/// vision, 1e-2 to 8e-2 with it (the tiny model's small widths average little of the rounding
/// away). 0.15 leaves a margin and still catches real bugs (a wrong weight, layout or position
/// gives errors of order 1); the top-1 rule below is the sharper check.
const BF16_LOGITS_TOL: f64 = 0.15;

/// A bf16 run teacher-forced along the reference's greedy ids: the worst relative logits error
/// and the steps whose top-1 differs from the reference's id although the reference's margin
/// between its top two logits exceeds twice the max abs error seen (bf16 noise cannot explain
/// a flip there).
struct Bf16Check {
    rel_err: f64,
    agree: usize,
    steps: usize,
    bad_flips: Vec<usize>,
}

impl Bf16Check {
    fn passed(&self) -> bool {
        self.rel_err <= BF16_LOGITS_TOL && self.bad_flips.is_empty()
    }

    fn line(&self, name: &str) -> String {
        format!(
            "case {name}: bf16 logits rel err {:.2e} (tol {BF16_LOGITS_TOL}), top-1 agrees \
             on {}/{} steps, unexplained flips at {:?}",
            self.rel_err, self.agree, self.steps, self.bad_flips
        )
    }
}

/// Run `input` through `model` feeding every one of `forced` (the reference's greedy ids) and
/// compare our logits with `expected` `[n, V]` (f32, CPU): with `shift` 0, the logits before
/// each step (row 0 from the prefill; the tiny cases' `step_logits`); with `shift` 1, the logits
/// after feeding each id (the seeded case's `step_logits`). Top-1 is checked against the
/// reference's own choice in each row.
fn teacher_forced(
    model: &DeepseekOcr,
    input: &PreparedInput,
    forced: &[i64],
    expected: &Tensor,
    shift: i64,
) -> Bf16Check {
    let _no_grad = tch::no_grad_guard();
    let images = model.encode_images(input).expect("vision");
    let embeds = model.input_embeds(input, &images).expect("embeds");
    let t = embeds.size()[0];
    let mut cache = model
        .decoder
        .new_cache(t + forced.len() as i64)
        .expect("cache");
    let hidden = model.decoder.forward(&embeds, &mut cache).expect("prefill");
    let mut logits = vec![
        model
            .decoder
            .logits(&hidden.narrow(0, t - 1, 1))
            .expect("logits"),
    ];
    for &id in forced {
        let e = model
            .decoder
            .embed(&Tensor::from_slice(&[id]))
            .expect("embed");
        let h = model.decoder.forward(&e, &mut cache).expect("decode step");
        logits.push(model.decoder.logits(&h).expect("logits"));
    }
    let ours = Tensor::cat(&logits, 0).to_device(Device::Cpu);
    let rows = expected.size()[0];
    let compared = ours.narrow(0, shift, rows);
    let abs_err = (&compared - expected).abs().max().double_value(&[]);
    let rel_err = abs_err / expected.abs().max().double_value(&[]).max(1.0);
    let top = expected.topk(2, -1, true, true).0;
    let want = Vec::<i64>::try_from(expected.argmax(-1, false)).expect("argmax");
    let got = Vec::<i64>::try_from(compared.argmax(-1, false)).expect("argmax");
    let mut check = Bf16Check {
        rel_err,
        agree: 0,
        steps: rows as usize,
        bad_flips: Vec::new(),
    };
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let margin = top.double_value(&[i as i64, 0]) - top.double_value(&[i as i64, 1]);
        if g == w {
            check.agree += 1;
        } else if margin > 2.0 * abs_err {
            check.bad_flips.push(i);
        }
    }
    check
}

/// Every tiny case with greedy ids, bf16 on `device` and `plan`, against the f32 reference
/// expectations (teacher-forced logits within [`BF16_LOGITS_TOL`], and no top-1 flip that bf16
/// noise cannot explain).
fn bf16_tiny_cases(device: Device, plan: Plan) {
    let model =
        DeepseekOcr::load_with(&fixtures().join("tiny-model"), device, Kind::BFloat16, plan)
            .unwrap_or_else(|e| panic!("tiny model in bf16: {e}"));
    println!(
        "kernels: {}, {} arithmetic",
        plan.describe(),
        dsocr::ocr::device::kind_name(model.compute)
    );
    let mut failed = Vec::new();
    for dir in case_dirs(&fixtures().join("cases")) {
        let case = read_json(&dir.join("case.json"));
        let forced = ids(&case["greedy_ids"]);
        let report = Report::new(&dir);
        let Some(expected) = report.expected.get("step_logits") else {
            panic!(
                "{}: step_logits missing from expected.safetensors",
                report.name
            );
        };
        let check = teacher_forced(&model, &prepared_input(&dir, &case), &forced, expected, 0);
        println!("{}", check.line(&report.name));
        if !check.passed() {
            failed.push(report.name.clone());
        }
    }
    assert!(failed.is_empty(), "bf16 parity fails on {failed:?}");
}

/// CUDA bf16 against the reference's f32 numbers: the tiny cases, then the full-size seeded case
/// (prefill logits within the bf16 tolerance; top-1 agreement over the reference's greedy ids,
/// teacher-forced). Needs a GPU: `cargo test --release --test engine -- --ignored cuda`, or
/// scripts/gpu-check.sh with a test binary built elsewhere.
fn cuda_bf16_tracks_the_f32_reference() {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device: this check only means something on a GPU"
    );
    let device = Device::Cuda(0);
    bf16_tiny_cases(device, Plan::libtorch());
    seeded_bf16_teacher_forced(device);
}

/// The tiny cases stage by stage in f32 on CUDA (libtorch's path), against the reference's CPU
/// f32 numbers. Needs a GPU: scripts/gpu-check.sh.
fn cuda_f32_tiny_cases() {
    assert!(tch::Cuda::is_available(), "no CUDA device");
    let model = DeepseekOcr::load_with(
        &fixtures().join("tiny-model"),
        Device::Cuda(0),
        Kind::Float,
        Plan::libtorch(),
    )
    .unwrap_or_else(|e| panic!("tiny model on CUDA: {e}"));
    tiny_cases_f32(&model);
}

/// The full-size seeded case in bf16 on CPU through libtorch's path (the operators CUDA runs),
/// teacher-forced along the reference's greedy ids and compared logit by logit with the
/// reference's f32 logits of every step (`step_logits`; seeded logits are nearly flat, so top-1
/// alone would say little): the check scripts/gpu-check.sh runs on CUDA, proven here first.
fn parity_seeded_bf16_libtorch() {
    let _one_at_a_time = FULL_SIZE.lock().unwrap_or_else(|e| e.into_inner());
    seeded_bf16_teacher_forced(Device::Cpu);
}

/// [`parity_seeded_bf16_libtorch`] on `device`.
fn seeded_bf16_teacher_forced(device: Device) {
    let dir = fixtures().join("full-seeded-base-1x1");
    let case = read_json(&dir.join("case.json"));
    let seed = case["seed"].as_i64().expect("seed in case.json");
    let cfg = Config::from_file(&fixtures().join("real-checkpoint/config.json")).expect("config");
    let model = DeepseekOcr::seeded_with(cfg, seed, device, Kind::BFloat16, Plan::libtorch())
        .unwrap_or_else(|e| panic!("seeded model on {device:?}: {e}"));
    let forced = ids(&case["greedy_ids"]);
    let report = Report::new(&dir);
    let steps = report
        .expected
        .get("step_logits")
        .expect("step_logits in the seeded case");
    let check = teacher_forced(&model, &prepared_input(&dir, &case), &forced, steps, 1);
    println!("{}", check.line("full-seeded-base-1x1"));
    assert!(check.passed(), "{}", check.line("full-seeded-base-1x1"));
}

/// The tiny architecture with the real checkpoint's layer and expert counts (small widths): the
/// same operators per decode step as the full-size model, in a few MB.
fn real_depth_tiny_config() -> Config {
    let mut cfg = read_json(&fixtures().join("tiny-model/config.json"));
    let real = read_json(&fixtures().join("real-checkpoint/config.json"));
    for key in [
        "num_hidden_layers",
        "first_k_dense_replace",
        "n_routed_experts",
        "num_experts_per_tok",
        "n_shared_experts",
    ] {
        cfg["language_config"][key] = real["language_config"][key].clone();
    }
    Config::from_json(&cfg.to_string()).expect("config")
}

/// The operators and host reads of one decode step (choice of the next id, its embedding, the
/// decoder, the logits) on libtorch's path, the sequence CUDA runs, for the real architecture's
/// depth: counted by libtorch's RecordFunction hook over 8 steps after a prefill.
fn decode_ops_per_token() {
    use dsocr::ocr::generate::{choose, next_logits};
    use dsocr::ocr::opcount::Counter;
    let _no_grad = tch::no_grad_guard();
    let cfg = real_depth_tiny_config();
    let layers = cfg.language_config.num_hidden_layers;
    for kind in [Kind::Float, Kind::BFloat16] {
        let model = DeepseekOcr::seeded_with(cfg.clone(), 5, Device::Cpu, kind, Plan::libtorch())
            .expect("seeded model");
        let (input, _) = text_only_input();
        let embeds = model.input_embeds(&input, &[]).expect("embeds");
        let steps = 8;
        let t = embeds.size()[0];
        let mut cache = model.decoder.new_cache(t + steps + 1).expect("cache");
        let hidden = model.decoder.forward(&embeds, &mut cache).expect("prefill");
        let mut logits = model
            .decoder
            .logits(&hidden.narrow(0, t - 1, 1))
            .expect("logits");
        let mut tokens = Vec::new();
        let counter = Counter::start().expect("counter");
        for _ in 0..steps {
            let id = choose(&logits, &tokens, None).expect("choose");
            tokens.push(id);
            logits = next_logits(&model, &mut cache, id).expect("step");
        }
        let c = counter.stop();
        let per = |n: i64| n as f64 / steps as f64;
        let by_name: Vec<String> = dsocr::ocr::opcount::last_count_by_name()
            .iter()
            .map(|(name, n)| format!("{} {:.1}", name.trim_start_matches("aten::"), per(*n)))
            .collect();
        println!(
            "{kind:?}, {layers} layers, libtorch path: per decode token {:.1} operators issued \
             ({:.1} with nested ones), {:.1} host reads",
            per(c.top),
            per(c.all),
            per(c.host_reads)
        );
        println!("  per token by operator: {}", by_name.join(", "));
        // On CUDA the one read is the chosen id's copy to the host; on the CPU that copy is
        // plain memory and the count sees none.
        assert!(per(c.host_reads) <= 1.0, "host reads per token: {c:?}");
        assert!(
            per(c.top) <= OPS_PER_TOKEN_CEILING,
            "operators per token: {c:?}"
        );
    }
}

/// Most operators one decode token may issue on libtorch's path (see [`decode_ops_per_token`]).
const OPS_PER_TOKEN_CEILING: f64 = 430.0;

/// The compute paths the tiny parity set runs through: libtorch's ops (what CUDA runs), then
/// each CPU tier.
fn paths() -> Vec<(&'static str, Option<Tier>)> {
    let mut paths = vec![("libtorch", None)];
    paths.extend(Tier::ALL.iter().map(|&t| (t.name(), Some(t))));
    paths
}

/// The plan of a path, or why this machine cannot run it.
fn plan_of(tier: Option<Tier>) -> Result<Plan, String> {
    match tier {
        None => Ok(Plan::libtorch()),
        Some(t) => Isa::new(t)
            .map(Plan::all)
            .ok_or_else(|| format!("this CPU lacks the {t} tier (needs {})", t.needs())),
    }
}

/// A trial that panics on failure.
fn trial(name: &str, run: fn()) -> Trial {
    Trial::test(name, move || {
        run();
        Ok(())
    })
}

/// A trial for a CPU tier: ignored, with the reason, when this CPU lacks it.
fn tier_trial(name: String, tier: Option<Tier>, run: impl FnOnce(Plan) + Send + 'static) -> Trial {
    Trial::ignorable_test(name, move || match plan_of(tier) {
        Ok(plan) => {
            run(plan);
            Ok(Completion::Completed)
        }
        Err(why) => {
            println!("skipped: {why}");
            Ok(Completion::ignored_with(why))
        }
    })
}

/// `auto` picks the fastest tier this CPU has (`$DSOCR_EXPECT_AUTO`, when set, names the tier
/// it must be: scripts/check-cpus.sh sets it for each emulated CPU).
fn auto_picks_the_fastest_tier() -> Result<(), Failed> {
    let plan = Kernels::Auto.plan(Device::Cpu).map_err(|e| e.to_string())?;
    println!("auto on this CPU: {}", plan.describe());
    let want = if cfg!(target_arch = "x86_64") {
        Plan::all(Isa::best())
    } else {
        Plan::libtorch()
    };
    if plan != want {
        return Err(format!(
            "auto planned {}, expected {}",
            plan.describe(),
            want.describe()
        )
        .into());
    }
    match std::env::var("DSOCR_EXPECT_AUTO") {
        Ok(name) if name != plan.describe() => Err(format!(
            "auto planned {}, DSOCR_EXPECT_AUTO says {name}",
            plan.describe()
        )
        .into()),
        _ => Ok(()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = vec![
        trial("parity_tiny_model_cases", parity_tiny_model_cases),
        trial("decode_ops_per_token", decode_ops_per_token),
        trial("parity_seeded_bf16_libtorch", parity_seeded_bf16_libtorch),
        trial(
            "parity_full_size_seeded_cases",
            parity_full_size_seeded_cases,
        ),
        trial(
            "contract_holds_for_the_real_checkpoint_index",
            contract_holds_for_the_real_checkpoint_index,
        ),
        trial(
            "contract_holds_for_the_tiny_model",
            contract_holds_for_the_tiny_model,
        ),
        trial(
            "seeded_weights_follow_the_fixture_rule",
            seeded_weights_follow_the_fixture_rule,
        ),
        trial(
            "generate_reports_phases_tokens_and_stops",
            generate_reports_phases_tokens_and_stops,
        ),
        trial(
            "generate_honours_the_cancel_flag",
            generate_honours_the_cancel_flag,
        ),
        trial(
            "prompt_image_tokens_must_match_the_features",
            prompt_image_tokens_must_match_the_features,
        ),
        trial("load_error_missing_tensor", load_error_missing_tensor),
        trial("load_error_unexpected_tensor", load_error_unexpected_tensor),
        trial("load_error_misshaped_tensor", load_error_misshaped_tensor),
        trial("load_error_truncated_file", load_error_truncated_file),
        trial("load_error_bad_header", load_error_bad_header),
        trial("load_error_missing_files", load_error_missing_files),
        trial(
            "bf16_follows_f32_on_the_tiny_cases",
            bf16_follows_f32_on_the_tiny_cases,
        ),
        Trial::test(
            "kernels::auto_picks_the_fastest_tier",
            auto_picks_the_fastest_tier,
        ),
        trial(
            "cuda_bf16_tracks_the_f32_reference",
            cuda_bf16_tracks_the_f32_reference,
        )
        .with_ignored_flag(true),
        trial("cuda_f32_tiny_cases", cuda_f32_tiny_cases).with_ignored_flag(true),
    ];
    for (name, tier) in paths() {
        trials.push(tier_trial(
            format!("parity_tiny::{name}::f32"),
            tier,
            |plan| tiny_cases_f32(&tiny_model_on(plan, Kind::Float)),
        ));
        trials.push(tier_trial(
            format!("batch_matches_single::{name}::f32"),
            tier,
            batch_matches_single,
        ));
        trials.push(tier_trial(
            format!("parity_tiny::{name}::bf16"),
            tier,
            |plan| bf16_tiny_cases(Device::Cpu, plan),
        ));
        if tier.is_some() {
            trials.push(tier_trial(
                format!("kernels::{name}::decode_step_matches_libtorch"),
                tier,
                |plan| decode_step_matches_libtorch(plan.decode.isa().expect("a tier")),
            ));
        }
    }
    for tier in Tier::ALL {
        for &(test, run) in kernels::TESTS {
            if tier != Tier::Avx512 && test.starts_with("relpos_attn") {
                continue;
            }
            trials.push(tier_trial(
                format!("kernels::{}::{test}", tier.name()),
                Some(tier),
                move |plan| {
                    // These draw from libtorch's global generator (and seed it): never while a
                    // seeded model is being drawn on another thread.
                    let _rng = dsocr::ocr::weights::lock_global_rng();
                    run(plan.decode.isa().expect("a tier"))
                },
            ));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
