//! Image preprocessing: decoding, EXIF orientation, the five resolution modes with Pillow-faithful
//! bicubic resizing and padding, Gundam tiling, and pixel tensors.
//!
//! The reference (`infer` in the model repo) works on a Pillow image:
//! `ImageOps.exif_transpose`, `.convert("RGB")`, then per mode either a plain square resize
//! (tiny, small), `ImageOps.pad` to a grey square (base, large), or, in Gundam mode, a padded
//! 1024 global view plus `dynamic_preprocess` tiles of 640 when a side exceeds 640.

mod resample;

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use tch::{Device, Kind, Tensor};

use super::config::Config;
pub use resample::resize_bicubic;

/// Grey used around padded images: `int(0.5 * 255)` per channel, as the reference computes it.
pub const PAD_COLOR: [u8; 3] = [127, 127, 127];
/// Fewest tiles `dynamic_preprocess` may choose.
pub const MIN_TILES: u32 = 2;
/// Most tiles by default (the reference's `infer`; its vLLM scripts use 6).
pub const DEFAULT_MAX_TILES: u32 = 9;
/// Largest image accepted, in pixels: Pillow's decompression-bomb error threshold
/// (twice `Image.MAX_IMAGE_PIXELS`).
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Why an image could not be used. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {path} does not exist; check the path")]
    Missing { path: PathBuf },
    #[error("cannot read image {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path} is empty (0 bytes)")]
    Empty { path: PathBuf },
    #[error(
        "{path} is not an image in a supported format (PNG, JPEG, WebP, TIFF, BMP, GIF); convert it first"
    )]
    NotImage { path: PathBuf },
    #[error("image {path} is corrupt or truncated: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "image {path} is {width}x{height} pixels, over the limit of {limit} pixels (a guard against decompression bombs); downscale it first"
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u64,
    },
}

/// Read an image file, apply its EXIF orientation and convert it to 8-bit RGB, refusing images
/// over [`MAX_PIXELS`].
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    load_image_limited(path, MAX_PIXELS)
}

/// [`load_image`] with an explicit pixel limit.
pub fn load_image_limited(path: &Path, max_pixels: u64) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ImageError::Missing {
            path: path.to_path_buf(),
        },
        _ => ImageError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })?;
    decode_image(&bytes, path, max_pixels)
}

/// Decode image bytes (`path` is only used in messages).
pub fn decode_image(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage, ImageError> {
    let path_buf = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: path_buf() });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| ImageError::Unreadable {
            path: path_buf(),
            source,
        })?;
    if reader.format().is_none() {
        return Err(ImageError::NotImage { path: path_buf() });
    }
    let mut limits = image::Limits::default();
    // Room for the decoded pixels of the largest accepted image (up to 4 channels of 16 bits).
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let corrupt = |e: image::ImageError| classify(e, path);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            path: path_buf(),
            width,
            height,
            limit: max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt {
            path: path_buf(),
            message: format!("it has no pixels ({width}x{height})"),
        });
    }
    let orientation = decoder.orientation().map_err(corrupt)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// Map a decoder error to the user-facing kind.
fn classify(e: image::ImageError, path: &Path) -> ImageError {
    match e {
        image::ImageError::Unsupported(_) => ImageError::NotImage {
            path: path.to_path_buf(),
        },
        other => ImageError::Corrupt {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// The reference's resolution modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 512x512, plain resize (aspect ratio not kept).
    Tiny,
    /// 640x640, plain resize.
    Small,
    /// 1024x1024, aspect kept, padded with grey.
    Base,
    /// 1280x1280, aspect kept, padded with grey.
    Large,
    /// 1024 padded global view plus 640 tiles.
    Gundam,
}

impl Mode {
    /// Every mode, in size order.
    pub const ALL: [Mode; 5] = [
        Mode::Tiny,
        Mode::Small,
        Mode::Base,
        Mode::Large,
        Mode::Gundam,
    ];

    /// Lower-case name as used on the command line and in the fixtures.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tiny => "tiny",
            Mode::Small => "small",
            Mode::Base => "base",
            Mode::Large => "large",
            Mode::Gundam => "gundam",
        }
    }

    /// Side of the global view (`base_size` of the reference).
    pub fn base_size(self) -> u32 {
        match self {
            Mode::Tiny => 512,
            Mode::Small => 640,
            Mode::Base | Mode::Gundam => 1024,
            Mode::Large => 1280,
        }
    }

    /// Side of a tile in crop mode, and of the view otherwise (`image_size` of the reference).
    pub fn image_size(self) -> u32 {
        match self {
            Mode::Gundam => 640,
            other => other.base_size(),
        }
    }

    /// Whether the mode cuts tiles (`crop_mode`).
    pub fn crop_mode(self) -> bool {
        self == Mode::Gundam
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown mode {s:?}; use tiny, small, base, large or gundam"))
    }
}

/// The views of one image as the model sees them.
#[derive(Debug, Clone)]
pub struct Views {
    /// The global view, `base_size` square.
    pub global: RgbImage,
    /// Tiles of `image_size`, row-major; empty unless Gundam mode found a grid.
    pub tiles: Vec<RgbImage>,
    /// `[tiles across, tiles down]`; `[1, 1]` without tiles.
    pub spatial_crop: [u32; 2],
    /// Length of the `<image>` run this image takes in the prompt.
    pub num_image_tokens: usize,
}

impl Views {
    /// The global view as `[1, 3, S, S]` pixels in `[-1, 1]`.
    pub fn global_tensor(&self, kind: Kind, device: Device) -> Tensor {
        pixel_tensor(std::slice::from_ref(&self.global), kind, device)
    }

    /// The tiles as `[n, 3, s, s]` pixels in `[-1, 1]`, or `None` without tiles.
    pub fn tiles_tensor(&self, kind: Kind, device: Device) -> Option<Tensor> {
        (!self.tiles.is_empty()).then(|| pixel_tensor(&self.tiles, kind, device))
    }
}

/// Build the model's views of an (already oriented, RGB) image in `mode`; `max_tiles` bounds the
/// Gundam grid (at least [`MIN_TILES`]).
pub fn preprocess(img: &RgbImage, mode: Mode, max_tiles: u32) -> Views {
    let (width, height) = img.dimensions();
    let tile = mode.image_size();
    let grid = if mode.crop_mode() && (width > tile || height > tile) {
        Some(tile_grid(width, height, tile, max_tiles))
    } else {
        None
    };
    let global = match mode {
        Mode::Tiny | Mode::Small => resize_bicubic(img, tile, tile),
        _ => pad_square(img, mode.base_size()),
    };
    let tiles = grid.map_or_else(Vec::new, |g| cut_tiles(img, g, tile));
    let spatial_crop = grid.unwrap_or([1, 1]);
    Views {
        global,
        tiles,
        spatial_crop,
        num_image_tokens: image_token_count(mode, grid),
    }
}

/// Placeholder tokens for one image: the global grid rows each with a newline, the view
/// separator, and, with tiles, the local grid rows each with a newline.
pub fn image_token_count(mode: Mode, grid: Option<[u32; 2]>) -> usize {
    let g = Config::feature_grid(i64::from(mode.base_size())) as usize;
    let global = g * (g + 1) + 1;
    let local = grid.map_or(0, |[across, down]| {
        let l = Config::feature_grid(i64::from(mode.image_size())) as usize;
        (l * across as usize + 1) * l * down as usize
    });
    global + local
}

/// `ImageOps.pad(img, (size, size), BICUBIC, PAD_COLOR)`: resize keeping the aspect ratio so the
/// longer side is `size`, then centre on a grey square.
pub fn pad_square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w == h {
        (size, size)
    } else if w > h {
        (
            size,
            py_round(f64::from(h) / f64::from(w) * f64::from(size)),
        )
    } else {
        (
            py_round(f64::from(w) / f64::from(h) * f64::from(size)),
            size,
        )
    };
    let resized = resize_bicubic(img, nw, nh);
    if (nw, nh) == (size, size) {
        return resized;
    }
    let x = py_round(f64::from(size - nw) * 0.5);
    let y = py_round(f64::from(size - nh) * 0.5);
    let mut out = RgbImage::from_pixel(size, size, image::Rgb(PAD_COLOR));
    image::imageops::replace(&mut out, &resized, i64::from(x), i64::from(y));
    out
}

/// Python's `round()` for non-negative values: half to even.
fn py_round(v: f64) -> u32 {
    v.round_ties_even() as u32
}

/// The `[tiles across, tiles down]` grid `dynamic_preprocess` picks for a `width` x `height` image:
/// every grid with `MIN_TILES <= i*j <= max_tiles`, in order of tile count, the one whose aspect
/// ratio is closest; on an exact tie a later grid wins when the image covers more than half of it.
pub fn tile_grid(width: u32, height: u32, tile: u32, max_tiles: u32) -> [u32; 2] {
    let max_tiles = max_tiles.max(MIN_TILES);
    let aspect = f64::from(width) / f64::from(height);
    let area = f64::from(width) * f64::from(height);
    let mut candidates: Vec<[u32; 2]> = (1..=max_tiles)
        .flat_map(|i| (1..=max_tiles).map(move |j| [i, j]))
        .filter(|[i, j]| (MIN_TILES..=max_tiles).contains(&(i * j)))
        .collect();
    // Stable sort by tile count; among equal counts, fewer tiles across first. The reference's
    // order within a count comes from a Python set, but an exact tie between two grids of the
    // same count can only be decisive for max_tiles <= 3, where that order is this one.
    candidates.sort_by_key(|[i, j]| (i * j, *i));
    let mut best = [1, 1];
    let mut best_diff = f64::INFINITY;
    for [i, j] in candidates {
        let diff = (aspect - f64::from(i) / f64::from(j)).abs();
        if diff < best_diff {
            best_diff = diff;
            best = [i, j];
        } else if diff == best_diff
            && area > 0.5 * f64::from(tile) * f64::from(tile) * f64::from(i * j)
        {
            best = [i, j];
        }
    }
    best
}

/// Stretch the image to the grid and cut it into `tile`-sized squares, row-major.
fn cut_tiles(img: &RgbImage, [across, down]: [u32; 2], tile: u32) -> Vec<RgbImage> {
    let stretched = resize_bicubic(img, tile * across, tile * down);
    (0..down)
        .flat_map(|r| (0..across).map(move |c| (c, r)))
        .map(|(c, r)| {
            image::imageops::crop_imm(&stretched, c * tile, r * tile, tile, tile).to_image()
        })
        .collect()
}

/// `[n, 3, H, W]` tensor of `(u8 / 255 - 0.5) / 0.5` (computed in f32, then cast to `kind`).
/// All images must have the same size.
fn pixel_tensor(images: &[RgbImage], kind: Kind, device: Device) -> Tensor {
    let (w, h) = images.first().map_or((0, 0), |i| i.dimensions());
    let data: Vec<u8> = images
        .iter()
        .flat_map(|i| i.as_raw().iter().copied())
        .collect();
    Tensor::from_slice(&data)
        .view([images.len() as i64, i64::from(h), i64::from(w), 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        .divide_scalar(255.0)
        .subtract_scalar(0.5)
        .divide_scalar(0.5)
        .to_kind(kind)
        .to_device(device)
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_follow_the_spec_table() {
        assert_eq!(image_token_count(Mode::Tiny, None), 73);
        assert_eq!(image_token_count(Mode::Small, None), 111);
        assert_eq!(image_token_count(Mode::Base, None), 273);
        assert_eq!(image_token_count(Mode::Large, None), 421);
        assert_eq!(image_token_count(Mode::Gundam, None), 273);
        assert_eq!(image_token_count(Mode::Gundam, Some([2, 3])), 903);
        assert_eq!(image_token_count(Mode::Gundam, Some([2, 2])), 693);
        assert_eq!(image_token_count(Mode::Gundam, Some([3, 3])), 1203);
        assert_eq!(image_token_count(Mode::Gundam, Some([1, 9])), 1263);
    }

    #[test]
    fn same_count_tie_prefers_the_narrow_grid_unless_large() {
        // 5:4 is halfway between 1:2 and 2:1 (both two tiles) with max_tiles 2.
        assert_eq!(tile_grid(700, 560, 640, 2), [1, 2]);
        // Large enough (> 0.5 * 640^2 * 2) for the later grid to win the tie.
        assert_eq!(tile_grid(800, 640, 640, 2), [2, 1]);
    }

    #[test]
    fn pixel_tensor_is_normalised_chw() {
        let img = RgbImage::from_fn(3, 2, |x, y| {
            image::Rgb([(x * 100) as u8, (y * 255) as u8, 127])
        });
        let t = pixel_tensor(&[img], Kind::Float, Device::Cpu);
        assert_eq!(t.size(), [1, 3, 2, 3]);
        let v = |c, y, x| t.double_value(&[0, c, y, x]);
        assert!((v(0, 0, 2) - (200.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
        assert!((v(1, 1, 0) - 1.0).abs() < 1e-6);
        assert!((v(1, 0, 0) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!("Gundam".parse::<Mode>(), Ok(Mode::Gundam));
        assert!("huge".parse::<Mode>().unwrap_err().contains("tiny, small"));
    }
}
