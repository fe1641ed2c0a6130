//! The local cache, in the Python client's layout (`models--OWNER--NAME/{blobs,refs,snapshots}`,
//! ARCHITECTURE.md, "How a download travels"): scan, verify, remove, and
//! whether a DeepSeek-OCR snapshot holds every file it needs.
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/{blobs/<etag>, refs/<rev>, snapshots/<commit>/<path>}
//! $HF_HUB_CACHE/.locks/models--org--name/<etag>.lock
//! ```
//! Sizes are counted as Python's `scan_cache_dir` counts them: the distinct blobs that
//! snapshots reference; `blobs/*.incomplete` files are partial downloads, listed apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::HubError;
use super::client::validate_repo_id;
use super::download::BlobHasher;
use super::fsutil;

/// The paths of one model repo in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPaths {
    /// The hub cache.
    pub cache: PathBuf,
    /// `models--org--name`.
    pub folder: String,
    /// `<cache>/models--org--name`.
    pub repo_dir: PathBuf,
}

impl RepoPaths {
    /// The paths of model repo `repo` (checked with [`validate_repo_id`]). The hub matches
    /// repo ids in any case but the cache's folder names are case-sensitive, so when the exact
    /// folder does not exist an existing folder of another case is used (the same repo):
    /// `acme/some-model` finds `models--acme--Some-Model`.
    pub fn new(cache: &Path, repo: &str) -> Result<Self, HubError> {
        validate_repo_id(repo)?;
        let exact = format!("models--{}", repo.replace('/', "--"));
        let folder = if cache.join(&exact).is_dir() {
            exact
        } else {
            other_case_folder(cache, &exact).unwrap_or(exact)
        };
        Ok(RepoPaths {
            cache: cache.to_path_buf(),
            repo_dir: cache.join(&folder),
            folder,
        })
    }

    /// The repo id this folder holds, in the folder's case.
    pub fn repo_id(&self) -> String {
        self.folder
            .strip_prefix("models--")
            .unwrap_or(&self.folder)
            .replace("--", "/")
    }

    /// True when the folder holds at least one snapshot.
    pub fn exists(&self) -> bool {
        self.repo_dir.join("snapshots").is_dir()
    }
    /// `blobs/`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.repo_dir.join("blobs")
    }
    /// `blobs/<etag>`.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.blobs_dir().join(etag)
    }
    /// `blobs/<etag>.incomplete`: the partial download resumed from.
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.blobs_dir().join(format!("{etag}.incomplete"))
    }
    /// `.locks/models--org--name/<etag>.lock`.
    pub fn lock_file(&self, etag: &str) -> PathBuf {
        self.cache
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"))
    }
    /// `snapshots/<commit>`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.repo_dir.join("snapshots").join(commit)
    }
    /// `refs/<revision>`.
    pub fn ref_file(&self, revision: &str) -> PathBuf {
        self.repo_dir.join("refs").join(revision)
    }

    /// Bytes in partial downloads (`blobs/*.incomplete`).
    pub fn partial_bytes(&self) -> u64 {
        partials(&self.blobs_dir()).iter().map(|p| p.bytes).sum()
    }

    /// The commit a revision names: a 40-hex commit with a snapshot, else `refs/<rev>`.
    pub fn resolve_revision(&self, revision: &str) -> Option<String> {
        let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
        if is_commit && self.snapshot_dir(revision).is_dir() {
            return Some(revision.to_string());
        }
        let commit = fs::read_to_string(self.ref_file(revision)).ok()?;
        let commit = commit.trim().to_string();
        self.snapshot_dir(&commit).is_dir().then_some(commit)
    }

    /// True when `snapshots/<commit>/<path>` resolves to a file of `size` bytes.
    pub fn snapshot_file_ok(&self, commit: &str, path: &str, size: u64) -> bool {
        fs::metadata(self.snapshot_dir(commit).join(path))
            .is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Makes `snapshots/<commit>/<path>` a relative symlink to `blobs/<etag>` (replacing what
    /// was there).
    pub fn link_snapshot(&self, commit: &str, path: &str, etag: &str) -> Result<(), HubError> {
        let link = self.snapshot_dir(commit).join(path);
        let dir = link.parent().unwrap_or(&self.repo_dir).to_path_buf();
        fsutil::create_dir(&dir, false)?;
        let depth = Path::new(path).components().count() + 1;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        let tmp = dir.join(format!(".{etag}.{}.link", std::process::id()));
        let _ = fs::remove_file(&tmp);
        make_link(&target, &tmp, &self.blob(etag))?;
        fs::rename(&tmp, &link).map_err(|e| HubError::io(&link, e))
    }
}

/// An existing folder of `cache` whose name equals `folder` ignoring ASCII case (the first in
/// name order when several do).
fn other_case_folder(cache: &Path, folder: &str) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.eq_ignore_ascii_case(folder))
        .collect();
    names.sort();
    names.into_iter().next()
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path, _blob: &Path) -> Result<(), HubError> {
    std::os::unix::fs::symlink(target, link).map_err(|e| HubError::io(link, e))
}

#[cfg(not(unix))]
fn make_link(_target: &Path, link: &Path, blob: &Path) -> Result<(), HubError> {
    fs::copy(blob, link)
        .map(|_| ())
        .map_err(|e| HubError::io(link, e))
}

/// Writes `refs/<revision>` = `commit` atomically, only when it changes.
pub fn write_ref(paths: &RepoPaths, revision: &str, commit: &str) -> Result<(), HubError> {
    let file = paths.ref_file(revision);
    if fs::read_to_string(&file).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    fsutil::write_atomic(&file, commit.as_bytes(), false)
}

/// Every file path under a snapshot folder, relative, sorted.
pub fn snapshot_files(snapshot: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(snapshot, snapshot, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            walk(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// One file of a cached revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedFile {
    /// Repo path.
    pub path: String,
    /// The blob it resolves to (None for a broken link).
    pub blob: Option<PathBuf>,
    /// The blob's size.
    pub size: u64,
}

/// One `snapshots/<commit>` folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedRevision {
    /// The commit.
    pub commit: String,
    /// Refs pointing at it (`main`, `refs/pr/1`, …).
    pub refs: Vec<String>,
    /// Distinct blob bytes.
    pub size_on_disk: u64,
    /// Its files.
    pub files: Vec<CachedFile>,
}

/// A partial download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partial {
    /// The `.incomplete` file.
    pub path: PathBuf,
    /// Bytes so far.
    pub bytes: u64,
}

/// One repo of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedRepo {
    /// `owner/name`.
    pub repo_id: String,
    /// `model`, `dataset` or `space`.
    pub repo_type: String,
    /// Its folder.
    pub path: PathBuf,
    /// Distinct referenced blob bytes (Python's `size_on_disk`).
    pub size_on_disk: u64,
    /// Its revisions.
    pub revisions: Vec<CachedRevision>,
    /// Partial downloads.
    pub partials: Vec<Partial>,
    /// Snapshot files whose blob is missing.
    pub broken_links: Vec<String>,
}

/// The whole cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheScan {
    /// The hub cache folder.
    pub cache_dir: PathBuf,
    /// Repos, sorted by id.
    pub repos: Vec<CachedRepo>,
    /// Problems Python would report as `CorruptedCacheException`.
    pub warnings: Vec<String>,
}

impl CacheScan {
    /// The repo with this id (models); another case of the id when the exact one is absent.
    pub fn repo(&self, repo_id: &str) -> Option<&CachedRepo> {
        let models = || self.repos.iter().filter(|r| r.repo_type == "model");
        models()
            .find(|r| r.repo_id == repo_id)
            .or_else(|| models().find(|r| r.repo_id.eq_ignore_ascii_case(repo_id)))
    }
}

/// Scans the cache like `scan_cache_dir()`.
pub fn scan(cache: &Path) -> Result<CacheScan, HubError> {
    let mut scan = CacheScan {
        cache_dir: cache.to_path_buf(),
        repos: Vec::new(),
        warnings: Vec::new(),
    };
    let entries = match fs::read_dir(cache) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(HubError::io(cache, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == ".locks" || name == "CACHEDIR.TAG" {
            continue;
        }
        match scan_repo(&entry.path(), &name) {
            Ok(repo) => {
                if !repo.broken_links.is_empty() {
                    scan.warnings.push(format!(
                        "{}: blob missing (broken symlink) for {}",
                        repo.repo_id,
                        repo.broken_links.join(", ")
                    ));
                }
                scan.repos.push(repo);
            }
            Err(problem) => scan
                .warnings
                .push(format!("{}: {problem}", entry.path().display())),
        }
    }
    scan.repos.sort_by(|a, b| a.repo_id.cmp(&b.repo_id));
    Ok(scan)
}

fn scan_repo(dir: &Path, name: &str) -> Result<CachedRepo, String> {
    if !dir.is_dir() {
        return Err("not a folder".into());
    }
    let (kind, id) = name.split_once("--").ok_or("name has no `--`")?;
    let repo_type = kind
        .strip_suffix('s')
        .filter(|t| ["model", "dataset", "space"].contains(t))
        .ok_or("unknown repo type")?;
    let snapshots = dir.join("snapshots");
    if !snapshots.is_dir() {
        return Err("no snapshots folder".into());
    }
    let refs = read_refs(&dir.join("refs"))?;
    let mut revisions = Vec::new();
    let mut broken_links = Vec::new();
    let mut all_blobs: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for entry in fs::read_dir(&snapshots)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let path = entry.path();
        if !path.is_dir() {
            return Err(format!(
                "{} is a file directly in snapshots",
                path.display()
            ));
        }
        let commit = entry.file_name().to_string_lossy().into_owned();
        let rev = scan_revision(&path, &commit, &refs);
        for f in &rev.files {
            match &f.blob {
                Some(b) => {
                    all_blobs.insert(b.clone(), f.size);
                }
                None => broken_links.push(format!("{commit}/{}", f.path)),
            }
        }
        revisions.push(rev);
    }
    let known: BTreeSet<&String> = revisions.iter().map(|r| &r.commit).collect();
    if let Some((r, c)) = refs.iter().find(|(_, c)| !known.contains(c)) {
        return Err(format!("reference {r} refers to missing commit {c}"));
    }
    revisions.sort_by(|a, b| a.commit.cmp(&b.commit));
    Ok(CachedRepo {
        repo_id: id.replace("--", "/"),
        repo_type: repo_type.to_string(),
        path: dir.to_path_buf(),
        size_on_disk: all_blobs.values().sum(),
        revisions,
        partials: partials(&dir.join("blobs")),
        broken_links,
    })
}

fn read_refs(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    if dir.is_file() {
        return Err("refs is a file".into());
    }
    let mut names = Vec::new();
    walk(dir, dir, &mut names);
    Ok(names
        .into_iter()
        .filter_map(|n| {
            let commit = fs::read_to_string(dir.join(&n)).ok()?;
            Some((n, commit.trim().to_string()))
        })
        .collect())
}

fn scan_revision(path: &Path, commit: &str, refs: &BTreeMap<String, String>) -> CachedRevision {
    let files: Vec<CachedFile> = snapshot_files(path)
        .into_iter()
        .map(|rel| {
            let full = path.join(&rel);
            let blob = fs::canonicalize(&full).ok().filter(|b| b.is_file());
            let size = blob
                .as_ref()
                .and_then(|b| fs::metadata(b).ok())
                .map_or(0, |m| m.len());
            CachedFile {
                path: rel,
                blob,
                size,
            }
        })
        .collect();
    let distinct: BTreeMap<&PathBuf, u64> = files
        .iter()
        .filter_map(|f| f.blob.as_ref().map(|b| (b, f.size)))
        .collect();
    CachedRevision {
        commit: commit.to_string(),
        refs: refs
            .iter()
            .filter(|(_, c)| c.as_str() == commit)
            .map(|(r, _)| r.clone())
            .collect(),
        size_on_disk: distinct.values().sum(),
        files,
    }
}

fn partials(blobs: &Path) -> Vec<Partial> {
    let Ok(entries) = fs::read_dir(blobs) else {
        return Vec::new();
    };
    let mut out: Vec<Partial> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .map(|e| Partial {
            bytes: e.metadata().map_or(0, |m| m.len()),
            path: e.path(),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// What verification found for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileCheck {
    /// The content hashes to its blob name.
    Ok,
    /// It does not.
    Mismatch {
        /// The hash of what is on disk.
        actual: String,
    },
    /// The link is broken.
    Missing,
    /// The blob name is not a hash (only its presence was checked).
    Unverifiable,
}

/// One verified file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedFile {
    /// Commit and repo path.
    pub path: String,
    /// Outcome.
    #[serde(flatten)]
    pub check: FileCheck,
}

/// Re-hashes every file of `repo` (one revision, or all) against its blob name (sha256 for
/// LFS blobs, git sha1 otherwise). `progress(path, done, size)` is called as bytes are read.
pub fn verify(
    cache: &Path,
    repo: &str,
    revision: Option<&str>,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<VerifiedFile>, HubError> {
    let paths = RepoPaths::new(cache, repo)?;
    let scan = scan(cache)?;
    let not_cached = || HubError::NotCached {
        what: format!(
            "{repo}{}",
            revision.map(|r| format!("@{r}")).unwrap_or_default()
        ),
        cache: cache.to_path_buf(),
    };
    let cached = scan
        .repos
        .iter()
        .find(|r| r.path == paths.repo_dir)
        .ok_or_else(not_cached)?;
    let commit = revision
        .map(|r| paths.resolve_revision(r).ok_or_else(not_cached))
        .transpose()?;
    let mut out = Vec::new();
    for rev in cached
        .revisions
        .iter()
        .filter(|r| commit.as_ref().is_none_or(|c| c == &r.commit))
    {
        for file in &rev.files {
            let label = format!("{}/{}", rev.commit, file.path);
            let check = match &file.blob {
                None => FileCheck::Missing,
                Some(blob) => check_blob(blob, file.size, &mut |done| {
                    progress(&label, done, file.size)
                })?,
            };
            out.push(VerifiedFile { path: label, check });
        }
    }
    Ok(out)
}

fn check_blob(
    blob: &Path,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<FileCheck, HubError> {
    let name = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut hasher = BlobHasher::for_etag(&name, size);
    if matches!(hasher, BlobHasher::SizeOnly) {
        return Ok(FileCheck::Unverifiable);
    }
    let mut file = fs::File::open(blob).map_err(|e| HubError::io(blob, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| HubError::io(blob, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    let actual = hasher.finish().unwrap_or_default();
    Ok(if actual == name {
        FileCheck::Ok
    } else {
        FileCheck::Mismatch { actual }
    })
}

/// Removes a repo from the cache (all of it, or one revision by commit or ref), deleting blobs
/// no remaining snapshot uses. Returns the bytes freed.
pub fn remove(cache: &Path, repo: &str, revision: Option<&str>) -> Result<u64, HubError> {
    let paths = RepoPaths::new(cache, repo)?;
    let scan = scan(cache)?;
    let cached = scan
        .repos
        .iter()
        .find(|r| r.path == paths.repo_dir)
        .ok_or_else(|| HubError::NotCached {
            what: repo.to_string(),
            cache: cache.to_path_buf(),
        })?;
    let Some(revision) = revision else {
        let partial: u64 = cached.partials.iter().map(|p| p.bytes).sum();
        remove_dir(&paths.repo_dir)?;
        let _ = fs::remove_dir_all(cache.join(".locks").join(&paths.folder));
        return Ok(cached.size_on_disk + partial);
    };
    let commit = paths
        .resolve_revision(revision)
        .ok_or_else(|| HubError::NotCached {
            what: format!("{repo}@{revision}"),
            cache: cache.to_path_buf(),
        })?;
    let keep: BTreeSet<&PathBuf> = cached
        .revisions
        .iter()
        .filter(|r| r.commit != commit)
        .flat_map(|r| r.files.iter().filter_map(|f| f.blob.as_ref()))
        .collect();
    let mut freed = 0;
    let target = cached.revisions.iter().find(|r| r.commit == commit);
    for file in target.map(|r| r.files.as_slice()).unwrap_or_default() {
        if let Some(blob) = file.blob.as_ref().filter(|b| !keep.contains(b))
            && fs::remove_file(blob).is_ok()
        {
            freed += file.size;
        }
    }
    for r in target.map(|r| r.refs.as_slice()).unwrap_or_default() {
        let _ = fs::remove_file(paths.ref_file(r));
    }
    remove_dir(&paths.snapshot_dir(&commit))?;
    Ok(freed)
}

/// A revision no ref points to (replaced by a newer `main`, say), as `hf cache prune` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetachedRevision {
    /// `owner/name`.
    pub repo_id: String,
    /// The commit.
    pub commit: String,
    /// Bytes its removal frees: its blobs that no other revision of the repo uses.
    pub freed: u64,
}

/// Removes every detached revision of every cached repo (its snapshot folder and the blobs no
/// other revision uses), like `hf cache prune`; with `dry_run` only reports what it would do.
pub fn prune(cache: &Path, dry_run: bool) -> Result<Vec<DetachedRevision>, HubError> {
    let scan = scan(cache)?;
    let mut out = Vec::new();
    for repo in &scan.repos {
        let (detached, kept): (Vec<_>, Vec<_>) =
            repo.revisions.iter().partition(|r| r.refs.is_empty());
        if detached.is_empty() {
            continue;
        }
        let mut keep: BTreeSet<&PathBuf> = kept
            .iter()
            .flat_map(|r| r.files.iter().filter_map(|f| f.blob.as_ref()))
            .collect();
        for rev in detached {
            let mut freed = 0;
            for file in &rev.files {
                let Some(blob) = file.blob.as_ref() else {
                    continue;
                };
                if keep.insert(blob) {
                    freed += file.size;
                    if !dry_run {
                        fs::remove_file(blob).map_err(|e| HubError::io(blob, e))?;
                    }
                }
            }
            if !dry_run {
                remove_dir(&repo.path.join("snapshots").join(&rev.commit))?;
            }
            out.push(DetachedRevision {
                repo_id: repo.repo_id.clone(),
                commit: rev.commit.clone(),
                freed,
            });
        }
    }
    Ok(out)
}

fn remove_dir(dir: &Path) -> Result<(), HubError> {
    fs::remove_dir_all(dir).map_err(|e| HubError::io(dir, e))
}

/// Files a DeepSeek-OCR snapshot needs besides its weights.
pub const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json", "tokenizer_config.json"];

/// What a snapshot lacks to run DeepSeek-OCR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Completeness {
    /// Every file it needs: [`REQUIRED_FILES`], the index and each shard it names (or
    /// `model.safetensors` without an index).
    pub needed: Vec<String>,
    /// Needed files that are absent or broken links.
    pub missing: Vec<String>,
}

impl Completeness {
    /// True when nothing is missing.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Checks a snapshot folder against what DeepSeek-OCR loads.
pub fn completeness(snapshot: &Path) -> Completeness {
    let mut needed: Vec<String> = REQUIRED_FILES.iter().map(|s| s.to_string()).collect();
    let index = snapshot.join("model.safetensors.index.json");
    let shards = fs::read_to_string(&index)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| {
            v.get("weight_map")?.as_object().map(|m| {
                m.values()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect::<BTreeSet<_>>()
            })
        });
    match shards {
        Some(shards) => {
            needed.push("model.safetensors.index.json".into());
            needed.extend(shards);
        }
        None if index.exists() || fs::symlink_metadata(&index).is_ok() => {
            needed.push("model.safetensors.index.json".into());
        }
        None => needed.push("model.safetensors".into()),
    }
    let missing = needed
        .iter()
        .filter(|f| !snapshot.join(f).is_file())
        .cloned()
        .collect();
    Completeness { needed, missing }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_and_scan_counts_distinct_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RepoPaths::new(dir.path(), "o/r").unwrap();
        fs::create_dir_all(paths.blobs_dir()).unwrap();
        fs::write(paths.blob("aa"), b"12345").unwrap();
        fs::write(paths.incomplete("bb"), b"12").unwrap();
        paths.link_snapshot("c1", "x.json", "aa").unwrap();
        paths.link_snapshot("c1", "sub/y.json", "aa").unwrap();
        paths.link_snapshot("c1", "gone.bin", "zz").unwrap();
        write_ref(&paths, "main", "c1").unwrap();
        let link = fs::read_link(paths.snapshot_dir("c1").join("sub/y.json")).unwrap();
        assert_eq!(link, PathBuf::from("../../../blobs/aa"));
        let s = scan(dir.path()).unwrap();
        let repo = s.repo("o/r").unwrap();
        assert_eq!(repo.size_on_disk, 5);
        assert_eq!(repo.revisions[0].refs, vec!["main".to_string()]);
        assert_eq!(repo.partials[0].bytes, 2);
        assert_eq!(repo.broken_links, vec!["c1/gone.bin".to_string()]);
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(paths.resolve_revision("main").as_deref(), Some("c1"));
        assert_eq!(remove(dir.path(), "o/r", Some("main")).unwrap(), 5);
        assert!(!paths.blob("aa").exists());
    }

    #[test]
    fn completeness_follows_the_index() {
        let dir = tempfile::tempdir().unwrap();
        for f in REQUIRED_FILES {
            fs::write(dir.path().join(f), b"{}").unwrap();
        }
        assert_eq!(
            completeness(dir.path()).missing,
            vec!["model.safetensors".to_string()]
        );
        fs::write(
            dir.path().join("model.safetensors.index.json"),
            br#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"}}"#,
        )
        .unwrap();
        fs::write(dir.path().join("s1.safetensors"), b"x").unwrap();
        let c = completeness(dir.path());
        assert_eq!(c.missing, vec!["s2.safetensors".to_string()]);
        assert_eq!(c.needed.len(), 6);
    }
}
