//! Git LFS pointer files where the weights should be.
//!
//! `git clone https://huggingface.co/…` without git-lfs leaves, in place of every LFS file, a
//! small text file (the spec caps it at 1024 bytes):
//!
//! ```text
//! version https://git-lfs.github.com/spec/v1
//! oid sha256:<64 hex>
//! size <bytes>
//! ```
//!
//! Read as safetensors, such a file gives "bad header". [`read_pointer`] recognises one;
//! [`pointers_in`] lists them in a model folder; [`folder_problem`] is the one-line message
//! with the fix that `dsocr ocr --model`, `doctor`, the dashboard and `serve` all print.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What an LFS pointer says about the file it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfsPointer {
    /// sha256 of the real content.
    pub oid: String,
    /// Size of the real content, in bytes.
    pub size: u64,
    /// Size of the pointer file itself.
    pub pointer_size: u64,
}

/// The largest pointer file the Git LFS spec allows.
pub const MAX_POINTER_SIZE: u64 = 1024;

/// The pointer `path` holds, if it is a Git LFS pointer file.
pub fn read_pointer(path: &Path) -> Option<LfsPointer> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_POINTER_SIZE {
        return None;
    }
    let mut text = String::new();
    fs::File::open(path).ok()?.read_to_string(&mut text).ok()?;
    let mut pointer = parse_pointer(&text)?;
    pointer.pointer_size = meta.len();
    Some(pointer)
}

/// Parses the text of a pointer file.
pub fn parse_pointer(text: &str) -> Option<LfsPointer> {
    let mut lines = text.lines();
    if !lines
        .next()?
        .starts_with("version https://git-lfs.github.com/spec/")
    {
        return None;
    }
    let (mut oid, mut size) = (None, None);
    for line in lines {
        if let Some(o) = line.strip_prefix("oid sha256:") {
            oid = Some(o.trim().to_string());
        } else if let Some(s) = line.strip_prefix("size ") {
            size = s.trim().parse().ok();
        }
    }
    Some(LfsPointer {
        oid: oid?,
        size: size?,
        pointer_size: text.len() as u64,
    })
}

/// Every pointer file in `dir` and its subfolders (`.git` and `.cache` skipped), sorted.
pub fn pointers_in(dir: &Path) -> Vec<(PathBuf, LfsPointer)> {
    let mut out = Vec::new();
    walk(dir, 0, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, LfsPointer)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if depth < 4 && name != ".git" && name != ".cache" {
                walk(&path, depth + 1, out);
            }
        } else if let Some(p) = read_pointer(&path) {
            out.push((path, p));
        }
    }
}

/// The fix for a folder of pointers.
pub fn fix_for(dir: &Path) -> String {
    format!(
        "run `git lfs install && git lfs pull` in {dir}, or fetch the real files with `dsocr download <repo> --local-dir {dir}`",
        dir = dir.display()
    )
}

/// One line naming the pointer files in `dir` (the largest first, with the size it should
/// have) and the fix, or None when there are none.
pub fn folder_problem(dir: &Path) -> Option<String> {
    let mut found = pointers_in(dir);
    found.sort_by(|a, b| b.1.size.cmp(&a.1.size).then_with(|| a.0.cmp(&b.0)));
    let name = |p: &Path| p.strip_prefix(dir).unwrap_or(p).display().to_string();
    let (first, rest) = found.split_first()?;
    let mut others: Vec<String> = rest.iter().take(4).map(|(p, _)| name(p)).collect();
    if rest.len() > 4 {
        others.push(format!("{} more", rest.len() - 4));
    }
    let more = if others.is_empty() {
        String::new()
    } else {
        format!("; so are {}", others.join(", "))
    };
    Some(format!(
        "{} in {} is a Git LFS pointer ({} bytes), not the file itself ({}){more}: the folder was cloned without git-lfs; {}",
        name(&first.0),
        dir.display(),
        first.1.pointer_size,
        crate::units::human_bytes(first.1.size),
        fix_for(dir)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POINTER: &str = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 6672212480\n";

    #[test]
    fn pointers_are_recognised_and_real_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("model.safetensors"), POINTER).unwrap();
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        fs::create_dir(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join(".git/x"), POINTER).unwrap();
        let p = read_pointer(&dir.path().join("model.safetensors")).unwrap();
        assert_eq!(p.size, 6_672_212_480);
        assert_eq!(p.pointer_size, POINTER.len() as u64);
        assert!(read_pointer(&dir.path().join("config.json")).is_none());
        assert_eq!(pointers_in(dir.path()).len(), 1);
        let msg = folder_problem(dir.path()).unwrap();
        assert!(msg.contains("model.safetensors"), "{msg}");
        assert!(msg.contains("Git LFS pointer"), "{msg}");
        assert!(msg.contains("6.7 GB"), "{msg}");
        assert!(msg.contains("git lfs pull"), "{msg}");
        fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        assert!(folder_problem(dir.path()).is_none());
    }

    #[test]
    fn incomplete_pointers_are_not_pointers() {
        assert!(parse_pointer("version https://git-lfs.github.com/spec/v1\nsize 3\n").is_none());
        assert!(parse_pointer("hello").is_none());
    }
}
