//! The log pane: the newest lines, scrollable.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::Paragraph;

use super::pane_block;
use crate::tui::app::{App, Pane};

/// Draw the log pane.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let height = area.height.saturating_sub(2) as usize;
    let end = app.log.len().saturating_sub(app.log_scroll as usize);
    let start = end.saturating_sub(height);
    let lines: Vec<Line> = app
        .log
        .range(start..end)
        .map(|l| Line::raw(l.clone()))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(pane_block(app, Pane::Log)),
        area,
    );
}
