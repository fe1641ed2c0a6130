//! Background work. Hub jobs run on a tokio runtime (see `hub`); the model runs on its own thread (tch
//! calls block); small file jobs run on tokio's blocking pool. Workers hold an
//! [`ActionSender`] and never the state.

use std::path::Path;

mod hub;
mod model;

use tokio_util::sync::CancellationToken;

use crate::document::{Document, DocumentError};
use crate::ocr::preprocess::{self, ImageError};
use crate::tui::action::{ActionSender, Job, Update};
use crate::tui::state::{DeviceInfo, PreviewImage, ServeProbe};

/// Largest side of the preview image kept in memory (pixels).
const PREVIEW_MAX: u32 = 320;

/// The workers and their cancel flags.
pub struct Workers {
    tx: ActionSender,
    rt: tokio::runtime::Runtime,
    download_cancel: CancellationToken,
    model: model::ModelWorker,
}

impl Workers {
    /// Start the runtime and the model thread.
    pub fn new(tx: ActionSender) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dsocr-hub")
            .enable_all()
            .build()?;
        Ok(Self {
            model: model::ModelWorker::spawn(tx.clone())?,
            tx,
            rt,
            download_cancel: CancellationToken::new(),
        })
    }

    /// Hand a job to the worker that does it. Never blocks.
    pub fn dispatch(&mut self, job: Job) {
        tracing::debug!("job {job:?}");
        let tx = self.tx.clone();
        match job {
            Job::ProbeDevice => {
                self.rt
                    .spawn_blocking(move || tx.send(Update::Device(probe_device())));
            }
            Job::ProbeServe => {
                self.rt.spawn_blocking(move || {
                    tx.send(Update::Serve(probe_serve(crate::serve::DEFAULT_BIND)));
                });
            }
            Job::LoadPreview { path, password } => {
                self.rt.spawn_blocking(move || {
                    if crate::document::is_pdf(&path) {
                        let opened = Document::open(&path, password.as_ref().map(|p| &*p.0));
                        tx.send(Update::DocumentOpened(
                            opened.as_ref().ok().map(Document::page_count),
                        ));
                        let preview = opened.and_then(|doc| page_preview(&doc, 1));
                        match &preview {
                            Err(DocumentError::Encrypted { wrong_password, .. }) => {
                                tx.send(Update::PasswordNeeded {
                                    path,
                                    wrong: *wrong_password,
                                });
                            }
                            Err(e) => tx.error("Cannot use this PDF", e.to_string()),
                            Ok(_) => {}
                        }
                        tx.send(Update::Preview(preview.ok()));
                        return;
                    }
                    tx.send(Update::DocumentOpened(None));
                    let preview = load_preview(&path);
                    if let Err(e) = &preview {
                        tx.error("Cannot use this image", e.to_string());
                    }
                    tx.send(Update::Preview(preview.ok()));
                });
            }
            Job::PreviewPage {
                path,
                page,
                password,
            } => {
                self.rt.spawn_blocking(move || {
                    let preview = Document::open(&path, password.as_ref().map(|p| &*p.0))
                        .and_then(|doc| page_preview(&doc, page));
                    if let Err(e) = &preview {
                        tx.error("Cannot show this page", e.to_string());
                    }
                    tx.send(Update::Preview(preview.ok()));
                });
            }
            Job::CompletePath(input) => {
                self.rt.spawn_blocking(move || {
                    let (input, candidates) = complete_path(&input);
                    tx.send(Update::Completions { input, candidates });
                });
            }
            Job::Save(dir) => self.model.save(dir, &tx),
            Job::CancelDownload => self.download_cancel.cancel(),
            Job::CancelOcr => self.model.cancel(),
            Job::Copy(_) => {} // written to the terminal by the event loop
            Job::RefreshLogin(repo) => {
                self.rt.spawn(hub::refresh_login(tx, repo));
            }
            Job::Login(secret, repo) => {
                self.rt.spawn(hub::login(tx, secret.0, repo));
            }
            Job::Logout(repo) => {
                self.rt.spawn(hub::logout(tx, repo));
            }
            Job::SwitchToken { name, repo } => {
                self.rt.spawn(hub::switch(tx, name, repo));
            }
            Job::ScanCache => {
                self.rt.spawn_blocking(move || hub::scan_cache(&tx));
            }
            Job::Verify(repo) => {
                self.rt.spawn_blocking(move || hub::verify(&tx, &repo));
            }
            Job::Delete { repo, commit } => {
                self.rt
                    .spawn_blocking(move || hub::delete(&tx, &repo, &commit));
            }
            Job::Download { repo, revision } => {
                self.download_cancel = CancellationToken::new();
                let cancel = self.download_cancel.clone();
                self.rt.spawn(hub::download(tx, repo, revision, cancel));
            }
            Job::Ocr(request) => self.model.run(request, &tx),
        }
    }

    /// Ask every job to stop (the dashboard is closing). The model thread is not waited for:
    /// it stops at the next token, or with the process.
    pub fn shutdown(self) {
        self.download_cancel.cancel();
        self.model.cancel();
        self.rt.shutdown_background();
    }
}

/// `GET /readyz` of a `dsocr serve` at `addr` (loopback), with short timeouts; `None` when
/// nothing there answers like one.
fn probe_serve(addr: &str) -> Option<ServeProbe> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let timeout = Duration::from_millis(300);
    let mut stream = std::net::TcpStream::connect_timeout(&sock, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut answer);
    parse_readyz(addr, &String::from_utf8_lossy(&answer))
}

/// A `/readyz` answer (status line, headers, JSON body) as a [`ServeProbe`].
fn parse_readyz(addr: &str, answer: &str) -> Option<ServeProbe> {
    let code = answer.split_whitespace().nth(1)?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let status = json.get("status")?.as_str()?.to_string();
    Some(ServeProbe {
        addr: addr.to_string(),
        ready: code == "200",
        status,
    })
}

/// CUDA GPU name and memory from `nvidia-smi` when CUDA is usable, else the CPU threads.
fn probe_device() -> DeviceInfo {
    if tch::Cuda::is_available()
        && let Some(gpu) = nvidia_smi()
    {
        return gpu;
    }
    DeviceInfo::Cpu {
        threads: usize::try_from(tch::get_num_threads()).unwrap_or(1),
    }
}

fn nvidia_smi() -> Option<DeviceInfo> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut parts = text.lines().next()?.split(',').map(str::trim);
    let name = parts.next()?.to_string();
    let mib = |s: Option<&str>| s?.parse::<u64>().ok().map(|v| v * 1024 * 1024);
    Some(DeviceInfo::Gpu {
        name,
        used: mib(parts.next())?,
        total: mib(parts.next())?,
    })
}

/// Load an image the way OCR loads it (EXIF orientation, size guard) and shrink it for the
/// preview.
pub fn load_preview(path: &Path) -> Result<PreviewImage, ImageError> {
    Ok(shrink(&preprocess::load_image(path)?))
}

/// Page `page` of `doc` for the preview, rendered at a resolution near the preview's size.
pub fn page_preview(doc: &Document, page: usize) -> Result<PreviewImage, DocumentError> {
    let (w, h) = doc.page_pixels(page, 72)?;
    let side = w.max(h).max(1) as f64;
    // Twice the preview's size at most, then shrunk like an image.
    let dpi = (72.0 * 2.0 * f64::from(PREVIEW_MAX) / side).round() as u32;
    let dpi = dpi.clamp(*crate::document::DPI_RANGE.start(), 144);
    Ok(shrink(&doc.render(page, dpi)?))
}

fn shrink(img: &image::RgbImage) -> PreviewImage {
    let scale = (PREVIEW_MAX as f64 / img.width().max(img.height()).max(1) as f64).min(1.0);
    let w = ((img.width() as f64 * scale).round() as u32).max(1);
    let h = ((img.height() as f64 * scale).round() as u32).max(1);
    let small = image::imageops::thumbnail(img, w, h);
    PreviewImage {
        width: small.width(),
        height: small.height(),
        rgb: small.into_raw(),
    }
}

/// Complete a path: the longest common prefix of the matching entries, and the entries
/// (folders end in `/`) when more than one matches.
pub fn complete_path(input: &str) -> (String, Vec<String>) {
    let (dir, prefix) = match input.rfind('/') {
        Some(i) => (&input[..=i], &input[i + 1..]),
        None => ("", input),
    };
    let read_dir = if dir.is_empty() { "." } else { dir };
    let Ok(entries) = std::fs::read_dir(read_dir) else {
        return (input.to_string(), Vec::new());
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            Some(if is_dir { format!("{name}/") } else { name })
        })
        .collect();
    names.sort();
    let common = names
        .iter()
        .skip(1)
        .fold(names.first().cloned().unwrap_or_default(), |acc, n| {
            acc.chars()
                .zip(n.chars())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect()
        });
    let completed = if common.len() > prefix.len() {
        format!("{dir}{common}")
    } else {
        input.to_string()
    };
    let candidates = if names.len() > 1 { names } else { Vec::new() };
    (completed, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_unique_and_lists_many() {
        let dir = std::env::temp_dir().join(format!("dsocr-complete-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pages")).expect("temp dir");
        std::fs::write(dir.join("page1.png"), b"x").expect("temp file");
        std::fs::write(dir.join("page2.png"), b"x").expect("temp file");
        std::fs::write(dir.join("scan.jpg"), b"x").expect("temp file");
        let base = format!("{}/", dir.display());
        let (c, list) = complete_path(&format!("{base}s"));
        assert_eq!(c, format!("{base}scan.jpg"));
        assert!(list.is_empty());
        let (c, list) = complete_path(&format!("{base}pa"));
        assert_eq!(c, format!("{base}page"));
        assert_eq!(list, ["page1.png", "page2.png", "pages/"]);
        let (c, list) = complete_path(&format!("{base}zzz"));
        assert_eq!(c, format!("{base}zzz"));
        assert!(list.is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn readyz_answers_become_probes() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"ready\":true,\"status\":\"ready\"}";
        assert_eq!(
            parse_readyz("127.0.0.1:8000", ok),
            Some(ServeProbe {
                addr: "127.0.0.1:8000".into(),
                ready: true,
                status: "ready".into()
            })
        );
        let missing = "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false,\"status\":\"model_missing\",\"findings\":[]}";
        let p = parse_readyz("a", missing).expect("probe");
        assert!(!p.ready);
        assert_eq!(p.status, "model_missing");
        // Something else on the port is not a dsocr server.
        assert_eq!(parse_readyz("a", "HTTP/1.1 200 OK\r\n\r\n<html>"), None);
        assert_eq!(parse_readyz("a", ""), None);
    }
}
