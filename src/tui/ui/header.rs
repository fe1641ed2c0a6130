//! The top line: version, endpoint, offline flag, device, and a `dsocr serve` on the default
//! port when one answers.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::tui::app::App;
use crate::tui::state::{Check, DeviceInfo};
use crate::units::human_bytes;

/// Draw the header.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.settings.theme;
    let h = &app.header;
    let device = match &h.device {
        Check::Done(DeviceInfo::Gpu { name, used, total }) => {
            format!(
                "GPU {name} {} / {}",
                human_bytes(*used),
                human_bytes(*total)
            )
        }
        Check::Done(DeviceInfo::Cpu { threads }) => format!("CPU, {threads} threads"),
        Check::Failed(e) => format!("device: {e}"),
        Check::NotChecked | Check::Checking => "device: probing…".to_string(),
    };
    let mut spans = vec![
        Span::styled(format!(" dsocr {} ", h.version), theme.title()),
        Span::styled("│ ", theme.fg(theme.border)),
        Span::raw(h.endpoint.clone()),
    ];
    if h.offline {
        spans.push(Span::styled(" OFFLINE", theme.fg(theme.warn)));
    }
    spans.push(Span::styled(" │ ", theme.fg(theme.border)));
    spans.push(Span::raw(device));
    if let Some(serve) = &app.serve {
        spans.push(Span::styled(" │ ", theme.fg(theme.border)));
        let (text, colour) = if serve.ready {
            (format!("serve {} ready", serve.addr), theme.ok)
        } else {
            (format!("serve {} {}", serve.addr, serve.status), theme.warn)
        };
        spans.push(Span::styled(text, theme.fg(colour)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
