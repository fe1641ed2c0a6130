//! Dashboard benchmark (not a test): the time to draw a full 200x60 frame, and the longest the
//! event loop stays busy in one turn while a download floods it with progress events, while
//! OCR streams tokens, and while the dashboard's model thread runs real inference (a seeded
//! tiny model, made the way the tests make it).
//!
//! `cargo run --release --features mock --example tui_bench`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use dsocr::ocr::grounding::LabeledBox;
use dsocr::tui::action::{Action, ActionSender, Input, Outcome, Update};
use dsocr::tui::app::App;
use dsocr::tui::config::{ColorEnv, Settings};
use dsocr::tui::state::{Check, DeviceInfo, HeaderInfo, PreviewImage};
use ratatui::Terminal;
use ratatui::backend::{CrosstermBackend, TestBackend};

#[path = "../tests/common/mod.rs"]
mod common;

const W: u16 = 200;
const H: u16 = 60;

fn app() -> App {
    let header = HeaderInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        endpoint: "https://huggingface.co".to_string(),
        offline: false,
        device: Check::Done(DeviceInfo::Cpu { threads: 16 }),
    };
    let env = ColorEnv {
        no_color: false,
        truecolor: true,
    };
    App::new(header, Settings::from_toml("", env))
}

fn key(c: char) -> Action {
    Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)).into()
}

/// Every pane busy: a 3-file download, a page preview with 40 boxes, 4000 characters of
/// output, the log shown.
fn busy_app() -> App {
    let mut a = app();
    let mut feed = |acts: Vec<Action>| {
        for act in acts {
            let _ = a.update(act);
        }
    };
    let (w, h) = (320u32, 414u32);
    let rgb = (0..w * h)
        .flat_map(|i| {
            let v = if (i / w) % 9 == 0 { 40 } else { 245 };
            [v, v, v]
        })
        .collect();
    let boxes = (0..40)
        .map(|i| LabeledBox {
            label: "text".to_string(),
            norm: [50.0, 20.0 + 24.0 * i as f64, 950.0, 40.0 + 24.0 * i as f64],
            pixels: [0; 4],
        })
        .collect();
    feed(vec![key('L'), key('l'), key('d')]);
    feed(vec![Action::Worker(Update::DownloadStarted(vec![
        ("config.json".to_string(), 2_544, 0),
        ("tokenizer.json".to_string(), 9_979_417, 0),
        (
            "model-00001-of-000001.safetensors".to_string(),
            6_672_212_480,
            0,
        ),
    ]))]);
    feed(vec![
        Update::Preview(Some(PreviewImage {
            width: w,
            height: h,
            rgb,
        }))
        .into(),
        Update::OcrText {
            text: "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(70),
            tokens: 1000,
            elapsed: Duration::from_secs(20),
            decode_elapsed: Duration::from_secs(18),
        }
        .into(),
        Update::OcrFinished(Outcome::Done(boxes)).into(),
    ]);
    for i in 0..200 {
        feed(vec![Update::Log(format!("log line {i}")).into()]);
    }
    a
}

/// A terminal that throws the bytes away.
struct Discard(Arc<AtomicU64>);

impl std::io::Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let n = v.len();
    let mean = v.iter().sum::<Duration>() / n as u32;
    format!(
        "n={n} mean={mean:?} p50={:?} p99={:?} max={:?}",
        v[n / 2],
        v[n * 99 / 100],
        v[n - 1]
    )
}

fn render_bench() {
    let a = busy_app();
    let mut test = Terminal::new(TestBackend::new(W, H)).expect("backend");
    let mut times = Vec::new();
    for i in 0..2000 {
        let mut b = a.clone();
        b.ticks = i; // the spinner changes, so every frame differs
        let t = Instant::now();
        test.draw(|f| dsocr::tui::ui::draw(f, &b)).expect("draw");
        times.push(t.elapsed());
    }
    println!(
        "full frame {W}x{H}, widgets into a buffer: {}",
        stats(times)
    );
    // The same through crossterm's escape encoding (into a byte counter, not a tty), as a full
    // repaint every time (a fresh terminal has nothing to diff against): the worst case.
    let mut times = Vec::new();
    let bytes = Arc::new(AtomicU64::new(0));
    for i in 0..2000 {
        let mut b = a.clone();
        b.ticks = i;
        let options = ratatui::TerminalOptions {
            viewport: ratatui::Viewport::Fixed(ratatui::layout::Rect::new(0, 0, W, H)),
        };
        let mut term =
            Terminal::with_options(CrosstermBackend::new(Discard(bytes.clone())), options)
                .expect("backend");
        bytes.store(0, Ordering::Relaxed);
        let t = Instant::now();
        term.draw(|f| dsocr::tui::ui::draw(f, &b)).expect("draw");
        times.push(t.elapsed());
    }
    let bytes = bytes.load(Ordering::Relaxed);
    println!("({bytes} bytes of escapes per full repaint)");
    println!(
        "full frame {W}x{H}, full repaint with crossterm escapes: {}",
        stats(times)
    );
}

/// Run the real event loop on a 200x60 test terminal while `producer` sends actions; return
/// the loop's statistics.
fn loop_bench(
    name: &str,
    mut a: App,
    producer: impl FnOnce(mpsc::Sender<Action>) + Send + 'static,
) -> dsocr::tui::LoopStats {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || producer(tx));
    let mut term = Terminal::new(TestBackend::new(W, H)).expect("backend");
    let start = Instant::now();
    let stats = dsocr::tui::event_loop(&mut term, &mut a, &rx, |_| {}).expect("loop");
    let _ = handle.join();
    println!(
        "{name}: {:?} wall, {} frames, longest draw {:?}, longest loop turn: downloading {:?}, OCR {:?}, idle {:?}",
        start.elapsed(),
        stats.frames,
        stats.max_draw,
        stats.max_download,
        stats.max_ocr,
        stats.max_idle
    );
    stats
}

/// A real download: the dashboard's workers fetch a 64 MiB repo from the mock hub (CDN throttled
/// to 32 MiB/s) into a temporary HF_HOME while the event loop runs.
fn real_download_bench() {
    use dsocr::hub::mock::{self, Access, MockConfig, MockHub};
    let dir = std::env::temp_dir().join(format!("dsocr-tui-bench-{}", std::process::id()));
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let config = MockConfig {
        repos: vec![mock::demo_repo(Access::Public, 64 << 20)],
        cdn_bytes_per_sec: Some(32 << 20),
        ..MockConfig::default()
    };
    let hub = rt.block_on(MockHub::start(config)).expect("mock hub");
    // SAFETY: set before the dashboard's worker threads start; nothing else reads them yet.
    unsafe {
        std::env::set_var("HF_HOME", dir.join("hf"));
        std::env::set_var("HF_ENDPOINT", &hub.endpoint);
        std::env::remove_var("HF_TOKEN");
    }
    let (tx, rx) = mpsc::channel();
    let mut workers = dsocr::tui::tasks::Workers::new(ActionSender(tx.clone())).expect("workers");
    let mut a = app();
    let _ = a.update(key('l'));
    for job in a.update(key('d')) {
        workers.dispatch(job);
    }
    let mut term = Terminal::new(TestBackend::new(W, H)).expect("backend");
    let start = Instant::now();
    let stats = dsocr::tui::event_loop(&mut term, &mut a, &rx, |job| {
        // The cache rescan follows a finished download: stop there.
        if job == dsocr::tui::action::Job::ScanCache {
            let _ = tx.send(key('q'));
        }
        workers.dispatch(job);
    })
    .expect("loop");
    let done = matches!(
        a.models.download.as_ref().map(|d| &d.phase),
        Some(dsocr::tui::state::DownloadPhase::Done)
    );
    println!(
        "real download of 64 MiB from the mock hub (done: {done}): {:?} wall, {} frames, longest draw {:?}, longest loop turn while downloading {:?}",
        start.elapsed(),
        stats.frames,
        stats.max_draw,
        stats.max_download
    );
    workers.shutdown();
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Real inference: the dashboard's workers load a seeded tiny model (tiny dimensions, the real
/// vocabulary) and OCR a 1275x1650 page in base mode, 300 new tokens, on the CPU, while the event
/// loop runs; a relay stops the loop when the run finishes.
fn real_inference_bench() {
    use dsocr::tui::state::{ModelSource, OcrRun};
    let dir = std::env::temp_dir().join(format!("dsocr-tui-bench-ocr-{}", std::process::id()));
    let model = dir.join("model");
    common::make_model(&model);
    let page = common::fixtures().join("preprocess/sources/letter-1275x1650.png");
    let (worker_tx, worker_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let relay = thread::spawn(move || {
        for action in worker_rx {
            let finished = matches!(action, Action::Worker(Update::OcrFinished(_)));
            let _ = tx.send(action);
            if finished {
                let _ = tx.send(key('q'));
            }
        }
    });
    let mut workers = dsocr::tui::tasks::Workers::new(ActionSender(worker_tx)).expect("workers");
    let mut a = app();
    a.settings.ocr.device = "cpu".to_string();
    a.settings.ocr.max_new_tokens = 300;
    a.models.selected_model = ModelSource::Folder(model);
    a.ocr.input = page.display().to_string();
    let _ = a.update(key('l'));
    let _ = a.update(key('l'));
    let mut jobs = a.update(key('r'));
    jobs.push(dsocr::tui::action::Job::LoadPreview {
        path: page,
        password: None,
    });
    for job in jobs {
        workers.dispatch(job);
    }
    let mut term = Terminal::new(TestBackend::new(W, H)).expect("backend");
    let start = Instant::now();
    let stats =
        dsocr::tui::event_loop(&mut term, &mut a, &rx, |job| workers.dispatch(job)).expect("loop");
    println!(
        "real inference, tiny seeded model on the CPU, 300 tokens (finished: {}): {:?} wall, {} tokens, {:.1} tokens/s, {} frames, longest draw {:?}, longest loop turn while OCR ran {:?}",
        a.ocr.run == OcrRun::Done,
        start.elapsed(),
        a.ocr.tokens,
        a.ocr.tokens_per_sec().unwrap_or(0.0),
        stats.frames,
        stats.max_draw,
        stats.max_ocr
    );
    workers.shutdown();
    let _ = relay.join();
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    render_bench();
    real_download_bench();
    real_inference_bench();
    // Download: a progress event per 64 KiB chunk at 400 MB/s is ~6100 events/s.
    let mut a = app();
    let _ = a.update(key('l'));
    let _ = a.update(key('d'));
    loop_bench("download, 6100 progress events/s for 3 s", a, |tx| {
        let total = 6_672_212_480u64;
        let _ = tx.send(Action::Worker(Update::DownloadStarted(vec![(
            "model.safetensors".to_string(),
            total,
            0,
        )])));
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed() < Duration::from_secs(3) {
            done += 65_536;
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            let _ = tx.send(Action::Worker(Update::DownloadProgress {
                file: 0,
                done,
                speed: Some(done as f64 / secs),
                eta: Some(Duration::from_secs_f64(
                    (total - done) as f64 * secs / done as f64,
                )),
            }));
            thread::sleep(Duration::from_micros(164));
        }
        let _ = tx.send(key('q'));
    });
    // OCR: tokens as fast as a GPU decodes the real model (~100 tokens/s) for 3 s.
    let mut a = app();
    a.ocr.input = "page.png".to_string();
    let _ = a.update(key('l'));
    let _ = a.update(key('l'));
    let _ = a.update(key('r'));
    loop_bench("OCR streaming, 100 tokens/s for 3 s", a, |tx| {
        let start = Instant::now();
        let _ = tx.send(Update::OcrPhase(dsocr::tui::state::OcrPhase::Decode).into());
        let mut tokens = 0;
        while start.elapsed() < Duration::from_secs(3) {
            tokens += 1;
            let _ = tx.send(Action::Worker(Update::OcrText {
                text: "word ".to_string(),
                tokens,
                elapsed: start.elapsed(),
                decode_elapsed: start.elapsed(),
            }));
            thread::sleep(Duration::from_millis(10));
        }
        let _ = tx.send(key('q'));
    });
}
