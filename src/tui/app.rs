//! The dashboard's state and its one way to change: [`App::update`] with an [`Action`] (an
//! [`Input`] or a worker's [`Update`]), returning the [`Job`]s the runtime must hand to workers.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind};

use super::action::{Action, Input, Job, OcrRequest, Outcome, Secret, Update};
use super::config::Settings;
use super::graphics::Graphics;
use super::keys::{Command, Key};
use super::state::{
    Check, DEFAULT_MODEL, DocView, DownloadPhase, DownloadView, FileProgress, FileState,
    HeaderInfo, LoginState, ModelSource, ModelsState, OcrRun, OcrState, RevisionRow, ServeProbe,
};
use crate::ocr::preprocess::Mode;
use crate::ocr::prompt::{Preset, user_prompt};
use crate::tui::progress::ByteProgress;

/// How often the dashboard looks for a `dsocr serve` on the default port.
const SERVE_PROBE_EVERY: Duration = Duration::from_secs(10);

/// Prompt presets offered in the OCR pane, in cycling order (any other prompt is custom text).
pub const PRESETS: [Preset; 5] = [
    Preset::Document,
    Preset::Ocr,
    Preset::Free,
    Preset::Figure,
    Preset::Describe,
];

/// Lines kept in the log pane.
const LOG_LINES: usize = 1000;

/// The panes that take focus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pane {
    /// Token, whoami, diagnosis.
    Login,
    /// Cache and downloads.
    Models,
    /// Input, run, output.
    Ocr,
    /// The log (when shown).
    Log,
}

impl Pane {
    /// Title.
    pub fn title(self) -> &'static str {
        match self {
            Self::Login => "Login",
            Self::Models => "Models",
            Self::Ocr => "OCR",
            Self::Log => "Log",
        }
    }
}

/// What a text input is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputPurpose {
    /// A Hugging Face token (shown masked).
    Token,
    /// A model repo id.
    ModelRepo,
    /// A local model folder.
    Folder,
    /// The OCR input image.
    OcrInput,
    /// A custom prompt.
    Prompt,
    /// The password of the PDF input (shown masked, taken as typed).
    PdfPassword,
}

impl InputPurpose {
    /// Dialog title.
    pub fn title(self) -> &'static str {
        match self {
            Self::Token => "Log in: paste a token (hf_…)",
            Self::ModelRepo => "Model repo (owner/name)",
            Self::Folder => "Local model folder",
            Self::OcrInput => "Input image (Tab completes)",
            Self::Prompt => "Custom prompt (<image> is added if missing)",
            Self::PdfPassword => "This PDF is encrypted: its password (Esc leaves it locked)",
        }
    }
}

/// Something drawn over the panes; the last one has the keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    /// The key help.
    Help {
        /// Rows scrolled.
        scroll: u16,
    },
    /// An error: what failed and what to do.
    Error {
        /// What failed.
        title: String,
        /// Why and what to do.
        message: String,
    },
    /// A yes/no question guarding a job.
    Confirm {
        /// The question.
        question: String,
        /// What happens on yes.
        job: Job,
    },
    /// A one-line text input.
    Input {
        /// What it is for.
        purpose: InputPurpose,
        /// Text typed so far.
        value: String,
    },
}

/// The whole dashboard state.
#[derive(Debug, Clone)]
pub struct App {
    /// Header facts.
    pub header: HeaderInfo,
    /// Login pane.
    pub login: LoginState,
    /// Models pane.
    pub models: ModelsState,
    /// OCR pane.
    pub ocr: OcrState,
    /// Log lines, oldest first.
    pub log: VecDeque<String>,
    /// Whether the log pane is shown.
    pub log_visible: bool,
    /// Lines scrolled up from the end of the log.
    pub log_scroll: u16,
    /// Focused pane.
    pub focus: Pane,
    /// Overlays, topmost last.
    pub overlays: Vec<Overlay>,
    /// Keys and colours.
    pub settings: Settings,
    /// Set when the dashboard should exit.
    pub quit: bool,
    /// A first Ctrl-C cancelled a job; the next one quits.
    pub cancel_pending: bool,
    /// One-line status in the footer.
    pub status: Option<String>,
    /// Ticks seen (spinner).
    pub ticks: u64,
    /// How the page preview is drawn.
    pub graphics: Graphics,
    /// The last download asked for, for resume.
    last_download: Option<(String, String)>,
    /// A `dsocr serve` answering on the default port, when one does.
    pub serve: Option<ServeProbe>,
    /// When it was last looked for.
    serve_probed: Option<Instant>,
}

impl App {
    /// A fresh dashboard; the config file's warnings go to the log.
    pub fn new(header: HeaderInfo, settings: Settings) -> Self {
        let mut app = Self {
            header,
            login: LoginState::default(),
            models: ModelsState::default(),
            ocr: OcrState::default(),
            log: VecDeque::new(),
            log_visible: false,
            log_scroll: 0,
            focus: Pane::Login,
            overlays: Vec::new(),
            settings,
            quit: false,
            cancel_pending: false,
            status: None,
            ticks: 0,
            graphics: Graphics::HalfBlocks,
            last_download: None,
            serve: None,
            serve_probed: None,
        };
        for w in app.settings.warnings.clone() {
            app.push_log(format!("config: {w}"));
        }
        app
    }

    /// Jobs to run once at start: device, login and cache.
    pub fn startup_jobs(&mut self) -> Vec<Job> {
        self.login.whoami = Check::Checking;
        self.models.cached = Check::Checking;
        self.serve_probed = Some(Instant::now());
        vec![
            Job::ProbeDevice,
            Job::ProbeServe,
            Job::RefreshLogin(self.diag_repo()),
            Job::ScanCache,
        ]
    }

    /// Panes in focus order.
    pub fn panes(&self) -> Vec<Pane> {
        let mut panes = vec![Pane::Login, Pane::Models, Pane::Ocr];
        if self.log_visible {
            panes.push(Pane::Log);
        }
        panes
    }

    /// Whether a download or OCR run is in flight.
    pub fn busy(&self) -> bool {
        self.download_active() || self.ocr.is_running()
    }

    fn download_active(&self) -> bool {
        self.models
            .download
            .as_ref()
            .is_some_and(DownloadView::is_active)
    }

    /// Rows of the cache list: (repo index, revision).
    pub fn cache_rows(&self) -> Vec<(usize, &RevisionRow)> {
        match &self.models.cached {
            Check::Done(repos) => repos
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.revisions.iter().map(move |rev| (i, rev)))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn selected_cache_row(&self) -> Option<(String, RevisionRow)> {
        let Check::Done(repos) = &self.models.cached else {
            return None;
        };
        let (i, rev) = self.cache_rows().get(self.models.cursor).copied()?;
        Some((repos[i].repo.clone(), rev.clone()))
    }

    /// Prompt text of the current preset or custom prompt.
    pub fn prompt(&self) -> String {
        match self.ocr.preset {
            Some(i) => PRESETS[i % PRESETS.len()].prompt(),
            // Checked when typed (`submit_input`), so the rule's refusal cannot come here; if it
            // did, the text goes as typed and the run says what is wrong with it.
            None => user_prompt(&self.ocr.custom_prompt)
                .unwrap_or_else(|_| self.ocr.custom_prompt.clone()),
        }
    }

    /// Whether a command can do anything right now (the footer lists only these).
    pub fn available(&self, cmd: Command) -> bool {
        use Command::*;
        match cmd {
            SwitchToken => self.login.stored.len() > 1,
            Logout => self.login.active.is_some(),
            Download => !self.download_active() && self.selected_repo().is_some(),
            Resume => {
                !self.download_active()
                    && self.last_download.is_some()
                    && self.models.download.as_ref().is_some_and(|d| {
                        matches!(d.phase, DownloadPhase::Cancelled | DownloadPhase::Failed(_))
                    })
            }
            CancelDownload => self.download_active(),
            Verify | Delete => self.selected_cache_row().is_some(),
            Run => !self.ocr.is_running() && !self.ocr.input.trim().is_empty(),
            RunAll => !self.ocr.is_running() && self.ocr.doc.is_some_and(|d| d.pages > 1),
            PrevPage => !self.ocr.is_running() && self.ocr.doc.is_some_and(|d| d.page > 1),
            NextPage => !self.ocr.is_running() && self.ocr.doc.is_some_and(|d| d.page < d.pages),
            CancelOcr => self.ocr.is_running(),
            Copy => !self.ocr.output.is_empty(),
            Save => self.ocr.run == OcrRun::Done,
            EditInput | CycleMode | CyclePreset | EditPrompt => !self.ocr.is_running(),
            UseFolder | ChooseModel => !self.download_active(),
            _ => true,
        }
    }

    /// The repo whose access the Login pane diagnoses: the selected one, or the default.
    fn diag_repo(&self) -> String {
        self.selected_repo().unwrap_or(DEFAULT_MODEL).to_string()
    }

    fn selected_repo(&self) -> Option<&str> {
        self.models.selected_model.repo()
    }

    /// Apply one action (an [`Input`] or an [`Update`]); return the jobs it asks for.
    pub fn update(&mut self, action: impl Into<Action>) -> Vec<Job> {
        match action.into() {
            Action::Input(input) => self.on_input(input),
            Action::Worker(update) => self.on_update(update),
        }
    }

    fn on_input(&mut self, input: Input) -> Vec<Job> {
        match input {
            Input::Key(key) if key.kind != KeyEventKind::Release => self.on_key(key),
            Input::Key(_) | Input::Resize(..) => Vec::new(),
            Input::Paste(text) => {
                self.on_paste(&text);
                Vec::new()
            }
            Input::Mouse(m) => match m.kind {
                MouseEventKind::ScrollUp => self.command(Command::Up),
                MouseEventKind::ScrollDown => self.command(Command::Down),
                _ => Vec::new(),
            },
            Input::Tick => {
                self.ticks = self.ticks.wrapping_add(1);
                if let (true, Some(started)) = (self.ocr.is_running(), self.ocr.started) {
                    self.ocr.elapsed = self.ocr.elapsed.max(started.elapsed());
                }
                // Look for a `dsocr serve` again now and then (one short loopback request).
                match self.serve_probed {
                    Some(at) if at.elapsed() >= SERVE_PROBE_EVERY => {
                        self.serve_probed = Some(Instant::now());
                        vec![Job::ProbeServe]
                    }
                    _ => Vec::new(),
                }
            }
        }
    }

    fn on_key(&mut self, ev: KeyEvent) -> Vec<Job> {
        let key = Key::from_event(ev);
        let cmd = self.settings.keymap.lookup(key, self.focus);
        if cmd != Some(Command::Cancel) {
            self.cancel_pending = false;
        }
        match self.overlays.last_mut() {
            Some(Overlay::Input { .. }) => return self.on_input_key(ev),
            Some(Overlay::Confirm { job, .. }) => {
                let job = job.clone();
                return match ev.code {
                    KeyCode::Char('y' | 'Y') | KeyCode::Enter => {
                        self.overlays.pop();
                        self.start(job)
                    }
                    KeyCode::Char('n' | 'N') | KeyCode::Esc => {
                        self.overlays.pop();
                        Vec::new()
                    }
                    _ => self.cancel_only(cmd),
                };
            }
            Some(Overlay::Help { scroll }) => {
                match cmd {
                    Some(Command::Down) => *scroll = scroll.saturating_add(1),
                    Some(Command::Up) => *scroll = scroll.saturating_sub(1),
                    Some(Command::Help | Command::Back | Command::Quit | Command::Enter) => {
                        self.overlays.pop();
                    }
                    _ => return self.cancel_only(cmd),
                }
                return Vec::new();
            }
            Some(Overlay::Error { .. }) => {
                return match cmd {
                    Some(Command::Back | Command::Enter | Command::Quit) => {
                        self.overlays.pop();
                        Vec::new()
                    }
                    _ => self.cancel_only(cmd),
                };
            }
            None => {}
        }
        match cmd {
            Some(cmd) if self.available(cmd) => self.command(cmd),
            _ => Vec::new(),
        }
    }

    /// Under a dialog only Ctrl-C still acts.
    fn cancel_only(&mut self, cmd: Option<Command>) -> Vec<Job> {
        if cmd == Some(Command::Cancel) {
            self.command(Command::Cancel)
        } else {
            Vec::new()
        }
    }

    fn on_input_key(&mut self, ev: KeyEvent) -> Vec<Job> {
        let Some(Overlay::Input { purpose, value }) = self.overlays.last_mut() else {
            return Vec::new();
        };
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        match ev.code {
            KeyCode::Esc => {
                self.overlays.pop();
            }
            KeyCode::Char('c') if ctrl => {
                self.overlays.pop();
            }
            KeyCode::Char('u') if ctrl => value.clear(),
            KeyCode::Char(c) if !ctrl => value.push(c),
            KeyCode::Backspace => {
                value.pop();
            }
            KeyCode::Tab if *purpose == InputPurpose::OcrInput => {
                return vec![Job::CompletePath(value.clone())];
            }
            KeyCode::Enter => {
                // A password is taken as typed: spaces can be part of it.
                let value = match purpose {
                    InputPurpose::PdfPassword => value.clone(),
                    _ => value.trim().to_string(),
                };
                let purpose = *purpose;
                self.overlays.pop();
                return self.submit_input(purpose, value);
            }
            _ => {}
        }
        Vec::new()
    }

    fn on_paste(&mut self, text: &str) {
        if let Some(Overlay::Input { value, .. }) = self.overlays.last_mut() {
            value.extend(text.chars().filter(|c| !c.is_control()));
        }
    }

    fn submit_input(&mut self, purpose: InputPurpose, value: String) -> Vec<Job> {
        if value.is_empty() {
            return Vec::new();
        }
        match purpose {
            InputPurpose::Token => {
                self.login.whoami = Check::Checking;
                vec![Job::Login(Secret(value), self.diag_repo())]
            }
            InputPurpose::ModelRepo => {
                self.models.selected_model = ModelSource::Repo(value);
                Vec::new()
            }
            InputPurpose::Folder => {
                self.models.selected_model = ModelSource::Folder(PathBuf::from(value));
                Vec::new()
            }
            InputPurpose::OcrInput => {
                self.ocr.input = value.clone();
                self.ocr.completions.clear();
                // Known once the worker has looked at the file.
                self.ocr.doc = None;
                self.ocr.password = None;
                vec![Job::LoadPreview {
                    path: PathBuf::from(value),
                    password: None,
                }]
            }
            InputPurpose::PdfPassword => {
                self.ocr.password = Some(Secret(value));
                vec![Job::LoadPreview {
                    path: PathBuf::from(self.ocr.input.trim()),
                    password: self.ocr.password.clone(),
                }]
            }
            InputPurpose::Prompt => {
                if let Err(e) = user_prompt(&value) {
                    // Back to the input, under the reason, so the text can be fixed.
                    self.overlays.push(Overlay::Input { purpose, value });
                    self.overlays.push(Overlay::Error {
                        title: "Custom prompt".to_string(),
                        message: e.to_string(),
                    });
                    return Vec::new();
                }
                self.ocr.custom_prompt = value;
                self.ocr.preset = None;
                Vec::new()
            }
        }
    }

    fn open_input(&mut self, purpose: InputPurpose, value: String) -> Vec<Job> {
        self.overlays.push(Overlay::Input { purpose, value });
        Vec::new()
    }

    fn command(&mut self, cmd: Command) -> Vec<Job> {
        use Command::*;
        match cmd {
            Quit => {
                self.quit = true;
                Vec::new()
            }
            Help => {
                self.overlays.push(Overlay::Help { scroll: 0 });
                Vec::new()
            }
            ToggleLog => {
                self.log_visible = !self.log_visible;
                if !self.log_visible && self.focus == Pane::Log {
                    self.focus = Pane::Login;
                }
                Vec::new()
            }
            NextPane | PrevPane => {
                self.cycle_focus(cmd == NextPane);
                Vec::new()
            }
            Cancel => self.cancel(),
            Up | Down | PageUp | PageDown | Top | Bottom => {
                self.scroll(cmd);
                Vec::new()
            }
            Enter => self.enter(),
            Back => Vec::new(),
            Login => self.open_input(InputPurpose::Token, String::new()),
            Logout => {
                self.overlays.push(Overlay::Confirm {
                    question: "Log out: remove the active token?".to_string(),
                    job: Job::Logout(self.diag_repo()),
                });
                Vec::new()
            }
            SwitchToken => match self.login.stored.get(self.login.selected) {
                Some(t) => {
                    self.login.whoami = Check::Checking;
                    vec![Job::SwitchToken {
                        name: t.name.clone(),
                        repo: self.diag_repo(),
                    }]
                }
                None => Vec::new(),
            },
            Recheck => {
                self.login.whoami = Check::Checking;
                vec![Job::RefreshLogin(self.diag_repo())]
            }
            Download => {
                let repo = self.selected_repo().unwrap_or_default().to_string();
                self.start(Job::Download {
                    repo,
                    revision: "main".to_string(),
                })
            }
            Resume => match self.last_download.clone() {
                Some((repo, revision)) => self.start(Job::Download { repo, revision }),
                None => Vec::new(),
            },
            CancelDownload => vec![Job::CancelDownload],
            Verify => match self.selected_cache_row() {
                Some((repo, _)) => vec![Job::Verify(repo)],
                None => Vec::new(),
            },
            Delete => {
                if let Some((repo, rev)) = self.selected_cache_row() {
                    let short = rev.commit.get(..8).unwrap_or(&rev.commit).to_string();
                    self.overlays.push(Overlay::Confirm {
                        question: format!("Delete {repo} at {short} from the cache?"),
                        job: Job::Delete {
                            repo,
                            commit: rev.commit,
                        },
                    });
                }
                Vec::new()
            }
            UseFolder => self.open_input(InputPurpose::Folder, String::new()),
            ChooseModel => {
                let current = self.selected_repo().unwrap_or_default().to_string();
                self.open_input(InputPurpose::ModelRepo, current)
            }
            EditInput => self.open_input(InputPurpose::OcrInput, self.ocr.input.clone()),
            CycleMode => {
                self.ocr.mode = (self.ocr.mode + 1) % Mode::ALL.len();
                Vec::new()
            }
            CyclePreset => {
                self.ocr.preset = match self.ocr.preset {
                    Some(i) if i + 1 < PRESETS.len() => Some(i + 1),
                    Some(_) if !self.ocr.custom_prompt.is_empty() => None,
                    _ => Some(0),
                };
                Vec::new()
            }
            EditPrompt => self.open_input(InputPurpose::Prompt, self.ocr.custom_prompt.clone()),
            Run => {
                let pages = self.ocr.doc.map(|d| vec![d.page]);
                self.start(self.ocr_request(pages))
            }
            RunAll => {
                let pages = self.ocr.doc.map(|d| (1..=d.pages).collect());
                self.start(self.ocr_request(pages))
            }
            PrevPage | NextPage => {
                let Some(doc) = self.ocr.doc.as_mut() else {
                    return Vec::new();
                };
                doc.page = if cmd == PrevPage {
                    doc.page.saturating_sub(1).max(1)
                } else {
                    (doc.page + 1).min(doc.pages)
                };
                // The old page's boxes do not belong to the new one.
                self.ocr.boxes.clear();
                self.ocr.box_cursor = 0;
                vec![Job::PreviewPage {
                    path: PathBuf::from(self.ocr.input.trim()),
                    page: doc.page,
                    password: self.ocr.password.clone(),
                }]
            }
            CancelOcr => vec![Job::CancelOcr],
            Copy => {
                self.status = Some(format!(
                    "copied {} characters (OSC 52)",
                    self.ocr.output.chars().count()
                ));
                vec![Job::Copy(self.ocr.output.clone())]
            }
            Save => vec![Job::Save(self.ocr.save_dir.clone())],
        }
    }

    /// An OCR run of the input with the pane's settings; `pages` for a PDF.
    fn ocr_request(&self, pages: Option<Vec<usize>>) -> Job {
        Job::Ocr(OcrRequest {
            model: self.models.selected_model.clone(),
            image: PathBuf::from(self.ocr.input.trim()),
            pages,
            mode: self.ocr.mode(),
            prompt: self.prompt(),
            max_new_tokens: self.settings.ocr.max_new_tokens,
            device: self.settings.ocr.device.clone(),
            dtype: self.settings.ocr.dtype.clone(),
            kernels: self.settings.ocr.kernels.clone(),
            password: self.ocr.password.clone(),
        })
    }

    /// Record the start of a job in the state, then hand it out.
    fn start(&mut self, job: Job) -> Vec<Job> {
        match &job {
            Job::Download { repo, revision } => {
                self.last_download = Some((repo.clone(), revision.clone()));
                self.models.download = Some(DownloadView {
                    repo: repo.clone(),
                    revision: revision.clone(),
                    files: Vec::new(),
                    speed: None,
                    eta: None,
                    phase: DownloadPhase::Resolving,
                });
                self.push_log(format!("download {repo}@{revision}"));
            }
            Job::Ocr(req) => {
                self.ocr.run = OcrRun::Running(super::state::OcrPhase::Load);
                self.ocr.page_progress = None;
                self.ocr.output.clear();
                self.ocr.boxes.clear();
                self.ocr.box_cursor = 0;
                self.ocr.tokens = 0;
                self.ocr.scroll = 0;
                self.ocr.elapsed = Default::default();
                self.ocr.decode_elapsed = Default::default();
                self.ocr.started = Some(std::time::Instant::now());
                self.push_log(format!(
                    "ocr {} ({}, {})",
                    req.image.display(),
                    req.mode,
                    req.model.label()
                ));
            }
            Job::Logout(_) => self.login.whoami = Check::Checking,
            _ => {}
        }
        vec![job]
    }

    fn cancel(&mut self) -> Vec<Job> {
        if self.cancel_pending || !self.busy() {
            self.quit = true;
            return Vec::new();
        }
        let mut jobs = Vec::new();
        if self.download_active() {
            jobs.push(Job::CancelDownload);
        }
        if self.ocr.is_running() {
            jobs.push(Job::CancelOcr);
        }
        self.cancel_pending = true;
        self.status = Some("cancelling; press Ctrl-C again to quit".to_string());
        jobs
    }

    fn cycle_focus(&mut self, forward: bool) {
        let panes = self.panes();
        let i = panes.iter().position(|p| *p == self.focus).unwrap_or(0);
        let n = panes.len();
        self.focus = panes[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }];
    }

    fn scroll(&mut self, cmd: Command) {
        let step: i64 = match cmd {
            Command::Up => -1,
            Command::Down => 1,
            Command::PageUp => -10,
            Command::PageDown => 10,
            Command::Top => i64::MIN / 2,
            _ => i64::MAX / 2,
        };
        let move_in = |cur: usize, len: usize| -> usize {
            if len == 0 {
                return 0;
            }
            (cur as i64 + step).clamp(0, len as i64 - 1) as usize
        };
        match self.focus {
            // Up/Down pick a stored token; PgUp/PgDn/Home/End (or Up/Down with no stored
            // token) scroll the pane, whose long problems and fixes wrap.
            Pane::Login
                if self.login.stored.is_empty() || !matches!(cmd, Command::Up | Command::Down) =>
            {
                let cur = i64::from(self.login.scroll) + step;
                self.login.scroll = cur.clamp(0, 200) as u16;
            }
            Pane::Login => {
                self.login.selected = move_in(self.login.selected, self.login.stored.len());
            }
            Pane::Models => {
                self.models.cursor = move_in(self.models.cursor, self.cache_rows().len());
            }
            Pane::Ocr if !self.ocr.boxes.is_empty() => {
                self.ocr.box_cursor = move_in(self.ocr.box_cursor, self.ocr.boxes.len());
            }
            Pane::Ocr => {
                let lines = self.ocr.output.lines().count();
                self.ocr.scroll = move_in(self.ocr.scroll as usize, lines.max(1)) as u16;
            }
            Pane::Log => {
                // Log scroll counts up from the newest line.
                let cur = self.log_scroll as i64 - step;
                self.log_scroll = cur.clamp(0, self.log.len().saturating_sub(1) as i64) as u16;
            }
        }
    }

    fn enter(&mut self) -> Vec<Job> {
        match self.focus {
            Pane::Login if self.available(Command::SwitchToken) => {
                self.command(Command::SwitchToken)
            }
            Pane::Models => {
                if let Some((repo, _)) = self.selected_cache_row() {
                    self.models.selected_model = ModelSource::Repo(repo);
                }
                Vec::new()
            }
            Pane::Ocr if self.available(Command::Run) => self.command(Command::Run),
            Pane::Ocr if self.available(Command::EditInput) => self.command(Command::EditInput),
            _ => Vec::new(),
        }
    }

    /// Add a line to the log pane.
    pub fn push_log(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Progress and results from workers; a finished download asks for a fresh cache scan and
    /// diagnosis.
    fn on_update(&mut self, update: Update) -> Vec<Job> {
        match update {
            Update::DownloadFinished(outcome) => {
                let done = matches!(outcome, Outcome::Done(()));
                self.on_download_finished(outcome);
                // The cache changed: rescan it, and re-run the diagnosis so a `cache.missing`
                // problem in the Login pane goes away once the download completes.
                if done {
                    return vec![Job::ScanCache, Job::RefreshLogin(self.diag_repo())];
                }
            }
            Update::Log(line) => self.push_log(line),
            Update::Error { title, message } => {
                self.push_log(format!("error: {title}: {message}"));
                self.overlays.push(Overlay::Error { title, message });
            }
            Update::Device(d) => self.header.device = Check::Done(d),
            Update::Serve(probe) => self.serve = probe,
            Update::Diagnosis(d) => self.login.diagnosis = d,
            Update::LoginStatus(status) => {
                let whoami = std::mem::take(&mut self.login.whoami);
                let scroll = self.login.scroll;
                self.login = *status;
                self.login.whoami = whoami;
                self.login.scroll = scroll;
                self.login.selected = self
                    .login
                    .selected
                    .min(self.login.stored.len().saturating_sub(1));
            }
            Update::Whoami(result) => {
                self.login.whoami = match result {
                    Ok(w) => Check::Done(w),
                    Err(e) => Check::Failed(e),
                }
            }
            Update::CacheScanned(result) => {
                self.models.cached = match result {
                    Ok(repos) => Check::Done(repos),
                    Err(e) => Check::Failed(e),
                };
                let rows = self.cache_rows().len();
                self.models.cursor = self.models.cursor.min(rows.saturating_sub(1));
            }
            Update::DownloadStarted(files) => self.on_download_started(files),
            Update::DownloadProgress {
                file,
                done,
                speed,
                eta,
            } => {
                if let Some(d) = self.models.download.as_mut() {
                    d.speed = speed.or(d.speed);
                    d.eta = eta.or(d.eta);
                    if let Some(f) = d.files.get_mut(file) {
                        f.progress.done = done;
                        if f.state == FileState::Queued {
                            f.state = FileState::Running;
                        }
                    }
                }
            }
            Update::DownloadFile { file, state } => {
                if let Some(f) = self
                    .models
                    .download
                    .as_mut()
                    .and_then(|d| d.files.get_mut(file))
                {
                    f.state = state;
                }
            }
            Update::OcrPhase(phase) => {
                if self.ocr.is_running() {
                    self.ocr.run = OcrRun::Running(phase);
                }
            }
            Update::OcrText {
                text,
                tokens,
                elapsed,
                decode_elapsed,
            } => {
                self.ocr.output.push_str(&text);
                self.ocr.tokens = tokens;
                self.ocr.elapsed = elapsed;
                self.ocr.decode_elapsed = decode_elapsed;
            }
            Update::OcrFinished(result) => self.on_ocr_finished(result),
            Update::Preview(p) => self.ocr.preview = p,
            Update::DocumentOpened(pages) => {
                self.ocr.doc = pages.map(|pages| DocView { pages, page: 1 });
            }
            Update::PasswordNeeded { path, wrong } => {
                // Only for the input still chosen (the user may have moved on).
                if path == Path::new(self.ocr.input.trim()) {
                    self.overlays.push(Overlay::Input {
                        purpose: InputPurpose::PdfPassword,
                        value: String::new(),
                    });
                    if wrong {
                        self.overlays.push(Overlay::Error {
                            title: "PDF password".to_string(),
                            message: format!(
                                "the password does not open {}; type it again",
                                path.display()
                            ),
                        });
                    }
                }
            }
            Update::OcrPage(progress) => {
                if self.ocr.is_running() {
                    self.ocr.page_progress = Some(progress);
                }
            }
            Update::Completions { input, candidates } => {
                if let Some(Overlay::Input {
                    purpose: InputPurpose::OcrInput,
                    value,
                }) = self.overlays.last_mut()
                {
                    *value = input;
                }
                self.ocr.completions = candidates;
            }
            Update::Saved(dir) => {
                self.status = Some(format!("saved to {}", dir.display()));
            }
        }
        Vec::new()
    }

    fn on_download_started(&mut self, files: Vec<(String, u64, u64)>) {
        let Some(d) = self.models.download.as_mut() else {
            return;
        };
        d.files = files
            .into_iter()
            .map(|(name, total, done)| FileProgress {
                name,
                progress: ByteProgress::new(done, total),
                state: if total > 0 && done >= total {
                    FileState::Done
                } else {
                    FileState::Queued
                },
            })
            .collect();
        d.phase = DownloadPhase::Running;
    }

    fn on_download_finished(&mut self, outcome: Outcome<(), super::state::DiagnosisView>) {
        let Some(d) = self.models.download.as_mut() else {
            return;
        };
        let (phase, line) = match outcome {
            Outcome::Done(()) => (DownloadPhase::Done, format!("download {} done", d.repo)),
            Outcome::Cancelled => (
                DownloadPhase::Cancelled,
                format!("download {} cancelled (resumable)", d.repo),
            ),
            Outcome::Failed(diag) => {
                let line = format!("download {} failed: {}: {}", d.repo, diag.code, diag.cause);
                (DownloadPhase::Failed(diag), line)
            }
        };
        d.phase = phase;
        self.push_log(line);
    }

    fn on_ocr_finished(&mut self, outcome: Outcome<Vec<super::state::BoxView>>) {
        self.ocr.started = None;
        match outcome {
            Outcome::Done(boxes) => {
                self.push_log(format!(
                    "ocr done: {} tokens, {} boxes",
                    self.ocr.tokens,
                    boxes.len()
                ));
                self.ocr.boxes = boxes;
                self.ocr.run = OcrRun::Done;
            }
            Outcome::Cancelled => {
                self.push_log("ocr cancelled".to_string());
                self.ocr.run = OcrRun::Cancelled;
            }
            Outcome::Failed(msg) => {
                self.ocr.run = OcrRun::Failed(msg.clone());
                self.push_log(format!("error: OCR failed: {msg}"));
                self.overlays.push(Overlay::Error {
                    title: "OCR failed".to_string(),
                    message: msg,
                });
            }
        }
    }
}
