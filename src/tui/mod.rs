//! The dashboard (ratatui + crossterm): `dsocr` with no arguments.
//!
//! State lives in [`app::App`] and changes only through [`action::Action`]s; the event loop
//! drains actions, hands the resulting [`action::Job`]s to [`tasks::Workers`] and redraws from
//! the state. Rendering never waits on I/O or the model.

pub mod action;
pub mod app;
pub mod config;
pub mod event;
pub mod graphics;
pub mod keys;
pub mod logging;
pub mod progress;
pub mod state;
pub mod tasks;
pub mod terminal;
pub mod ui;

use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use base64::Engine;
use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::layout::Rect;

use action::{Action, ActionSender, Input, Job};
use app::App;
use config::{ColorEnv, Settings};
use graphics::{Graphics, KittyPreview, Placement};
use state::{Check, HeaderInfo};

/// How often the screen refreshes with nothing happening (spinners, elapsed time).
const TICK: Duration = Duration::from_millis(200);
/// Shortest time between two frames (60 per second at most).
const FRAME: Duration = Duration::from_millis(16);

/// The longest the event loop was busy (applying actions and drawing, not waiting) in one
/// turn, by what was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Frames drawn.
    pub frames: u64,
    /// Longest single frame draw.
    pub max_draw: Duration,
    /// Longest turn while nothing ran.
    pub max_idle: Duration,
    /// Longest turn while a download ran.
    pub max_download: Duration,
    /// Longest turn while OCR ran.
    pub max_ocr: Duration,
}

impl LoopStats {
    fn record(&mut self, app: &App, busy_for: Duration) {
        let slot = if app.ocr.is_running() {
            &mut self.max_ocr
        } else if app.busy() {
            &mut self.max_download
        } else {
            &mut self.max_idle
        };
        *slot = (*slot).max(busy_for);
    }
}

/// Run the dashboard loop on any backend until the app quits or the channel closes. Every
/// job goes to `dispatch`. Actions are applied as they come; a frame is drawn at most every
/// `FRAME` (a flood of progress events costs one frame per interval, not one per event).
pub fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    rx: &Receiver<Action>,
    dispatch: impl FnMut(Job),
) -> Result<LoopStats, B::Error> {
    event_loop_with(terminal, app, rx, dispatch, |_, _| {})
}

/// [`event_loop`], calling `after_draw` after every frame with the frame's size and the page
/// preview the kitty graphics protocol must show (see [`graphics::KittyPreview`]).
pub fn event_loop_with<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    rx: &Receiver<Action>,
    mut dispatch: impl FnMut(Job),
    mut after_draw: impl FnMut(Rect, Option<Placement>),
) -> Result<LoopStats, B::Error> {
    let mut stats = LoopStats::default();
    let mut last_draw = Instant::now();
    draw(terminal, app, &mut stats, &mut after_draw)?;
    let mut open = true;
    while open && !app.quit {
        let first = match rx.recv_timeout(TICK) {
            Ok(a) => a,
            Err(RecvTimeoutError::Timeout) => Action::Input(Input::Tick),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut busy = apply(app, first, &mut dispatch);
        let deadline = last_draw + FRAME;
        while !app.quit {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(action) => busy += apply(app, action, &mut dispatch),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        last_draw = Instant::now();
        draw(terminal, app, &mut stats, &mut after_draw)?;
        stats.record(app, busy + last_draw.elapsed());
    }
    Ok(stats)
}

/// Apply one action and dispatch its jobs; return the time it took.
fn apply(app: &mut App, action: Action, dispatch: &mut impl FnMut(Job)) -> Duration {
    let start = Instant::now();
    for job in app.update(action) {
        dispatch(job);
    }
    start.elapsed()
}

fn draw<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &App,
    stats: &mut LoopStats,
    after_draw: &mut impl FnMut(Rect, Option<Placement>),
) -> Result<(), B::Error> {
    let start = Instant::now();
    let mut placed = None;
    let frame = terminal.draw(|f| placed = ui::draw_placed(f, app))?.area;
    after_draw(frame, placed);
    stats.frames += 1;
    stats.max_draw = stats.max_draw.max(start.elapsed());
    Ok(())
}

/// The OSC 52 escape that puts `text` on the terminal's clipboard (works through SSH).
pub fn osc52(text: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    format!("\x1b]52;c;{b64}\x07")
}

/// Header facts from the environment, resolved by the hub layer.
fn header() -> HeaderInfo {
    let env = crate::hub::HubEnv::from_process();
    HeaderInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        endpoint: env.endpoint,
        offline: env.offline,
        device: Check::Checking,
    }
}

/// Start the dashboard and run it until the user quits.
pub fn run() -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = ActionSender(tx);
    let log_path = logging::init(sender.clone())
        .map_err(|e| anyhow::anyhow!("cannot open the log file: {e}"))?;
    let config = crate::settings::config_path();
    let settings = Settings::load(config.as_deref(), ColorEnv::from_env());
    let mut app = App::new(header(), settings);
    app.graphics = Graphics::from_env();
    app.push_log(format!("log file: {}", log_path.display()));
    if let Some(c) = &config {
        app.push_log(format!("config file: {}", c.display()));
    }
    let mut workers = tasks::Workers::new(sender.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the worker threads: {e}"))?;
    let (mut terminal, guard) =
        terminal::init().map_err(|e| anyhow::anyhow!("cannot set up the terminal: {e}"))?;
    event::spawn_input(sender.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the input thread: {e}"))?;
    for job in app.startup_jobs() {
        workers.dispatch(job);
    }
    tracing::info!("dashboard started (preview: {:?})", app.graphics);
    let mut kitty = KittyPreview::default();
    let mut last_frame = Rect::default();
    let after_draw = |frame: Rect, placed: Option<Placement>| {
        if frame != last_frame {
            // A resize clears the screen, and the image with it.
            kitty.forget();
            last_frame = frame;
        }
        if let Err(e) = kitty.update(&mut std::io::stdout(), placed) {
            tracing::warn!("could not write the preview image: {e}");
        }
    };
    let dispatch = |job| match job {
        Job::Copy(text) => {
            let mut out = std::io::stdout();
            if out
                .write_all(osc52(&text).as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                tracing::warn!("could not write the clipboard escape");
            }
        }
        other => workers.dispatch(other),
    };
    let result = event_loop_with(&mut terminal, &mut app, &rx, dispatch, after_draw);
    let _ = kitty.update(&mut std::io::stdout(), None);
    drop(guard);
    workers.shutdown();
    let stats = result.map_err(|e| anyhow::anyhow!("drawing failed: {e}"))?;
    tracing::info!(
        "dashboard closed: {} frames, longest draw {:?}, longest loop turn idle {:?}, downloading {:?}, OCR {:?}",
        stats.frames,
        stats.max_draw,
        stats.max_idle,
        stats.max_download,
        stats.max_ocr
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osc52_is_base64_of_the_text() {
        assert_eq!(osc52("hi"), "\x1b]52;c;aGk=\x07");
    }
}
