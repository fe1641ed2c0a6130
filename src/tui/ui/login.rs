//! The Login pane: token in use and its source, shadowed sources, whoami, diagnosis, stored
//! tokens.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use super::{field, pane_block, spinner};
use crate::tui::app::{App, Pane};
use crate::tui::state::Check;

/// Draw the Login pane.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.settings.theme;
    let login = &app.login;
    let mut lines = Vec::new();
    lines.push(match &login.active {
        Some(t) => Line::from(vec![
            Span::styled(format!("{:<8}", "Token"), theme.fg(theme.muted)),
            Span::styled(t.masked.clone(), theme.title()),
            Span::styled(format!("  from {}", t.source), theme.fg(theme.muted)),
        ]),
        None => field(
            app,
            "Token",
            Span::styled("none found", theme.fg(theme.warn)),
        ),
    });
    for other in &login.others {
        lines.push(Line::from(vec![
            Span::styled(format!("{:<8}", "Also"), theme.fg(theme.muted)),
            Span::raw(other.masked.clone()),
            Span::styled(
                format!("  in {} (not used)", other.source),
                theme.fg(theme.muted),
            ),
        ]));
    }
    lines.extend(whoami_lines(app));
    match &login.diagnosis {
        Some(d) => {
            lines.push(Line::from(vec![
                Span::styled(format!("{:<8}", "Problem"), theme.fg(theme.muted)),
                Span::styled(format!("✗ {}: ", d.code), theme.fg(theme.error)),
                Span::raw(d.cause.clone()),
            ]));
            lines.push(Line::from(vec![
                Span::styled(format!("{:<8}", "Fix"), theme.fg(theme.muted)),
                Span::styled(d.fix.clone(), theme.fg(theme.warn)),
            ]));
        }
        None if matches!(login.whoami, Check::Done(_)) => {
            lines.push(field(
                app,
                "Status",
                Span::styled("✓ ok", theme.fg(theme.ok)),
            ));
        }
        None => {}
    }
    if !login.stored.is_empty() {
        lines.push(Line::styled("Stored tokens", theme.fg(theme.muted)));
        for (i, t) in login.stored.iter().enumerate() {
            let mark = if t.active { "●" } else { " " };
            let line = Line::from(format!(" {mark} {:<14} {}", t.name, t.masked));
            let focused_row = app.focus == Pane::Login && i == login.selected;
            lines.push(if focused_row {
                line.style(theme.selected())
            } else {
                line
            });
        }
    }
    let widget = Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(pane_block(app, Pane::Login));
    frame.render_widget(widget, area);
}

fn whoami_lines(app: &App) -> Vec<Line<'static>> {
    let theme = &app.settings.theme;
    match &app.login.whoami {
        Check::NotChecked => Vec::new(),
        Check::Checking => vec![field(
            app,
            "User",
            Span::styled(
                format!("{} asking the hub…", spinner(app)),
                theme.fg(theme.muted),
            ),
        )],
        Check::Failed(e) => vec![field(
            app,
            "User",
            Span::styled(e.clone(), theme.fg(theme.error)),
        )],
        Check::Done(w) => {
            let mut lines = vec![field(
                app,
                "User",
                Span::styled(w.user.clone(), theme.title()),
            )];
            if !w.orgs.is_empty() {
                lines.push(field(app, "Orgs", Span::raw(w.orgs.join(", "))));
            }
            let name = w.token_name.as_deref().unwrap_or("-");
            let role = w.role.as_deref().unwrap_or("-");
            lines.push(field(
                app,
                "Access",
                Span::raw(format!("token \"{name}\", role {role}")),
            ));
            lines
        }
    }
}
