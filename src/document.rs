//! PDF documents: opening (with a password when encrypted), page ranges, rendering a page to an
//! RGB image at a given resolution, and the document outputs (`<name>.mmd` with the pages'
//! markdown joined by [`PAGE_SPLIT`], `report.json` with per-page reports and totals).
//!
//! Rendering uses `hayro`, a pure-Rust PDF rasterizer (BENCHMARKS.md, "PDF renderers", has the
//! measurements it was chosen by). The CLI, the dashboard and a server use this module alike:
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dsocr::document::{Document, PageSelection, DEFAULT_DPI};
//! let doc = Document::open("paper.pdf".as_ref(), None)?;
//! let pages = "1-3,7".parse::<PageSelection>()?.resolve(doc.page_count());
//! for page in pages.inside {
//!     let image = doc.render(page, DEFAULT_DPI)?; // image::RgbImage
//! #   let _ = image;
//! }
//! # Ok(()) }
//! ```

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::{DecryptionError, LoadPdfError, Pdf};
use hayro::vello_cpu::color::palette::css::WHITE;
use image::RgbImage;
use serde::Serialize;

use crate::ocr::preprocess::MAX_PIXELS;
use crate::ocr::session::Report;

/// The resolution pages are rendered at unless told otherwise (DeepSeek-OCR's PDF script uses
/// 144 dpi).
pub const DEFAULT_DPI: u32 = 144;
/// Lowest and highest accepted resolution.
pub const DPI_RANGE: std::ops::RangeInclusive<u32> = 18..=1200;
/// What joins the pages' markdown in `<name>.mmd` (as DeepSeek-OCR's PDF script writes it).
pub const PAGE_SPLIT: &str = "\n<--- Page Split --->\n";
/// The largest side the rasterizer can draw, in pixels.
const MAX_SIDE: u32 = u16::MAX as u32;

/// Why a document or one of its pages cannot be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The document is encrypted and no password, or a wrong one, was given.
    #[error("{} is encrypted{}", path.display(), if *wrong_password { ": the password given does not open it" } else { " and needs a password (--password)" })]
    Encrypted {
        /// The file.
        path: PathBuf,
        /// A password was given and did not open it.
        wrong_password: bool,
    },
    /// The document is encrypted in a way the renderer cannot decrypt.
    #[error("{} is encrypted with a method dsocr cannot decrypt ({detail}); save a decrypted copy (e.g. `qpdf --decrypt`)", path.display())]
    UnsupportedEncryption {
        /// The file.
        path: PathBuf,
        /// What is wrong with the encryption.
        detail: &'static str,
    },
    /// Not a readable PDF: truncated, corrupt, or not a PDF at all.
    #[error("{} is not a readable PDF (truncated or corrupt){}", path.display(), if *not_pdf { "; it does not start like a PDF" } else { "" })]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The file does not even start with `%PDF-`.
        not_pdf: bool,
    },
    /// The file ends before its end-of-file marker: cut short by a download or a copy.
    #[error("{} is truncated: it ends without the %%EOF marker a complete PDF ends with (cut short by a download or copy?)", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
    },
    /// The document opens but has no pages.
    #[error("{} has no pages", path.display())]
    NoPages {
        /// The file.
        path: PathBuf,
    },
    /// A requested page is past the end of the document.
    #[error("page {page} is outside {}, which has {pages} page{}", path.display(), if *pages == 1 { "" } else { "s" })]
    PageOutside {
        /// The file.
        path: PathBuf,
        /// The page asked for (1-based).
        page: usize,
        /// How many pages the document has.
        pages: usize,
    },
    /// A page rendered at the requested resolution would be too large.
    #[error("page {page} of {} would be {width}x{height} pixels at {dpi} dpi, over the limit of {} pixels ({MAX_SIDE} a side); lower --dpi", path.display(), MAX_PIXELS)]
    TooManyPixels {
        /// The file.
        path: PathBuf,
        /// The page (1-based).
        page: usize,
        /// Width it would have.
        width: u64,
        /// Height it would have.
        height: u64,
        /// The resolution asked for.
        dpi: u32,
    },
    /// The renderer failed on the page's content.
    #[error("page {page} of {} cannot be rendered: {detail}", path.display())]
    Render {
        /// The file.
        path: PathBuf,
        /// The page (1-based).
        page: usize,
        /// What went wrong.
        detail: String,
    },
    /// A resolution outside [`DPI_RANGE`].
    #[error("--dpi {0} is outside {lo}..={hi}", lo = DPI_RANGE.start(), hi = DPI_RANGE.end())]
    BadDpi(u32),
}

/// Whether `path` names a PDF: its extension is `.pdf` (any case) or it starts with `%PDF-`.
pub fn is_pdf(path: &Path) -> bool {
    if path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pdf"))
    {
        return true;
    }
    let mut head = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head == b"%PDF-")
}

/// An open PDF.
pub struct Document {
    path: PathBuf,
    pdf: Pdf,
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("path", &self.path)
            .field("pages", &self.page_count())
            .finish()
    }
}

impl Document {
    /// Read and open the PDF at `path`; `password` opens an encrypted one.
    pub fn open(path: &Path, password: Option<&str>) -> Result<Self, DocumentError> {
        let bytes = std::fs::read(path).map_err(|source| DocumentError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes, password)
    }

    /// Open a PDF held in memory (an upload); `name` stands for it in errors.
    pub fn from_bytes(
        name: &Path,
        bytes: Vec<u8>,
        password: Option<&str>,
    ) -> Result<Self, DocumentError> {
        let path = name.to_path_buf();
        let not_pdf = !bytes.starts_with(b"%PDF-")
            && !bytes[..bytes.len().min(1024)]
                .windows(5)
                .any(|w| w == b"%PDF-");
        if !not_pdf && !has_eof_marker(&bytes) {
            return Err(DocumentError::Truncated { path });
        }
        let pdf = quiet_catch(|| Pdf::new_with_password(bytes, password.unwrap_or("")))
            .unwrap_or(Err(LoadPdfError::Invalid))
            .map_err(|e| match e {
                LoadPdfError::Invalid => DocumentError::Corrupt {
                    path: path.clone(),
                    not_pdf,
                },
                LoadPdfError::Decryption(DecryptionError::PasswordProtected) => {
                    DocumentError::Encrypted {
                        path: path.clone(),
                        wrong_password: password.is_some_and(|p| !p.is_empty()),
                    }
                }
                LoadPdfError::Decryption(DecryptionError::UnsupportedAlgorithm) => {
                    DocumentError::UnsupportedEncryption {
                        path: path.clone(),
                        detail: "unsupported algorithm",
                    }
                }
                LoadPdfError::Decryption(DecryptionError::InvalidEncryption) => {
                    DocumentError::UnsupportedEncryption {
                        path: path.clone(),
                        detail: "invalid encryption dictionary",
                    }
                }
                LoadPdfError::Decryption(DecryptionError::MissingIDEntry) => {
                    DocumentError::UnsupportedEncryption {
                        path: path.clone(),
                        detail: "the trailer has no /ID",
                    }
                }
            })?;
        let doc = Self { path, pdf };
        if doc.page_count() == 0 {
            // A document whose page tree was lost (truncated, corrupt) also ends up here.
            return Err(DocumentError::NoPages { path: doc.path });
        }
        Ok(doc)
    }

    /// The file (or the name given to [`Self::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of pages.
    pub fn page_count(&self) -> usize {
        self.pdf.pages().len()
    }

    /// Size of page `page` (1-based) in pixels at `dpi`, as [`Self::render`] draws it.
    pub fn page_pixels(&self, page: usize, dpi: u32) -> Result<(u64, u64), DocumentError> {
        let p = self.page(page)?;
        let (w, h) = p.render_dimensions();
        let scale = f64::from(dpi) / 72.0;
        // As the rasterizer sizes its canvas: truncated, at least one pixel.
        let side = |points: f32| ((f64::from(points) * scale) as u64).max(1);
        Ok((side(w), side(h)))
    }

    fn page(&self, page: usize) -> Result<&hayro::hayro_syntax::page::Page<'_>, DocumentError> {
        let pages = self.pdf.pages();
        page.checked_sub(1)
            .and_then(|i| pages.get(i))
            .ok_or_else(|| DocumentError::PageOutside {
                path: self.path.clone(),
                page,
                pages: pages.len(),
            })
    }

    /// Render page `page` (1-based) at `dpi` on white. A page over [`MAX_PIXELS`] (or wider or
    /// taller than the rasterizer's 65535 pixels) is refused before anything is drawn.
    pub fn render(&self, page: usize, dpi: u32) -> Result<RgbImage, DocumentError> {
        if !DPI_RANGE.contains(&dpi) {
            return Err(DocumentError::BadDpi(dpi));
        }
        let (width, height) = self.page_pixels(page, dpi)?;
        if width.saturating_mul(height) > MAX_PIXELS
            || width > u64::from(MAX_SIDE)
            || height > u64::from(MAX_SIDE)
        {
            return Err(DocumentError::TooManyPixels {
                path: self.path.clone(),
                page,
                width,
                height,
                dpi,
            });
        }
        let p = self.page(page)?;
        let scale = dpi as f32 / 72.0;
        let pixmap = quiet_catch(|| {
            let cache = hayro::RenderCache::new();
            hayro::render(
                p,
                &cache,
                &InterpreterSettings::default(),
                &hayro::RenderSettings::default(),
                &hayro::PixmapSettings {
                    x_scale: scale,
                    y_scale: scale,
                    bg_color: WHITE,
                },
            )
        })
        .map_err(|detail| DocumentError::Render {
            path: self.path.clone(),
            page,
            detail,
        })?;
        let (w, h) = (u32::from(pixmap.width()), u32::from(pixmap.height()));
        // Opaque white background: the premultiplied RGBA is plain RGBA.
        let rgb: Vec<u8> = pixmap
            .data_as_u8_slice()
            .chunks_exact(4)
            .flat_map(|px| [px[0], px[1], px[2]])
            .collect();
        RgbImage::from_raw(w, h, rgb).ok_or_else(|| DocumentError::Render {
            path: self.path.clone(),
            page,
            detail: format!("the rasterizer returned a buffer that is not {w}x{h}"),
        })
    }
}

/// Whether the last 1024 bytes hold `%%EOF` (where readers look for it; trailing junk after it
/// is common and allowed).
fn has_eof_marker(bytes: &[u8]) -> bool {
    bytes[bytes.len().saturating_sub(1024)..]
        .windows(5)
        .any(|w| w == b"%%EOF")
}

thread_local! {
    /// Set while this thread runs the renderer inside [`quiet_catch`].
    static RENDERING: Cell<bool> = const { Cell::new(false) };
}

/// Wrap the process's panic hook so that a panic inside the renderer, which [`quiet_catch`]
/// turns into an error, runs no hook: nothing printed, and the dashboard's terminal left as it
/// is (ratatui's hook would leave the alternate screen). Every other panic reaches the previous
/// hook as before. Call it after anything else that installs a hook (the CLI at start, the
/// dashboard after taking over the terminal).
pub fn silence_renderer_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !RENDERING.with(Cell::get) {
            previous(info);
        }
    }));
}

/// Run `f`, turning a panic inside the renderer into an error message (the message is
/// returned; with [`silence_renderer_panics`] nothing is printed), so a hostile or broken PDF
/// cannot bring the process down.
fn quiet_catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = RENDERING.with(|r| r.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    RENDERING.with(|r| r.set(was));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".to_string());
        format!("the renderer failed ({msg})")
    })
}

/// A page list such as `1-3,7` or `5-` (to the end): 1-based, inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSelection {
    /// `(first, last)`; `last == None` means to the end.
    ranges: Vec<(usize, Option<usize>)>,
}

impl PageSelection {
    /// Every page.
    pub fn all() -> Self {
        Self {
            ranges: vec![(1, None)],
        }
    }

    /// The selected pages of a `count`-page document, ascending, each once: those inside it,
    /// and, for each item that reaches past its end, the first page past it (`3-5` and `5-` on
    /// a 3-page document ask for pages 4 and 5 that are not there).
    pub fn resolve(&self, count: usize) -> ResolvedPages {
        let mut inside = Vec::new();
        let mut outside = Vec::new();
        for &(first, last) in &self.ranges {
            // `N-` runs to the end; past the end it asks for page N, which is not there.
            let last = last.unwrap_or(count.max(first));
            for page in first..=last {
                if page <= count {
                    inside.push(page);
                } else {
                    outside.push(page);
                    // One error per range past the end is enough.
                    break;
                }
            }
        }
        inside.sort_unstable();
        inside.dedup();
        outside.sort_unstable();
        outside.dedup();
        ResolvedPages { inside, outside }
    }
}

/// [`PageSelection::resolve`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPages {
    /// Pages to run.
    pub inside: Vec<usize>,
    /// Pages asked for past the end (the first one of each range that runs past it).
    pub outside: Vec<usize>,
}

/// A page list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid page list {spec:?}: {why}; write pages like 1-3,7 or 5- (1-based)")]
pub struct PageSelectionError {
    spec: String,
    why: String,
}

impl FromStr for PageSelection {
    type Err = PageSelectionError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |why: String| PageSelectionError {
            spec: spec.to_string(),
            why,
        };
        let number = |s: &str| -> Result<usize, PageSelectionError> {
            let n: usize = s
                .trim()
                .parse()
                .map_err(|_| err(format!("{:?} is not a page number", s.trim())))?;
            if n == 0 {
                return Err(err("pages count from 1".to_string()));
            }
            Ok(n)
        };
        let mut ranges = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("an empty item".to_string()));
            }
            match part.split_once('-') {
                None => {
                    let n = number(part)?;
                    ranges.push((n, Some(n)));
                }
                Some((a, b)) => {
                    let first = number(a)?;
                    let last = if b.trim().is_empty() {
                        None
                    } else {
                        Some(number(b)?)
                    };
                    if last.is_some_and(|l| l < first) {
                        return Err(err(format!("{part} runs backwards")));
                    }
                    ranges.push((first, last));
                }
            }
        }
        Ok(Self { ranges })
    }
}

/// One page's entry in `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PageEntry {
    /// Page number (1-based).
    pub page: usize,
    /// Seconds spent rendering it.
    pub render_s: f64,
    /// Left out of the joined markdown (`--skip-repeat` and the page hit the token limit).
    pub skipped_in_mmd: bool,
    /// Why the page failed (no report then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The page's report (as `page-N/boxes.json` holds it).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// Sums over a document's pages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Pages run to the end.
    pub pages_ok: usize,
    /// Pages that failed (render, OCR or write, or asked for past the end).
    pub pages_failed: usize,
    /// Pages that hit the token limit (kept, flagged).
    pub pages_hit_token_limit: usize,
    /// Pages left out of the joined markdown.
    pub pages_skipped_in_mmd: usize,
    /// Tokens generated over all pages.
    pub generated_tokens: usize,
    /// Rendering seconds.
    pub render_s: f64,
    /// Vision seconds.
    pub vision_s: f64,
    /// Prefill seconds.
    pub prefill_s: f64,
    /// Decode seconds.
    pub decode_s: f64,
    /// Wall-clock seconds for the whole document.
    pub elapsed_s: f64,
}

/// `report.json`: the document, the pages asked for, each page's entry and the totals.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentReport {
    /// The PDF.
    pub document: PathBuf,
    /// Where the outputs went.
    pub output_dir: PathBuf,
    /// Pages in the document.
    pub page_count: usize,
    /// Resolution pages were rendered at.
    pub dpi: u32,
    /// The joined markdown file.
    pub mmd: PathBuf,
    /// Every page asked for, in order.
    pub pages: Vec<PageEntry>,
    /// Sums.
    pub totals: Totals,
}

impl DocumentReport {
    /// A report with no pages yet; outputs go to `output_dir`, the markdown to
    /// `output_dir/<stem>.mmd`.
    pub fn new(document: &Path, output_dir: &Path, page_count: usize, dpi: u32) -> Self {
        let stem = document
            .file_stem()
            .map_or_else(|| "document".into(), |s| s.to_string_lossy().into_owned());
        Self {
            document: document.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
            page_count,
            dpi,
            mmd: output_dir.join(format!("{stem}.mmd")),
            pages: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// Add a page's entry (the totals follow).
    pub fn push(&mut self, entry: PageEntry) {
        let t = &mut self.totals;
        t.render_s += entry.render_s;
        match (&entry.error, &entry.report) {
            (None, Some(r)) => {
                t.pages_ok += 1;
                t.pages_hit_token_limit += usize::from(r.hit_token_limit);
                t.generated_tokens += r.generated_tokens;
                t.vision_s += r.vision_s;
                t.prefill_s += r.prefill_s;
                t.decode_s += r.decode_s;
            }
            _ => t.pages_failed += 1,
        }
        t.pages_skipped_in_mmd += usize::from(entry.skipped_in_mmd);
        self.pages.push(entry);
    }

    /// The pages' markdown joined with [`PAGE_SPLIT`], in page order, leaving out failed pages
    /// and those marked `skipped_in_mmd`.
    pub fn joined_markdown(&self) -> String {
        let mut pages: Vec<&PageEntry> = self.pages.iter().collect();
        pages.sort_by_key(|p| p.page);
        pages
            .iter()
            .filter(|p| !p.skipped_in_mmd)
            .filter_map(|p| p.report.as_ref().map(|r| r.markdown.as_str()))
            .collect::<Vec<_>>()
            .join(PAGE_SPLIT)
    }

    /// Write `<stem>.mmd` and `report.json` into the output folder (created if needed), each
    /// under a temporary name first and renamed when complete.
    pub fn write(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.output_dir)?;
        write_atomic(&self.mmd, self.joined_markdown().as_bytes())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&self.output_dir.join("report.json"), json.as_bytes())
    }
}

/// How a PDF page is named in reports and messages: `doc.pdf#page=3`.
pub fn page_name(pdf: &Path, page: usize) -> PathBuf {
    let mut name = pdf.as_os_str().to_owned();
    name.push(format!("#page={page}"));
    PathBuf::from(name)
}

/// The folder of page `page` inside a document's output folder.
pub fn page_dir(output_dir: &Path, page: usize) -> PathBuf {
    output_dir.join(format!("page-{page}"))
}

/// Write `bytes` to `path.tmp` and rename it to `path`: a reader never sees a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Fill a page folder through `write` (which writes into the folder it is given) under a
/// temporary name, then put it in place of `dir` (an older `dir` is removed first): a page
/// folder is either complete or absent.
pub fn write_dir_atomic<T, E: From<std::io::Error>>(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let value = match write(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside the renderer reaches no hook (nothing printed, the dashboard's terminal
    /// left alone); a panic elsewhere still does.
    #[test]
    fn renderer_panics_reach_no_hook() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let me = std::thread::current().id();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == me {
                SEEN.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        silence_renderer_panics();
        let caught = quiet_catch(|| -> u8 { panic!("broken page") });
        assert_eq!(caught.unwrap_err(), "the renderer failed (broken page)");
        assert_eq!(
            SEEN.load(Ordering::SeqCst),
            0,
            "the renderer's panic reached a hook"
        );
        assert!(std::panic::catch_unwind(|| -> u8 { panic!("elsewhere") }).is_err());
        assert_eq!(
            SEEN.load(Ordering::SeqCst),
            1,
            "another panic did not reach the hook"
        );
    }

    fn sel(s: &str) -> PageSelection {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn page_lists_parse_and_resolve() {
        let r = sel("1-3,7").resolve(10);
        assert_eq!(r.inside, vec![1, 2, 3, 7]);
        assert!(r.outside.is_empty());
        assert_eq!(sel("7, 2-3 ,2").resolve(10).inside, vec![2, 3, 7]);
        assert_eq!(sel("4-").resolve(6).inside, vec![4, 5, 6]);
        assert_eq!(PageSelection::all().resolve(3).inside, vec![1, 2, 3]);
        let r = sel("1-3,7,9-").resolve(2);
        assert_eq!((r.inside, r.outside), (vec![1, 2], vec![3, 7, 9]));
        let r = sel("2-").resolve(2);
        assert_eq!((r.inside, r.outside), (vec![2], vec![]));
        let r = sel("1-2").resolve(2);
        assert!(r.outside.is_empty());
    }

    #[test]
    fn bad_page_lists_say_why() {
        for (spec, why) in [
            ("0", "count from 1"),
            ("3-1", "backwards"),
            ("1,,2", "empty item"),
            ("a-3", "not a page number"),
            ("", "empty item"),
        ] {
            let e = spec.parse::<PageSelection>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("1-3,7"), "{spec}: {e}");
        }
    }
}
