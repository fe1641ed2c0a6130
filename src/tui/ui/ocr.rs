//! The OCR pane: input, mode, prompt, run state with phase and speed, the streamed output, the
//! grounding boxes and the page preview with the boxes drawn.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::{field, pane_block, preview, spinner};
use crate::tui::app::{App, PRESETS, Pane};
use crate::tui::graphics::{Graphics, Placement};
use crate::tui::progress::human_duration;
use crate::tui::state::OcrRun;

/// Draw the OCR pane; returns the preview for the kitty graphics protocol, if it shows one.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) -> Option<Placement> {
    let block = pane_block(app, Pane::Ocr);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [head, body] = Layout::vertical([Constraint::Length(3), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(head_lines(app)), head);
    let show_side = body.width >= 60 && (app.ocr.preview.is_some() || !app.ocr.boxes.is_empty());
    if show_side {
        let [out, side] =
            Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
                .areas(body);
        draw_output(frame, out, app);
        draw_side(frame, side, app)
    } else {
        draw_output(frame, body, app);
        None
    }
}

fn head_lines(app: &App) -> Vec<Line<'static>> {
    let theme = &app.settings.theme;
    let ocr = &app.ocr;
    let input = if ocr.input.is_empty() {
        Span::styled("(none: press i)", theme.fg(theme.muted))
    } else {
        Span::raw(ocr.input.clone())
    };
    let prompt = match ocr.preset {
        Some(i) => PRESETS[i % PRESETS.len()].to_string(),
        None => format!("custom: {}", ocr.custom_prompt),
    };
    let mut input_line = field(app, "Input", input);
    if let Some(doc) = ocr.doc {
        input_line
            .spans
            .push(Span::styled("  page ", theme.fg(theme.muted)));
        input_line
            .spans
            .push(Span::raw(format!("{} of {}", doc.page, doc.pages)));
    }
    let mut lines = vec![
        input_line,
        Line::from(vec![
            Span::styled(format!("{:<8}", "Mode"), theme.fg(theme.muted)),
            Span::raw(ocr.mode().name()),
            Span::styled("  Prompt ", theme.fg(theme.muted)),
            Span::raw(prompt),
        ]),
    ];
    let (state, style) = match &ocr.run {
        OcrRun::Idle => ("idle".to_string(), theme.fg(theme.muted)),
        OcrRun::Running(phase) => (
            format!("{} {}", spinner(app), phase.label()),
            theme.fg(theme.accent),
        ),
        OcrRun::Done => ("✓ done".to_string(), theme.fg(theme.ok)),
        OcrRun::Cancelled => ("cancelled".to_string(), theme.fg(theme.warn)),
        OcrRun::Failed(_) => ("✗ failed".to_string(), theme.fg(theme.error)),
    };
    let mut status = vec![
        Span::styled(format!("{:<8}", "Run"), theme.fg(theme.muted)),
        Span::styled(state, style),
    ];
    if let (true, Some(p)) = (ocr.is_running(), ocr.page_progress) {
        status.push(Span::styled(
            format!("  page {} ({}/{} done)", p.page, p.done, p.total),
            theme.fg(theme.accent),
        ));
    }
    if !matches!(ocr.run, OcrRun::Idle) {
        let speed = ocr
            .tokens_per_sec()
            .map_or_else(|| "-".to_string(), |s| format!("{s:.1}"));
        status.push(Span::raw(format!(
            "  {} tok  {speed} tok/s  {}",
            ocr.tokens,
            human_duration(ocr.elapsed)
        )));
    }
    lines.push(Line::from(status));
    lines
}

fn draw_output(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.settings.theme;
    let block = Block::default()
        .borders(Borders::TOP)
        .border_style(theme.fg(theme.border))
        .title(Span::styled(" output ", theme.fg(theme.muted)));
    let text = if app.ocr.output.is_empty() && !app.ocr.completions.is_empty() {
        app.ocr.completions.join("\n")
    } else {
        app.ocr.output.clone()
    };
    // Wrapped here, not by the Paragraph: its wrapping lets a wide character that does not fit
    // spill one cell past the area, over the neighbouring pane in a real terminal.
    let rows = wrap(&text, area.width as usize);
    // Follow the end of the stream while running; otherwise honour the user's scroll.
    let inner_h = area.height.saturating_sub(1) as usize;
    let scroll = if app.ocr.is_running() {
        rows.len().saturating_sub(inner_h)
    } else {
        app.ocr.scroll as usize
    };
    let visible: Vec<Line> = rows
        .into_iter()
        .skip(scroll)
        .take(inner_h)
        .map(Line::raw)
        .collect();
    frame.render_widget(Paragraph::new(visible).block(block), area);
}

/// `text` as rows of at most `width` display cells: lines break at spaces where they can and
/// inside a word longer than a row; a wide character never straddles the edge; control
/// characters (tabs included) show as spaces.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for line in text.split('\n') {
        let mut row = String::new();
        let mut used = 0;
        for word in line.split_inclusive(' ') {
            let word: String = word
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let w = UnicodeWidthStr::width(word.trim_end_matches(' '));
            if used > 0 && used + w > width {
                rows.push(std::mem::take(&mut row));
                used = 0;
            }
            for c in word.chars() {
                let cw = UnicodeWidthChar::width(c).unwrap_or(0);
                if used + cw > width && used > 0 {
                    if c == ' ' {
                        continue;
                    }
                    rows.push(std::mem::take(&mut row));
                    used = 0;
                }
                row.push(c);
                used += cw;
            }
        }
        rows.push(row);
    }
    rows
}

fn draw_side(frame: &mut Frame, area: Rect, app: &App) -> Option<Placement> {
    let theme = &app.settings.theme;
    let boxes_h = (app.ocr.boxes.len() as u16 + 1).min(area.height / 2).max(1);
    let [pic, list] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(boxes_h)]).areas(area);
    let pic_block = Block::default()
        .borders(Borders::TOP | Borders::LEFT)
        .border_style(theme.fg(theme.border))
        .title(Span::styled(" page ", theme.fg(theme.muted)));
    let pic_inner = pic_block.inner(pic);
    frame.render_widget(pic_block, pic);
    let mut placed = None;
    match &app.ocr.preview {
        // Dialogs cover the panes; an image would float above them, so it waits.
        Some(img) if app.graphics == Graphics::Kitty && app.overlays.is_empty() => {
            placed = preview::placement(img, pic_inner, app);
        }
        Some(img) if !theme.mono => {
            frame.render_widget(preview::Preview::new(img, &app.ocr.boxes, app), pic_inner);
        }
        Some(_) => frame.render_widget(
            Paragraph::new("the preview needs colour (NO_COLOR is set)"),
            pic_inner,
        ),
        None => frame.render_widget(Paragraph::new("no preview"), pic_inner),
    }
    let mut lines = vec![Line::styled(
        format!("{} boxes", app.ocr.boxes.len()),
        theme.fg(theme.muted),
    )];
    for (i, b) in app.ocr.boxes.iter().enumerate() {
        let [x1, y1, x2, y2] = b.norm.map(|v| v.round() as i64);
        let line = Line::raw(format!("{:<10} {x1},{y1} {x2},{y2}", b.label));
        lines.push(if app.focus == Pane::Ocr && i == app.ocr.box_cursor {
            line.style(theme.selected())
        } else {
            line
        });
    }
    let skip = app
        .ocr
        .box_cursor
        .saturating_sub(list.height.saturating_sub(2) as usize);
    let lines: Vec<Line> = lines
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || *i > skip)
        .map(|(_, l)| l)
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::LEFT)
                .border_style(theme.fg(theme.border)),
        ),
        list,
    );
    placed
}

#[cfg(test)]
mod tests {
    use super::wrap;
    use unicode_width::UnicodeWidthStr;

    #[test]
    fn wraps_at_spaces_and_never_past_the_width() {
        assert_eq!(wrap("one two three", 8), ["one two ", "three"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("a\n\nb", 5), ["a", "", "b"]);
        assert_eq!(wrap("tab\there", 20), ["tab here"]);
        // 49 columns with a wide character that would end one cell past the edge.
        let line = " windows disposal leucophores冷不limat一则胸口叫你";
        assert_eq!(line.width(), 50);
        let rows = wrap(line, 49);
        assert_eq!(rows.concat(), line);
        assert!(rows.iter().all(|r| r.width() <= 49), "{rows:?}");
        for width in 1..12 {
            for row in wrap("漢字かな交じり文 and ascii 混在", width) {
                assert!(row.width() <= width.max(2), "{width}: {row:?}");
            }
        }
    }
}
