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
    /// A legacy organisation token (`api_org_…`) cannot log in.
    #[error(
        "organisation tokens (api_org_…) cannot log in; use a user token from https://huggingface.co/settings/tokens"
    )]
    OrgToken,
    /// The CDN refused a download link even right after the hub issued a fresh one.
    #[error(
        "the download server refused {url} (HTTP {status}) even with a fresh link from the hub; retry later (your token is fine: the hub itself granted access)"
    )]
    CdnRefused {
        /// The CDN URL, without its query (host and path).
        url: String,
        /// The status.
        status: u16,
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

/// A URL as it may appear in messages and logs: scheme, host and path, without the query
/// (signed CDN links carry `Expires`/`Signature`/`X-Amz-*` there) or user info.
pub fn short_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or("").to_string(),
    }
}

impl HubError {
    /// Wraps an I/O error with its path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A stable identifier, the same as `dsocr doctor`'s finding codes where one matches
    /// (`token.invalid`, `repo.not_found`, …), so the CLI, the dashboard and `serve` agree.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::Offline { .. } => "offline.enabled",
            HubError::Unreachable { .. } => "endpoint.unreachable",
            HubError::NotAHub { .. } => "endpoint.not_a_hub",
            HubError::InvalidToken { .. } => "token.invalid",
            HubError::OrgToken => "token.org_token",
            HubError::TokenRequired => "token.none",
            HubError::RepoNotFound { .. } => "repo.not_found",
            HubError::GatedLoginRequired { .. } => "repo.gated.login_required",
            HubError::GatedNotGranted { .. } => "repo.gated.not_granted",
            HubError::Forbidden { .. } => "repo.forbidden",
            HubError::RevisionNotFound { .. } => "repo.revision_not_found",
            HubError::EntryNotFound { .. } => "repo.entry_not_found",
            HubError::RateLimited { .. } => "rate_limited",
            HubError::Http { .. } => "repo.error",
            HubError::CdnRefused { .. } => "download.cdn_refused",
            HubError::TooManyRetries { .. } => "download.too_many_retries",
            HubError::Integrity { .. } => "download.integrity",
            HubError::DiskFull { .. } => "disk.insufficient",
            HubError::Cancelled => "download.cancelled",
            HubError::Protocol { .. } => "endpoint.protocol",
            HubError::UnknownTokenName { .. } => "token.unknown_name",
            HubError::NotCached { .. } => "cache.missing",
            HubError::InvalidInput { .. } => "input.invalid",
            HubError::Io { .. } => "io.error",
        }
    }

    /// What to do about it, in one line.
    pub fn fix(&self) -> String {
        match self {
            HubError::Offline { .. } => "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE)".into(),
            HubError::Unreachable { .. } => {
                "check the network, proxy variables (HTTPS_PROXY, NO_PROXY) and HF_ENDPOINT".into()
            }
            HubError::NotAHub { .. } => {
                "log in to the captive portal or fix the proxy, or correct HF_ENDPOINT".into()
            }
            HubError::InvalidToken { origin } if origin.is_env() => {
                "unset the variable (and remove it from your shell startup file), or set it to a valid token; `dsocr doctor` names the file and line".into()
            }
            HubError::InvalidToken { .. } => {
                "run `dsocr login` with a valid token, or `dsocr logout` to go anonymous".into()
            }
            HubError::OrgToken => {
                "create a user token at https://huggingface.co/settings/tokens".into()
            }
            HubError::TokenRequired => "run `dsocr login`".into(),
            HubError::RepoNotFound { token_sent: true, .. } => {
                "check the repo name, or that your token can read it".into()
            }
            HubError::RepoNotFound { .. } => {
                "check the repo name; for a private repo run `dsocr login`".into()
            }
            HubError::GatedLoginRequired { .. } => {
                "run `dsocr login` with an account that accepted the repo's terms".into()
            }
            HubError::GatedNotGranted { url, .. } => {
                format!("accept the terms at {url} (or wait for approval)")
            }
            HubError::Forbidden { .. } => {
                "give your fine-grained token read access to this repo (and to gated repos)".into()
            }
            HubError::RevisionNotFound { .. } => {
                "use an existing branch, tag or commit (default: main)".into()
            }
            HubError::EntryNotFound { .. } => "check the file name and the revision".into(),
            HubError::RateLimited { .. } => {
                "wait a few minutes; logged-in users get higher limits".into()
            }
            HubError::Http { .. } | HubError::CdnRefused { .. } => "retry later".into(),
            HubError::TooManyRetries { .. } | HubError::Cancelled => {
                "run the same command again: it resumes".into()
            }
            HubError::Integrity { .. } => "run the download again".into(),
            HubError::DiskFull { .. } => {
                "free disk space or point HF_HUB_CACHE (or HF_HOME) at a larger disk".into()
            }
            HubError::Protocol { .. } => "retry; if it persists, check HF_ENDPOINT".into(),
            HubError::UnknownTokenName { .. } => "`dsocr auth list` shows the names".into(),
            HubError::NotCached { .. } => "run `dsocr download` first".into(),
            HubError::InvalidInput { .. } => "correct the value".into(),
            HubError::Io { path, .. } => {
                format!("check that {} exists and is writable", path.display())
            }
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

    /// The server's `Retry-After`, in seconds, when it sent one (a 429).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            HubError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}
