//! The Login pane: token in use and its source, shadowed sources, whoami, diagnosis, stored
//! tokens.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use unicode_width::UnicodeWidthStr;

use super::{field, pane_block, spinner};
use crate::tui::app::{App, Pane};
use crate::tui::state::Check;

/// The width of the label column; wrapped rows continue under the value, not the label.
const LABEL: usize = 8;

/// Wraps one row (spans after the label column) to `width` cells with a hanging indent:
/// continuation lines start under the value. Styles are kept; a word longer than a line is
/// cut.
fn hanging(spans: Vec<Span<'static>>, width: usize) -> Vec<Line<'static>> {
    let width = width.max(LABEL + 4);
    let mut words: Vec<(String, Style)> = Vec::new();
    for span in spans {
        for piece in span.content.split_inclusive(' ') {
            words.push((piece.to_string(), span.style));
        }
    }
    let mut lines = Vec::new();
    let mut current: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for (word, style) in words {
        let mut word = word;
        loop {
            let w = word.width();
            if used + w.saturating_sub(usize::from(word.ends_with(' '))) <= width {
                used += w;
                current.push(Span::styled(word, style));
                break;
            }
            if used > LABEL {
                lines.push(Line::from(std::mem::take(&mut current)));
                current.push(Span::raw(" ".repeat(LABEL)));
                used = LABEL;
                word = word.trim_start().to_string();
                continue;
            }
            // A word wider than a whole line: cut it.
            let room = width - used;
            let mut cut = 0;
            let mut cells = 0;
            for (i, c) in word.char_indices() {
                let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
                if cells + cw > room {
                    break;
                }
                cells += cw;
                cut = i + c.len_utf8();
            }
            if cut == 0 {
                break;
            }
            current.push(Span::styled(word[..cut].to_string(), style));
            used += cells;
            word = word[cut..].to_string();
            if word.is_empty() {
                break;
            }
        }
    }
    if !current.is_empty() {
        lines.push(Line::from(current));
    }
    lines
}

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
    let width = usize::from(area.width.saturating_sub(2));
    let lines: Vec<Line> = lines
        .into_iter()
        .flat_map(|l| {
            let style = l.style;
            hanging(l.spans, width)
                .into_iter()
                .map(move |w| w.style(style))
        })
        .collect();
    // Scroll (PgUp/PgDn) when the rows do not fit, never past the last one.
    let visible = usize::from(area.height.saturating_sub(2));
    let max = lines.len().saturating_sub(visible);
    let scroll = usize::from(login.scroll).min(max) as u16;
    let widget = Paragraph::new(lines)
        .scroll((scroll, 0))
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
        // The Problem row below says why; the User row does not repeat it.
        Check::Failed(_) if app.login.active.is_some() && app.login.diagnosis.is_some() => {
            vec![field(
                app,
                "User",
                Span::styled("not confirmed: see Problem", theme.fg(theme.error)),
            )]
        }
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
