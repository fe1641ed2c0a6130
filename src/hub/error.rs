//! The hub's errors: each variant says what failed and what to do. Tokens never appear here
//! (only [`TokenSource`]s do).

use std::path::{Path, PathBuf};

use super::token::TokenSource;

/// Everything the hub layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// `HF_HUB_OFFLINE` forbids the request.
    #[error(
        "cannot reach {url}: offline mode is enabled (HF_HUB_OFFLINE); unset it to use the network"
    )]
    Offline {
        /// What would have been requested.
        url: String,
    },
    /// No connection could be made (DNS, refused, TLS, timeout).
    #[error("cannot reach {url}: {reason}; check your network, proxy and HF_ENDPOINT")]
    Unreachable {
        /// What was requested.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// Something answered that is not a Hugging Face hub (proxy, captive portal, wrong URL).
    #[error(
        "{url} answered without the hub's headers ({detail}): a proxy, captive portal or wrong HF_ENDPOINT is in the way"
    )]
    NotAHub {
        /// What was requested.
        url: String,
        /// What was missing.
        detail: String,
    },
    /// 401 "Invalid credentials in Authorization header".
    #[error("the token from {origin} was rejected by the hub (invalid, revoked or expired); run `dsocr login` with a new token{}", if origin.is_env() { " or unset the variable" } else { "" })]
    InvalidToken {
        /// Where the rejected token came from.
        origin: TokenSource,
    },
    /// The call needs a token and none is configured.
    #[error("no token found: run `dsocr login` (or set HF_TOKEN)")]
    TokenRequired,
    /// 404 RepoNotFound, or an anonymous 401.
    #[error("repository {repo} not found{}", if *token_sent { ": check the name, or that your token can read it" } else { " or private: check the name, or log in with `dsocr login`" })]
    RepoNotFound {
        /// The repo id.
        repo: String,
        /// Whether a token was sent (a typo and a private repo look alike without one).
        token_sent: bool,
    },
    /// 401 GatedRepo: the repo is gated and the request was anonymous.
    #[error("{repo} is gated: log in with `dsocr login` using an account that accepted its terms")]
    GatedLoginRequired {
        /// The repo id.
        repo: String,
    },
    /// 403 GatedRepo: logged in but access not granted.
    #[error(
        "{repo} is gated and your account has no access yet: accept the terms at {url} (or wait for approval)"
    )]
    GatedNotGranted {
        /// The repo id.
        repo: String,
        /// The repo page to accept the terms on.
        url: String,
    },
    /// 403 without a gate: a fine-grained token lacks a scope.
    #[error("access to {url} is forbidden ({message}): give your token read access to this repo")]
    Forbidden {
        /// What was requested.
        url: String,
        /// The hub's message.
        message: String,
    },
    /// 404 RevisionNotFound.
    #[error("revision {revision} does not exist in {repo}: check the branch, tag or commit")]
    RevisionNotFound {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
    /// 404 EntryNotFound.
    #[error("{path} does not exist in {repo} at {revision}")]
    EntryNotFound {
        /// The repo id.
        repo: String,
        /// The revision.
        revision: String,
        /// The file.
        path: String,
    },
    /// 429 after every retry.
    #[error("the hub is rate-limiting requests{}; wait and retry, or log in (logged-in users get higher limits)", retry_after.map(|s| format!(" (retry after {s} s)")).unwrap_or_default())]
    RateLimited {
        /// The `Retry-After` seconds, when given.
        retry_after: Option<u64>,
    },
    /// Another HTTP failure (5xx after retries, 400, 416, …).
    #[error("{url} answered HTTP {status}{}: retry later", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    Http {
        /// What was requested.
        url: String,
        /// The status.
        status: u16,
        /// The hub's message and request id.
        message: String,
    },
    /// The connection dropped too often.
    #[error(
        "downloading {path} failed after {attempts} attempts ({reason}); run the same command again to resume"
    )]
    TooManyRetries {
        /// The file.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// A downloaded file does not match its hash or size; it was deleted.
    #[error(
        "{path} failed verification (expected {expected}, got {actual}); the partial file was removed, run the download again"
    )]
    Integrity {
        /// The file.
        path: String,
        /// Expected hash or size.
        expected: String,
        /// What was received.
        actual: String,
    },
    /// Not enough free disk for what is missing.
    #[error("not enough disk space in {}: {needed} bytes needed, {available} available; free space or set HF_HUB_CACHE elsewhere", dir.display())]
    DiskFull {
        /// The folder written to.
        dir: PathBuf,
        /// Bytes still to download.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The download was cancelled (Ctrl-C); partial files are kept for resuming.
    #[error("download cancelled; run the same command again to resume")]
    Cancelled,
    /// The hub answered something unreadable.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// What was requested.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// No stored token has this name.
    #[error("no stored token is named {name:?}; `dsocr auth list` shows the names")]
    UnknownTokenName {
        /// The name asked for.
        name: String,
    },
    /// The requested repo/revision is not in the cache.
    #[error("{what} is not in the cache {}; run `dsocr download` first", cache.display())]
    NotCached {
        /// What was looked for.
        what: String,
        /// The cache folder.
        cache: PathBuf,
    },
    /// A bad include/exclude pattern or repo id.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput {
        /// What kind of input.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    /// Wraps an I/O error with its path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Errors worth retrying anonymously or later rather than reporting at once.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HubError::Unreachable { .. }
                | HubError::RateLimited { .. }
                | HubError::Http {
                    status: 500..=599,
                    ..
                }
        )
    }
}
