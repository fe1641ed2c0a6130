//! Everything that changes the dashboard's state is an [`Action`]: an [`Input`] from the
//! terminal or the clock, or an [`Update`] from a worker. Everything the state asks the outside
//! world to do is a [`Job`]. Workers hold a sender of updates, never the state.

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::Duration;

use crossterm::event::{KeyEvent, MouseEvent};

use super::state::{
    BoxView, DeviceInfo, DiagnosisView, FileState, LoginState, OcrPhase, PreviewImage, RepoRow,
    ServeProbe,
};

/// A token or PDF password typed by the user. Its `Debug` never shows the value, so it cannot
/// leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A state change: input from the terminal or the clock, or what a worker reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The user or the clock.
    Input(Input),
    /// A worker's progress or result.
    Worker(Update),
}

impl From<Input> for Action {
    fn from(input: Input) -> Self {
        Self::Input(input)
    }
}

impl From<Update> for Action {
    fn from(update: Update) -> Self {
        Self::Worker(update)
    }
}

/// Input from the terminal, and the clock.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A key press from the terminal.
    Key(KeyEvent),
    /// Text pasted into the terminal (bracketed paste).
    Paste(String),
    /// A mouse event (wheel scrolls the focused pane).
    Mouse(MouseEvent),
    /// The terminal changed size.
    Resize(u16, u16),
    /// Time passed (redraw elapsed times, spinners).
    Tick,
}

/// How a job that can be cancelled ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T, E = String> {
    /// It finished.
    Done(T),
    /// It was cancelled.
    Cancelled,
    /// It failed: why, and what to do.
    Failed(E),
}

/// What a worker reports: progress and results of the jobs it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A line for the log pane.
    Log(String),
    /// A failure to show in a dialog.
    Error {
        /// What failed.
        title: String,
        /// Why, and what to do.
        message: String,
    },
    /// The compute device was probed.
    Device(DeviceInfo),
    /// A `dsocr serve` on the default port was looked for (`None`: none answers).
    Serve(Option<ServeProbe>),
    /// Token sources, stored tokens and diagnosis were read (whoami not included).
    LoginStatus(Box<LoginState>),
    /// The diagnosis for the selected model was made (`None`: nothing wrong).
    Diagnosis(Option<DiagnosisView>),
    /// whoami answered (Err: one-line reason).
    Whoami(Result<super::state::WhoamiView, String>),
    /// The local cache was scanned (Err: one-line reason).
    CacheScanned(Result<Vec<RepoRow>, String>),
    /// A download resolved its file list: (path, total bytes, bytes already there).
    DownloadStarted(Vec<(String, u64, u64)>),
    /// Bytes of one file arrived.
    DownloadProgress {
        /// File index in the started list.
        file: usize,
        /// Bytes of that file now on disk.
        done: u64,
        /// Recent speed in bytes per second, as the hub layer measures it.
        speed: Option<f64>,
        /// Time left at that speed.
        eta: Option<Duration>,
    },
    /// One file changed state.
    DownloadFile {
        /// File index in the started list.
        file: usize,
        /// Its new state.
        state: FileState,
    },
    /// The download ended (failed: the diagnosis).
    DownloadFinished(Outcome<(), DiagnosisView>),
    /// The OCR run entered a phase.
    OcrPhase(OcrPhase),
    /// Decoded text arrived.
    OcrText {
        /// The new text.
        text: String,
        /// Tokens generated so far.
        tokens: usize,
        /// Time since the run started.
        elapsed: Duration,
        /// Time spent decoding so far.
        decode_elapsed: Duration,
    },
    /// The run ended; done: the boxes found.
    OcrFinished(Outcome<Vec<BoxView>>),
    /// The page image for the preview was loaded.
    Preview(Option<PreviewImage>),
    /// The new input is a PDF with this many pages (`None`: not a PDF, or not opened).
    DocumentOpened(Option<usize>),
    /// The PDF input is encrypted: no password was given (`wrong: false`) or the one given
    /// does not open it.
    PasswordNeeded {
        /// The PDF.
        path: PathBuf,
        /// A password was given and did not open it.
        wrong: bool,
    },
    /// A run over PDF pages starts a page.
    OcrPage(super::state::PageProgress),
    /// Path completion candidates for the OCR input.
    Completions {
        /// The input, completed as far as it is unambiguous.
        input: String,
        /// Remaining candidates.
        candidates: Vec<String>,
    },
    /// Results were saved into this folder.
    Saved(PathBuf),
}

/// Work the state asks for; the runtime hands it to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// Probe the compute device.
    ProbeDevice,
    /// Ask a `dsocr serve` on the default port whether it is ready.
    ProbeServe,
    /// Read token sources and stored tokens, then whoami, then diagnose access to this repo.
    RefreshLogin(String),
    /// Validate and store a token, then refresh (diagnosing this repo).
    Login(Secret, String),
    /// Remove the stored token in use, then refresh (diagnosing this repo).
    Logout(String),
    /// Make this stored token the active one, then refresh (diagnosing the repo).
    SwitchToken {
        /// Stored token name.
        name: String,
        /// Repo to diagnose.
        repo: String,
    },
    /// Scan the local cache.
    ScanCache,
    /// Download (or resume) a repo.
    Download {
        /// `owner/name`.
        repo: String,
        /// Revision.
        revision: String,
    },
    /// Stop the running download.
    CancelDownload,
    /// Verify a cached repo against its hashes.
    Verify(String),
    /// Delete one revision of a cached repo.
    Delete {
        /// `owner/name`.
        repo: String,
        /// Commit.
        commit: String,
    },
    /// Run OCR.
    Ocr(OcrRequest),
    /// Stop the running OCR.
    CancelOcr,
    /// Load the preview of a new input (page 1 of a PDF, whose page count is reported too).
    LoadPreview {
        /// The image or PDF.
        path: PathBuf,
        /// The password of an encrypted PDF.
        password: Option<Secret>,
    },
    /// Show another page of the PDF input.
    PreviewPage {
        /// The PDF.
        path: PathBuf,
        /// Page (1-based).
        page: usize,
        /// The password of an encrypted PDF.
        password: Option<Secret>,
    },
    /// Complete a path.
    CompletePath(String),
    /// Put text on the clipboard through OSC 52.
    Copy(String),
    /// Write the finished run's outputs (the same files as `dsocr ocr`) into
    /// `FOLDER/<image name>/`.
    Save(PathBuf),
}

/// What an OCR run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrRequest {
    /// Where the model comes from.
    pub model: super::state::ModelSource,
    /// Image file or PDF.
    pub image: PathBuf,
    /// For a PDF: the pages to run (1-based, in order); `None` for an image.
    pub pages: Option<Vec<usize>>,
    /// Resolution mode.
    pub mode: crate::ocr::preprocess::Mode,
    /// Prompt text (with `<image>`).
    pub prompt: String,
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `bf16`, `f16` or `f32`; `None`: bf16 (f32 arithmetic over bf16 weights where dsocr's CPU kernels run).
    pub dtype: Option<String>,
    /// `auto`, `libtorch` or a CPU tier; `None`: `$DSOCR_KERNELS`, else auto.
    pub kernels: Option<String>,
    /// The password of an encrypted PDF.
    pub password: Option<Secret>,
}

/// The sending half that workers hold. A send to a closed dashboard is dropped silently: the
/// dashboard is gone, so nobody is left to tell.
#[derive(Debug, Clone)]
pub struct ActionSender(pub Sender<Action>);

impl ActionSender {
    /// Send one update.
    pub fn send(&self, update: Update) {
        if self.0.send(Action::Worker(update)).is_err() {
            tracing::debug!("dashboard closed; update dropped");
        }
    }

    /// Send an error dialog.
    pub fn error(&self, title: impl Into<String>, message: impl Into<String>) {
        self.send(Update::Error {
            title: title.into(),
            message: message.into(),
        });
    }
}
