// The renderer side of BENCHMARKS.md's "PDF renderers" table.
// pdf-renderers RENDERER PDF OUTDIR PAGES   (RENDERER: hayro | pdfium; PAGES: 1-based, comma-separated)
// Renders each page at 144 dpi (scale 2) on white, writes OUTDIR/p-N.ppm and prints
// "page width height render-ms" per page (render-ms: from the opened document to RGB pixels).
// PDFium is loaded from $PDFIUM_LIB (libpdfium.so from PyPI's pypdfium2 wheel).
use std::io::Write;
use std::time::Instant;

fn write_ppm(path: &str, w: u32, h: u32, rgb: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    write!(f, "P6\n{} {}\n255\n", w, h).unwrap();
    f.write_all(rgb).unwrap();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (which, pdf, out) = (&a[1], &a[2], &a[3]);
    let pages: Vec<usize> = a[4].split(',').map(|s| s.parse().unwrap()).collect();
    std::fs::create_dir_all(out).unwrap();
    let data = std::fs::read(pdf).unwrap();
    let t0 = Instant::now();
    let mut results: Vec<(usize, u32, u32, Vec<u8>, f64)> = Vec::new();
    match which.as_str() {
        "hayro" => {
            use hayro::hayro_syntax::Pdf;
            use hayro::hayro_interpret::InterpreterSettings;
            use hayro::vello_cpu::color::palette::css::WHITE;
            let pdf = Pdf::new(data).unwrap();
            eprintln!("open {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
            let cache = hayro::RenderCache::new();
            let is = InterpreterSettings::default();
            let rs = hayro::RenderSettings::default();
            let ps = hayro::PixmapSettings { x_scale: 2.0, y_scale: 2.0, bg_color: WHITE };
            let all = pdf.pages();
            for &p in &pages {
                let t = Instant::now();
                let pm = hayro::render(&all[p - 1], &cache, &is, &rs, &ps);
                let (w, h) = (pm.width() as u32, pm.height() as u32);
                let rgba = pm.data_as_u8_slice();
                let rgb: Vec<u8> = rgba.chunks(4).flat_map(|c| [c[0], c[1], c[2]]).collect();
                results.push((p, w, h, rgb, t.elapsed().as_secs_f64()));
            }
        }
        "pdfium" => {
            use pdfium_render::prelude::*;
            let lib = std::env::var("PDFIUM_LIB").unwrap();
            let pdfium = Pdfium::new(Pdfium::bind_to_library(lib).unwrap());
            let doc = pdfium.load_pdf_from_byte_vec(data, None).unwrap();
            eprintln!("open {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
            let cfg = PdfRenderConfig::new().scale_page_by_factor(2.0);
            for &p in &pages {
                let t = Instant::now();
                let page = doc.pages().get((p - 1) as i32).unwrap();
                let bm = page.render_with_config(&cfg).unwrap();
                let img = bm.as_image().unwrap().to_rgb8();
                let (w, h) = img.dimensions();
                results.push((p, w, h, img.into_raw(), t.elapsed().as_secs_f64()));
            }
        }
        _ => panic!(),
    }
    for (p, w, h, rgb, s) in results {
        write_ppm(&format!("{out}/p-{p}.ppm"), w, h, &rgb);
        println!("{p} {w} {h} {:.2}", s * 1e3);
    }
}
