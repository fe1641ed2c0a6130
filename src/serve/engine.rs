//! The engine thread: it owns the one loaded [`Session`] and takes jobs (one page each) from a
//! bounded queue, so every request shares one model. Events go back to the request's handler
//! over a channel; the handler sets the job's cancel flag when its client goes away or its time
//! is up, and the engine stops before the next token.
//!
//! Batching: requests share the engine's decode steps ([`Session::run_batch`]). While pages
//! run, every free slot takes the next waiting job from the queue, so a request that arrives
//! mid-generation joins the running batch instead of waiting for it to end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use image::RgbImage;
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::ocr::OcrError;
use crate::ocr::generate::StopReason;
use crate::ocr::session::{
    self, BoxReport, Event, JobPhase, Jobs, OcrOutput, Report, RunOptions, Session,
};

/// One page to OCR.
pub struct Job {
    /// Stands for the image in the report (the upload's file name).
    pub name: String,
    /// The decoded page.
    pub image: RgbImage,
    /// Mode, prompt, token limit.
    pub opts: RunOptions,
    /// Set by the handler when its client is gone or its time is up.
    pub cancel: Arc<AtomicBool>,
    /// Where the events go.
    pub events: UnboundedSender<JobEvent>,
    /// When it was queued.
    pub queued_at: Instant,
}

/// What the engine tells a handler about its job.
#[derive(Debug)]
pub enum JobEvent {
    /// A phase began.
    Phase(JobPhase),
    /// Text for one more token (may be empty while a character is incomplete).
    Text {
        /// The text.
        piece: String,
        /// Tokens so far.
        tokens: usize,
    },
    /// The end.
    Done(Result<Box<Finished>, JobError>),
}

/// A page done.
#[derive(Debug)]
pub struct Finished {
    /// What `dsocr ocr --format json` prints for the page (nothing is written to disk, so
    /// `output_dir` is empty and boxes have no crop file).
    pub report: Report,
    /// Every piece of text streamed, joined (the raw output without the EOS marker).
    pub text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Whether it stopped at the token limit.
    pub hit_token_limit: bool,
}

/// Why a job produced no page.
#[derive(Debug)]
pub enum JobError {
    /// Its cancel flag was set.
    Cancelled,
    /// The input cannot be run (bad prompt, image too small...): the client's fault.
    Invalid(String),
    /// The engine failed.
    Failed(String),
}

/// The handlers' side of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// `capacity` jobs are already waiting.
    Full,
    /// The engine is gone.
    Closed,
}

impl Queue {
    /// A queue holding at most `capacity` waiting jobs, and its receiving end for the engine.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, Receiver<Job>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        (Self { tx, metrics }, rx)
    }

    /// Queue a job, or refuse at once when the queue is full (or the engine is gone).
    pub fn submit(&self, job: Job) -> Result<(), QueueError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let result = self.tx.try_send(job);
        if result.is_err() {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        }
        result.map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full,
            TrySendError::Disconnected(_) => QueueError::Closed,
        })
    }
}

/// Run jobs, up to `batch` at a time, until every [`Queue`] is dropped.
pub fn run(session: &Session, rx: &Receiver<Job>, metrics: &Metrics, batch: usize) {
    // Wait for a job; then run until nothing is running or waiting, taking newcomers as slots
    // free up.
    while let Ok(first) = rx.recv() {
        let mut engine = Engine {
            rx,
            metrics,
            first: Some(first),
            running: Vec::new(),
        };
        session.run_batch(batch, &mut engine);
    }
}

/// A job handed to the session.
struct Running {
    events: UnboundedSender<JobEvent>,
    cancel: Arc<AtomicBool>,
    queued: Duration,
    start: Instant,
    text: String,
}

/// The session's [`Jobs`] in the server: waiting jobs from the queue; events and results back
/// to each request's handler.
struct Engine<'a> {
    rx: &'a Receiver<Job>,
    metrics: &'a Metrics,
    first: Option<Job>,
    /// By job number.
    running: Vec<Running>,
}

impl Jobs for Engine<'_> {
    fn next(&mut self) -> Option<session::Job> {
        loop {
            let job = self.first.take().or_else(|| self.rx.try_recv().ok())?;
            let metrics = self.metrics;
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            let queued = job.queued_at.elapsed();
            if job.cancel.load(Ordering::Relaxed) {
                // The client left while it waited.
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                metrics.waited(queued);
                let _ = job.events.send(JobEvent::Done(Err(JobError::Cancelled)));
                continue;
            }
            metrics.running.fetch_add(1, Ordering::Relaxed);
            let start = Instant::now();
            // The image was decoded by the handler; what the engine does first is preprocessing.
            let _ = job.events.send(JobEvent::Phase(JobPhase::Preprocess));
            let mut page = session::Job::image(Path::new(&job.name), job.image, job.opts);
            page.started = Some(start);
            self.running.push(Running {
                events: job.events,
                cancel: job.cancel,
                queued,
                start,
                text: String::new(),
            });
            return Some(page);
        }
    }

    fn event(&mut self, job: usize, event: Event) {
        let Some(r) = self.running.get_mut(job) else {
            return;
        };
        match event {
            Event::Phase(JobPhase::Preprocess) | Event::Prepared(_) => {}
            Event::Phase(p) => {
                let _ = r.events.send(JobEvent::Phase(p));
            }
            Event::Text { piece, tokens, .. } => {
                self.metrics.tokens.fetch_add(1, Ordering::Relaxed);
                r.text.push_str(&piece);
                let _ = r.events.send(JobEvent::Text { piece, tokens });
            }
        }
    }

    fn done(&mut self, job: usize, result: crate::ocr::Result<OcrOutput>) {
        let Some(r) = self.running.get_mut(job) else {
            return;
        };
        let metrics = self.metrics;
        metrics.running.fetch_sub(1, Ordering::Relaxed);
        let text = std::mem::take(&mut r.text);
        let done = match result {
            Ok(output) => {
                let finished = finish(&output, text);
                metrics.page(
                    r.queued,
                    r.start.elapsed(),
                    output.generation.timings.decode,
                    output.tokens_per_second(),
                );
                Ok(Box::new(finished))
            }
            Err(OcrError::Cancelled) => {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                metrics.waited(r.queued);
                Err(JobError::Cancelled)
            }
            Err(e @ (OcrError::Image(_) | OcrError::Prompt(_) | OcrError::Invalid(_))) => {
                metrics.waited(r.queued);
                Err(JobError::Invalid(e.to_string()))
            }
            Err(e) => {
                tracing::error!("engine failed on a page: {e}");
                metrics.waited(r.queued);
                Err(JobError::Failed(e.to_string()))
            }
        };
        let _ = r.events.send(JobEvent::Done(done));
    }

    fn cancelled(&self, job: usize) -> bool {
        self.running
            .get(job)
            .is_some_and(|r| r.cancel.load(Ordering::Relaxed))
    }
}

/// The report `dsocr ocr --format json` prints for this output, without writing files.
fn finish(output: &OcrOutput, text: String) -> Finished {
    let timings = &output.generation.timings;
    let report = Report {
        image: output.image.clone(),
        output_dir: Default::default(),
        width: output.original.width(),
        height: output.original.height(),
        mode: output.mode.to_string(),
        spatial_crop: output.spatial_crop,
        image_tokens: output.image_tokens,
        prompt_tokens: output.generation.prompt_tokens,
        generated_tokens: output.generation.tokens.len(),
        stop: match output.generation.stop {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Cancelled => "cancelled",
        },
        hit_token_limit: output.hit_token_limit(),
        vision_s: timings.vision.as_secs_f64(),
        prefill_s: timings.prefill.as_secs_f64(),
        decode_s: timings.decode.as_secs_f64(),
        tokens_per_s: output.tokens_per_second(),
        markdown: output.markdown.clone(),
        boxes: output
            .boxes
            .iter()
            .map(|b| BoxReport {
                bbox: b.clone(),
                crop: None,
            })
            .collect(),
    };
    Finished {
        prompt_tokens: report.prompt_tokens,
        generated_tokens: report.generated_tokens,
        hit_token_limit: report.hit_token_limit,
        report,
        text,
    }
}

/// How long a refused client should wait: the queue's length times the mean page time,
/// between 1 and 60 seconds.
pub fn retry_after(metrics: &Metrics) -> Duration {
    let waiting = metrics.queue_depth.load(Ordering::Relaxed).max(1) as f64;
    let per_page = metrics.mean_page_seconds().unwrap_or(1.0);
    Duration::from_secs_f64((waiting * per_page).ceil().clamp(1.0, 60.0))
}
