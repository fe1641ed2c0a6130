//! The model thread: it owns the loaded [`Session`] (loaded once, kept while the model folder,
//! device and dtype stay the same), takes run requests from a channel and reports through
//! [`Update`]s. libtorch calls block, so this is a plain thread, never the event loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use tch::{Device, Kind};

use crate::document::{
    DEFAULT_DPI, Document, DocumentReport, PAGE_SPLIT, PageEntry, page_dir, page_name,
};
use crate::hub::HubEnv;
use crate::model_source::SourceError;
use crate::ocr::OcrError;
use crate::ocr::cpu::Plan;
use crate::ocr::cpu::features::KERNELS_ENV;
use crate::ocr::device::{device_name, kind_name, kind_or_default, parse_device};
use crate::ocr::session::{self, Event, OcrOutput, RunOptions, Session};
use crate::settings::{choose_kernels, kernels_env};
use crate::tui::action::{ActionSender, OcrRequest, Outcome, Update};
use crate::tui::state::{ModelSource, OcrPhase, PageProgress};

/// The handle the workers keep: a request queue and the cancel flag of the running job.
pub struct ModelWorker {
    requests: Sender<Request>,
    cancel: Arc<AtomicBool>,
}

/// The last finished run, kept for saving.
enum Last {
    /// An image.
    Image(Box<OcrOutput>),
    /// Pages of a PDF.
    Document {
        /// The PDF.
        path: PathBuf,
        /// Pages in it.
        page_count: usize,
        /// Each page asked for: the page, seconds spent rendering it, and its output or why it
        /// failed.
        pages: Vec<(usize, f64, Result<OcrOutput, String>)>,
    },
}

/// Work for the model thread, in order.
enum Request {
    /// Run OCR.
    Run(OcrRequest),
    /// Write the last finished run's outputs under this folder.
    Save(PathBuf),
}

impl ModelWorker {
    /// Start the model thread; it ends when this handle is dropped and its job is done.
    pub fn spawn(tx: ActionSender) -> std::io::Result<Self> {
        let (requests, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        std::thread::Builder::new()
            .name("dsocr-model".to_string())
            .spawn(move || serve(&rx, &tx, &flag))?;
        Ok(Self { requests, cancel })
    }

    /// Queue a run. The cancel flag is cleared here, before the request is sent, so a cancel
    /// that follows the request always reaches the run.
    pub fn run(&self, request: OcrRequest, tx: &ActionSender) {
        self.cancel.store(false, Ordering::SeqCst);
        if self.requests.send(Request::Run(request)).is_err() {
            tx.send(Update::OcrFinished(Outcome::Failed(STOPPED.to_string())));
        }
    }

    /// Queue writing the last finished run's outputs into `dir/<image name>/`.
    pub fn save(&self, dir: PathBuf, tx: &ActionSender) {
        if self.requests.send(Request::Save(dir)).is_err() {
            tx.error("Saving failed", STOPPED);
        }
    }

    /// Ask the running job to stop (checked before every token).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// What a loaded session was loaded for.
#[derive(Debug, Clone, PartialEq)]
struct LoadKey {
    dir: PathBuf,
    device: Device,
    kind: Kind,
    plan: Plan,
}

/// Why a request cannot reach the model thread.
const STOPPED: &str = "the model thread has stopped; see the log file, then restart dsocr";

fn serve(rx: &Receiver<Request>, tx: &ActionSender, cancel: &AtomicBool) {
    let mut loaded: Option<(LoadKey, Session)> = None;
    let mut last: Option<Last> = None;
    while let Ok(request) = rx.recv() {
        match request {
            Request::Run(request) => {
                last = None;
                let start = Instant::now();
                let result = run_request(&mut loaded, &request, tx, cancel, start);
                tx.send(Update::OcrFinished(match result {
                    Ok(done) => {
                        // Boxes belong to one page: shown after an image or a single page.
                        let boxes = match &done {
                            Last::Image(output) => output.boxes.clone(),
                            Last::Document { pages, .. } => match pages.as_slice() {
                                [(_, _, Ok(output))] => output.boxes.clone(),
                                _ => Vec::new(),
                            },
                        };
                        last = Some(done);
                        Outcome::Done(boxes)
                    }
                    Err(Failure::Cancelled) => Outcome::Cancelled,
                    Err(Failure::Message(m)) => {
                        tracing::warn!("OCR failed: {m}");
                        Outcome::Failed(m)
                    }
                }));
            }
            Request::Save(dir) => save(last.as_ref(), &dir, tx),
        }
    }
}

/// Write the last run's files into `dir/<input name>/` with the library's writers: an image's
/// files, or a PDF's `page-N/` folders, `<name>.mmd` and `report.json`.
fn save(last: Option<&Last>, dir: &Path, tx: &ActionSender) {
    let Some(last) = last else {
        tx.error(
            "Nothing to save",
            "run OCR to the end first (r in the OCR pane)",
        );
        return;
    };
    let stem = |p: &Path| {
        p.file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned())
    };
    match last {
        Last::Image(output) => {
            let out_dir = dir.join(stem(&output.image));
            match output.write(&out_dir) {
                Ok(_) => tx.send(Update::Saved(out_dir)),
                Err(e) => tx.error("Saving failed", e.to_string()),
            }
        }
        Last::Document {
            path,
            page_count,
            pages,
        } => {
            let out_dir = dir.join(stem(path));
            match save_document(path, *page_count, pages, &out_dir) {
                Ok(()) => tx.send(Update::Saved(out_dir)),
                Err(e) => tx.error("Saving failed", e),
            }
        }
    }
}

/// A PDF run's outputs, as `dsocr ocr` writes them.
fn save_document(
    path: &Path,
    page_count: usize,
    pages: &[(usize, f64, Result<OcrOutput, String>)],
    out_dir: &Path,
) -> Result<(), String> {
    let mut report = DocumentReport::new(path, out_dir, page_count, DEFAULT_DPI);
    for (page, render_s, result) in pages {
        let dir = page_dir(out_dir, *page);
        let entry = match result {
            Ok(output) => {
                let written = output.write(&dir).map_err(|e| {
                    let _ = std::fs::remove_dir_all(&dir);
                    e.to_string()
                })?;
                PageEntry {
                    page: *page,
                    render_s: *render_s,
                    skipped_in_mmd: false,
                    error: None,
                    report: Some(written),
                }
            }
            Err(e) => PageEntry {
                page: *page,
                render_s: *render_s,
                skipped_in_mmd: false,
                error: Some(e.clone()),
                report: None,
            },
        };
        report.push(entry);
    }
    report
        .write()
        .map_err(|e| format!("cannot write {} or report.json: {e}", report.mmd.display()))
}

/// Why a run did not finish.
#[derive(Debug)]
enum Failure {
    Cancelled,
    /// What failed and what to do.
    Message(String),
}

impl From<OcrError> for Failure {
    fn from(e: OcrError) -> Self {
        match e {
            OcrError::Cancelled => Self::Cancelled,
            other => Self::Message(other.to_string()),
        }
    }
}

fn run_request(
    loaded: &mut Option<(LoadKey, Session)>,
    request: &OcrRequest,
    tx: &ActionSender,
    cancel: &AtomicBool,
    start: Instant,
) -> Result<Last, Failure> {
    let key = load_key(request, kernels_env().as_deref()).map_err(Failure::Message)?;
    if loaded.as_ref().is_none_or(|(k, _)| *k != key) {
        // Free the old model before loading the new one.
        *loaded = None;
        tx.send(Update::OcrPhase(OcrPhase::Load));
        tx.send(Update::Log(format!(
            "loading {} on {} ({}, kernels {})",
            key.dir.display(),
            device_name(key.device),
            kind_name(key.kind),
            key.plan.describe()
        )));
        let session =
            Session::load_with(&key.dir, key.device, key.kind, key.plan).map_err(|e| {
                Failure::Message(format!(
                    "{e}; choose another model in Models (f: local folder, m: repo)"
                ))
            })?;
        tx.send(Update::Log(format!(
            "model loaded in {:.1} s",
            start.elapsed().as_secs_f64()
        )));
        *loaded = Some((key, session));
    }
    let Some((_, session)) = loaded.as_ref() else {
        return Err(Failure::Message("the model is not loaded".to_string()));
    };
    let opts = RunOptions {
        mode: request.mode,
        prompt: request.prompt.clone(),
        max_new_tokens: request.max_new_tokens,
        ..RunOptions::default()
    };
    let wanted = match &request.pages {
        Some(pages) => pages.clone(),
        // A PDF run before its page count arrived (or one that did not open): page 1, so that
        // the document's own error is what shows.
        None if crate::document::is_pdf(&request.image) => vec![1],
        None => {
            tx.send(Update::OcrPhase(OcrPhase::Preprocess));
            let image = crate::ocr::preprocess::load_image(&request.image)
                .map_err(|e| Failure::Message(e.to_string()))?;
            let output = run_one(
                session,
                &request.image,
                image,
                start,
                &opts,
                tx,
                cancel,
                start,
            )?;
            return Ok(Last::Image(Box::new(output)));
        }
    };
    let password = request.password.as_ref().map(|p| p.0.as_str());
    let doc =
        Document::open(&request.image, password).map_err(|e| Failure::Message(e.to_string()))?;
    let mut pages = Vec::new();
    for (done, &page) in wanted.iter().enumerate() {
        tx.send(Update::OcrPage(PageProgress {
            page,
            done,
            total: wanted.len(),
        }));
        if done > 0 {
            tx.send(Update::OcrText {
                text: PAGE_SPLIT.to_string(),
                tokens: 0,
                elapsed: start.elapsed(),
                decode_elapsed: Duration::ZERO,
            });
        }
        tx.send(Update::OcrPhase(OcrPhase::Preprocess));
        let page_start = Instant::now();
        let rendered = doc.render(page, DEFAULT_DPI);
        let render_s = page_start.elapsed().as_secs_f64();
        let result = match rendered {
            Ok(image) => {
                let name = page_name(&request.image, page);
                match run_one(session, &name, image, page_start, &opts, tx, cancel, start) {
                    Ok(output) => Ok(output),
                    Err(Failure::Cancelled) => return Err(Failure::Cancelled),
                    Err(Failure::Message(m)) => Err(m),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(m) = &result {
            tx.send(Update::Log(format!("error: page {page}: {m}")));
        }
        pages.push((page, render_s, result));
    }
    let failed: Vec<String> = pages
        .iter()
        .filter_map(|(p, _, r)| r.as_ref().err().map(|m| format!("page {p}: {m}")))
        .collect();
    if failed.len() == pages.len() {
        return Err(Failure::Message(failed.join("; ")));
    }
    if !failed.is_empty() {
        tx.error(
            format!("{} of {} pages failed", failed.len(), pages.len()),
            failed.join("\n"),
        );
    }
    Ok(Last::Document {
        path: request.image.clone(),
        page_count: doc.page_count(),
        pages,
    })
}

/// One image or rendered page through the session, its events forwarded to the dashboard.
#[allow(clippy::too_many_arguments)]
fn run_one(
    session: &Session,
    name: &Path,
    image: image::RgbImage,
    image_start: Instant,
    opts: &RunOptions,
    tx: &ActionSender,
    cancel: &AtomicBool,
    start: Instant,
) -> Result<OcrOutput, Failure> {
    let mut last = (0, Duration::ZERO);
    let output = session.run_image(
        name,
        image,
        image_start,
        opts,
        cancel,
        |event| match event {
            // Preprocessing was announced before the image was loaded or rendered.
            Event::Phase(session::JobPhase::Preprocess) => {}
            Event::Phase(p) => tx.send(Update::OcrPhase(phase(p))),
            Event::Prepared(p) => tx.send(Update::Log(format!(
                "{}x{} page, {} image tokens, {} prompt tokens",
                p.width, p.height, p.image_tokens, p.prompt_tokens
            ))),
            Event::Text {
                piece,
                tokens,
                decode_elapsed,
            } => {
                last = (tokens, decode_elapsed);
                tx.send(Update::OcrText {
                    text: piece,
                    tokens,
                    elapsed: start.elapsed(),
                    decode_elapsed,
                });
            }
        },
    )?;
    // The final figures: the whole run's time.
    tx.send(Update::OcrText {
        text: String::new(),
        tokens: last.0,
        elapsed: start.elapsed(),
        decode_elapsed: last.1,
    });
    tx.send(Update::Log(format!(
        "{} tokens, vision {:.2} s, prefill {:.2} s, decode {:.1} tokens/s, stop: {:?}",
        output.generation.tokens.len(),
        output.generation.timings.vision.as_secs_f64(),
        output.generation.timings.prefill.as_secs_f64(),
        output.tokens_per_second(),
        output.generation.stop
    )));
    Ok(output)
}

fn phase(p: session::JobPhase) -> OcrPhase {
    match p {
        session::JobPhase::Preprocess => OcrPhase::Preprocess,
        session::JobPhase::Vision => OcrPhase::Vision,
        session::JobPhase::Prefill => OcrPhase::Prefill,
        session::JobPhase::Decode => OcrPhase::Decode,
    }
}

/// The model folder, device, dtype and compute path a request needs; `env` is the value of
/// `$DSOCR_KERNELS`, which takes precedence over the request's `[ocr] kernels`.
fn load_key(request: &OcrRequest, env: Option<&str>) -> Result<LoadKey, String> {
    let dir = model_dir(&request.model)?;
    let device = parse_device(&request.device)
        .map_err(|e| format!("{e} (the [ocr] device setting in the config file)"))?;
    let kind = kind_or_default(request.dtype.as_deref(), device)
        .map_err(|e| format!("{e} (the [ocr] dtype setting in the config file)"))?;
    let kernels =
        choose_kernels(None, env, request.kernels.as_deref()).map_err(|e| e.to_string())?;
    let plan = kernels.plan(device).map_err(|e| {
        let origin = if env.is_some() {
            KERNELS_ENV
        } else {
            "the [ocr] kernels setting in the config file"
        };
        format!("{e} ({origin})")
    })?;
    Ok(LoadKey {
        dir,
        device,
        kind,
        plan,
    })
}

/// The folder the chosen model means (`crate::model_source`), with the dashboard's fix when
/// there is none.
fn model_dir(source: &ModelSource) -> Result<PathBuf, String> {
    source
        .folder(&HubEnv::from_process().hub_cache)
        .map_err(|e| match e {
            SourceError::NotCached { .. } => {
                format!("{e}: press d in Models to download it, or f to use a local model folder")
            }
            SourceError::NoFolder(_) | SourceError::IsAFile(_) => format!(
                "{e}; press f in Models to choose the folder that holds config.json, \
                 tokenizer.json and *.safetensors"
            ),
            SourceError::NotARepoId { .. } => {
                format!("{e}; press m in Models to choose a repo, or f to use a local folder")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(model: ModelSource, device: &str, dtype: Option<&str>) -> OcrRequest {
        OcrRequest {
            model,
            image: PathBuf::from("page.png"),
            pages: None,
            mode: crate::ocr::preprocess::Mode::Base,
            prompt: "<image>\nFree OCR.".to_string(),
            max_new_tokens: 8,
            device: device.to_string(),
            dtype: dtype.map(str::to_string),
            kernels: None,
            password: None,
        }
    }

    #[test]
    fn load_key_checks_the_folder_device_and_dtype() {
        let dir = std::env::temp_dir();
        let folder = || ModelSource::Folder(dir.clone());
        let key = load_key_here(&request(folder(), "cpu", None)).expect("cpu default");
        assert_eq!(
            (key.dir, key.device, key.kind),
            (dir.clone(), Device::Cpu, Kind::BFloat16)
        );
        let key = load_key_here(&request(folder(), "cpu", Some("f32"))).expect("cpu f32");
        assert_eq!(key.kind, Kind::Float);

        let missing = ModelSource::Folder(dir.join("dsocr-no-such-model-folder"));
        let err = load_key_here(&request(missing, "cpu", None)).unwrap_err();
        assert!(
            err.contains("does not exist") && err.contains("press f"),
            "{err}"
        );
        let err = load_key_here(&request(folder(), "tpu", None)).unwrap_err();
        assert!(err.contains("[ocr] device"), "{err}");
        let err = load_key_here(&request(folder(), "cpu", Some("int4"))).unwrap_err();
        assert!(err.contains("[ocr] dtype"), "{err}");
        let with_kernels = |k: &str| {
            load_key_here(&OcrRequest {
                kernels: Some(k.to_string()),
                ..request(folder(), "cpu", None)
            })
        };
        let key = with_kernels("libtorch").expect("libtorch");
        assert!(key.plan.is_libtorch());
        let key = with_kernels("scalar").expect("scalar runs everywhere");
        assert_eq!(key.plan.describe(), "scalar");
        let err = with_kernels("sse9").unwrap_err();
        assert!(err.contains("[ocr] kernels"), "{err}");
        // $DSOCR_KERNELS comes before the setting, as for `dsocr ocr`.
        let scalar = request(folder(), "cpu", None);
        let scalar = OcrRequest {
            kernels: Some("libtorch".to_string()),
            ..scalar
        };
        let key = load_key(&scalar, Some("scalar")).expect("scalar from the environment");
        assert_eq!(key.plan.describe(), "scalar");
        let err = load_key(&scalar, Some("sse9")).unwrap_err();
        assert!(err.contains("DSOCR_KERNELS"), "{err}");
    }

    /// [`load_key`] with `$DSOCR_KERNELS` unset.
    fn load_key_here(request: &OcrRequest) -> Result<LoadKey, String> {
        load_key(request, None)
    }
}
