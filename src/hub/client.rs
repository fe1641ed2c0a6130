//! HTTP to the hub: one `reqwest` client configured explicitly from [`HubEnv`] and a token
//! chosen by [`crate::hub::token`], with the hub's answers turned into typed [`HubError`]s.
//!
//! - Redirects are followed by hand: relative ones (the hub's own 307s) keep the token;
//!   a `Location` on another origin (the LFS CDN) is fetched **without** `Authorization`.
//! - 401/403/404 are classified by `X-Error-Code` and `X-Error-Message` as the Python client
//!   does (`hf_raise_for_status`), keeping "invalid token" apart from "repo not found/private".
//! - 5xx, 429 (honouring `Retry-After`) and connection failures are retried with exponential
//!   backoff when the caller asks for it ([`RetryPolicy`]); [`Retries`] counts the attempts,
//!   here and in [`crate::hub::download`], so both follow one rule.
//! - In offline mode every request fails with [`HubError::Offline`] before touching the network.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode, Url};
use serde::Deserialize;

use super::HubError;
use super::env::HubEnv;
use super::error::short_url;
use super::token::{FoundToken, TokenSource};

/// The message the hub sends with a 401 for a bad token.
pub const INVALID_CREDENTIALS: &str = "Invalid credentials in Authorization header";

const QUOTE_ALL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const QUOTE_PATH: &AsciiSet = &QUOTE_ALL.remove(b'/');

/// Python's `quote(rev, safe="")`: `refs/pr/1` becomes `refs%2Fpr%2F1`.
pub fn quote_revision(rev: &str) -> String {
    utf8_percent_encode(rev, QUOTE_ALL).to_string()
}

/// Python's `quote(path)`: keeps `/`.
pub fn quote_path(path: &str) -> String {
    utf8_percent_encode(path, QUOTE_PATH).to_string()
}

/// Checks a repo id (`name` or `owner/name`, letters, digits, `-_.`) so it is safe to use in
/// URLs and cache folder names.
pub fn validate_repo_id(repo: &str) -> Result<(), HubError> {
    let parts: Vec<&str> = repo.split('/').collect();
    let ok_part = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.len() <= 2 && parts.iter().all(ok_part) {
        Ok(())
    } else {
        Err(HubError::InvalidInput {
            what: "repo id",
            value: repo.to_string(),
            reason: "expected `owner/name` with letters, digits, `-`, `_` or `.`".into(),
        })
    }
}

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first.
    pub max_attempts: u32,
    /// First backoff delay; doubled after each failure.
    pub base_delay: Duration,
    /// Longest single wait (also caps `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries (diagnosis reports what happened the first time).
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }
    /// The wait before attempt `attempt + 1` (0-based), or the server's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<u64>) -> Duration {
        let backoff = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        retry_after
            .map(Duration::from_secs)
            .unwrap_or(backoff)
            .min(self.max_delay)
    }
}

/// Failed attempts counted against a [`RetryPolicy`]: the one place that decides whether a
/// transient failure is tried again and how long to wait first (backoff, or the server's
/// `Retry-After`, capped). [`HubClient::send_following`] and the downloads use it.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    policy: RetryPolicy,
    failures: u32,
}

impl Retries {
    /// No failure yet.
    pub fn new(policy: RetryPolicy) -> Self {
        Retries {
            policy,
            failures: 0,
        }
    }

    /// Failures counted so far (since the last [`progressed`](Self::progressed)).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The last attempt got somewhere (a download received bytes): the next failure counts as
    /// the first again.
    pub fn progressed(&mut self) {
        self.failures = 0;
    }

    /// Counts a transient failure; the wait before the next attempt, or `None` when the
    /// policy's attempts are spent. `retry_after` is the server's `Retry-After` in seconds
    /// ([`HubError::retry_after`]).
    pub fn failed(&mut self, retry_after: Option<u64>) -> Option<Duration> {
        self.failures += 1;
        (self.failures < self.policy.max_attempts)
            .then(|| self.policy.delay(self.failures - 1, retry_after))
    }
}

/// What the request was about, to classify its errors.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The repo id.
    pub repo: String,
    /// The revision, when one was given.
    pub revision: Option<String>,
    /// The file, for resolve requests.
    pub path: Option<String>,
}

/// The answer of `/api/whoami-v2`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WhoAmI {
    /// `user`, `org` or `app`.
    pub kind: String,
    /// The user name.
    pub name: String,
    /// The full name.
    pub fullname: Option<String>,
    /// The e-mail address, when the hub sends it.
    pub email: Option<String>,
    /// Organisation names.
    pub orgs: Vec<String>,
    /// The token's display name (`oauth-<name>` for OAuth tokens, as Python does).
    pub token_name: String,
    /// `read`, `write` or `fineGrained`.
    pub token_role: Option<String>,
    /// Fine-grained tokens: may this token read gated repos the user was granted?
    pub can_read_gated_repos: Option<bool>,
    /// Fine-grained tokens: scoped permissions as `entity: perm, perm`.
    pub scoped: Vec<String>,
    /// Fine-grained tokens: global permissions.
    pub global: Vec<String>,
    /// When the token was created (`auth.accessToken.createdAt`, ISO 8601).
    pub token_created_at: Option<String>,
}

impl WhoAmI {
    /// True when the token can write (a `write` token, or a fine-grained one with a write
    /// permission): more than downloading needs.
    pub fn can_write(&self) -> bool {
        self.token_role.as_deref() == Some("write")
            || self
                .scoped
                .iter()
                .chain(&self.global)
                .any(|p| p.contains("write"))
    }

    /// The token's age in whole days at `now` (unix seconds), from `createdAt`.
    pub fn token_age_days(&self, now: u64) -> Option<u64> {
        let created = parse_iso_date(self.token_created_at.as_deref()?)?;
        Some(now.saturating_sub(created) / 86_400)
    }
}

/// Unix seconds of the date part of an ISO 8601 timestamp (`2026-07-23T10:27:03.276Z`;
/// midnight UTC, which is all an age in days needs).
pub fn parse_iso_date(text: &str) -> Option<u64> {
    let date = text.get(..10)?;
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400)
}

/// One file of a model repo, from `/api/models/…?blobs=true`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Sibling {
    /// Path inside the repo.
    pub rfilename: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Git blob id (for LFS files: of the pointer).
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    /// LFS facts (sha256 of the content), for LFS files.
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

/// The LFS part of a [`Sibling`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct LfsInfo {
    /// sha256 of the content: the blob name in the cache.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Model info (the fields dsocr uses).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelInfo {
    /// The canonical repo id.
    pub id: String,
    /// The commit the revision points to.
    pub sha: String,
    /// Private repo.
    pub private: bool,
    /// `auto` or `manual` for gated repos.
    pub gated: Option<String>,
    /// Disabled by the hub.
    pub disabled: bool,
    /// The files.
    pub siblings: Vec<Sibling>,
}

/// What a HEAD on a resolve URL tells (Python's `get_hf_file_metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetadata {
    /// `X-Repo-Commit`.
    pub commit: String,
    /// Normalised `X-Linked-Etag`/`ETag`: the blob name (git sha1 or sha256).
    pub etag: String,
    /// `X-Linked-Size` or `Content-Length`.
    pub size: u64,
    /// Where the bytes are: the CDN URL for LFS files, else the resolve URL reached.
    pub location: Url,
}

/// A client bound to one endpoint and (optionally) one token.
#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
    env: HubEnv,
    endpoint: Url,
    token: Option<FoundToken>,
    retry: RetryPolicy,
}

impl HubClient {
    /// A client for `env` sending `token` (pass `status.to_send().cloned()` for Python's choice).
    pub fn new(env: HubEnv, token: Option<FoundToken>) -> Result<Self, HubError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = Url::parse(&env.endpoint).map_err(|e| HubError::InvalidInput {
            what: "HF_ENDPOINT",
            value: env.endpoint.clone(),
            reason: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "dsocr/",
                env!("CARGO_PKG_VERSION"),
                "; hf_hub/compatible; rust"
            ))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HubError::Unreachable {
                url: env.endpoint.clone(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(HubClient {
            http,
            env,
            endpoint,
            token,
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same client without a token.
    pub fn anonymous(&self) -> Self {
        HubClient {
            token: None,
            ..self.clone()
        }
    }

    /// The configuration it was built from.
    pub fn env(&self) -> &HubEnv {
        &self.env
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Where the token it sends came from.
    pub fn token_source(&self) -> Option<&TokenSource> {
        self.token.as_ref().map(|t| &t.source)
    }

    /// A URL under the endpoint.
    pub fn url(&self, path: &str) -> Result<Url, HubError> {
        let raw = format!("{}/{}", self.env.endpoint, path.trim_start_matches('/'));
        Url::parse(&raw).map_err(|e| HubError::InvalidInput {
            what: "URL",
            value: raw,
            reason: e.to_string(),
        })
    }

    /// The resolve URL of a file.
    pub fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> Result<Url, HubError> {
        self.url(&format!(
            "{repo}/resolve/{}/{}",
            quote_revision(revision),
            quote_path(path)
        ))
    }

    /// True when `url` is on the hub itself (not the CDN that LFS files redirect to).
    pub fn on_hub(&self, url: &Url) -> bool {
        self.same_origin(url)
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.endpoint.scheme()
            && url.host_str() == self.endpoint.host_str()
            && url.port_or_known_default() == self.endpoint.port_or_known_default()
    }

    /// Sends one request. `Authorization` is attached only when `url` is on the endpoint's
    /// origin. Transport errors become [`HubError::Unreachable`].
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
    ) -> Result<Response, HubError> {
        if self.env.offline {
            return Err(HubError::Offline {
                url: short_url(url.as_str()),
            });
        }
        let mut request = self.http.request(method, url.clone()).headers(headers);
        if let Some(token) = self.token.as_ref().filter(|_| self.same_origin(url)) {
            request = request.bearer_auth(token.token.expose());
        }
        request.send().await.map_err(|e| HubError::Unreachable {
            url: short_url(url.as_str()),
            reason: describe_transport_error(&e),
        })
    }

    /// [`send`](Self::send) with retries on transient failures (5xx, 429, connection errors),
    /// following relative redirects (which keep the token). `on_retry` hears each wait.
    pub async fn send_following(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        ctx: &RequestContext,
        on_retry: &mut (dyn FnMut(u32, Duration, &HubError) + Send),
    ) -> Result<Response, HubError> {
        let mut retries = Retries::new(self.retry);
        loop {
            let result = self
                .follow_relative(method.clone(), url, headers.clone())
                .await;
            let error = match result {
                Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                    return Ok(resp);
                }
                Ok(resp) => self.classify(&resp, ctx),
                Err(e) => e,
            };
            if !error.is_transient() {
                return Err(error);
            }
            let Some(wait) = retries.failed(error.retry_after()) else {
                return Err(error);
            };
            on_retry(retries.failures(), wait, &error);
            tokio::time::sleep(wait).await;
        }
    }

    async fn follow_relative(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
    ) -> Result<Response, HubError> {
        let mut current = url.clone();
        for _ in 0..5 {
            let resp = self.send(method.clone(), &current, headers.clone()).await?;
            let Some(next) = relative_location(&resp, &current) else {
                return Ok(resp);
            };
            current = next;
        }
        Err(HubError::Protocol {
            url: short_url(url.as_str()),
            detail: "too many redirects".into(),
        })
    }

    /// Turns an error status into a typed error, as Python's `hf_raise_for_status` does.
    pub fn classify(&self, resp: &Response, ctx: &RequestContext) -> HubError {
        classify_status(
            resp.status(),
            resp.headers(),
            &short_url(resp.url().as_str()),
            ctx,
            self.token_source(),
            &self.repo_page(&ctx.repo),
        )
    }

    /// The repo's web page (where gated terms are accepted).
    pub fn repo_page(&self, repo: &str) -> String {
        format!("{}/{repo}", self.env.endpoint)
    }

    /// `GET /api/whoami-v2`. Needs a token.
    pub async fn whoami(&self) -> Result<WhoAmI, HubError> {
        if self.token.is_none() {
            return Err(HubError::TokenRequired);
        }
        let url = self.url("api/whoami-v2")?;
        let ctx = RequestContext::default();
        let resp = self
            .send_following(Method::GET, &url, HeaderMap::new(), &ctx, &mut |_, _, _| {})
            .await?;
        let raw: RawWhoAmI = read_json(resp, &url).await?;
        Ok(raw.into())
    }

    /// `GET /api/models/{repo}[/revision/{rev}]?blobs=true`.
    pub async fn model_info(
        &self,
        repo: &str,
        revision: Option<&str>,
    ) -> Result<ModelInfo, HubError> {
        validate_repo_id(repo)?;
        let path = match revision {
            Some(rev) => format!("api/models/{repo}/revision/{}", quote_revision(rev)),
            None => format!("api/models/{repo}"),
        };
        let mut url = self.url(&path)?;
        url.set_query(Some("blobs=true"));
        let ctx = RequestContext {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
            path: None,
        };
        let resp = self
            .send_following(Method::GET, &url, HeaderMap::new(), &ctx, &mut |_, _, _| {})
            .await?;
        let raw: RawModelInfo = read_json(resp, &url).await?;
        Ok(raw.into())
    }

    /// `HEAD` on the resolve URL (following the hub's relative redirects, retrying transient
    /// failures): commit, blob name, size and where the bytes are.
    pub async fn file_metadata(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> Result<FileMetadata, HubError> {
        let url = self.resolve_url(repo, revision, path)?;
        let ctx = RequestContext {
            repo: repo.to_string(),
            revision: Some(revision.to_string()),
            path: Some(path.to_string()),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            header::HeaderValue::from_static("identity"),
        );
        let resp = self
            .send_following(Method::HEAD, &url, headers, &ctx, &mut |_, _, _| {})
            .await?;
        metadata_from(&resp, &url)
    }
}

/// The causes of a transport error, without the URL (the caller names it once) and without
/// repeats: "client error (Connect): dns error: …".
pub(crate) fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        return if e.is_timeout() {
            "timed out".into()
        } else {
            "request failed".into()
        };
    }
    parts.join(": ")
}

/// The target of a redirect on the same origin (a relative `Location`), if the answer is one.
fn relative_location(resp: &Response, current: &Url) -> Option<Url> {
    if !resp.status().is_redirection() {
        return None;
    }
    let location = resp.headers().get(header::LOCATION)?.to_str().ok()?;
    if Url::parse(location).is_ok() {
        return None; // absolute: another host (the CDN); the caller decides
    }
    current.join(location).ok()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Python's `_normalize_etag`: `W/` prefix and quotes removed.
pub fn normalize_etag(raw: &str) -> String {
    raw.trim_start_matches("W/").trim_matches('"').to_string()
}

fn metadata_from(resp: &Response, url: &Url) -> Result<FileMetadata, HubError> {
    let headers = resp.headers();
    let missing = |what: &str| HubError::NotAHub {
        url: short_url(url.as_str()),
        detail: format!("no {what} header"),
    };
    let commit = header_str(headers, "x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
    let etag = header_str(headers, "x-linked-etag")
        .or_else(|| header_str(headers, "etag"))
        .map(normalize_etag)
        .ok_or_else(|| missing("ETag"))?;
    let size = header_str(headers, "x-linked-size")
        .or_else(|| {
            (!resp.status().is_redirection())
                .then(|| header_str(headers, "content-length"))
                .flatten()
        })
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| missing("X-Linked-Size/Content-Length"))?;
    let location = match header_str(headers, "location") {
        Some(loc) if resp.status().is_redirection() => {
            resp.url().join(loc).map_err(|e| HubError::Protocol {
                url: short_url(url.as_str()),
                detail: format!("bad Location: {e}"),
            })?
        }
        _ => resp.url().clone(),
    };
    Ok(FileMetadata {
        commit: commit.to_string(),
        etag,
        size,
        location,
    })
}

/// The status/headers part of [`HubClient::classify`], usable without a `Response`.
pub fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    url: &str,
    ctx: &RequestContext,
    token: Option<&TokenSource>,
    repo_page: &str,
) -> HubError {
    let code = header_str(headers, "x-error-code").unwrap_or("");
    let message = header_str(headers, "x-error-message")
        .unwrap_or("")
        .to_string();
    let repo = ctx.repo.clone();
    match (status.as_u16(), code) {
        (401, _) if message.contains(INVALID_CREDENTIALS) => match token {
            Some(origin) => HubError::InvalidToken {
                origin: origin.clone(),
            },
            None => HubError::RepoNotFound {
                repo,
                token_sent: false,
            },
        },
        (401, "GatedRepo") => HubError::GatedLoginRequired { repo },
        (403, "GatedRepo") => HubError::GatedNotGranted {
            repo,
            url: repo_page.to_string(),
        },
        (_, "RevisionNotFound") => HubError::RevisionNotFound {
            repo,
            revision: ctx.revision.clone().unwrap_or_else(|| "main".into()),
        },
        (_, "EntryNotFound") => HubError::EntryNotFound {
            repo,
            revision: ctx.revision.clone().unwrap_or_else(|| "main".into()),
            path: ctx.path.clone().unwrap_or_default(),
        },
        (_, "RepoNotFound") | (401, _) if !repo.is_empty() => HubError::RepoNotFound {
            repo,
            token_sent: token.is_some(),
        },
        (401, _) => HubError::TokenRequired,
        (403, _) => HubError::Forbidden {
            url: short_url(url),
            message,
        },
        (429, _) => HubError::RateLimited {
            retry_after: header_str(headers, "retry-after").and_then(|s| s.trim().parse().ok()),
        },
        (status, _) => HubError::Http {
            url: short_url(url),
            status,
            message: with_request_id(message, headers),
        },
    }
}

fn with_request_id(message: String, headers: &HeaderMap) -> String {
    let id = header_str(headers, "x-request-id").or_else(|| header_str(headers, "x-amzn-trace-id"));
    match id {
        Some(id) if message.is_empty() => format!("Request ID: {id}"),
        Some(id) => format!("{message} (Request ID: {id})"),
        None => message,
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: Response,
    url: &Url,
) -> Result<T, HubError> {
    let is_json = header_str(resp.headers(), "content-type").is_some_and(|c| c.contains("json"));
    let body = resp.bytes().await.map_err(|e| HubError::Unreachable {
        url: short_url(url.as_str()),
        reason: describe_transport_error(&e),
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        if is_json {
            HubError::Protocol {
                url: short_url(url.as_str()),
                detail: e.to_string(),
            }
        } else {
            HubError::NotAHub {
                url: short_url(url.as_str()),
                detail: "a non-JSON answer to an API call".into(),
            }
        }
    })
}

#[derive(Deserialize)]
struct RawWhoAmI {
    #[serde(rename = "type", default)]
    kind: String,
    name: String,
    #[serde(default)]
    fullname: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    orgs: Vec<RawOrg>,
    #[serde(default)]
    auth: Option<RawAuth>,
}

#[derive(Deserialize)]
struct RawOrg {
    name: String,
}

#[derive(Deserialize)]
struct RawAuth {
    #[serde(rename = "accessToken", default)]
    access_token: Option<RawAccessToken>,
}

#[derive(Deserialize)]
struct RawAccessToken {
    #[serde(rename = "displayName", default)]
    display_name: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(rename = "fineGrained", default)]
    fine_grained: Option<RawFineGrained>,
    #[serde(rename = "createdAt", default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct RawFineGrained {
    #[serde(rename = "canReadGatedRepos", default)]
    can_read_gated_repos: Option<bool>,
    #[serde(default)]
    scoped: Vec<RawScoped>,
    #[serde(default)]
    global: Vec<String>,
}

#[derive(Deserialize)]
struct RawScoped {
    entity: RawEntity,
    #[serde(default)]
    permissions: Vec<String>,
}

#[derive(Deserialize)]
struct RawEntity {
    #[serde(default)]
    name: String,
}

impl From<RawWhoAmI> for WhoAmI {
    fn from(raw: RawWhoAmI) -> Self {
        let access = raw.auth.and_then(|a| a.access_token);
        let token_name = access
            .as_ref()
            .and_then(|a| a.display_name.clone())
            .unwrap_or_else(|| format!("oauth-{}", raw.name));
        let fine = access.as_ref().and_then(|a| a.fine_grained.as_ref());
        WhoAmI {
            kind: raw.kind,
            fullname: raw.fullname,
            email: raw.email,
            orgs: raw.orgs.into_iter().map(|o| o.name).collect(),
            token_role: access.as_ref().and_then(|a| a.role.clone()),
            can_read_gated_repos: fine.and_then(|f| f.can_read_gated_repos),
            scoped: fine
                .map(|f| {
                    f.scoped
                        .iter()
                        .map(|s| format!("{}: {}", s.entity.name, s.permissions.join(", ")))
                        .collect()
                })
                .unwrap_or_default(),
            global: fine.map(|f| f.global.clone()).unwrap_or_default(),
            token_created_at: access.as_ref().and_then(|a| a.created_at.clone()),
            token_name,
            name: raw.name,
        }
    }
}

#[derive(Deserialize)]
struct RawModelInfo {
    id: String,
    #[serde(default)]
    sha: Option<String>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    gated: serde_json::Value,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

impl From<RawModelInfo> for ModelInfo {
    fn from(raw: RawModelInfo) -> Self {
        ModelInfo {
            id: raw.id,
            sha: raw.sha.unwrap_or_default(),
            private: raw.private,
            gated: raw.gated.as_str().map(str::to_string),
            disabled: raw.disabled,
            siblings: raw.siblings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_python() {
        assert_eq!(quote_revision("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(quote_path("a b/c+d.json"), "a%20b/c%2Bd.json");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }

    #[test]
    fn repo_ids_are_checked() {
        assert!(validate_repo_id(crate::hub::download::DEFAULT_REPO).is_ok());
        assert!(validate_repo_id("gpt2").is_ok());
        for bad in ["", "a/b/c", "../x", "a/..", "a b/c", "a/"] {
            assert!(validate_repo_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_classify_like_python() {
        let ctx = RequestContext {
            repo: "o/r".into(),
            revision: Some("v9".into()),
            path: Some("config.json".into()),
        };
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, header::HeaderValue::from_static(v));
            }
            m
        };
        let file = TokenSource::EnvHfToken;
        let c = |s: u16, hs: HeaderMap, tok: Option<&TokenSource>| {
            classify_status(
                StatusCode::from_u16(s).unwrap(),
                &hs,
                "u",
                &ctx,
                tok,
                "page",
            )
        };
        let invalid = h(&[("x-error-message", INVALID_CREDENTIALS)]);
        assert!(matches!(
            c(401, invalid, Some(&file)),
            HubError::InvalidToken {
                origin: TokenSource::EnvHfToken
            }
        ));
        let anon = h(&[("x-error-message", "Invalid username or password.")]);
        assert!(matches!(
            c(401, anon, None),
            HubError::RepoNotFound {
                token_sent: false,
                ..
            }
        ));
        assert!(matches!(
            c(401, h(&[("x-error-code", "GatedRepo")]), None),
            HubError::GatedLoginRequired { .. }
        ));
        assert!(matches!(
            c(403, h(&[("x-error-code", "GatedRepo")]), Some(&file)),
            HubError::GatedNotGranted { .. }
        ));
        assert!(matches!(
            c(404, h(&[("x-error-code", "RepoNotFound")]), Some(&file)),
            HubError::RepoNotFound {
                token_sent: true,
                ..
            }
        ));
        assert!(matches!(
            c(404, h(&[("x-error-code", "RevisionNotFound")]), None),
            HubError::RevisionNotFound { .. }
        ));
        assert!(matches!(
            c(404, h(&[("x-error-code", "EntryNotFound")]), None),
            HubError::EntryNotFound { .. }
        ));
        assert!(matches!(
            c(429, h(&[("retry-after", "7")]), None),
            HubError::RateLimited {
                retry_after: Some(7)
            }
        ));
        assert!(c(503, HeaderMap::new(), None).is_transient());
    }

    #[test]
    fn iso_dates_to_unix_days() {
        assert_eq!(parse_iso_date("1970-01-01T00:00:00Z"), Some(0));
        // `date -u -d 2026-07-23 +%s`
        assert_eq!(
            parse_iso_date("2026-07-23T10:27:03.276Z"),
            Some(1_784_764_800)
        );
        assert_eq!(parse_iso_date("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_iso_date("yesterday"), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, None), Duration::from_millis(500));
        assert_eq!(p.delay(2, None), Duration::from_secs(2));
        assert_eq!(p.delay(20, None), Duration::from_secs(30));
        assert_eq!(p.delay(0, Some(3)), Duration::from_secs(3));
    }

    #[test]
    fn retries_stop_after_the_policys_attempts_and_restart_after_progress() {
        let mut r = Retries::new(RetryPolicy::default());
        assert_eq!(r.failed(None), Some(Duration::from_millis(500)));
        assert_eq!(r.failed(Some(7)), Some(Duration::from_secs(7)));
        assert_eq!(r.failed(None), Some(Duration::from_secs(2)));
        r.progressed();
        assert_eq!(r.failed(None), Some(Duration::from_millis(500)));
        assert_eq!(r.failures(), 1);
        for _ in 0..4 {
            assert!(r.failed(None).is_some());
        }
        assert_eq!(r.failed(None), None, "6 attempts in all: 1 + 5 retries");
        assert_eq!(r.failures(), 6);
        assert_eq!(Retries::new(RetryPolicy::none()).failed(None), None);
    }
}
