//! One loaded model and its tokenizer, and the per-image run every front end uses: load and
//! preprocess the image, build the prompt, generate with a cancel flag while streaming text
//! through a callback, then parse the grounding spans; [`OcrOutput::write`] writes the
//! reference's output files.
//!
//! ```no_run
//! # use std::sync::atomic::AtomicBool;
//! # use dsocr::ocr::session::{Event, RunOptions, Session};
//! # fn demo() -> dsocr::ocr::Result<()> {
//! let session = Session::load(
//!     "DeepSeek-OCR".as_ref(),
//!     tch::Device::Cpu,
//!     tch::Kind::Float,
//! )?;
//! let cancel = AtomicBool::new(false);
//! let out = session.run("page.png".as_ref(), &RunOptions::default(), &cancel, |ev| {
//!     if let Event::Text { piece, .. } = ev {
//!         print!("{piece}");
//!     }
//! })?;
//! out.write("out/page".as_ref())?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;
use tch::{Device, Kind};

use super::cpu::{Kernels, Plan};
use super::error::{OcrError, Result};
use super::generate::{
    BatchChoice, Driver, GenerateEvent, GenerateOptions, GenerateOutput, NoRepeatNgram, Request,
    StopReason, default_batch, generate_batch,
};
use super::grounding::{self, LabeledBox};
use super::model::{DeepseekOcr, ImageInput, PreparedInput};
use super::preprocess::{self, DEFAULT_MAX_TILES, Mode};
use super::prompt::{EOS_TEXT, Preset, PromptTokenizer, SpecialIds, StreamDecoder};

/// A phase of one job's run through the session (an image or a page), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Decoding the image file and building the model's views and the prompt.
    Preprocess,
    /// The vision encoders.
    Vision,
    /// The prompt through the language model.
    Prefill,
    /// Token by token.
    Decode,
}

/// What the image and prompt became before the model ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// Size of the (oriented) image in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `[tiles across, tiles down]`.
    pub spatial_crop: [u32; 2],
    /// Length of the image's placeholder run.
    pub image_tokens: usize,
    /// Length of the whole prompt in tokens.
    pub prompt_tokens: usize,
    /// Time spent loading and preprocessing.
    pub elapsed: Duration,
}

/// What [`Session::run`] reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A phase begins.
    Phase(JobPhase),
    /// Preprocessing is done.
    Prepared(Prepared),
    /// A token was generated. `piece` is the text it completed (empty while a character is
    /// still incomplete; the end-of-sentence marker is never streamed, as in the reference).
    /// The last event of a run may carry text without a new token (the decoder's remainder).
    Text {
        /// New text.
        piece: String,
        /// Tokens generated so far.
        tokens: usize,
        /// Time since decoding began.
        decode_elapsed: Duration,
    },
}

/// How to run one image.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Resolution mode.
    pub mode: Mode,
    /// Most tiles in Gundam mode.
    pub max_tiles: u32,
    /// The prompt (with `<image>`).
    pub prompt: String,
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// The repetition rule (`None`: plain greedy).
    pub no_repeat_ngram: Option<NoRepeatNgram>,
    /// Leave special tokens (grounding tags) out of the streamed text.
    pub skip_special: bool,
}

impl Default for RunOptions {
    /// Gundam mode, the document preset, 8192 tokens, the official repetition rule, tags kept.
    fn default() -> Self {
        Self {
            mode: Mode::Gundam,
            max_tiles: DEFAULT_MAX_TILES,
            prompt: Preset::Document.prompt(),
            max_new_tokens: 8192,
            no_repeat_ngram: Some(NoRepeatNgram::default()),
            skip_special: false,
        }
    }
}

/// A model and tokenizer loaded once, run on any number of images.
pub struct Session {
    model: DeepseekOcr,
    tokenizer: PromptTokenizer,
}

impl Session {
    /// Check that `dir` holds a model (config.json, tokenizer.json, *.safetensors), then load
    /// the tokenizer and the weights in `kind` on `device`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load_with(dir, device, kind, Kernels::from_env()?.plan(device)?)
    }

    /// [`Self::load`] with each phase on the path of `plan`.
    pub fn load_with(dir: &Path, device: Device, kind: Kind, plan: Plan) -> Result<Self> {
        check_model_dir(dir)?;
        let tokenizer = PromptTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let model = DeepseekOcr::load_with(dir, device, kind, plan)?;
        Ok(Self { model, tokenizer })
    }

    /// OCR one image: preprocess, vision, prefill and greedy decoding, reporting phases and
    /// streamed text to `on_event`. `cancel` is checked between phases and before every token;
    /// once it is set the run stops and returns [`OcrError::Cancelled`].
    pub fn run(
        &self,
        image: &Path,
        opts: &RunOptions,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<OcrOutput> {
        self.run_one(Job::file(image, opts.clone()), cancel, on_event)
    }

    /// [`Self::run`] on an image already in memory (a rendered PDF page, an upload). `name`
    /// stands for it in the output ([`OcrOutput::image`]); `start` is when loading it began
    /// (the preprocessing time reported counts from there).
    pub fn run_image(
        &self,
        name: &Path,
        original: RgbImage,
        start: Instant,
        opts: &RunOptions,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<OcrOutput> {
        let mut job = Job::image(name, original, opts.clone());
        job.started = Some(start);
        self.run_one(job, cancel, on_event)
    }

    fn run_one(
        &self,
        job: Job,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<OcrOutput> {
        let mut one = OneJob {
            job: Some(job),
            cancel,
            on_event,
            result: None,
        };
        self.run_batch(1, &mut one);
        one.result
            .unwrap_or_else(|| Err(OcrError::Invalid("the run ended without a result".into())))
    }

    /// OCR every job `jobs` hands out, up to `batch` at a time (see
    /// [`generate_batch`]): each job is loaded and preprocessed when a slot is free for it, runs
    /// vision and prefill alone, then shares each decode step with the others. Every job gets
    /// its own events (phases, streamed text) and exactly one result, in [`Jobs::done`]; a
    /// failing job does not stop the others. Jobs are numbered from 0 in the order they are
    /// handed out.
    pub fn run_batch(&self, batch: usize, jobs: &mut impl Jobs) {
        let mut driver = Batcher {
            session: self,
            jobs,
            states: Vec::new(),
        };
        generate_batch(&self.model, batch, &mut driver);
    }

    /// The batch to use when none is asked for (see [`default_batch`]).
    pub fn default_batch(&self, max_new_tokens: usize) -> BatchChoice {
        default_batch(&self.model, max_new_tokens)
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.model.device
    }

    /// Prompt ids and pixel tensors for one image's views.
    fn prepare(&self, views: &preprocess::Views, prompt: &str) -> Result<PreparedInput> {
        let config = &self.model.config;
        let special = SpecialIds {
            bos: config.language_config.bos_token_id,
            image: config.image_token_id(),
        };
        let ids = self
            .tokenizer
            .build(prompt, &[views.num_image_tokens], special)?;
        Ok(PreparedInput {
            input_ids: ids.input_ids,
            image_mask: ids.images_seq_mask,
            images: vec![ImageInput {
                global: views.global_tensor(Kind::Float, Device::Cpu),
                tiles: views.tiles_tensor(Kind::Float, Device::Cpu),
                spatial_crop: views.spatial_crop.map(i64::from),
            }],
        })
    }

    /// Decode the tokens and parse the grounding spans as the reference does.
    fn finish(
        &self,
        image: &Path,
        original: RgbImage,
        mode: Mode,
        views: &preprocess::Views,
        generation: GenerateOutput,
    ) -> Result<OcrOutput> {
        let ids: Vec<u32> = generation
            .tokens
            .iter()
            .filter_map(|&t| u32::try_from(t).ok())
            .collect();
        let raw = self.tokenizer.decode(&ids, false)?;
        // As the reference: drop the EOS marker, strip, then parse spans and clean up.
        let text = raw.strip_suffix(EOS_TEXT).unwrap_or(&raw).trim();
        let spans = grounding::find_spans(text);
        let markdown = grounding::markdown(text, &spans);
        let boxes = grounding::boxes(&spans, original.width(), original.height());
        Ok(OcrOutput {
            image: image.to_path_buf(),
            original,
            mode,
            spatial_crop: views.spatial_crop,
            image_tokens: views.num_image_tokens,
            raw,
            markdown,
            boxes,
            generation,
        })
    }
}

/// One image for [`Session::run_batch`].
pub struct Job {
    /// The image file, or the name that stands for an image given in memory.
    pub name: PathBuf,
    /// The image when it is already in memory (a rendered PDF page, an upload); `None` reads
    /// the file `name`.
    pub image: Option<RgbImage>,
    /// How to run it.
    pub opts: RunOptions,
    /// When loading the image began (the reported preprocessing time counts from there);
    /// `None`: when the job is taken.
    pub started: Option<Instant>,
}

impl Job {
    /// The image file `path`.
    pub fn file(path: &Path, opts: RunOptions) -> Self {
        Self {
            name: path.to_path_buf(),
            image: None,
            opts,
            started: None,
        }
    }

    /// An image in memory, called `name` in the outputs.
    pub fn image(name: &Path, image: RgbImage, opts: RunOptions) -> Self {
        Self {
            name: name.to_path_buf(),
            image: Some(image),
            opts,
            started: None,
        }
    }
}

/// Where [`Session::run_batch`] gets its jobs and sends their events and results. Jobs are
/// numbered from 0 in the order [`Jobs::next`] hands them out.
pub trait Jobs {
    /// The next job, asked for whenever the batch has a free slot. `None`: nothing more for now
    /// (the running jobs go on; once none is left, [`Session::run_batch`] returns).
    fn next(&mut self) -> Option<Job>;
    /// Job `job` has a new phase, its preprocessing result, or new text.
    fn event(&mut self, job: usize, event: Event);
    /// Job `job` is over (called exactly once per job); a cancelled job gets
    /// [`OcrError::Cancelled`].
    fn done(&mut self, job: usize, result: Result<OcrOutput>);
    /// Whether job `job` should stop (checked between phases and before every token).
    fn cancelled(&self, _job: usize) -> bool {
        false
    }
}

/// The [`Jobs`] of [`Session::run`]: one job, one cancel flag, one callback.
struct OneJob<'a, F> {
    job: Option<Job>,
    cancel: &'a AtomicBool,
    on_event: F,
    result: Option<Result<OcrOutput>>,
}

impl<F: FnMut(Event)> Jobs for OneJob<'_, F> {
    fn next(&mut self) -> Option<Job> {
        self.job.take()
    }

    fn event(&mut self, _job: usize, event: Event) {
        (self.on_event)(event);
    }

    fn done(&mut self, _job: usize, result: Result<OcrOutput>) {
        self.result = Some(result);
    }

    fn cancelled(&self, _job: usize) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// What a job keeps between its preprocessing and its result.
struct JobState<'s> {
    name: PathBuf,
    original: RgbImage,
    mode: Mode,
    views: preprocess::Views,
    streamer: Streamer<'s>,
}

/// Runs [`Jobs`] through [`generate_batch`]: preprocessing as each job is handed out, events
/// turned into text, outputs parsed when a sequence ends.
struct Batcher<'s, 'j, J> {
    session: &'s Session,
    jobs: &'j mut J,
    /// By job number; `None` once the job is over (or when it failed before generating).
    states: Vec<Option<JobState<'s>>>,
}

impl<'s, J: Jobs> Batcher<'s, '_, J> {
    /// Load and preprocess job `index`, and build its prompt.
    fn prepare(&mut self, index: usize, job: Job) -> Result<Request> {
        if self.jobs.cancelled(index) {
            return Err(OcrError::Cancelled);
        }
        self.jobs.event(index, Event::Phase(JobPhase::Preprocess));
        let start = job.started.unwrap_or_else(Instant::now);
        let original = match job.image {
            Some(image) => image,
            None => preprocess::load_image(&job.name)?,
        };
        let opts = job.opts;
        let views = preprocess::preprocess(&original, opts.mode, opts.max_tiles);
        let input = self.session.prepare(&views, &opts.prompt)?;
        self.jobs.event(
            index,
            Event::Prepared(Prepared {
                width: original.width(),
                height: original.height(),
                spatial_crop: views.spatial_crop,
                image_tokens: views.num_image_tokens,
                prompt_tokens: input.input_ids.len(),
                elapsed: start.elapsed(),
            }),
        );
        let config = &self.session.model.config;
        self.states[index] = Some(JobState {
            name: job.name,
            original,
            mode: opts.mode,
            views,
            streamer: Streamer::new(
                self.session.tokenizer.stream(opts.skip_special),
                config.language_config.eos_token_id,
            ),
        });
        Ok(Request {
            input,
            images: None,
            opts: GenerateOptions {
                max_new_tokens: opts.max_new_tokens,
                no_repeat_ngram: opts.no_repeat_ngram,
                ..GenerateOptions::default()
            },
        })
    }

    /// The output of a finished sequence.
    fn finish(&mut self, index: usize, generation: GenerateOutput) -> Result<OcrOutput> {
        let Some(state) = self.states[index].take() else {
            return Err(OcrError::Invalid(format!("job {index} finished twice")));
        };
        if generation.stop == StopReason::Cancelled {
            return Err(OcrError::Cancelled);
        }
        if let Some(ev) = state.streamer.finish()? {
            self.jobs.event(index, ev);
        }
        self.session.finish(
            &state.name,
            state.original,
            state.mode,
            &state.views,
            generation,
        )
    }
}

impl<J: Jobs> Driver for Batcher<'_, '_, J> {
    fn next(&mut self) -> Option<Result<Request>> {
        let job = self.jobs.next()?;
        let index = self.states.len();
        self.states.push(None);
        Some(self.prepare(index, job))
    }

    fn event(&mut self, seq: usize, event: GenerateEvent) {
        let Some(Some(state)) = self.states.get_mut(seq) else {
            return;
        };
        let event = match event {
            GenerateEvent::Phase(p) => Some(Event::Phase(match p {
                super::generate::Phase::Vision => JobPhase::Vision,
                super::generate::Phase::Prefill => JobPhase::Prefill,
                super::generate::Phase::Decode => {
                    state.streamer.decode_start = Some(Instant::now());
                    JobPhase::Decode
                }
            })),
            GenerateEvent::Token(id) => state.streamer.token(id),
        };
        if let Some(event) = event {
            self.jobs.event(seq, event);
        }
    }

    fn done(&mut self, seq: usize, result: Result<GenerateOutput>) {
        let result = result.and_then(|generation| self.finish(seq, generation));
        if let Some(state) = self.states.get_mut(seq) {
            *state = None;
        }
        self.jobs.done(seq, result);
    }

    fn cancelled(&self, seq: usize) -> bool {
        self.jobs.cancelled(seq)
    }
}

/// A missing piece of a model folder is an error that names it.
fn check_model_dir(dir: &Path) -> Result<()> {
    // A clone made without git-lfs: name the pointer files instead of a "bad header" later.
    if let Some(problem) = crate::hub::lfs::folder_problem(dir) {
        return Err(OcrError::Invalid(problem));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| OcrError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let has_weights = entries
        .filter_map(std::result::Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"));
    for (ok, what) in [
        (dir.join("config.json").is_file(), "config.json"),
        (dir.join("tokenizer.json").is_file(), "tokenizer.json"),
        (has_weights, "*.safetensors weights"),
    ] {
        if !ok {
            return Err(OcrError::Invalid(format!(
                "the model folder {} has no {what}; it needs config.json, tokenizer.json and \
                 *.safetensors",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Turns generated ids into [`Event::Text`]s; keeps the first decoding error for the end.
struct Streamer<'a> {
    stream: StreamDecoder<'a>,
    eos: i64,
    tokens: usize,
    decode_start: Option<Instant>,
    error: Option<OcrError>,
}

impl<'a> Streamer<'a> {
    fn new(stream: StreamDecoder<'a>, eos: i64) -> Self {
        Self {
            stream,
            eos,
            tokens: 0,
            decode_start: None,
            error: None,
        }
    }

    fn event(&self, piece: String) -> Event {
        Event::Text {
            piece,
            tokens: self.tokens,
            decode_elapsed: self.decode_start.map_or(Duration::ZERO, |s| s.elapsed()),
        }
    }

    fn token(&mut self, id: i64) -> Option<Event> {
        self.tokens += 1;
        // The reference's streamer does not print the end-of-sentence marker.
        if id == self.eos || self.error.is_some() {
            return Some(self.event(String::new()));
        }
        let piece = match u32::try_from(id) {
            Ok(id) => self.stream.push(id).map_err(OcrError::from),
            Err(_) => Err(OcrError::Invalid(format!(
                "the model produced an invalid token id {id}"
            ))),
        };
        match piece {
            Ok(p) => Some(self.event(p.unwrap_or_default())),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    /// The decoder's remainder as a last event, or the first error.
    fn finish(mut self) -> Result<Option<Event>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok(self.stream.finish()?.map(|rest| self.event(rest)))
    }
}

/// The result of one image.
#[derive(Debug)]
pub struct OcrOutput {
    /// The input file.
    pub image: PathBuf,
    /// The image as loaded (oriented, RGB).
    pub original: RgbImage,
    /// The resolution mode used.
    pub mode: Mode,
    /// `[tiles across, tiles down]`.
    pub spatial_crop: [u32; 2],
    /// Length of the image's placeholder run.
    pub image_tokens: usize,
    /// Every generated token decoded with special tokens (EOS marker included).
    pub raw: String,
    /// The reference's cleaned-up markdown.
    pub markdown: String,
    /// Grounding boxes scaled to the original image.
    pub boxes: Vec<LabeledBox>,
    /// Tokens, why generation stopped, and the phase timings.
    pub generation: GenerateOutput,
}

impl OcrOutput {
    /// Decode speed: tokens after the first (which comes from the prefill) per decode second.
    pub fn tokens_per_second(&self) -> f64 {
        let n = self.generation.tokens.len();
        self.generation
            .timings
            .tokens_per_second(n.saturating_sub(1))
    }

    /// Whether generation hit the token limit without end of sentence (usually a loop).
    pub fn hit_token_limit(&self) -> bool {
        self.generation.stop == StopReason::MaxTokens
    }

    /// The report for outputs in `out_dir`; `crops` holds, for each `image` box in order, the
    /// number of its crop file (`None`: empty crop, no file).
    fn report(&self, out_dir: &Path, crops: &[Option<usize>]) -> Report {
        let timings = &self.generation.timings;
        let mut crops = crops.iter().copied();
        let boxes = self
            .boxes
            .iter()
            .map(|b| BoxReport {
                bbox: b.clone(),
                crop: (b.label == "image")
                    .then(|| crops.next().flatten())
                    .flatten()
                    .map(|i| format!("images/{i}.jpg")),
            })
            .collect();
        Report {
            image: self.image.clone(),
            output_dir: out_dir.to_path_buf(),
            width: self.original.width(),
            height: self.original.height(),
            mode: self.mode.to_string(),
            spatial_crop: self.spatial_crop,
            image_tokens: self.image_tokens,
            prompt_tokens: self.generation.prompt_tokens,
            generated_tokens: self.generation.tokens.len(),
            stop: match self.generation.stop {
                StopReason::Eos => "eos",
                StopReason::MaxTokens => "max_tokens",
                StopReason::Cancelled => "cancelled",
            },
            hit_token_limit: self.hit_token_limit(),
            vision_s: timings.vision.as_secs_f64(),
            prefill_s: timings.prefill.as_secs_f64(),
            decode_s: timings.decode.as_secs_f64(),
            tokens_per_s: self.tokens_per_second(),
            markdown: self.markdown.clone(),
            boxes,
        }
    }

    /// Write the reference's outputs into `out_dir` (created if needed): `result_raw.txt`,
    /// `result.mmd`, `result_with_boxes.jpg`, `images/N.jpg` (one per `image` box) and
    /// `boxes.json` (the returned [`Report`]).
    pub fn write(&self, out_dir: &Path) -> Result<Report> {
        let images_dir = out_dir.join("images");
        std::fs::create_dir_all(&images_dir).map_err(|e| write_error(&images_dir, e))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = out_dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| write_error(&path, e))
        };
        write("result_raw.txt", self.raw.as_bytes())?;
        write("result.mmd", self.markdown.as_bytes())?;
        let mut crops = Vec::new();
        for (i, crop) in grounding::image_crops(&self.original, &self.boxes) {
            if let Some(crop) = &crop {
                save_jpeg(crop, &out_dir.join(format!("images/{i}.jpg")))?;
            }
            crops.push(crop.map(|_| i));
        }
        save_jpeg(
            &grounding::annotate(&self.original, &self.boxes),
            &out_dir.join("result_with_boxes.jpg"),
        )?;
        let report = self.report(out_dir, &crops);
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| write_error(&out_dir.join("boxes.json"), std::io::Error::other(e)))?;
        write("boxes.json", json.as_bytes())?;
        Ok(report)
    }
}

fn write_error(path: &Path, source: std::io::Error) -> OcrError {
    OcrError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn save_jpeg(img: &RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .map_err(|e| write_error(path, std::io::Error::other(e)))
}

/// One image's result as `boxes.json` holds it (and `dsocr ocr --format json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The input file.
    pub image: PathBuf,
    /// Where the outputs went.
    pub output_dir: PathBuf,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Resolution mode.
    pub mode: String,
    /// `[tiles across, tiles down]`.
    pub spatial_crop: [u32; 2],
    /// Length of the image's placeholder run.
    pub image_tokens: usize,
    /// Length of the prompt in tokens.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// `eos`, `max_tokens` or `cancelled`.
    pub stop: &'static str,
    /// True when generation hit the token limit without EOS (usually a repetition loop).
    pub hit_token_limit: bool,
    /// Vision time in seconds.
    pub vision_s: f64,
    /// Prefill time in seconds.
    pub prefill_s: f64,
    /// Decode time in seconds.
    pub decode_s: f64,
    /// Decode speed.
    pub tokens_per_s: f64,
    /// The cleaned-up markdown.
    pub markdown: String,
    /// Every grounding box.
    pub boxes: Vec<BoxReport>,
}

/// A box plus the crop file written for it.
#[derive(Debug, Clone, Serialize)]
pub struct BoxReport {
    /// The box.
    #[serde(flatten)]
    pub bbox: LabeledBox,
    /// `images/N.jpg` for `image` boxes with a non-empty crop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
}
