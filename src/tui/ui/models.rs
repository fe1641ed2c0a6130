//! The Models pane: the selected model, the cache, and the download with one bar per file.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::{bar, field, pane_block, spinner};
use crate::tui::app::{App, Pane};
use crate::tui::progress::human_duration;
use crate::tui::state::{Check, DownloadPhase, DownloadView, FileState, ModelSource, RevisionRow};
use crate::units::human_bytes;

/// Draw the Models pane.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let inner_width = area.width.saturating_sub(2) as usize;
    let mut lines = vec![model_line(app)];
    lines.extend(cache_lines(app));
    if let Some(d) = &app.models.download {
        lines.extend(download_lines(app, d, inner_width));
    }
    // Keep the download visible: drop cache rows from the top when space is short.
    let height = area.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(height.max(1));
    let skip = if app.models.download.is_some() {
        skip
    } else {
        0
    };
    let lines: Vec<Line> = if skip > 0 {
        std::iter::once(lines[0].clone())
            .chain(lines.into_iter().skip(skip + 1))
            .collect()
    } else {
        lines
    };
    frame.render_widget(
        Paragraph::new(lines).block(pane_block(app, Pane::Models)),
        area,
    );
}

fn model_line(app: &App) -> Line<'static> {
    let theme = &app.settings.theme;
    let label = match &app.models.selected_model {
        ModelSource::Repo(r) => r.clone(),
        ModelSource::Folder(p) => format!("{} (local folder)", p.display()),
    };
    field(app, "Model", Span::styled(label, theme.title()))
}

fn cache_lines(app: &App) -> Vec<Line<'static>> {
    let theme = &app.settings.theme;
    match &app.models.cached {
        Check::NotChecked => Vec::new(),
        Check::Checking => vec![field(
            app,
            "Cache",
            Span::styled(format!("{} scanning…", spinner(app)), theme.fg(theme.muted)),
        )],
        Check::Failed(e) => vec![field(
            app,
            "Cache",
            Span::styled(e.clone(), theme.fg(theme.error)),
        )],
        Check::Done(repos) if repos.is_empty() => vec![field(
            app,
            "Cache",
            Span::styled("no models cached yet", theme.fg(theme.muted)),
        )],
        Check::Done(repos) => {
            let mut lines = vec![Line::styled("Cache", theme.fg(theme.muted))];
            let mut last_repo = None;
            for (row, (i, rev)) in app.cache_rows().into_iter().enumerate() {
                if last_repo != Some(i) {
                    last_repo = Some(i);
                    lines.push(Line::from(vec![
                        Span::raw(format!(" {} ", repos[i].repo)),
                        Span::styled(human_bytes(repos[i].size()), theme.fg(theme.muted)),
                    ]));
                }
                lines.push(revision_line(app, rev, row == app.models.cursor));
            }
            lines
        }
    }
}

/// `   main 9f30c71f  6.2 GiB complete`, highlighted when it is the cursor row.
fn revision_line(app: &App, rev: &RevisionRow, cursor: bool) -> Line<'static> {
    let theme = &app.settings.theme;
    let short = rev.commit.get(..8).unwrap_or(&rev.commit);
    let refs = if rev.refs.is_empty() {
        "-".to_string()
    } else {
        rev.refs.join(",")
    };
    let (state, style) = if rev.missing.is_empty() {
        ("complete".to_string(), theme.fg(theme.ok))
    } else {
        (
            format!("missing {} files", rev.missing.len()),
            theme.fg(theme.warn),
        )
    };
    let line = Line::from(vec![
        Span::raw(format!("   {refs} {short} {:>9} ", human_bytes(rev.size))),
        Span::styled(state, style),
    ]);
    if app.focus == Pane::Models && cursor {
        line.style(theme.selected())
    } else {
        line
    }
}

fn download_lines(app: &App, d: &DownloadView, width: usize) -> Vec<Line<'static>> {
    let theme = &app.settings.theme;
    let (state, style) = match &d.phase {
        DownloadPhase::Resolving => (
            format!("{} resolving files…", spinner(app)),
            theme.fg(theme.muted),
        ),
        DownloadPhase::Running => (
            format!("{} downloading", spinner(app)),
            theme.fg(theme.accent),
        ),
        DownloadPhase::Done => ("✓ done, verified".to_string(), theme.fg(theme.ok)),
        DownloadPhase::Cancelled => ("cancelled (R resumes)".to_string(), theme.fg(theme.warn)),
        DownloadPhase::Failed(_) => ("✗ failed".to_string(), theme.fg(theme.error)),
    };
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{:<8}", "Get"), theme.fg(theme.muted)),
        Span::styled(state, style),
        Span::raw(format!("  {}@{}", d.repo, d.revision)),
    ])];
    if let DownloadPhase::Failed(diag) = &d.phase {
        lines.push(Line::from(vec![
            Span::styled(format!("{:<8}", "Problem"), theme.fg(theme.muted)),
            Span::styled(format!("{}: ", diag.code), theme.fg(theme.error)),
            Span::raw(diag.cause.clone()),
        ]));
        lines.push(Line::from(vec![
            Span::styled(format!("{:<8}", "Fix"), theme.fg(theme.muted)),
            Span::styled(diag.fix.clone(), theme.fg(theme.warn)),
        ]));
    }
    let name_w = (width / 3).clamp(4, 28);
    let bar_w = width.saturating_sub(name_w + 24).clamp(0, 40);
    for f in &d.files {
        let mark = match f.state {
            FileState::Queued => " ",
            FileState::Running => "↓",
            FileState::Verifying => "#",
            FileState::Done => "✓",
            FileState::Failed => "✗",
        };
        lines.push(Line::raw(format!(
            "{mark}{:<name_w$} {} {:>3}% {:>9}",
            truncate(&f.name, name_w),
            bar(f.progress.ratio(), bar_w),
            f.progress.percent(),
            human_bytes(f.progress.total),
        )));
    }
    if !d.files.is_empty() {
        lines.extend(total_lines(app, d, bar_w + name_w));
    }
    lines
}

fn total_lines(app: &App, d: &DownloadView, bar_w: usize) -> Vec<Line<'static>> {
    let total = d.total();
    let theme = &app.settings.theme;
    let speed_text = d.speed.map_or_else(
        || "-".to_string(),
        |s| format!("{}/s", human_bytes(s as u64)),
    );
    let eta = match (&d.phase, d.eta) {
        (DownloadPhase::Running, Some(eta)) => human_duration(eta),
        _ => "-".to_string(),
    };
    vec![
        Line::from(vec![
            Span::styled("Total ", theme.title()),
            Span::raw(format!(
                "{} {:>3}% {} / {}",
                bar(total.ratio(), bar_w.saturating_sub(5)),
                total.percent(),
                human_bytes(total.done),
                human_bytes(total.total),
            )),
        ]),
        Line::from(vec![
            Span::styled(format!("{:<8}", "Speed"), theme.fg(theme.muted)),
            Span::raw(format!("{speed_text}  ETA {eta}")),
        ]),
    ]
}

/// `name` cut to `width` characters, with `…` when cut.
fn truncate(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    let keep: String = name.chars().take(width.saturating_sub(1)).collect();
    format!("{keep}…")
}
