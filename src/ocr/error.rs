//! Errors of the OCR layer. Each variant says what failed and, where there is one, what to do.

use std::path::PathBuf;

pub type Result<T, E = OcrError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; check the folder exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("weights file {path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Image(#[from] super::preprocess::ImageError),
    #[error(transparent)]
    Prompt(#[from] super::prompt::PromptError),
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}
