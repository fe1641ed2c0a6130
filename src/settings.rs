//! The config file every front end reads (`config.toml` in the dsocr config folder) and the
//! rules built on it: where the file lives, its `[ocr]` table, and which compute path a run
//! takes. The dashboard's own tables (`[keys]`, `[colors]`) are read by `tui::config`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ocr::OcrError;
use crate::ocr::cpu::Kernels;
use crate::ocr::cpu::features::KERNELS_ENV;

/// Where the config file lives: `$XDG_CONFIG_HOME/dsocr/config.toml` on Linux.
pub fn config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "dsocr").map(|d| d.config_dir().join("config.toml"))
}

/// `[ocr]` in the config file: how a run uses the model when no flag says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OcrSettings {
    /// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `bf16`, `f16` or `f32`; `None`: bf16 (f32 arithmetic over bf16 weights where dsocr's CPU
    /// kernels run).
    pub dtype: Option<String>,
    /// Compute path: `auto`, `libtorch`, `avx512`, `avx2` or `scalar`; `None`: auto (see
    /// [`choose_kernels`] for what takes precedence).
    pub kernels: Option<String>,
    /// Stop a run after this many new tokens.
    pub max_new_tokens: usize,
}

impl Default for OcrSettings {
    /// `auto`, the device's default dtype, 8192 tokens (as `dsocr ocr`).
    fn default() -> Self {
        Self {
            device: "auto".to_string(),
            dtype: None,
            kernels: None,
            max_new_tokens: 8192,
        }
    }
}

impl OcrSettings {
    /// The `[ocr]` table of the file at `path`; the defaults when there is no file, or when it
    /// cannot be read or parsed (the dashboard reports such problems; a command goes on with the
    /// defaults).
    pub fn from_file(path: Option<&Path>) -> Self {
        #[derive(Deserialize)]
        struct OcrTable {
            #[serde(default)]
            ocr: OcrSettings,
        }
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| toml::from_str::<OcrTable>(&text).ok())
            .map(|t| t.ocr)
            .unwrap_or_default()
    }
}

/// The compute path of a run, from the first of these that is given: `flag` (a command's
/// `--kernels`), `env` (the value of `$DSOCR_KERNELS`), `setting` (`[ocr] kernels` in the config
/// file), else auto. A value that names no path is an error that says where it came from.
pub fn choose_kernels(
    flag: Option<Kernels>,
    env: Option<&str>,
    setting: Option<&str>,
) -> Result<Kernels, OcrError> {
    match (flag, env, setting) {
        (Some(k), _, _) => Ok(k),
        (None, Some(v), _) => Kernels::from_env_value(v),
        (None, None, Some(v)) => Kernels::parse(v).map_err(|e| {
            let file =
                config_path().map_or_else(|| "the config file".into(), |p| p.display().to_string());
            OcrError::Invalid(format!("{e} (the [ocr] kernels setting in {file})"))
        }),
        (None, None, None) => Ok(Kernels::Auto),
    }
}

/// `$DSOCR_KERNELS`, if set (for [`choose_kernels`]).
pub fn kernels_env() -> Option<String> {
    std::env::var(KERNELS_ENV).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::cpu::Tier;

    #[test]
    fn flag_then_environment_then_file() {
        let scalar = Kernels::Tier(Tier::Scalar);
        let choose = |flag, env, setting| choose_kernels(flag, env, setting).expect("valid");
        assert_eq!(choose(None, None, None), Kernels::Auto);
        assert_eq!(choose(None, None, Some("scalar")), scalar);
        assert_eq!(
            choose(None, Some("libtorch"), Some("scalar")),
            Kernels::Libtorch
        );
        assert_eq!(choose(Some(scalar), Some("libtorch"), None), scalar);
        let err = choose_kernels(None, Some("sse9"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DSOCR_KERNELS=\"sse9\""), "{err}");
        let err = choose_kernels(None, None, Some("sse9"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[ocr] kernels"), "{err}");
    }

    #[test]
    fn only_the_ocr_table_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[keys]\nquit = [\"q\"]\n[ocr]\nkernels = \"scalar\"\nmax_new_tokens = 64\n",
        )
        .expect("write");
        let ocr = OcrSettings::from_file(Some(&path));
        assert_eq!(ocr.kernels.as_deref(), Some("scalar"));
        assert_eq!(ocr.max_new_tokens, 64);
        std::fs::write(&path, "[ocr\n").expect("write");
        assert_eq!(OcrSettings::from_file(Some(&path)), OcrSettings::default());
        let missing = dir.path().join("none.toml");
        assert_eq!(
            OcrSettings::from_file(Some(&missing)),
            OcrSettings::default()
        );
    }
}
