//! `<|ref|>…<|/ref|><|det|>[[…]]<|/det|>` spans: parsing, boxes, markdown clean-up, drawing, crops.
//!
//! The reference finds spans with the regex
//! `(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)` (DOTALL) and reads the box list with
//! Python's `eval`. Here the same spans are found by plain scanning and the box list is parsed
//! by a strict grammar (a list of four-number lists); anything else leaves the span without
//! boxes. Nothing from the model is ever evaluated.

use std::ops::Range;

use image::{Rgb, RgbImage};
use serde::Serialize;

const REF_OPEN: &str = "<|ref|>";
const REF_DET: &str = "<|/ref|><|det|>";
const DET_CLOSE: &str = "<|/det|>";
/// Coordinates from the model are on a 0..=999 grid.
const GRID: f64 = 999.0;

/// One `<|ref|>LABEL<|/ref|><|det|>DET<|/det|>` span of the model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Byte range of the whole span in the text.
    pub range: Range<usize>,
    /// The text between `<|ref|>` and `<|/ref|>`.
    pub label: String,
    /// Boxes on the 0..=999 grid, `None` when the det part is not a list of four-number lists.
    pub boxes: Option<Vec<[f64; 4]>>,
}

/// Every span in `text`, left to right, as the reference's non-greedy regex finds them.
pub fn find_spans(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut pos = 0;
    while let Some(found) = text[pos..].find(REF_OPEN) {
        let start = pos + found;
        let label_start = start + REF_OPEN.len();
        // If either closing marker is missing here, it is missing for every later start too.
        let Some(label_len) = text[label_start..].find(REF_DET) else {
            break;
        };
        let det_start = label_start + label_len + REF_DET.len();
        let Some(det_len) = text[det_start..].find(DET_CLOSE) else {
            break;
        };
        let end = det_start + det_len + DET_CLOSE.len();
        spans.push(Span {
            range: start..end,
            label: text[label_start..label_start + label_len].to_string(),
            boxes: parse_boxes(&text[det_start..det_start + det_len]),
        });
        pos = end;
    }
    spans
}

/// Parse `[[x1, y1, x2, y2], ...]` (numbers may be negative or fractional); `None` otherwise.
pub fn parse_boxes(det: &str) -> Option<Vec<[f64; 4]>> {
    let inner = det.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let mut boxes = Vec::new();
    let mut rest = inner;
    loop {
        let body = rest.strip_prefix('[')?;
        let close = body.find(']')?;
        let nums: Vec<f64> = body[..close]
            .split(',')
            .map(|n| n.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<_>>()?;
        boxes.push(<[f64; 4]>::try_from(nums).ok()?);
        rest = body[close + 1..].trim_start();
        if rest.is_empty() {
            return Some(boxes);
        }
        rest = rest.strip_prefix(',')?.trim_start();
    }
}

/// A box scaled to the original image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabeledBox {
    pub label: String,
    /// As the model wrote it, on the 0..=999 grid.
    pub norm: [f64; 4],
    /// `int(v / 999 * width)` (or height), as the reference computes it.
    pub pixels: [i64; 4],
}

/// Every box of every span, scaled to a `width` x `height` image.
pub fn boxes(spans: &[Span], width: u32, height: u32) -> Vec<LabeledBox> {
    let (w, h) = (f64::from(width), f64::from(height));
    spans
        .iter()
        .flat_map(|s| s.boxes.iter().flatten().map(move |b| (s, b)))
        .map(|(s, &[x1, y1, x2, y2])| LabeledBox {
            label: s.label.clone(),
            norm: [x1, y1, x2, y2],
            // `as` truncates toward zero like Python's int().
            pixels: [
                (x1 / GRID * w) as i64,
                (y1 / GRID * h) as i64,
                (x2 / GRID * w) as i64,
                (y2 / GRID * h) as i64,
            ],
        })
        .collect()
}

/// The reference's markdown: each span labelled `image` becomes `![](images/N.jpg)\n` (N counts
/// image spans), every other span is removed, and, when there was any other span, `\coloneqq` and
/// `\eqqcolon` become `:=` and `=:`. Identical spans are all replaced at once, like Python's
/// `str.replace`.
pub fn markdown(raw: &str, spans: &[Span]) -> String {
    let image_marker = format!("{REF_OPEN}image<|/ref|>");
    let (images, others): (Vec<&str>, Vec<&str>) = spans
        .iter()
        .map(|s| &raw[s.range.clone()])
        .partition(|m| m.contains(&image_marker));
    let mut out = raw.to_string();
    for (i, m) in images.iter().enumerate() {
        out = out.replace(m, &format!("![](images/{i}.jpg)\n"));
    }
    for m in others {
        out = out
            .replace(m, "")
            .replace("\\coloneqq", ":=")
            .replace("\\eqqcolon", "=:");
    }
    out
}

/// The pixel rectangle of a box clamped to the image, as `(x0, y0, x1, y1)` exclusive; `None`
/// when nothing is left.
fn clamp_box(b: &LabeledBox, width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
    let [x1, y1, x2, y2] = b.pixels;
    let cx = |v: i64| v.clamp(0, i64::from(width)) as u32;
    let cy = |v: i64| v.clamp(0, i64::from(height)) as u32;
    let (x0, x1) = (cx(x1.min(x2)), cx(x1.max(x2)));
    let (y0, y1) = (cy(y1.min(y2)), cy(y1.max(y2)));
    (x1 > x0 && y1 > y0).then_some((x0, y0, x1, y1))
}

/// Crops of the boxes labelled `image`, numbered in box order like the reference's
/// `images/N.jpg`; an empty or off-image box keeps its number but has no crop.
pub fn image_crops(img: &RgbImage, boxes: &[LabeledBox]) -> Vec<(usize, Option<RgbImage>)> {
    boxes
        .iter()
        .filter(|b| b.label == "image")
        .enumerate()
        .map(|(i, b)| {
            let crop = clamp_box(b, img.width(), img.height()).map(|(x0, y0, x1, y1)| {
                image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image()
            });
            (i, crop)
        })
        .collect()
}

/// Colours for labels (a label always gets the same one).
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 150, 60],
    [0, 110, 200],
    [245, 130, 48],
    [145, 30, 180],
    [0, 150, 150],
    [200, 50, 200],
    [120, 90, 40],
];

fn label_color(label: &str) -> [u8; 3] {
    let h = label.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    PALETTE[h % PALETTE.len()]
}

/// A copy of `img` with each box drawn like the reference's `result_with_boxes.jpg`: a light
/// fill, an outline (4 px for titles, 2 px otherwise) and the label on a white strip above.
pub fn annotate(img: &RgbImage, boxes: &[LabeledBox]) -> RgbImage {
    let mut out = img.clone();
    for b in boxes {
        let Some((x0, y0, x1, y1)) = clamp_box(b, img.width(), img.height()) else {
            continue;
        };
        let color = label_color(&b.label);
        let thickness = if b.label == "title" { 4 } else { 2 };
        for y in y0..y1 {
            for x in x0..x1 {
                let edge = x < x0 + thickness
                    || x + thickness >= x1
                    || y < y0 + thickness
                    || y + thickness >= y1;
                let p = out.get_pixel_mut(x, y);
                *p = if edge {
                    Rgb(color)
                } else {
                    blend(*p, color, 20)
                };
            }
        }
        draw_label(&mut out, &b.label, x0, y0.saturating_sub(10), color);
    }
    out
}

/// `alpha`/255 of `color` over `p`.
fn blend(p: Rgb<u8>, color: [u8; 3], alpha: u16) -> Rgb<u8> {
    Rgb(std::array::from_fn(|c| {
        ((u16::from(color[c]) * alpha + u16::from(p.0[c]) * (255 - alpha) + 127) / 255) as u8
    }))
}

/// `text` in an 8x8 bitmap font on a white strip with its top-left corner at `(x, y)`.
fn draw_label(img: &mut RgbImage, text: &str, x: u32, y: u32, color: [u8; 3]) {
    const GLYPH: u32 = 8;
    let (w, h) = img.dimensions();
    let strip_w = GLYPH * text.chars().count() as u32 + 2;
    for yy in y..(y + GLYPH + 2).min(h) {
        for xx in x..(x + strip_w).min(w) {
            img.put_pixel(xx, yy, Rgb([255, 255, 255]));
        }
    }
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            usize::from(b'?')
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH {
                let (px, py) = (x + 1 + GLYPH * i as u32 + col, y + 1 + row as u32);
                if bits & (1 << col) != 0 && px < w && py < h {
                    img.put_pixel(px, py, Rgb(color));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_spans_never_panic_and_keep_no_boxes() {
        let cases = [
            "<|ref|>x<|/ref|><|det|>__import__('os')<|/det|>",
            "<|ref|>x<|/ref|><|det|>[[1, 2, 3]]<|/det|>",
            "<|ref|>x<|/ref|><|det|>[[1, 2, 3, 4]<|/det|>",
            "<|ref|>x<|/ref|><|det|>[[1, 2, 3, nan]]<|/det|>",
            "<|ref|>x<|/ref|><|det|>[[1,2,3,4],]<|/det|>",
        ];
        for text in cases {
            let spans = find_spans(text);
            assert_eq!(spans.len(), 1, "{text}");
            assert_eq!(spans[0].boxes, None, "{text}");
            assert!(boxes(&spans, 100, 100).is_empty());
            assert_eq!(markdown(text, &spans), "");
        }
        // Unclosed spans are not spans: the text stays as it is.
        for text in [
            "<|ref|>x<|/ref|><|det|>[[1,2,3,4]]",
            "<|ref|>x",
            "<|ref|>x<|/ref|>[[1]]",
        ] {
            assert!(find_spans(text).is_empty(), "{text}");
            assert_eq!(markdown(text, &[]), text);
        }
    }

    #[test]
    fn spans_are_found_like_the_non_greedy_regex() {
        let text = "a<|ref|>p<|ref|>q<|/ref|><|det|>[[0,0,999,999]]<|/det|>b<|/det|>";
        let spans = find_spans(text);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].label, "p<|ref|>q");
        assert_eq!(&text[spans[0].range.clone()], &text[1..text.len() - 9]);
        assert_eq!(
            parse_boxes(" [ [1.5, -2, 3e1, 4] , [5,6,7,8] ] "),
            Some(vec![[1.5, -2.0, 30.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
        );
        assert_eq!(parse_boxes("[]"), Some(vec![]));
    }

    #[test]
    fn annotation_draws_outline_fill_and_label_inside_the_image() {
        let img = RgbImage::from_pixel(200, 100, Rgb([255, 255, 255]));
        let b = LabeledBox {
            label: "title".into(),
            norm: [0.0; 4],
            pixels: [50, 40, 150, 90],
        };
        let off = LabeledBox {
            label: "text".into(),
            norm: [0.0; 4],
            pixels: [-50, -50, -10, -10],
        };
        let out = annotate(&img, &[b.clone(), off]);
        let color = label_color("title");
        assert_eq!(out.get_pixel(50, 60).0, color);
        assert_eq!(out.get_pixel(149, 60).0, color);
        assert_eq!(out.get_pixel(53, 60).0, color, "4 px outline for titles");
        assert_ne!(out.get_pixel(100, 60).0, [255, 255, 255], "tinted fill");
        assert_ne!(out.get_pixel(100, 60).0, color);
        assert_eq!(out.get_pixel(10, 10).0, [255, 255, 255]);
        let label_pixels = (30..40).flat_map(|y| (50..90).map(move |x| (x, y)));
        assert!(
            label_pixels
                .clone()
                .any(|(x, y)| out.get_pixel(x, y).0 == color)
        );
        let crops = image_crops(&img, &[b]);
        assert!(crops.is_empty(), "only image boxes are cropped");
    }
}
