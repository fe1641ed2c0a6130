//! The bottom line: the keys that work right now, and a status message.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::key_style;
use crate::tui::app::{App, InputPurpose, Overlay};
use crate::tui::keys::Command;

/// Hints for the context: the focused pane's commands, then the global ones.
pub fn hints(app: &App) -> Vec<(String, &'static str)> {
    let fixed = |pairs: &[(&str, &'static str)]| {
        pairs
            .iter()
            .map(|(k, d)| ((*k).to_string(), *d))
            .collect::<Vec<_>>()
    };
    match app.overlays.last() {
        Some(Overlay::Input { purpose, .. }) => {
            let mut h = fixed(&[("Enter", "ok"), ("Esc", "cancel"), ("Ctrl-u", "clear")]);
            if *purpose == InputPurpose::OcrInput {
                h.push(("Tab".to_string(), "complete"));
            }
            h
        }
        Some(Overlay::Confirm { .. }) => fixed(&[("y", "yes"), ("n", "no")]),
        Some(Overlay::Error { .. }) => fixed(&[("Enter", "close")]),
        Some(Overlay::Help { .. }) => fixed(&[("j/k", "scroll"), ("Esc", "close")]),
        None => {
            let km = &app.settings.keymap;
            let pane_cmds = km
                .commands()
                .filter(|c| c.scope() == Some(app.focus) && app.available(*c));
            let global = [
                Command::Cancel,
                Command::NextPane,
                Command::ToggleLog,
                Command::Help,
                Command::Quit,
            ];
            pane_cmds
                .chain(
                    global
                        .into_iter()
                        .filter(|c| *c != Command::Cancel || app.busy()),
                )
                .map(|c| (km.label(c), c.description()))
                .collect()
        }
    }
}

/// Draw the footer.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.settings.theme;
    let mut spans = Vec::new();
    if let Some(status) = &app.status {
        spans.push(Span::styled(format!(" {status} "), theme.fg(theme.warn)));
        spans.push(Span::styled("│", theme.fg(theme.border)));
    }
    for (key, desc) in hints(app) {
        spans.push(Span::styled(format!(" {key}"), key_style(app)));
        spans.push(Span::styled(format!(" {desc} "), theme.fg(theme.muted)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
