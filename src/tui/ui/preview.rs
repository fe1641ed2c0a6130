//! The page preview in half blocks: each cell shows two pixels (`▀` with the upper pixel as
//! foreground and the lower as background); grounding boxes are drawn as pixel outlines, the
//! selected one in the focus colour. Where the terminal has the kitty graphics protocol,
//! [`placement`] says what to send instead.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

use crate::tui::app::App;
use crate::tui::graphics::{Placement, compose};
use crate::tui::state::{BoxView, PreviewImage};

/// The widget: an image fitted into the area (aspect kept), boxes on top.
pub struct Preview<'a> {
    image: &'a PreviewImage,
    boxes: &'a [BoxView],
    selected: usize,
    box_color: Color,
    selected_color: Color,
}

impl<'a> Preview<'a> {
    /// Preview of `image` with `boxes` (0..=999 coordinates).
    pub fn new(image: &'a PreviewImage, boxes: &'a [BoxView], app: &App) -> Self {
        Self {
            image,
            boxes,
            selected: app.ocr.box_cursor,
            box_color: app.settings.theme.boxes,
            selected_color: app.settings.theme.focus,
        }
    }

    /// The colour of pixel (x, y) of a `w` x `h` fitted image.
    fn pixel(&self, x: u32, y: u32, w: u32, h: u32) -> Color {
        if let Some(c) = self.box_at(x, y, w, h) {
            return c;
        }
        let sx = (x * self.image.width / w).min(self.image.width.saturating_sub(1));
        let sy = (y * self.image.height / h).min(self.image.height.saturating_sub(1));
        let i = ((sy * self.image.width + sx) * 3) as usize;
        match self.image.rgb.get(i..i + 3) {
            Some(p) => Color::Rgb(p[0], p[1], p[2]),
            None => Color::Reset,
        }
    }

    fn box_at(&self, x: u32, y: u32, w: u32, h: u32) -> Option<Color> {
        // Selected box last so it wins where outlines cross.
        let order = self
            .boxes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.selected)
            .chain(
                self.boxes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i == self.selected),
            );
        let mut hit = None;
        for (i, b) in order {
            let to_px = |v: f64, size: u32| {
                ((v.clamp(0.0, 999.0) / 999.0) * (size - 1) as f64).round() as u32
            };
            let (x1, y1, x2, y2) = (
                to_px(b.norm[0], w),
                to_px(b.norm[1], h),
                to_px(b.norm[2], w),
                to_px(b.norm[3], h),
            );
            let inside = (x1..=x2).contains(&x) && (y1..=y2).contains(&y);
            let edge = x == x1 || x == x2 || y == y1 || y == y2;
            if inside && edge {
                hit = Some(if i == self.selected {
                    self.selected_color
                } else {
                    self.box_color
                });
            }
        }
        hit
    }
}

impl Widget for Preview<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let (w, h) = fit(self.image, area);
        if w == 0 || h == 0 {
            return;
        }
        for row in 0..area.height as u32 {
            for col in 0..w.min(area.width as u32) {
                let top_y = row * 2;
                if top_y >= h {
                    return;
                }
                let top = self.pixel(col, top_y, w, h);
                let bottom = if top_y + 1 < h {
                    self.pixel(col, top_y + 1, w, h)
                } else {
                    Color::Reset
                };
                let pos = (area.x + col as u16, area.y + row as u16);
                if let Some(cell) = buf.cell_mut(pos) {
                    cell.set_symbol("▀").set_fg(top).set_bg(bottom);
                }
            }
        }
    }
}

/// Size in half-cell pixels (width, height) of `image` fitted into an area of cells, aspect
/// kept (a cell is taken as one pixel wide and two high).
fn fit(image: &PreviewImage, area: Rect) -> (u32, u32) {
    let (iw, ih) = (image.width.max(1), image.height.max(1));
    let (aw, ah) = (area.width as u32, area.height as u32 * 2);
    if aw == 0 || ah == 0 {
        return (0, 0);
    }
    // Scale = min(aw/iw, ah/ih), computed in integers.
    if aw * ih <= ah * iw {
        (aw, (ih * aw / iw).max(1))
    } else {
        ((iw * ah / ih).max(1), ah)
    }
}

/// Where and what the kitty graphics protocol should show for `image` in `area`: the cells the
/// fitted image covers (top-left aligned, as the half blocks are) and the page with the boxes
/// drawn in.
pub fn placement(image: &PreviewImage, area: Rect, app: &App) -> Option<Placement> {
    let (w, h) = fit(image, area);
    if w == 0 || h == 0 {
        return None;
    }
    let theme = &app.settings.theme;
    Some(Placement {
        area: Rect::new(area.x, area.y, w as u16, h.div_ceil(2) as u16),
        image: compose(
            image,
            &app.ocr.boxes,
            app.ocr.box_cursor,
            rgb(theme.boxes, [255, 85, 255]),
            rgb(theme.focus, [85, 255, 255]),
        ),
    })
}

/// The RGB of a colour: as given for `#rrggbb`, xterm's values for the 16 named colours and
/// the 256-colour palette, `fallback` for the terminal's default.
fn rgb(color: Color, fallback: [u8; 3]) -> [u8; 3] {
    const BASE: [[u8; 3]; 16] = [
        [0, 0, 0],
        [205, 0, 0],
        [0, 205, 0],
        [205, 205, 0],
        [0, 0, 238],
        [205, 0, 205],
        [0, 205, 205],
        [229, 229, 229],
        [127, 127, 127],
        [255, 0, 0],
        [0, 255, 0],
        [255, 255, 0],
        [92, 92, 255],
        [255, 0, 255],
        [0, 255, 255],
        [255, 255, 255],
    ];
    let index = match color {
        Color::Rgb(r, g, b) => return [r, g, b],
        Color::Indexed(i) => i,
        Color::Black => 0,
        Color::Red => 1,
        Color::Green => 2,
        Color::Yellow => 3,
        Color::Blue => 4,
        Color::Magenta => 5,
        Color::Cyan => 6,
        Color::Gray => 7,
        Color::DarkGray => 8,
        Color::LightRed => 9,
        Color::LightGreen => 10,
        Color::LightYellow => 11,
        Color::LightBlue => 12,
        Color::LightMagenta => 13,
        Color::LightCyan => 14,
        Color::White => 15,
        Color::Reset => return fallback,
    };
    match index {
        0..=15 => BASE[index as usize],
        16..=231 => {
            let level = |v: u8| if v == 0 { 0 } else { 55 + 40 * v };
            let i = index - 16;
            [level(i / 36), level(i / 6 % 6), level(i % 6)]
        }
        _ => [8 + 10 * (index - 232); 3],
    }
}
