//! Resumable, verified downloads into the Python cache layout.
//!
//! [`download`] fetches a repo (optionally filtered by include/exclude globs) at a revision:
//! 1. model info gives the commit and every file's size and blob name; when the token is
//!    rejected (401 invalid credentials) and the repo turns out to be public, it goes on
//!    anonymously and says so ([`DownloadEvent::AnonymousFallback`]);
//! 2. free disk is checked against what is still missing before anything is written;
//! 3. each file is locked (`.locks/models--o--n/<etag>.lock`; a second process waits and says
//!    so), then fetched into `blobs/<etag>.incomplete`, resuming with `Range: bytes=<len>-`
//!    (a 200 answer restarts cleanly), retrying 5xx/429/resets with the client's policy
//!    ([`super::client::Retries`]: backoff or `Retry-After`, counted afresh once bytes
//!    arrive), following the 302 to the CDN **without** the token;
//! 4. the bytes are verified (sha256 for LFS blobs, git blob sha1 otherwise, and the size)
//!    before the blob is renamed into place: a file that fails never reaches `snapshots/`;
//! 5. `snapshots/<commit>/<path>` becomes a relative symlink to `../../blobs/<etag>` and
//!    `refs/<revision>` is written (atomically, only when the revision is not the commit).
//!
//! Progress and state changes arrive as [`DownloadEvent`]s on a channel; a
//! [`CancellationToken`] stops it (Ctrl-C), leaving the `.incomplete` file to resume from.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, Url};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::HubError;
use super::cache::{RepoPaths, write_ref};
use super::client::{HubClient, ModelInfo, RequestContext, Retries};
use super::fsutil;

/// The model dsocr runs.
pub const DEFAULT_REPO: &str = "deepseek-ai/DeepSeek-OCR";
/// The other known copy of it, suggested when the default fails.
pub const ALTERNATE_REPO: &str = "unsloth/DeepSeek-OCR";

/// What to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// Only paths matching one of these globs (all when empty).
    pub include: Vec<String>,
    /// Skip paths matching one of these globs.
    pub exclude: Vec<String>,
    /// Also place the files in this folder (with `.cache/huggingface/download` metadata).
    pub local_dir: Option<PathBuf>,
}

impl DownloadRequest {
    /// The whole repo at `main`.
    pub fn new(repo: &str) -> Self {
        DownloadRequest {
            repo: repo.into(),
            revision: "main".into(),
            include: Vec::new(),
            exclude: Vec::new(),
            local_dir: None,
        }
    }
}

/// One file of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    /// Repo path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Already complete in the cache.
    pub cached: bool,
}

/// Per-file and total progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// The file being fetched.
    pub path: String,
    /// Bytes of it on disk.
    pub file_bytes: u64,
    /// Its size.
    pub file_size: u64,
    /// Bytes of the whole plan on disk (cached files excluded).
    pub total_bytes: u64,
    /// Bytes the whole plan fetches.
    pub total_size: u64,
    /// Recent speed, bytes per second.
    pub bytes_per_sec: f64,
    /// Seconds left at that speed.
    pub eta_secs: Option<f64>,
}

/// What happens during [`download`], in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// The token was rejected; the repo is public, so it goes on without one.
    AnonymousFallback {
        /// Why.
        reason: String,
    },
    /// The hub's name for the repo differs from the one asked for (repo ids match in any
    /// case on the hub, but not in the cache): the canonical one is used.
    CanonicalId {
        /// The id as asked for.
        requested: String,
        /// The hub's id.
        canonical: String,
    },
    /// What will be fetched.
    Plan {
        /// The repo's cache folder used (an existing one of any case is reused).
        folder: PathBuf,
        /// The commit.
        commit: String,
        /// Every selected file.
        files: Vec<PlannedFile>,
        /// Bytes still to fetch.
        to_fetch: u64,
    },
    /// Another process holds the file's lock; waiting for it.
    WaitingForLock {
        /// Repo path.
        path: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// A file starts (or resumes).
    FileStart {
        /// Repo path.
        path: String,
        /// Size.
        size: u64,
        /// Bytes already on disk from an earlier attempt.
        resumed_from: u64,
    },
    /// Bytes arrived.
    Progress(Progress),
    /// The download link expired (the CDN refused it); a fresh one came from the hub and the
    /// file continues at the same byte.
    LinkRefreshed {
        /// Repo path.
        path: String,
        /// Where it continues.
        resume_at: u64,
        /// The CDN's status for the old link.
        status: u16,
    },
    /// The server ignored the Range request; the file restarts from zero.
    Restarted {
        /// Repo path.
        path: String,
    },
    /// A transient failure; waiting before the next attempt.
    Retrying {
        /// Repo path.
        path: String,
        /// Failures in a row so far.
        attempt: u32,
        /// Wait in milliseconds.
        wait_ms: u64,
        /// What failed.
        reason: String,
    },
    /// A file is complete and verified.
    FileDone {
        /// Repo path.
        path: String,
        /// Blob name.
        etag: String,
    },
    /// Everything is in place.
    Done {
        /// The snapshot folder.
        snapshot: PathBuf,
        /// Bytes fetched over the network in this run.
        downloaded: u64,
    },
}

/// The result of a finished download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadOutcome {
    /// The hub's id of the repo (its canonical case).
    pub repo: String,
    /// The commit.
    pub commit: String,
    /// `snapshots/<commit>`.
    pub snapshot: PathBuf,
    /// Repo paths in the snapshot.
    pub files: Vec<String>,
    /// Bytes fetched over the network in this run.
    pub downloaded: u64,
    /// The token was rejected and the repo was fetched anonymously.
    pub anonymous_fallback: bool,
}

/// The git blob id of `content`: sha1 of `"blob <len>\0" + content` (the etag of non-LFS files).
pub fn git_blob_sha1(content: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// Incremental hashing of a blob, chosen by its name: 64 hex = sha256, 40 hex = git sha1.
pub enum BlobHasher {
    /// LFS content.
    Sha256(Sha256),
    /// A git file.
    GitSha1(Sha1),
    /// Unknown naming: only the size can be checked.
    SizeOnly,
}

impl BlobHasher {
    /// A hasher for a blob named `etag` of `size` bytes.
    pub fn for_etag(etag: &str, size: u64) -> Self {
        let is_hex = etag.chars().all(|c| c.is_ascii_hexdigit());
        match etag.len() {
            64 if is_hex => BlobHasher::Sha256(Sha256::new()),
            40 if is_hex => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                BlobHasher::GitSha1(h)
            }
            _ => BlobHasher::SizeOnly,
        }
    }
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            BlobHasher::Sha256(h) => h.update(bytes),
            BlobHasher::GitSha1(h) => h.update(bytes),
            BlobHasher::SizeOnly => {}
        }
    }
    /// The hex digest (None for [`BlobHasher::SizeOnly`]).
    pub fn finish(self) -> Option<String> {
        match self {
            BlobHasher::Sha256(h) => Some(hex::encode(h.finalize())),
            BlobHasher::GitSha1(h) => Some(hex::encode(h.finalize())),
            BlobHasher::SizeOnly => None,
        }
    }
}

/// Hashes the first bytes of `file` (a partial download being resumed) into `hasher`.
pub fn hash_prefix(path: &Path, hasher: &mut BlobHasher) -> Result<u64, HubError> {
    let mut file = fs::File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn glob_set(patterns: &[String], what: &'static str) -> Result<Option<GlobSet>, HubError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        // Python's fnmatch: `*` also matches `/`; a pattern ending in `/` means a folder.
        let p = if p.ends_with('/') {
            format!("{p}*")
        } else {
            p.clone()
        };
        let glob = Glob::new(&p).map_err(|e| HubError::InvalidInput {
            what,
            value: p.clone(),
            reason: e.to_string(),
        })?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| HubError::InvalidInput {
            what,
            value: patterns.join(" "),
            reason: e.to_string(),
        })
}

/// The repo files selected by `include`/`exclude`.
pub fn select_files<'a>(
    info: &'a ModelInfo,
    include: &[String],
    exclude: &[String],
) -> Result<Vec<&'a super::client::Sibling>, HubError> {
    let include = glob_set(include, "--include pattern")?;
    let exclude = glob_set(exclude, "--exclude pattern")?;
    Ok(info
        .siblings
        .iter()
        .filter(|s| include.as_ref().is_none_or(|g| g.is_match(&s.rfilename)))
        .filter(|s| exclude.as_ref().is_none_or(|g| !g.is_match(&s.rfilename)))
        .collect())
}

/// The blob name model info announces for a file: LFS sha256, else the git blob id.
fn expected_etag(s: &super::client::Sibling) -> Option<String> {
    s.lfs
        .as_ref()
        .map(|l| l.sha256.clone())
        .or_else(|| s.blob_id.clone())
}

struct Job {
    path: String,
    size: u64,
    etag: Option<String>,
    cached: bool,
}

/// Downloads `req` into the cache of `client.env()`. See the module docs.
pub async fn download(
    client: &HubClient,
    req: &DownloadRequest,
    events: &UnboundedSender<DownloadEvent>,
    cancel: &CancellationToken,
) -> Result<DownloadOutcome, HubError> {
    if client.env().offline {
        let paths = RepoPaths::new(&client.env().hub_cache, &req.repo)?;
        return from_cache_offline(&paths, req);
    }
    let (client, info, anonymous_fallback) = info_with_fallback(client, req, events).await?;
    let repo = if info.id.is_empty() {
        req.repo.clone()
    } else {
        info.id.clone()
    };
    if repo != req.repo {
        let _ = events.send(DownloadEvent::CanonicalId {
            requested: req.repo.clone(),
            canonical: repo.clone(),
        });
    }
    // The canonical folder, or an existing one of another case (Python's cache may hold the
    // repo under the case someone typed).
    let paths = RepoPaths::new(&client.env().hub_cache, &repo)?;
    let commit = info.sha.clone();
    let mut jobs: Vec<Job> = select_files(&info, &req.include, &req.exclude)?
        .into_iter()
        .map(|s| {
            let size = s.size.unwrap_or(0);
            let etag = expected_etag(s);
            let cached = paths.snapshot_file_ok(&commit, &s.rfilename, size);
            Job {
                path: s.rfilename.clone(),
                size,
                etag,
                cached,
            }
        })
        .collect();
    if let Some(local) = req.local_dir.as_deref().and_then(super::localdir::read) {
        adopt_local_dir(&paths, &commit, &local, &mut jobs).await?;
    }
    let to_fetch = check_disk(&paths, &jobs)?;
    let _ = events.send(DownloadEvent::Plan {
        folder: paths.repo_dir.clone(),
        commit: commit.clone(),
        files: jobs
            .iter()
            .map(|j| PlannedFile {
                path: j.path.clone(),
                size: j.size,
                cached: j.cached,
            })
            .collect(),
        to_fetch,
    });
    let mut meter = Meter::new(to_fetch);
    let mut ctx = FetchContext {
        client: &client,
        repo: &repo,
        req,
        paths: &paths,
        events,
        cancel,
        meter: &mut meter,
    };
    for job in jobs.iter().filter(|j| !j.cached) {
        ctx.fetch(job, &commit).await?;
    }
    if req.revision != commit {
        write_ref(&paths, &req.revision, &commit)?;
    }
    write_cachedir_tag(&client.env().hub_cache);
    let files: Vec<String> = jobs.iter().map(|j| j.path.clone()).collect();
    if let Some(dir) = &req.local_dir {
        place_in_local_dir(&paths, &commit, &files, dir)?;
    }
    let snapshot = paths.snapshot_dir(&commit);
    let _ = events.send(DownloadEvent::Done {
        snapshot: snapshot.clone(),
        downloaded: meter.received,
    });
    Ok(DownloadOutcome {
        repo,
        commit,
        snapshot,
        files,
        downloaded: meter.received,
        anonymous_fallback,
    })
}

/// Model info; on a rejected token, retries anonymously and goes on only if that works.
async fn info_with_fallback(
    client: &HubClient,
    req: &DownloadRequest,
    events: &UnboundedSender<DownloadEvent>,
) -> Result<(HubClient, ModelInfo, bool), HubError> {
    match client.model_info(&req.repo, Some(&req.revision)).await {
        Ok(info) => Ok((client.clone(), info, false)),
        Err(HubError::InvalidToken { origin }) => {
            let anon = client.anonymous();
            let public = anon.model_info(&req.repo, Some(&req.revision)).await;
            let Some(info) = public.ok().filter(|i| i.gated.is_none() && !i.private) else {
                return Err(HubError::InvalidToken { origin });
            };
            let _ = events.send(DownloadEvent::AnonymousFallback {
                reason: format!(
                    "the token from {origin} is invalid; {} is public, so downloading without a token",
                    req.repo
                ),
            });
            Ok((anon, info, true))
        }
        Err(e) => Err(e),
    }
}

/// Takes over what Python's `snapshot_download(local_dir=…)` left in the `--local-dir`: a file
/// its metadata vouches for and whose content hashes to the expected blob becomes the cache's
/// blob (hard-linked when possible); a partial download (`….<etag>.incomplete`) becomes
/// `blobs/<etag>.incomplete`, so the transfer resumes from its bytes.
async fn adopt_local_dir(
    paths: &RepoPaths,
    commit: &str,
    local: &super::localdir::LocalDir,
    jobs: &mut [Job],
) -> Result<(), HubError> {
    for job in jobs.iter_mut().filter(|j| !j.cached) {
        let Some(etag) = job.etag.clone() else {
            continue;
        };
        if paths.blob(&etag).exists() {
            continue;
        }
        if local.complete(&job.path, &etag, job.size) {
            let file = local.dir.join(&job.path);
            let (size, tag) = (job.size, etag.clone());
            let hashed = file.clone();
            let digest = tokio::task::spawn_blocking(move || {
                let mut hasher = BlobHasher::for_etag(&tag, size);
                hash_prefix(&hashed, &mut hasher).map(|_| hasher.finish())
            })
            .await
            .map_err(|e| HubError::io(&file, std::io::Error::other(e)))??;
            if digest.as_deref() == Some(etag.as_str()) {
                fsutil::create_dir(&paths.blobs_dir(), false)?;
                let blob = paths.blob(&etag);
                if fs::hard_link(&file, &blob).is_err() {
                    fs::copy(&file, &blob).map_err(|e| HubError::io(&blob, e))?;
                }
                paths.link_snapshot(commit, &job.path, &etag)?;
                job.cached = true;
                continue;
            }
        }
        if let Some((partial, len)) = local.partial(&job.path, &etag) {
            let ours = paths.incomplete(&etag);
            let have = fs::metadata(&ours).map_or(0, |m| m.len());
            if len <= job.size && len > have {
                fsutil::create_dir(&paths.blobs_dir(), false)?;
                if fs::rename(&partial, &ours).is_err() {
                    fs::copy(&partial, &ours).map_err(|e| HubError::io(&ours, e))?;
                    let _ = fs::remove_file(&partial);
                }
            }
        }
    }
    Ok(())
}

/// Bytes still to fetch; fails when the disk cannot hold them.
fn check_disk(paths: &RepoPaths, jobs: &[Job]) -> Result<u64, HubError> {
    let needed: u64 = jobs
        .iter()
        .filter(|j| !j.cached)
        .map(|j| {
            let partial = j
                .etag
                .as_ref()
                .and_then(|e| fs::metadata(paths.incomplete(e)).ok())
                .map_or(0, |m| m.len());
            j.size.saturating_sub(partial)
        })
        .sum();
    let available = fsutil::available_space(&paths.repo_dir)?;
    if needed > available {
        return Err(HubError::DiskFull {
            dir: paths.repo_dir.clone(),
            needed,
            available,
        });
    }
    Ok(needed)
}

fn from_cache_offline(
    paths: &RepoPaths,
    req: &DownloadRequest,
) -> Result<DownloadOutcome, HubError> {
    let commit = paths
        .resolve_revision(&req.revision)
        .ok_or_else(|| HubError::Offline {
            url: format!("{}@{} (not in the cache)", req.repo, req.revision),
        })?;
    let snapshot = paths.snapshot_dir(&commit);
    let files = super::cache::snapshot_files(&snapshot);
    Ok(DownloadOutcome {
        repo: paths.repo_id(),
        commit,
        snapshot,
        files,
        downloaded: 0,
        anonymous_fallback: false,
    })
}

fn write_cachedir_tag(cache: &Path) {
    let tag = cache.join("CACHEDIR.TAG");
    if !tag.exists() {
        let text = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by huggingface_hub.\n# For information about cache directory tags, see: https://bford.info/cachedir/\n";
        let _ = fsutil::write_atomic(&tag, text.as_bytes(), false);
    }
}

/// Copies (hard-links when possible) the snapshot's files into `dir`, with Python's
/// `.cache/huggingface/download/<path>.metadata` (commit, etag, timestamp).
fn place_in_local_dir(
    paths: &RepoPaths,
    commit: &str,
    files: &[String],
    dir: &Path,
) -> Result<(), HubError> {
    let meta_dir = dir.join(".cache/huggingface/download");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for file in files {
        let source = paths.snapshot_dir(commit).join(file);
        let blob = fs::canonicalize(&source).map_err(|e| HubError::io(&source, e))?;
        let etag = blob
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = dir.join(file);
        if let Some(parent) = target.parent() {
            fsutil::create_dir(parent, false)?;
        }
        let _ = fs::remove_file(&target);
        if fs::hard_link(&blob, &target).is_err() {
            fs::copy(&blob, &target).map_err(|e| HubError::io(&target, e))?;
        }
        let meta = format!("{commit}\n{etag}\n{now}\n");
        fsutil::write_atomic(
            &meta_dir.join(format!("{file}.metadata")),
            meta.as_bytes(),
            false,
        )?;
    }
    Ok(())
}

/// Speed and ETA over the whole plan.
struct Meter {
    total: u64,
    received: u64,
    speed: f64,
    window_start: Instant,
    window_bytes: u64,
    last_emit: Option<Instant>,
}

impl Meter {
    fn new(total: u64) -> Self {
        Meter {
            total,
            received: 0,
            speed: 0.0,
            window_start: Instant::now(),
            window_bytes: 0,
            last_emit: None,
        }
    }
    fn add(&mut self, n: u64) {
        self.received += n;
        self.window_bytes += n;
        let elapsed = self.window_start.elapsed().as_secs_f64();
        if elapsed >= 0.25 {
            let now = self.window_bytes as f64 / elapsed;
            self.speed = if self.speed == 0.0 {
                now
            } else {
                0.7 * self.speed + 0.3 * now
            };
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
    }
    /// True at most ten times a second (and always for `force`).
    fn should_emit(&mut self, force: bool) -> bool {
        let due = self
            .last_emit
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || force {
            self.last_emit = Some(Instant::now());
        }
        due || force
    }
    fn progress(&self, path: &str, file_bytes: u64, file_size: u64) -> Progress {
        let left = self.total.saturating_sub(self.received);
        Progress {
            path: path.to_string(),
            file_bytes,
            file_size,
            total_bytes: self.received,
            total_size: self.total,
            bytes_per_sec: self.speed,
            eta_secs: (self.speed > 0.0).then(|| left as f64 / self.speed),
        }
    }
}

struct FetchContext<'a> {
    client: &'a HubClient,
    /// The hub's id of the repo.
    repo: &'a str,
    req: &'a DownloadRequest,
    paths: &'a RepoPaths,
    events: &'a UnboundedSender<DownloadEvent>,
    cancel: &'a CancellationToken,
    meter: &'a mut Meter,
}

/// How one GET attempt ended.
enum Attempt {
    /// All bytes are on disk.
    Complete,
    /// The CDN refused the link (an expired signature answers 403 or 400): ask the hub for a
    /// fresh one and go on at the same byte.
    LinkRefused { status: u16 },
    /// Transient failure after `progressed` new bytes.
    Failed {
        reason: String,
        progressed: bool,
        retry_after: Option<u64>,
    },
}

impl FetchContext<'_> {
    async fn fetch(&mut self, job: &Job, commit: &str) -> Result<(), HubError> {
        let meta = self
            .client
            .file_metadata(self.repo, commit, &job.path)
            .await?;
        if let Some(expected) = &job.etag
            && expected != &meta.etag
        {
            return Err(HubError::Protocol {
                url: super::error::short_url(meta.location.as_str()),
                detail: format!(
                    "blob name {} differs from model info's {expected}",
                    meta.etag
                ),
            });
        }
        let blob = self.paths.blob(&meta.etag);
        fsutil::create_dir(&self.paths.blobs_dir(), false)?;
        if !blob.exists() {
            let lock = self.lock(&job.path, &meta.etag).await?;
            if !blob.exists() {
                self.transfer(job, commit, &meta.etag, meta.size, &meta.location)
                    .await?;
            }
            drop(lock);
        }
        self.paths.link_snapshot(commit, &job.path, &meta.etag)?;
        let _ = self.events.send(DownloadEvent::FileDone {
            path: job.path.clone(),
            etag: meta.etag,
        });
        Ok(())
    }

    /// Takes `.locks/<repo folder>/<etag>.lock`, waiting (and saying so) while another process
    /// holds it.
    async fn lock(&self, path: &str, etag: &str) -> Result<fs::File, HubError> {
        let lock_path = self.paths.lock_file(etag);
        if let Some(dir) = lock_path.parent() {
            fsutil::create_dir(dir, false)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| HubError::io(&lock_path, e))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(HubError::io(&lock_path, e)),
            }
            if !told {
                told = true;
                let _ = self.events.send(DownloadEvent::WaitingForLock {
                    path: path.to_string(),
                    lock: lock_path.clone(),
                });
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Err(HubError::Cancelled),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn transfer(
        &mut self,
        job: &Job,
        commit: &str,
        etag: &str,
        size: u64,
        url: &Url,
    ) -> Result<(), HubError> {
        let mut part = Part::open(self.paths, job, etag, size, url).await?;
        let _ = self.events.send(DownloadEvent::FileStart {
            path: job.path.clone(),
            size,
            resumed_from: part.have,
        });
        let mut retries = Retries::new(self.client.retry_policy());
        let mut refreshes = 0u32;
        while part.have < size || (size == 0 && !part.file.exists()) {
            let (reason, progressed, retry_after) = match self.attempt(&mut part).await? {
                Attempt::Complete => break,
                Attempt::LinkRefused { status } => {
                    refreshes += 1;
                    self.refresh_link(&mut part, commit, status, refreshes)
                        .await?;
                    continue;
                }
                Attempt::Failed {
                    reason,
                    progressed,
                    retry_after,
                } => (reason, progressed, retry_after),
            };
            if progressed {
                refreshes = 0;
                retries.progressed();
            }
            let Some(wait) = retries.failed(retry_after) else {
                return Err(HubError::TooManyRetries {
                    path: job.path.clone(),
                    attempts: retries.failures(),
                    reason,
                });
            };
            let _ = self.events.send(DownloadEvent::Retrying {
                path: job.path.clone(),
                attempt: retries.failures(),
                wait_ms: wait.as_millis() as u64,
                reason,
            });
            tokio::select! {
                () = self.cancel.cancelled() => return Err(HubError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
        }
        part.finish(&self.paths.blob(etag))
    }

    /// The CDN refused `part.url` with `status`: asks the hub again for where the file is (a
    /// fresh signed link) and points `part` at it, keeping the bytes already on disk. When the
    /// hub refuses, that error (token, gate, permission) is the one reported; when a fresh link
    /// is refused too, [`HubError::CdnRefused`].
    async fn refresh_link(
        &mut self,
        part: &mut Part,
        commit: &str,
        status: u16,
        refreshes: u32,
    ) -> Result<(), HubError> {
        if refreshes > 2 {
            return Err(HubError::CdnRefused {
                url: super::error::short_url(part.url.as_str()),
                status,
            });
        }
        let meta = tokio::select! {
            () = self.cancel.cancelled() => return Err(HubError::Cancelled),
            m = self.client.file_metadata(self.repo, commit, &part.path) => m?,
        };
        if meta.etag != part.etag {
            return Err(HubError::Protocol {
                url: super::error::short_url(meta.location.as_str()),
                detail: format!(
                    "{} changed on the hub during the download (blob {} became {})",
                    part.path, part.etag, meta.etag
                ),
            });
        }
        tracing::info!(
            "{}: the CDN refused the download link (HTTP {status}, expired); resuming at byte {} with a fresh link to {}",
            part.path,
            part.have,
            super::error::short_url(meta.location.as_str())
        );
        part.url = meta.location;
        let _ = self.events.send(DownloadEvent::LinkRefreshed {
            path: part.path.clone(),
            resume_at: part.have,
            status,
        });
        Ok(())
    }

    /// One GET from `part.have` on; appends what arrives.
    async fn attempt(&mut self, part: &mut Part) -> Result<Attempt, HubError> {
        let mut headers = HeaderMap::new();
        if part.have > 0 {
            let range = format!("bytes={}-", part.have);
            if let Ok(value) = HeaderValue::from_str(&range) {
                headers.insert(RANGE, value);
            }
        }
        let sent = tokio::select! {
            () = self.cancel.cancelled() => return Err(HubError::Cancelled),
            r = self.client.send(Method::GET, &part.url, headers) => r,
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_transient() => return Ok(failed(&e, false)),
            Err(e) => return Err(e),
        };
        let status = resp.status().as_u16();
        match status {
            206 if content_range_start(&resp) == Some(part.have) => {}
            200 | 206 => {
                if part.have > 0 {
                    let _ = self.events.send(DownloadEvent::Restarted {
                        path: part.path.clone(),
                    });
                }
                self.meter.received = self.meter.received.saturating_sub(part.have);
                part.reset()?;
                if status == 206 {
                    return Ok(failed_reason("unexpected Content-Range".into(), false));
                }
            }
            416 if part.have == part.size => return Ok(Attempt::Complete),
            // A signed CDN link that expired (S3/CloudFront answer 403, some 400 or 410).
            400 | 401 | 403 | 410
                if !self.client.on_hub(&part.url) || is_signed_link(&part.url) =>
            {
                return Ok(Attempt::LinkRefused { status });
            }
            _ => {
                let ctx = RequestContext {
                    repo: self.repo.to_string(),
                    revision: Some(self.req.revision.clone()),
                    path: Some(part.path.clone()),
                };
                let err = self.client.classify(&resp, &ctx);
                return if err.is_transient() {
                    Ok(failed(&err, false))
                } else {
                    Err(err)
                };
            }
        }
        self.stream(resp, part).await
    }

    async fn stream(
        &mut self,
        resp: reqwest::Response,
        part: &mut Part,
    ) -> Result<Attempt, HubError> {
        let io = |e| HubError::io(&part.file, e);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part.file)
            .await
            .map_err(io)?;
        let start = part.have;
        let mut body = resp.bytes_stream();
        let outcome = loop {
            let next = tokio::select! {
                () = self.cancel.cancelled() => None,
                n = body.next() => Some(n),
            };
            let Some(next) = next else {
                file.flush()
                    .await
                    .map_err(|e| HubError::io(&part.file, e))?;
                return Err(HubError::Cancelled);
            };
            match next {
                None => break Attempt::Complete,
                Some(Err(e)) => {
                    break failed_reason(
                        super::client::describe_transport_error(&e),
                        part.have > start,
                    );
                }
                Some(Ok(chunk)) => {
                    if part.have + chunk.len() as u64 > part.size {
                        break Attempt::Complete; // too long: verification reports it
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| HubError::io(&part.file, e))?;
                    part.hasher.update(&chunk);
                    part.have += chunk.len() as u64;
                    self.meter.add(chunk.len() as u64);
                    if self.meter.should_emit(part.have == part.size) {
                        let p = self.meter.progress(&part.path, part.have, part.size);
                        let _ = self.events.send(DownloadEvent::Progress(p));
                    }
                }
            }
        };
        file.flush()
            .await
            .map_err(|e| HubError::io(&part.file, e))?;
        file.sync_all()
            .await
            .map_err(|e| HubError::io(&part.file, e))?;
        Ok(match outcome {
            Attempt::Complete if part.have < part.size => failed_reason(
                format!(
                    "the answer ended after {} of {} bytes",
                    part.have, part.size
                ),
                part.have > start,
            ),
            other => other,
        })
    }
}

/// A blob being downloaded: `blobs/<etag>.incomplete` and the hash of what it holds.
struct Part {
    path: String,
    etag: String,
    size: u64,
    url: Url,
    file: PathBuf,
    have: u64,
    hasher: BlobHasher,
}

impl Part {
    /// Opens (or starts) the partial file, hashing what an earlier run left.
    async fn open(
        paths: &RepoPaths,
        job: &Job,
        etag: &str,
        size: u64,
        url: &Url,
    ) -> Result<Self, HubError> {
        let file = paths.incomplete(etag);
        let mut part = Part {
            path: job.path.clone(),
            etag: etag.to_string(),
            size,
            url: url.clone(),
            have: fs::metadata(&file).map_or(0, |m| m.len()),
            hasher: BlobHasher::for_etag(etag, size),
            file,
        };
        if part.have > size {
            part.reset()?;
        }
        if part.have > 0 {
            let path = part.file.clone();
            let mut hasher = BlobHasher::for_etag(etag, size);
            let (hasher, n) = tokio::task::spawn_blocking(move || {
                hash_prefix(&path, &mut hasher).map(|n| (hasher, n))
            })
            .await
            .map_err(|e| HubError::io(&part.file, std::io::Error::other(e)))??;
            part.hasher = hasher;
            part.have = n;
        }
        Ok(part)
    }

    /// Empties the partial file (the server restarted from zero).
    fn reset(&mut self) -> Result<(), HubError> {
        truncate(&self.file)?;
        self.have = 0;
        self.hasher = BlobHasher::for_etag(&self.etag, self.size);
        Ok(())
    }

    /// Verifies size and hash, then moves the file to `blob`; a failure deletes it.
    fn finish(self, blob: &Path) -> Result<(), HubError> {
        let got = fs::metadata(&self.file).map_or(0, |m| m.len());
        let fail = |expected: String, actual: String| {
            let _ = fs::remove_file(&self.file);
            Err(HubError::Integrity {
                path: self.path.clone(),
                expected,
                actual,
            })
        };
        if got != self.size {
            return fail(format!("{} bytes", self.size), format!("{got} bytes"));
        }
        if let Some(digest) = self.hasher.finish()
            && digest != self.etag
        {
            return fail(self.etag.clone(), digest);
        }
        fs::rename(&self.file, blob).map_err(|e| HubError::io(blob, e))
    }
}

fn failed(e: &HubError, progressed: bool) -> Attempt {
    Attempt::Failed {
        reason: e.to_string(),
        progressed,
        retry_after: e.retry_after(),
    }
}

fn failed_reason(reason: String, progressed: bool) -> Attempt {
    Attempt::Failed {
        reason,
        progressed,
        retry_after: None,
    }
}

/// True for a signed, expiring link (CloudFront `Expires`/`Signature`/`Key-Pair-Id`/`Policy`,
/// S3 `X-Amz-Signature`/`X-Amz-Expires`), wherever it is served from.
fn is_signed_link(url: &Url) -> bool {
    url.query_pairs().any(|(k, _)| {
        let k = k.to_ascii_lowercase();
        matches!(
            k.as_str(),
            "expires"
                | "signature"
                | "key-pair-id"
                | "policy"
                | "x-amz-signature"
                | "x-amz-expires"
        )
    })
}

fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

fn truncate(path: &Path) -> Result<(), HubError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map(|_| ())
        .map_err(|e| HubError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_sha1(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        let mut h = BlobHasher::for_etag("ce013625030ba8dba906f756967f9e9ca394464a", 6);
        h.update(b"hel");
        h.update(b"lo\n");
        assert_eq!(
            h.finish().as_deref(),
            Some("ce013625030ba8dba906f756967f9e9ca394464a")
        );
        let mut h = BlobHasher::for_etag(&"0".repeat(64), 3);
        h.update(b"abc");
        assert_eq!(
            h.finish().as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert!(BlobHasher::for_etag("xyz", 1).finish().is_none());
    }

    #[test]
    fn signed_links_are_recognised() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(is_signed_link(&u("http://h/cdn/x?Expires=1&Signature=ab")));
        assert!(is_signed_link(&u("https://s3/x?X-Amz-Signature=ab")));
        assert!(!is_signed_link(&u(
            "http://h/api/resolve-cache/models/o/r/c/config.json?etag=%22ab%22"
        )));
    }

    #[test]
    fn globs_follow_fnmatch() {
        let info = ModelInfo {
            id: "o/r".into(),
            sha: "c".into(),
            private: false,
            gated: None,
            disabled: false,
            siblings: ["config.json", "a/b.png", "model.safetensors"]
                .iter()
                .map(|p| super::super::client::Sibling {
                    rfilename: p.to_string(),
                    size: None,
                    blob_id: None,
                    lfs: None,
                })
                .collect(),
        };
        let names = |inc: &[&str], exc: &[&str]| -> Vec<String> {
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            select_files(&info, &s(inc), &s(exc))
                .unwrap()
                .iter()
                .map(|s| s.rfilename.clone())
                .collect()
        };
        assert_eq!(names(&["*.json"], &[]), vec!["config.json"]);
        assert_eq!(names(&["*.png"], &[]), vec!["a/b.png"]);
        assert_eq!(
            names(&[], &["a/"]),
            vec!["config.json", "model.safetensors"]
        );
        assert!(select_files(&info, &["[".to_string()], &[]).is_err());
    }
}
