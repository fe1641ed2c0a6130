//! The page preview through the kitty graphics protocol, where the terminal has it (kitty,
//! WezTerm, ghostty); elsewhere the preview is drawn in half blocks.
//!
//! An image is sent as APC escapes `ESC _G <control keys> ; <base64 payload> ESC \`. The
//! payload is split into chunks of at most 4096 base64 bytes (every chunk but the last a
//! multiple of 4); the first escape carries the control keys and `m=1` while more chunks
//! follow, each later one only `m`, the last `m=0`. Keys used: `a=T` (transmit and place),
//! `f=24` (raw RGB), `s`/`v` (width and height in pixels), `c`/`r` (columns and rows to fill),
//! `i` (image id), `C=1` (leave the cursor where it is), `q=2` (no replies on standard input,
//! which would arrive as key presses). `a=d,d=I,i=ID` deletes the image and frees its data.

use std::io::{self, Write};

use base64::Engine;
use ratatui::layout::Rect;

use super::state::{BoxView, PreviewImage};

/// Largest base64 chunk of one escape.
const CHUNK: usize = 4096;
/// The id of the preview image (the dashboard shows one).
const PREVIEW_ID: u32 = 1;

/// How the page preview is drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Graphics {
    /// Two pixels per cell with `▀`; works in every colour terminal.
    #[default]
    HalfBlocks,
    /// Pixels through the kitty graphics protocol.
    Kitty,
}

impl Graphics {
    /// Choose from the environment: `DSOCR_GRAPHICS=kitty|halfblocks` decides when set;
    /// otherwise kitty (`KITTY_WINDOW_ID`, `TERM=xterm-kitty`), WezTerm and ghostty
    /// (`TERM_PROGRAM`) get the kitty protocol, except inside tmux or screen, which do not pass
    /// it through.
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Self {
        match var("DSOCR_GRAPHICS").as_deref() {
            Some("kitty") => return Self::Kitty,
            Some("halfblocks") => return Self::HalfBlocks,
            _ => {}
        }
        let term = var("TERM").unwrap_or_default();
        if var("TMUX").is_some() || term.starts_with("screen") || term.starts_with("tmux") {
            return Self::HalfBlocks;
        }
        let program = var("TERM_PROGRAM").unwrap_or_default();
        if var("KITTY_WINDOW_ID").is_some()
            || term == "xterm-kitty"
            || matches!(program.as_str(), "WezTerm" | "ghostty")
        {
            Self::Kitty
        } else {
            Self::HalfBlocks
        }
    }

    /// [`Graphics::detect`] on the process environment.
    pub fn from_env() -> Self {
        Self::detect(|k| std::env::var(k).ok())
    }
}

/// The escapes that transmit `rgb` (`width` x `height` raw RGB pixels) as image `id` and place
/// it over `cols` x `rows` cells at the cursor.
pub fn transmit(id: u32, width: u32, height: u32, rgb: &[u8], cols: u16, rows: u16) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(rgb);
    let control = format!("a=T,f=24,s={width},v={height},c={cols},r={rows},i={id},C=1,q=2");
    let chunks: Vec<&str> = payload
        .as_bytes()
        .chunks(CHUNK)
        // base64 output is ASCII, so every byte boundary is a char boundary.
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let mut out = String::with_capacity(payload.len() + chunks.len() * 16 + control.len());
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.iter().enumerate() {
        let more = u8::from(i < last);
        if i == 0 {
            out.push_str(&format!("\x1b_G{control},m={more};{chunk}\x1b\\"));
        } else {
            out.push_str(&format!("\x1b_Gm={more};{chunk}\x1b\\"));
        }
    }
    if chunks.is_empty() {
        out.push_str(&format!("\x1b_G{control},m=0;\x1b\\"));
    }
    out
}

/// The escape that deletes image `id` and frees its data.
pub fn delete(id: u32) -> String {
    format!("\x1b_Ga=d,d=I,i={id},q=2\x1b\\")
}

/// What the preview shows: where, the page and the boxes on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Cells it covers.
    pub area: Rect,
    /// Pixels, boxes drawn in.
    pub image: PreviewImage,
}

/// Keeps the terminal's preview image in step with what the frame asks for: sends it when it
/// changes, deletes it when it goes away.
#[derive(Debug, Default)]
pub struct KittyPreview {
    shown: Option<Placement>,
}

impl KittyPreview {
    /// Write what it takes to show `want` (nothing when it is already shown).
    pub fn update(&mut self, out: &mut impl Write, want: Option<Placement>) -> io::Result<()> {
        if want == self.shown {
            return Ok(());
        }
        if self.shown.take().is_some() {
            out.write_all(delete(PREVIEW_ID).as_bytes())?;
        }
        if let Some(p) = &want {
            // Save the cursor, move to the area's top-left cell (1-based), place, restore.
            write!(out, "\x1b7\x1b[{};{}H", p.area.y + 1, p.area.x + 1)?;
            let img = &p.image;
            let escapes = transmit(
                PREVIEW_ID,
                img.width,
                img.height,
                &img.rgb,
                p.area.width,
                p.area.height,
            );
            out.write_all(escapes.as_bytes())?;
            out.write_all(b"\x1b8")?;
        }
        out.flush()?;
        self.shown = want;
        Ok(())
    }

    /// Forget what is shown (the screen was cleared, e.g. after a resize).
    pub fn forget(&mut self) {
        self.shown = None;
    }
}

/// The page with the boxes drawn into its pixels (outlines one pixel wide; the selected box in
/// `selected_rgb`, drawn last).
pub fn compose(
    page: &PreviewImage,
    boxes: &[BoxView],
    selected: usize,
    box_rgb: [u8; 3],
    selected_rgb: [u8; 3],
) -> PreviewImage {
    let mut out = page.clone();
    let (w, h) = (page.width, page.height);
    if w == 0 || h == 0 || out.rgb.len() < (w * h * 3) as usize {
        return out;
    }
    let order = boxes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != selected)
        .chain(boxes.iter().enumerate().filter(|(i, _)| *i == selected));
    for (i, b) in order {
        let color = if i == selected { selected_rgb } else { box_rgb };
        let px = |v: f64, size: u32| ((v.clamp(0.0, 999.0) / 999.0) * (size - 1) as f64) as u32;
        let (x1, y1, x2, y2) = (
            px(b.norm[0].min(b.norm[2]), w),
            px(b.norm[1].min(b.norm[3]), h),
            px(b.norm[0].max(b.norm[2]), w),
            px(b.norm[1].max(b.norm[3]), h),
        );
        let mut set = |x: u32, y: u32| {
            let i = ((y * w + x) * 3) as usize;
            out.rgb[i..i + 3].copy_from_slice(&color);
        };
        for x in x1..=x2 {
            set(x, y1);
            set(x, y2);
        }
        for y in y1..=y2 {
            set(x1, y);
            set(x2, y);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn detects_kitty_wezterm_and_ghostty_but_not_inside_tmux() {
        for pairs in [
            &[("KITTY_WINDOW_ID", "3")][..],
            &[("TERM", "xterm-kitty")],
            &[("TERM_PROGRAM", "WezTerm"), ("TERM", "xterm-256color")],
            &[("TERM_PROGRAM", "ghostty")],
            &[("DSOCR_GRAPHICS", "kitty"), ("TMUX", "/tmp/t,1,0")],
        ] {
            assert_eq!(Graphics::detect(env(pairs)), Graphics::Kitty, "{pairs:?}");
        }
        for pairs in [
            &[("TERM", "xterm-256color")][..],
            &[("TERM_PROGRAM", "iTerm.app")],
            &[("TERM", "xterm-kitty"), ("TMUX", "/tmp/t,1,0")],
            &[("KITTY_WINDOW_ID", "3"), ("TERM", "screen-256color")],
            &[("KITTY_WINDOW_ID", "3"), ("DSOCR_GRAPHICS", "halfblocks")],
            &[],
        ] {
            assert_eq!(
                Graphics::detect(env(pairs)),
                Graphics::HalfBlocks,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn one_chunk_escape_has_the_documented_form() {
        // 1x1 red pixel: bytes FF 00 00 are "/wAA" in base64.
        assert_eq!(
            transmit(7, 1, 1, &[255, 0, 0], 2, 1),
            "\x1b_Ga=T,f=24,s=1,v=1,c=2,r=1,i=7,C=1,q=2,m=0;/wAA\x1b\\"
        );
        assert_eq!(delete(7), "\x1b_Ga=d,d=I,i=7,q=2\x1b\\");
    }

    /// Split a stream of APC escapes into (control, payload) pairs, checking the framing.
    fn escapes(s: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let body = rest.strip_prefix("\x1b_G").expect("starts with ESC _ G");
            let end = body.find("\x1b\\").expect("ends with ESC \\");
            let (control, payload) = body[..end].split_once(';').expect("a ';'");
            out.push((control.to_string(), payload.to_string()));
            rest = &body[end + 2..];
        }
        out
    }

    #[test]
    fn large_images_are_chunked_by_4096_with_m_flags() {
        // 100x50 RGB = 15000 bytes = 20000 base64 bytes: chunks of 4096 x 4 + 3616.
        let rgb: Vec<u8> = (0..15_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let s = transmit(1, 100, 50, &rgb, 30, 12);
        let parts = escapes(&s);
        let sizes: Vec<usize> = parts.iter().map(|(_, p)| p.len()).collect();
        assert_eq!(sizes, [4096, 4096, 4096, 4096, 3616]);
        assert_eq!(parts[0].0, "a=T,f=24,s=100,v=50,c=30,r=12,i=1,C=1,q=2,m=1");
        for (control, _) in &parts[1..4] {
            assert_eq!(control, "m=1");
        }
        assert_eq!(parts[4].0, "m=0");
        let joined: String = parts.iter().map(|(_, p)| p.as_str()).collect();
        let back = base64::engine::general_purpose::STANDARD
            .decode(joined)
            .expect("valid base64");
        assert_eq!(back, rgb);
    }

    fn page(w: u32, h: u32) -> PreviewImage {
        PreviewImage {
            width: w,
            height: h,
            rgb: vec![255; (w * h * 3) as usize],
        }
    }

    #[test]
    fn preview_is_sent_once_and_deleted_when_it_goes() {
        let place = Placement {
            area: Rect::new(10, 3, 20, 8),
            image: page(2, 2),
        };
        let mut p = KittyPreview::default();
        let mut out = Vec::new();
        p.update(&mut out, Some(place.clone())).expect("write");
        let first = String::from_utf8(out.clone()).expect("utf-8");
        assert!(first.starts_with("\x1b7\x1b[4;11H\x1b_Ga=T,f=24,s=2,v=2,c=20,r=8,i=1,"));
        assert!(first.ends_with("\x1b\\\x1b8"));
        out.clear();
        p.update(&mut out, Some(place.clone())).expect("write");
        assert!(out.is_empty(), "unchanged: nothing sent");
        let moved = Placement {
            area: Rect::new(0, 0, 20, 8),
            ..place
        };
        p.update(&mut out, Some(moved)).expect("write");
        let s = String::from_utf8(out.clone()).expect("utf-8");
        assert!(s.starts_with(&delete(1)), "{s:?}");
        assert!(s.contains("\x1b[1;1H"));
        out.clear();
        p.update(&mut out, None).expect("write");
        assert_eq!(String::from_utf8(out).expect("utf-8"), delete(1));
    }

    #[test]
    fn boxes_are_drawn_into_the_pixels() {
        let boxes = vec![BoxView {
            label: "text".to_string(),
            norm: [0.0, 0.0, 999.0, 999.0],
            pixels: [0; 4],
        }];
        let out = compose(&page(5, 4), &boxes, 0, [1, 2, 3], [9, 9, 9]);
        let at = |x: u32, y: u32| {
            let i = ((y * 5 + x) * 3) as usize;
            [out.rgb[i], out.rgb[i + 1], out.rgb[i + 2]]
        };
        // The selected box's outline is on the border pixels; the inside is the page.
        assert_eq!(at(0, 0), [9, 9, 9]);
        assert_eq!(at(4, 3), [9, 9, 9]);
        assert_eq!(at(2, 0), [9, 9, 9]);
        assert_eq!(at(2, 2), [255, 255, 255]);
        let out = compose(&page(5, 4), &boxes, 1, [1, 2, 3], [9, 9, 9]);
        assert_eq!(out.rgb[0..3], [1, 2, 3]);
    }
}
