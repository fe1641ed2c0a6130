//! What the panes show: plain data, filled by [`crate::tui::action::Action`]s from the workers.
//! Rendering reads these types only; nothing here does I/O.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::progress::ByteProgress;
use crate::ocr::preprocess::Mode;

/// The model the dashboard selects when nothing else was chosen.
pub const DEFAULT_MODEL: &str = crate::hub::download::DEFAULT_REPO;

/// A remote check that may not have run yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Check<T> {
    /// Not asked yet.
    #[default]
    NotChecked,
    /// Asked, answer pending.
    Checking,
    /// Answered.
    Done(T),
    /// The check itself failed (one line, what to do included).
    Failed(String),
}

/// Facts for the header line.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderInfo {
    /// dsocr's version.
    pub version: String,
    /// Hub endpoint in use.
    pub endpoint: String,
    /// Whether `HF_HUB_OFFLINE` is set.
    pub offline: bool,
    /// Compute device, once known.
    pub device: Check<DeviceInfo>,
}

/// What a `dsocr serve` on the default port answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeProbe {
    /// Its address.
    pub addr: String,
    /// `/readyz` said 200.
    pub ready: bool,
    /// The `status` of its `/readyz` (`ready`, `loading`, `model_missing`...).
    pub status: String,
}

/// The compute device the model runs on.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceInfo {
    /// A CUDA GPU: name, memory in use and total, in bytes.
    Gpu {
        /// Marketing name.
        name: String,
        /// Bytes in use.
        used: u64,
        /// Bytes in total.
        total: u64,
    },
    /// The CPU with this many threads.
    Cpu {
        /// Intra-op threads.
        threads: usize,
    },
}

/// A token as the dashboard may show it: already masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    /// Masked form, e.g. `hf_ab…yz`.
    pub masked: String,
    /// Where it was found, e.g. `HF_TOKEN`, `~/.cache/huggingface/token`.
    pub source: String,
}

/// A named token in the stored-tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Its name in the file.
    pub name: String,
    /// Masked value.
    pub masked: String,
    /// Whether it is the one the token file points at.
    pub active: bool,
}

/// The hub's answer to whoami.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoamiView {
    /// User name.
    pub user: String,
    /// Organisations.
    pub orgs: Vec<String>,
    /// Name the token was given on the hub, if any.
    pub token_name: Option<String>,
    /// `read`, `write` or `fineGrained`.
    pub role: Option<String>,
}

/// A diagnosis: a short code, its cause and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosisView {
    /// Stable short name (e.g. `shadowed-token`).
    pub code: String,
    /// What is wrong, one line.
    pub cause: String,
    /// What to do, one line.
    pub fix: String,
}

/// The Login pane.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoginState {
    /// The token in use, if any.
    pub active: Option<TokenView>,
    /// Other sources that hold a token but are not used (shadowed).
    pub others: Vec<TokenView>,
    /// Tokens in the stored-tokens file.
    pub stored: Vec<StoredToken>,
    /// Selected row of `stored`.
    pub selected: usize,
    /// whoami for the token in use.
    pub whoami: Check<WhoamiView>,
    /// What is wrong right now, if anything.
    pub diagnosis: Option<DiagnosisView>,
    /// First row shown when the pane's rows do not fit (PgUp/PgDn).
    pub scroll: u16,
}

/// A row of the Models pane's cache list: one revision of a cached repo (what the pane shows of
/// a [`crate::hub::cache::CachedRevision`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRow {
    /// Commit hash.
    pub commit: String,
    /// Refs that point at it (e.g. `main`).
    pub refs: Vec<String>,
    /// Bytes on disk.
    pub size: u64,
    /// Files the snapshot should have but lacks (empty when complete or unknown).
    pub missing: Vec<String>,
}

/// A repo of the Models pane's cache list, with its revisions (what the pane shows of a
/// [`crate::hub::cache::CachedRepo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRow {
    /// `owner/name`.
    pub repo: String,
    /// Its revisions.
    pub revisions: Vec<RevisionRow>,
}

impl RepoRow {
    /// Bytes over all revisions.
    pub fn size(&self) -> u64 {
        self.revisions.iter().map(|r| r.size).sum()
    }
}

/// State of one file of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Not started.
    Queued,
    /// Bytes arriving.
    Running,
    /// Checking sha256 or size.
    Verifying,
    /// In the cache, verified.
    Done,
    /// Failed.
    Failed,
}

/// One file of a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProgress {
    /// Path inside the repo.
    pub name: String,
    /// Bytes.
    pub progress: ByteProgress,
    /// Where it is.
    pub state: FileState,
}

/// How a download stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadPhase {
    /// Asking the hub for the file list.
    Resolving,
    /// Files arriving.
    Running,
    /// All files verified in the cache.
    Done,
    /// Stopped by the user; resumable.
    Cancelled,
    /// Failed with a diagnosis.
    Failed(DiagnosisView),
}

/// A download in progress (or the last one).
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadView {
    /// `owner/name`.
    pub repo: String,
    /// Revision asked for.
    pub revision: String,
    /// Files and their progress.
    pub files: Vec<FileProgress>,
    /// Recent speed in bytes per second, as the hub layer reports it.
    pub speed: Option<f64>,
    /// Time left at that speed.
    pub eta: Option<Duration>,
    /// Where it stands.
    pub phase: DownloadPhase,
}

impl DownloadView {
    /// Sum over files.
    pub fn total(&self) -> ByteProgress {
        self.files.iter().fold(ByteProgress::default(), |acc, f| {
            ByteProgress::new(acc.done + f.progress.done, acc.total + f.progress.total)
        })
    }

    /// Whether bytes may still arrive.
    pub fn is_active(&self) -> bool {
        matches!(
            self.phase,
            DownloadPhase::Resolving | DownloadPhase::Running
        )
    }
}

/// Where the OCR model comes from: the library's, which also says what folder it means.
pub use crate::model_source::ModelSource;

/// The Models pane.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsState {
    /// The model OCR uses.
    pub selected_model: ModelSource,
    /// Local cache scan.
    pub cached: Check<Vec<RepoRow>>,
    /// Selected row of the cache list.
    pub cursor: usize,
    /// The running or last download.
    pub download: Option<DownloadView>,
}

impl Default for ModelsState {
    fn default() -> Self {
        Self {
            selected_model: ModelSource::Repo(DEFAULT_MODEL.to_string()),
            cached: Check::NotChecked,
            cursor: 0,
            download: None,
        }
    }
}

/// Phases of one OCR run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcrPhase {
    /// Loading the weights.
    Load,
    /// Reading the image, building its views and the prompt.
    Preprocess,
    /// The vision encoders.
    Vision,
    /// Prompt prefill.
    Prefill,
    /// Token by token.
    Decode,
}

impl OcrPhase {
    /// Short label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Preprocess => "preprocess",
            Self::Vision => "vision",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// How an OCR run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OcrRun {
    /// Nothing run yet.
    Idle,
    /// Running, in this phase.
    Running(OcrPhase),
    /// Finished.
    Done,
    /// Cancelled by the user.
    Cancelled,
    /// Failed: what and what to do.
    Failed(String),
}

/// A grounding box: the label, the model's 0..=999 coordinates and the page's pixels.
pub type BoxView = crate::ocr::grounding::LabeledBox;

/// A downscaled RGB copy of the input page for the preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, row-major RGB.
    pub rgb: Vec<u8>,
}

/// A PDF chosen as input: how many pages it has and the page that the preview shows and `r`
/// runs (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocView {
    /// Pages in the document.
    pub pages: usize,
    /// The chosen page.
    pub page: usize,
}

/// Where a run over several pages of a PDF stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageProgress {
    /// The page running now (1-based).
    pub page: usize,
    /// Pages finished before it.
    pub done: usize,
    /// Pages in the run.
    pub total: usize,
}

/// The OCR pane.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrState {
    /// Input image path as typed.
    pub input: String,
    /// Completion candidates for `input`.
    pub completions: Vec<String>,
    /// Index into [`Mode::ALL`].
    pub mode: usize,
    /// Index into the prompt preset list; `None` means the custom text.
    pub preset: Option<usize>,
    /// Custom prompt text.
    pub custom_prompt: String,
    /// Where the run stands.
    pub run: OcrRun,
    /// Text streamed so far.
    pub output: String,
    /// Tokens generated so far.
    pub tokens: usize,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Time spent decoding (for tokens/s).
    pub decode_elapsed: Duration,
    /// When the running job was started (keeps the elapsed time moving between events).
    pub started: Option<Instant>,
    /// Grounding boxes of the finished run.
    pub boxes: Vec<BoxView>,
    /// Selected box.
    pub box_cursor: usize,
    /// The page, downscaled.
    pub preview: Option<PreviewImage>,
    /// Lines scrolled off the top of the output.
    pub scroll: u16,
    /// Folder results are saved to.
    pub save_dir: PathBuf,
    /// The input is a PDF: its pages and the chosen one.
    pub doc: Option<DocView>,
    /// The password the user gave for the PDF input (kept until the input changes).
    pub password: Option<crate::tui::action::Secret>,
    /// The page a PDF run is on (`None` for an image).
    pub page_progress: Option<PageProgress>,
}

impl Default for OcrState {
    fn default() -> Self {
        Self {
            input: String::new(),
            completions: Vec::new(),
            mode: Mode::ALL.iter().position(|m| *m == Mode::Base).unwrap_or(0),
            preset: Some(0),
            custom_prompt: String::new(),
            run: OcrRun::Idle,
            output: String::new(),
            tokens: 0,
            elapsed: Duration::ZERO,
            decode_elapsed: Duration::ZERO,
            started: None,
            boxes: Vec::new(),
            box_cursor: 0,
            preview: None,
            scroll: 0,
            save_dir: PathBuf::from("dsocr-out"),
            doc: None,
            password: None,
            page_progress: None,
        }
    }
}

impl OcrState {
    /// The resolution mode chosen.
    pub fn mode(&self) -> Mode {
        Mode::ALL[self.mode % Mode::ALL.len()]
    }

    /// Decode speed, once decoding has taken any time.
    pub fn tokens_per_sec(&self) -> Option<f64> {
        let secs = self.decode_elapsed.as_secs_f64();
        (secs > 0.0).then(|| self.tokens as f64 / secs)
    }

    /// Whether a run is in flight.
    pub fn is_running(&self) -> bool {
        matches!(self.run, OcrRun::Running(_))
    }
}
