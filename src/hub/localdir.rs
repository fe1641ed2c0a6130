//! Folders written by Python's `snapshot_download(local_dir=…)` / `hf download --local-dir`.
//!
//! Python keeps, beside the files, `<dir>/.cache/huggingface/download/<path>.metadata` (three
//! lines: commit, etag, timestamp) and, while a file downloads,
//! `<dir>/.cache/huggingface/download/<subdir>/<b64(sha1(<name>.metadata))>.<etag>.incomplete`.
//! [`read`] recognises such a folder; [`LocalDir::partial`] finds the partial file of a blob so
//! `dsocr download --local-dir` can resume it, and [`LocalDir::complete`] tells which files the
//! metadata vouches for.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use sha1::{Digest, Sha1};

/// One file Python recorded as downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Repo path.
    pub path: String,
    /// The commit it was downloaded at.
    pub commit: String,
    /// Its blob name (sha256 for LFS files, git sha1 otherwise).
    pub etag: String,
}

/// A Python `local_dir` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDir {
    /// The folder.
    pub dir: PathBuf,
    /// Files with metadata (whether or not they are still there).
    pub files: Vec<LocalFile>,
}

/// `<dir>/.cache/huggingface/download`.
pub fn download_dir(dir: &Path) -> PathBuf {
    dir.join(".cache/huggingface/download")
}

/// The folder's metadata, or None when `dir` was not written by a local-dir download.
pub fn read(dir: &Path) -> Option<LocalDir> {
    let root = download_dir(dir);
    if !root.is_dir() {
        return None;
    }
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort_by(|a: &LocalFile, b| a.path.cmp(&b.path));
    Some(LocalDir {
        dir: dir.to_path_buf(),
        files,
    })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<LocalFile>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
            continue;
        }
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        let Some(repo_path) = rel.strip_suffix(".metadata") else {
            continue;
        };
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(commit), Some(etag)) = (lines.next(), lines.next()) else {
            continue;
        };
        out.push(LocalFile {
            path: repo_path.to_string(),
            commit: commit.trim().to_string(),
            etag: etag.trim().to_string(),
        });
    }
}

/// Python's `incomplete_path`: `<download>/<subdir>/<urlsafe-b64(sha1(<name>.metadata))>.<etag>.incomplete`.
pub fn incomplete_path(dir: &Path, repo_path: &str, etag: &str) -> PathBuf {
    let metadata = download_dir(dir).join(format!("{repo_path}.metadata"));
    let name = metadata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hash = base64::engine::general_purpose::URL_SAFE.encode(Sha1::digest(name.as_bytes()));
    metadata
        .parent()
        .unwrap_or(dir)
        .join(format!("{hash}.{etag}.incomplete"))
}

impl LocalDir {
    /// The metadata of `path`, if Python recorded it.
    pub fn file(&self, path: &str) -> Option<&LocalFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// True when the metadata records `path` with blob `etag` and the file there has `size`
    /// bytes (the content is still to be verified against the etag).
    pub fn complete(&self, path: &str, etag: &str, size: u64) -> bool {
        self.file(path).is_some_and(|f| f.etag == etag)
            && fs::metadata(self.dir.join(path)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Python's partial download of blob `etag` for `path`, with its size, if there is one.
    pub fn partial(&self, path: &str, etag: &str) -> Option<(PathBuf, u64)> {
        let p = incomplete_path(&self.dir, path, etag);
        let len = fs::metadata(&p).ok().filter(|m| m.is_file())?.len();
        Some((p, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_partials_in_pythons_layout() {
        let dir = tempfile::tempdir().unwrap();
        let d = download_dir(dir.path());
        fs::create_dir_all(d.join("assets")).unwrap();
        fs::write(
            d.join("config.json.metadata"),
            "c0ffee\nabc123\n1700000000.5\n",
        )
        .unwrap();
        fs::write(d.join("assets/fig.png.metadata"), "c0ffee\nfeed\n1.0\n").unwrap();
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        let local = read(dir.path()).unwrap();
        assert_eq!(local.files.len(), 2);
        assert_eq!(local.files[0].path, "assets/fig.png");
        assert!(local.complete("config.json", "abc123", 2));
        assert!(!local.complete("config.json", "other", 2));
        assert!(!local.complete("assets/fig.png", "feed", 1));
        // Both expected names printed by huggingface_hub's `get_local_download_paths(…)
        // .incomplete_path("e7")`.
        let p = incomplete_path(dir.path(), "model.safetensors", "e7");
        assert_eq!(
            p,
            d.join("xGOKKLRSlIhH692hSVvI1-gpoa8=.e7.incomplete"),
            "huggingface_hub's name"
        );
        assert_eq!(
            incomplete_path(Path::new("/tmp/x"), "assets/fig.png", "e7"),
            PathBuf::from(
                "/tmp/x/.cache/huggingface/download/assets/OxpLX4m2MT--Lh1NM6xoBCm3uVU=.e7.incomplete"
            )
        );
        fs::write(&p, b"12345").unwrap();
        assert_eq!(local.partial("model.safetensors", "e7"), Some((p, 5)));
        assert!(read(&dir.path().join("nothing")).is_none());
    }
}
