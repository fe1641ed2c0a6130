//! `dsocr serve`: the OCR engine over HTTP (axum on tokio), built to be one replica among many
//! behind a load balancer: stateless, with probes, metrics, limits and a clean shutdown.
//!
//! - It listens before the model is loaded. `/readyz` answers 503 with the hub doctor's
//!   findings (the same JSON as `dsocr doctor --json`) while the model is missing or failed to
//!   load, and 200 once it is loaded. A repo id missing from the cache is looked for again every
//!   second, so a `dsocr download` run next to the server makes it ready without a restart.
//! - One engine thread owns the model ([`engine`]); requests queue in front of it (bounded:
//!   429 with `Retry-After` when full) and are cancelled before the next token when their
//!   client disconnects or their time is up.
//! - SIGTERM (or Ctrl-C) stops accepting, lets the requests in flight finish for up to the
//!   grace period, then exits 0.
//! - Keys (`--api-key-file`) are compared in constant time (as sha256 digests); no key, token
//!   or image data is ever logged.
//!
//! The HTTP side is in [`api`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tch::{Device, Kind};
use tokio_util::sync::CancellationToken;

use crate::hub::HubEnv;
use crate::hub::cache::{RepoPaths, completeness};
use crate::hub::diagnose::{self, DiagnoseOptions, Finding, TorchFacts};
use crate::model_source::ModelSource;
use crate::ocr::cpu::Plan;
use crate::ocr::device::{device_name, kind_name};
use crate::ocr::session::Session;

pub mod api;
pub mod engine;
pub mod metrics;

use engine::{Job, Queue, QueueError};
use metrics::Metrics;

/// Where the server listens when `--bind` is not given.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";

/// Everything `dsocr serve` runs with.
pub struct ServeConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// What `--model` said: a folder or a repo id in the local cache.
    pub model: String,
    /// Compute device.
    pub device: Device,
    /// Weight dtype.
    pub kind: Kind,
    /// Compute path.
    pub plan: Plan,
    /// Accepted API keys (empty: none needed, loopback only).
    pub keys: ApiKeys,
    /// Most pages waiting for the engine.
    pub max_queue: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Most time one request may take, queue included.
    pub timeout: Duration,
    /// How long SIGTERM waits for the requests in flight.
    pub grace: Duration,
    /// Default and ceiling of a request's new tokens.
    pub max_new_tokens: usize,
    /// Pages decoded together (`None`: chosen from free memory once the model is loaded).
    pub batch: Option<usize>,
}

/// The API keys, kept as sha256 digests.
#[derive(Default)]
pub struct ApiKeys(Vec<[u8; 32]>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// Shortest key accepted.
const MIN_KEY_LEN: usize = 16;

impl ApiKeys {
    /// Keys from a file: one per line; blank lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API key file {}", path.display()))?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if key.len() < MIN_KEY_LEN || key.chars().any(char::is_whitespace) {
                bail!(
                    "line {} of {} is not a usable key: a key is one word of at least {MIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)",
                    i + 1,
                    path.display()
                );
            }
            keys.push(Sha256::digest(key.as_bytes()).into());
        }
        if keys.is_empty() {
            bail!(
                "the API key file {} has no keys; put one key per line (e.g. `openssl rand -hex 32 > {}`)",
                path.display(),
                path.display()
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    "the API key file {} can be read by other users; chmod 600 it",
                    path.display()
                );
            }
        }
        Ok(Self(keys))
    }

    /// Keys given directly (tests, embedding).
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            keys.into_iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        )
    }

    /// No key configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `presented` is one of the keys. Every key is compared, in constant time.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0);
        for key in &self.0 {
            found |= key.ct_eq(&digest);
        }
        found.into()
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// The model is loaded and requests are served.
    pub ready: bool,
    /// `resolving`, `model_missing`, `loading`, `load_failed`, `ready`, `engine_failed` or
    /// `stopping`.
    pub status: &'static str,
    /// The model as given to `--model`.
    pub model: String,
    /// What is going on, in one line, with what to do.
    pub message: String,
    /// The doctor's findings (`dsocr doctor --json`) for the model's repo, when the model is
    /// a repo id that is not usable yet; empty otherwise.
    pub findings: Vec<Finding>,
    /// The doctor's verdict when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doctor_ready: Option<bool>,
}

/// State shared by the handlers, the loader and the shutdown.
pub struct Shared {
    /// What `/readyz` says.
    readiness: Mutex<Readiness>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The engine's queue; taken away at shutdown.
    queue: Mutex<Option<Queue>>,
    /// Accepted keys.
    pub keys: ApiKeys,
    /// The id `/v1/models` lists.
    pub model_id: String,
    /// Default and ceiling of a request's new tokens.
    pub max_new_tokens: usize,
    /// Most time one request may take.
    pub timeout: Duration,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// SIGTERM came.
    pub stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// What `/readyz` says now.
    pub fn readiness(&self) -> Readiness {
        let mut r = lock(&self.readiness).clone();
        if self.stopping.load(Ordering::Relaxed) {
            r.ready = false;
            r.status = "stopping";
            r.message = "the server is stopping: finishing the requests in flight".into();
        }
        r
    }

    fn set_status(&self, status: &'static str, message: String) {
        let mut r = lock(&self.readiness);
        r.ready = status == "ready";
        r.status = status;
        r.message = message;
        if r.ready {
            r.findings.clear();
            r.doctor_ready = None;
        }
    }

    fn set_findings(&self, report: diagnose::Report) {
        let mut r = lock(&self.readiness);
        if !r.ready {
            r.findings = report.findings;
            r.doctor_ready = Some(report.ready);
        }
    }

    /// Queue jobs, all or none: `Err` when the queue is full or the server is stopping.
    pub(crate) fn submit(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        if self.metrics.ready.load(Ordering::Relaxed) == 0 {
            return Err(SubmitError::NotReady);
        }
        let queue = lock(&self.queue);
        let Some(queue) = queue.as_ref() else {
            return Err(SubmitError::Stopping);
        };
        let mut queued: Vec<Arc<AtomicBool>> = Vec::new();
        for job in jobs {
            let cancel = job.cancel.clone();
            if let Err(e) = queue.submit(job) {
                // All or none: the pages already queued are skipped by the engine.
                for c in queued {
                    c.store(true, Ordering::Relaxed);
                }
                return Err(match e {
                    QueueError::Full => {
                        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        SubmitError::Full
                    }
                    QueueError::Closed => SubmitError::Stopping,
                });
            }
            queued.push(cancel);
        }
        Ok(())
    }
}

/// Why jobs were not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubmitError {
    NotReady,
    Stopping,
    Full,
}

/// Run the server until SIGTERM or Ctrl-C.
pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    if !config.bind.ip().is_loopback() && config.keys.is_empty() {
        bail!(
            "refusing to listen on {} without API keys: anyone who can reach it could use the model. \
             Put one key per line in a file (e.g. `openssl rand -hex 32 > keys.txt; chmod 600 keys.txt`) \
             and pass --api-key-file keys.txt (or set DSOCR_API_KEY_FILE); clients send \
             `Authorization: Bearer KEY`",
            config.bind
        );
    }
    let source = ModelSource::parse(&config.model).map_err(|e| anyhow::anyhow!("--model {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("dsocr-serve")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(config.bind))
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let local = listener.local_addr().context("no local address")?;
    let metrics = Arc::new(Metrics::default());
    let (queue, jobs) = Queue::new(config.max_queue, metrics.clone());
    let shared = Arc::new(Shared {
        readiness: Mutex::new(Readiness {
            ready: false,
            status: "resolving",
            model: config.model.clone(),
            message: "looking for the model".into(),
            findings: Vec::new(),
            doctor_ready: None,
        }),
        metrics,
        queue: Mutex::new(Some(queue)),
        keys: config.keys,
        model_id: source.name(),
        max_new_tokens: config.max_new_tokens,
        timeout: config.timeout,
        max_body: config.max_body,
        stopping: AtomicBool::new(false),
    });
    // Printed once, on stdout, so a script (or a test) can read the port.
    println!("listening on http://{local}");
    tracing::info!(
        "listening on http://{local} ({}; queue {}, body limit {} MB, timeout {} s)",
        if shared.keys.is_empty() {
            "no API keys".to_string()
        } else {
            format!("{} API keys", shared.keys.len())
        },
        config.max_queue,
        config.max_body / (1024 * 1024),
        config.timeout.as_secs()
    );

    let stop = CancellationToken::new();
    let (engine_done_tx, engine_done) = std::sync::mpsc::channel::<()>();
    {
        let shared = shared.clone();
        let handle = rt.handle().clone();
        let stop = stop.clone();
        let (device, kind, plan) = (config.device, config.kind, config.plan);
        let (batch, max_new_tokens) = (config.batch, config.max_new_tokens);
        std::thread::Builder::new()
            .name("dsocr-engine".into())
            .spawn(move || {
                if let Some(session) = load(&shared, &source, device, kind, plan, &handle, &stop) {
                    let batch = batch.unwrap_or_else(|| {
                        let choice = session.default_batch(max_new_tokens);
                        tracing::info!("{}", crate::cli::describe_batch(&choice));
                        choice.batch
                    });
                    shared.metrics.ready.store(1, Ordering::Relaxed);
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        engine::run(&session, &jobs, &shared.metrics, batch);
                    }));
                    if run.is_err() {
                        // Not ready any more: the orchestrator routes around it and restarts it.
                        shared.metrics.ready.store(0, Ordering::Relaxed);
                        shared.set_status(
                            "engine_failed",
                            "the engine thread failed (see the log); restart the server".into(),
                        );
                        tracing::error!(
                            "the engine thread failed; the server is not ready any more"
                        );
                    }
                }
                let _ = engine_done_tx.send(());
            })
            .context("cannot start the engine thread")?;
    }

    let app = api::router(shared.clone());
    let grace = config.grace;
    rt.block_on(async {
        tokio::spawn(wait_for_signal(stop.clone(), shared.clone(), grace));
        let server =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let grace_over = async {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result.context("the server failed"),
            () = grace_over => {
                tracing::warn!("grace period over: stopping the requests still running");
                Ok(())
            }
        }
    })?;
    // Close the queue: the engine finishes what it holds and stops. Handlers still running
    // are dropped with the runtime, which cancels their jobs before the next token.
    lock(&shared.queue).take();
    rt.shutdown_timeout(Duration::from_secs(1));
    if shared.metrics.ready.load(Ordering::Relaxed) == 1 {
        let _ = engine_done.recv_timeout(Duration::from_secs(10));
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C: stop accepting and say so.
async fn wait_for_signal(stop: CancellationToken, shared: Arc<Shared>, grace: Duration) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shared.stopping.store(true, Ordering::Relaxed);
    tracing::info!(
        "stopping: no new connections; finishing the requests in flight (up to {} s)",
        grace.as_secs()
    );
    stop.cancel();
}

/// Find and load the model, keeping `/readyz` up to date. `None` when it cannot be loaded or
/// the server stops first.
fn load(
    shared: &Arc<Shared>,
    source: &ModelSource,
    device: Device,
    kind: Kind,
    plan: Plan,
    rt: &tokio::runtime::Handle,
    stop: &CancellationToken,
) -> Option<Session> {
    let dir = match source {
        ModelSource::Folder(dir) => dir.clone(),
        // Not `ModelSource::folder`: the server waits for the snapshot to be complete.
        ModelSource::Repo(repo) => wait_for_snapshot(shared, repo, rt, stop)?,
    };
    shared.set_status(
        "loading",
        format!(
            "loading {} on {} ({}, kernels {})",
            dir.display(),
            device_name(device),
            kind_name(kind),
            plan.describe()
        ),
    );
    tracing::info!("{}", shared.readiness().message);
    let start = Instant::now();
    match Session::load_with(&dir, device, kind, plan) {
        Ok(session) => {
            let took = start.elapsed().as_secs_f64();
            tracing::info!("model loaded in {took:.1} s; ready");
            shared.set_status("ready", format!("model loaded in {took:.1} s"));
            Some(session)
        }
        Err(e) => {
            tracing::error!("cannot load the model: {e}");
            shared.set_status(
                "load_failed",
                format!(
                    "cannot load the model from {}: {e}; fix it and restart the server",
                    dir.display()
                ),
            );
            if let ModelSource::Repo(repo) = source {
                run_doctor(shared, repo, rt);
            }
            None
        }
    }
}

/// Wait until the repo's `main` snapshot is complete in the cache; meanwhile `/readyz` carries
/// the doctor's findings (refreshed every 30 seconds).
fn wait_for_snapshot(
    shared: &Arc<Shared>,
    repo: &str,
    rt: &tokio::runtime::Handle,
    stop: &CancellationToken,
) -> Option<PathBuf> {
    let env = HubEnv::from_process();
    let paths = RepoPaths::new(&env.hub_cache, repo).ok()?;
    let mut doctor_at: Option<Instant> = None;
    let mut said = String::new();
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let message = match paths.resolve_revision("main") {
            Some(commit) => {
                let snapshot = paths.snapshot_dir(&commit);
                let c = completeness(&snapshot);
                if c.is_complete() {
                    return Some(snapshot);
                }
                format!(
                    "{repo} is in the cache but lacks {}: run `dsocr download {repo}` (it resumes); the server loads it once complete",
                    c.missing.join(", ")
                )
            }
            None => format!(
                "{repo} is not in the local Hugging Face cache ({}): run `dsocr download {repo}`; the server loads it once complete. The findings say what stands in the way",
                env.hub_cache.display()
            ),
        };
        if message != said {
            tracing::warn!("not ready: {message}");
            said.clone_from(&message);
        }
        shared.set_status("model_missing", message);
        if doctor_at.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            doctor_at = Some(Instant::now());
            run_doctor(shared, repo, rt);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Run the hub doctor for `repo` in the background; its findings go to `/readyz`.
fn run_doctor(shared: &Arc<Shared>, repo: &str, rt: &tokio::runtime::Handle) {
    let shared = shared.clone();
    let opts = DiagnoseOptions {
        repo: repo.to_string(),
        torch: Some(TorchFacts {
            cuda_available: tch::Cuda::is_available(),
            device_count: tch::Cuda::device_count(),
        }),
        ..DiagnoseOptions::default()
    };
    rt.spawn(async move {
        let env = HubEnv::from_process();
        let report = diagnose::diagnose(&env, &opts).await;
        for f in report
            .findings
            .iter()
            .filter(|f| f.severity == diagnose::Severity::Error)
        {
            tracing::warn!("doctor: {} {} (fix: {})", f.code, f.message, f.fix);
        }
        shared.set_findings(report);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_exactly() {
        let keys = ApiKeys::from_keys(["0123456789abcdef0123", "another-key-of-some-length"]);
        assert!(keys.accepts(b"0123456789abcdef0123"));
        assert!(keys.accepts(b"another-key-of-some-length"));
        assert!(!keys.accepts(b"0123456789abcdef012"));
        assert!(!keys.accepts(b"0123456789abcdef01234"));
        assert!(!keys.accepts(b""));
        assert!(!ApiKeys::default().accepts(b""));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }

    #[test]
    fn key_file_rules() {
        let dir = std::env::temp_dir().join(format!("dsocr-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("keys");
        std::fs::write(&file, "# comment\n\n  0123456789abcdef0123  \n").expect("write");
        let keys = ApiKeys::from_file(&file).expect("keys");
        assert_eq!(keys.len(), 1);
        assert!(keys.accepts(b"0123456789abcdef0123"));
        std::fs::write(&file, "# nothing\n").expect("write");
        let err = ApiKeys::from_file(&file).expect_err("empty").to_string();
        assert!(err.contains("has no keys"), "{err}");
        std::fs::write(&file, "short\n").expect("write");
        let err = ApiKeys::from_file(&file).expect_err("short").to_string();
        assert!(err.contains("line 1") && !err.contains("short"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
