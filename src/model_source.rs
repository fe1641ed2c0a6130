//! Which model folder a front end means: a local folder, or a repo id whose `main` snapshot is
//! in the local Hugging Face cache. `dsocr ocr`, `dsocr bench`, `dsocr serve` and the dashboard
//! all take their model through [`ModelSource`], so a `--model` value (or the dashboard's
//! choice) means the same folder everywhere.
//!
//! It reads the hub's cache layout ([`crate::hub::cache::RepoPaths`]) and nothing of `ocr`: the
//! folder it gives is what `ocr::session::Session::load` takes.

use std::path::{Path, PathBuf};

use crate::hub::cache::RepoPaths;
use crate::hub::client::validate_repo_id;

/// Where the OCR model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A repo in the hub cache (`owner/name`, any case).
    Repo(String),
    /// A local model folder (`config.json`, `tokenizer.json`, `*.safetensors`).
    Folder(PathBuf),
}

/// Why a model value names no usable folder. Each front end adds its own fix (a flag, a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The path exists but is a file.
    #[error(
        "{} is a file; give the model folder (config.json, tokenizer.json, *.safetensors) or a repo id",
        .0.display()
    )]
    IsAFile(PathBuf),
    /// Not a folder, and not an `owner/name` repo id either.
    #[error(
        "{model} is neither a model folder nor a repo id (`owner/name` with letters, digits, `-`, `_` or `.`)"
    )]
    NotARepoId { model: String },
    /// A folder chosen as a folder that is not there (any more).
    #[error("the model folder {} does not exist", .0.display())]
    NoFolder(PathBuf),
    /// A repo id with no `main` snapshot in the local cache.
    #[error("{repo} is not in the local Hugging Face cache ({})", .cache.display())]
    NotCached { repo: String, cache: PathBuf },
}

impl ModelSource {
    /// A `--model` value: an existing folder is a folder; anything else must be a repo id (an
    /// existing file is refused). Whether the repo is cached is [`Self::folder`]'s question.
    pub fn parse(model: &str) -> Result<Self, SourceError> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        if path.exists() {
            return Err(SourceError::IsAFile(path.to_path_buf()));
        }
        validate_repo_id(model).map_err(|_| SourceError::NotARepoId {
            model: model.to_string(),
        })?;
        Ok(Self::Repo(model.to_string()))
    }

    /// The model folder: the folder itself, or the repo's `main` snapshot in `hub_cache`
    /// (a cache folder of another case counts: the hub's ids ignore case).
    pub fn folder(&self, hub_cache: &Path) -> Result<PathBuf, SourceError> {
        match self {
            Self::Folder(dir) if dir.is_dir() => Ok(dir.clone()),
            Self::Folder(dir) => Err(SourceError::NoFolder(dir.clone())),
            Self::Repo(repo) => {
                // Only an invalid repo id makes `RepoPaths::new` fail.
                let paths =
                    RepoPaths::new(hub_cache, repo).map_err(|_| SourceError::NotARepoId {
                        model: repo.clone(),
                    })?;
                let commit =
                    paths
                        .resolve_revision("main")
                        .ok_or_else(|| SourceError::NotCached {
                            repo: repo.clone(),
                            cache: hub_cache.to_path_buf(),
                        })?;
                Ok(paths.snapshot_dir(&commit))
            }
        }
    }

    /// The repo id, or `None` for a folder.
    pub fn repo(&self) -> Option<&str> {
        match self {
            Self::Repo(r) => Some(r),
            Self::Folder(_) => None,
        }
    }

    /// One-line label: the repo id, or `folder PATH`.
    pub fn label(&self) -> String {
        match self {
            Self::Repo(r) => r.clone(),
            Self::Folder(p) => format!("folder {}", p.display()),
        }
    }

    /// A short name: the repo id, or the folder's own name (what `serve` lists as the model id).
    pub fn name(&self) -> String {
        match self {
            Self::Repo(r) => r.clone(),
            Self::Folder(p) => std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.clone())
                .file_name()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder holding a hub cache with `owner/Model` at commit `c0ffee`.
    fn cache(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("dsocr-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let repo = root.join("models--owner--Model");
        std::fs::create_dir_all(repo.join("snapshots/c0ffee")).expect("snapshot");
        std::fs::create_dir_all(repo.join("refs")).expect("refs");
        std::fs::write(repo.join("refs/main"), "c0ffee\n").expect("ref");
        root
    }

    #[test]
    fn folders_files_and_repo_ids() {
        let root = cache("parse");
        let dir = root.join("models--owner--Model");
        assert_eq!(
            ModelSource::parse(dir.to_str().expect("utf-8")),
            Ok(ModelSource::Folder(dir.clone()))
        );
        let file = dir.join("refs/main");
        assert_eq!(
            ModelSource::parse(file.to_str().expect("utf-8")),
            Err(SourceError::IsAFile(file.clone()))
        );
        assert_eq!(
            ModelSource::parse("owner/Model"),
            Ok(ModelSource::Repo("owner/Model".into()))
        );
        let err = ModelSource::parse("/no/such/model/folder").unwrap_err();
        assert!(matches!(err, SourceError::NotARepoId { .. }), "{err}");
        assert!(err.to_string().contains("neither a model folder"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn repos_resolve_to_their_main_snapshot() {
        let root = cache("folder");
        let snapshot = root.join("models--owner--Model/snapshots/c0ffee");
        let repo = |r: &str| ModelSource::Repo(r.into()).folder(&root);
        assert_eq!(repo("owner/Model"), Ok(snapshot.clone()));
        // The hub ignores case; so does the cache lookup.
        assert_eq!(repo("owner/model"), Ok(snapshot.clone()));
        let err = repo("nobody/no-such-model").unwrap_err();
        assert!(matches!(err, SourceError::NotCached { .. }), "{err}");
        assert!(err.to_string().contains("Hugging Face cache"), "{err}");
        assert!(matches!(
            repo("not a repo id").unwrap_err(),
            SourceError::NotARepoId { .. }
        ));

        let folder = ModelSource::Folder(snapshot.clone());
        assert_eq!(folder.folder(&root), Ok(snapshot.clone()));
        let missing = ModelSource::Folder(root.join("gone"));
        let err = missing.folder(&root).unwrap_err();
        assert_eq!(err, SourceError::NoFolder(root.join("gone")));
        assert!(err.to_string().contains("does not exist"), "{err}");

        assert_eq!(folder.name(), "c0ffee");
        assert_eq!(folder.repo(), None);
        assert_eq!(folder.label(), format!("folder {}", snapshot.display()));
        let repo = ModelSource::Repo("owner/Model".into());
        assert_eq!(
            (repo.name(), repo.label()),
            ("owner/Model".into(), "owner/Model".into())
        );
        assert_eq!(repo.repo(), Some("owner/Model"));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
