//! Dialogs: errors that say what to do, yes/no questions, and one-line inputs (masked for
//! tokens).

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::centered;
use crate::tui::app::{App, InputPurpose, Overlay};

/// Draw one overlay (not help).
pub fn draw(frame: &mut Frame, app: &App, overlay: &Overlay) {
    let theme = &app.settings.theme;
    let (title, border, lines) = match overlay {
        Overlay::Error { title, message } => (
            format!(" {title} "),
            theme.fg(theme.error),
            vec![
                Line::raw(message.clone()),
                Line::raw(""),
                Line::styled("Enter or Esc closes", theme.fg(theme.muted)),
            ],
        ),
        Overlay::Confirm { question, .. } => (
            " Confirm ".to_string(),
            theme.fg(theme.warn),
            vec![
                Line::raw(question.clone()),
                Line::raw(""),
                Line::styled("y: yes   n / Esc: no", theme.fg(theme.muted)),
            ],
        ),
        Overlay::Input { purpose, value } => (
            format!(" {} ", purpose.title()),
            theme.fg(theme.focus),
            vec![Line::from(vec![
                Span::raw(shown(*purpose, value)),
                Span::styled("▏", theme.title()),
            ])],
        ),
        Overlay::Help { .. } => return,
    };
    let width = 70.min(frame.area().width);
    let inner_w = width.saturating_sub(2).max(1) as usize;
    let rows: usize = lines
        .iter()
        .map(|l| l.width().max(1).div_ceil(inner_w))
        .sum();
    let area = centered(frame.area(), width, rows as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title).border_style(border)),
        area,
    );
}

/// The input as shown: tokens as their first 3 characters (`hf_`) and one dot per other
/// character, passwords as dots only.
fn shown(purpose: InputPurpose, value: &str) -> String {
    let clear = match purpose {
        InputPurpose::Token => 3,
        InputPurpose::PdfPassword => 0,
        _ => return value.to_string(),
    };
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i < clear { c } else { '•' })
        .collect()
}
