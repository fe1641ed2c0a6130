//! Small filesystem helpers shared by the hub modules: atomic writes, free space.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::HubError;

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename). With
/// `private`, the file is mode 0600 and a missing folder is created 0700.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), HubError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    create_dir(dir, private)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        HubError::io(path, e)
    })
}

/// Creates `dir` and its parents; with `private`, the folders created are mode 0700.
pub fn create_dir(dir: &Path, private: bool) -> Result<(), HubError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    }
    builder.create(dir).map_err(|e| HubError::io(dir, e))
}

/// Free bytes for an unprivileged user on the filesystem holding `path` (or its nearest
/// existing ancestor).
#[cfg(unix)]
pub fn available_space(path: &Path) -> Result<u64, HubError> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).map_err(|e| {
        HubError::io(
            existing,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(HubError::io(existing, std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 on some): widen explicitly.
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Free bytes (not known on this platform: unlimited).
#[cfg(not(unix))]
pub fn available_space(_: &Path) -> Result<u64, HubError> {
    Ok(u64::MAX)
}
