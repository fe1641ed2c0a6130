//! The `?` overlay: every binding, grouped by where it works.

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::{centered, key_style};
use crate::tui::app::{App, Pane};
use crate::tui::keys::Command;

/// The help text lines (also used by tests to check every command is listed).
pub fn lines(app: &App) -> Vec<Line<'static>> {
    let theme = &app.settings.theme;
    let km = &app.settings.keymap;
    let groups = [
        ("Everywhere", None),
        ("Login pane", Some(Pane::Login)),
        ("Models pane", Some(Pane::Models)),
        ("OCR pane", Some(Pane::Ocr)),
    ];
    let mut out = Vec::new();
    for (title, scope) in groups {
        out.push(Line::styled(title, theme.fg(theme.muted)));
        for cmd in km.commands().filter(|c| c.scope() == scope) {
            out.push(binding_line(app, cmd));
        }
    }
    out.push(Line::styled(
        "Text inputs: Enter ok, Esc cancel, Ctrl-u clear, paste works",
        theme.fg(theme.muted),
    ));
    out
}

fn binding_line(app: &App, cmd: Command) -> Line<'static> {
    let keys: Vec<String> = app
        .settings
        .keymap
        .keys(cmd)
        .iter()
        .map(ToString::to_string)
        .collect();
    let keys = if keys.is_empty() {
        "(unbound)".to_string()
    } else {
        keys.join(" ")
    };
    Line::from(vec![
        Span::styled(format!("  {keys:<18}"), key_style(app)),
        Span::raw(cmd.description()),
    ])
}

/// Draw the overlay.
pub fn draw(frame: &mut Frame, app: &App, scroll: u16) {
    let area = centered(frame.area(), 56, frame.area().height.saturating_sub(2));
    frame.render_widget(Clear, area);
    let block = Block::bordered()
        .title(" Keys (Esc closes) ")
        .border_style(app.settings.theme.fg(app.settings.theme.focus));
    frame.render_widget(
        Paragraph::new(lines(app)).scroll((scroll, 0)).block(block),
        area,
    );
}
