//! Drawing: one file per pane. Everything here reads `&App` and nothing else: no I/O.

mod dialog;
mod footer;
mod header;
mod help;
mod log;
mod login;
mod models;
mod ocr;
mod preview;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType};

use super::app::{App, Overlay, Pane};
use super::graphics::Placement;

/// Panes side by side need at least this many columns; below it only the focused pane shows.
const WIDE: u16 = 90;
/// And at least this many rows.
const TALL: u16 = 16;

/// Draw the whole dashboard.
pub fn draw(frame: &mut Frame, app: &App) {
    draw_placed(frame, app);
}

/// Draw the whole dashboard; return the page preview the kitty graphics protocol must show
/// (only with [`super::graphics::Graphics::Kitty`], when the preview is visible and no dialog covers it).
pub fn draw_placed(frame: &mut Frame, app: &App) -> Option<Placement> {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header::draw(frame, head, app);
    footer::draw(frame, foot, app);
    let (main, log_area) = if app.log_visible && body.height >= 8 {
        let [m, l] = Layout::vertical([Constraint::Min(0), Constraint::Percentage(30)]).areas(body);
        (m, Some(l))
    } else {
        (body, None)
    };
    if let Some(area) = log_area {
        log::draw(frame, area, app);
    }
    let mut placed = None;
    if main.width >= WIDE && main.height >= TALL {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)])
                .areas(main);
        let [top, bottom] =
            Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(left);
        login::draw(frame, top, app);
        models::draw(frame, bottom, app);
        placed = ocr::draw(frame, right, app);
    } else {
        let pane = if log_area.is_none() && app.focus == Pane::Log {
            Pane::Login
        } else {
            app.focus
        };
        match pane {
            Pane::Login => login::draw(frame, main, app),
            Pane::Models => models::draw(frame, main, app),
            Pane::Ocr => placed = ocr::draw(frame, main, app),
            Pane::Log => {}
        }
    }
    for overlay in &app.overlays {
        match overlay {
            Overlay::Help { scroll } => help::draw(frame, app, *scroll),
            other => dialog::draw(frame, app, other),
        }
    }
    placed
}

/// The bordered block of a pane, highlighted when focused.
fn pane_block(app: &App, pane: Pane) -> Block<'static> {
    let theme = &app.settings.theme;
    let focused = app.focus == pane;
    let (border, title) = if focused {
        (
            theme.fg(theme.focus).add_modifier(Modifier::BOLD),
            theme.title(),
        )
    } else {
        (theme.fg(theme.border), theme.fg(theme.muted))
    };
    let marker = if focused { "▶ " } else { "" };
    Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(border)
        .title(Span::styled(format!(" {marker}{} ", pane.title()), title))
}

/// A `label  value` line.
fn field<'a>(app: &App, label: &'a str, value: impl Into<Span<'a>>) -> Line<'a> {
    let theme = &app.settings.theme;
    Line::from(vec![
        Span::styled(format!("{label:<8}"), theme.fg(theme.muted)),
        value.into(),
    ])
}

/// A text progress bar `████░░░░` of `width` cells.
fn bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).floor() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// A spinner frame for a running job.
fn spinner(app: &App) -> &'static str {
    const FRAMES: [&str; 8] = ["⣾", "⣽", "⣻", "⢿", "⡿", "⣟", "⣯", "⣷"];
    FRAMES[(app.ticks % FRAMES.len() as u64) as usize]
}

/// A rectangle of at most `w` x `h` centred in `area`.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Style of the key part of a hint.
fn key_style(app: &App) -> Style {
    app.settings.theme.title()
}
