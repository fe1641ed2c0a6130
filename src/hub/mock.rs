//! A mock Hugging Face hub: a real HTTP/1.1 server on 127.0.0.1 speaking the status codes and
//! headers of the real hub (model info, resolve with redirects to a CDN, `X-Repo-Commit`,
//! `X-Linked-Etag`, gated and invalid-token answers), for tests, the dashboard's end-to-end test
//! and demos.
//!
//! - The hub listens on `127.0.0.1:<port>`; LFS files are served by a second listener reached
//!   through the host name `localhost` (a different host, as the real CDN is), so tests can
//!   check that no `Authorization` header follows the 302.
//! - Small files: `HEAD/GET /{repo}/resolve/{rev}/{path}` → relative 307 to
//!   `/api/resolve-cache/…`; LFS files → 302 to the CDN with `X-Linked-Size`/`X-Linked-Etag`.
//! - `GET /api/whoami-v2`, `GET /api/models/{repo}[/revision/{rev}]`, Range (`a-b`, `a-`,
//!   clamped; 416 past the end), 401/403/404 with `X-Error-Code` and `X-Error-Message`.
//! - Scenario switches in [`MockConfig`] (gated, private, captive portal, rate limit, slow
//!   CDN) and one-shot [`Fault`]s (drop mid-body, 200 instead of 206, short body, corrupt
//!   body, any status). Every request is recorded ([`MockHub::requests`]) with the bytes of
//!   body actually sent, so tests can measure what a resume re-downloaded.
//!
//! - Repo ids match in any case, as on the hub: the lower-cased [`DEFAULT_REPO`] under
//!   `/api/models/` answers with the canonical `id`.
//!
//! [`DEFAULT_REPO`]: crate::hub::download::DEFAULT_REPO
//! - LFS redirects carry a signed link (`?Expires=<unix>&Signature=<hex>`); the CDN refuses a
//!   tampered or expired one with 403 ([`MockConfig::cdn_url_ttl`]).
//!
//! Behind the cargo feature `mock`: `cargo build --release` leaves it out of the shipped binary;
//! the tests get it through the package's dev-dependency on itself (`Cargo.toml`).
//!
//! Standalone: `cargo run --release --features mock --example mock_hub -- --scenario ok --port
//! 8765` prints the `HF_ENDPOINT` and tokens to use; see [`scenario`] for the names.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A token the mock accepts, granted access to every gated/private repo.
pub const TOKEN_GRANTED: &str = "hf_MockGrantedTokenAbcdefghijklmnopqrs";
/// A token the mock accepts, with no access to gated or private repos.
pub const TOKEN_NOT_GRANTED: &str = "hf_MockPlainTokenAbcdefghijklmnopqrstu";
/// A token the mock accepts like [`TOKEN_GRANTED`], but with the `write` role and created in
/// 2024 (for the token hygiene checks).
pub const TOKEN_WRITE_OLD: &str = "hf_MockWriteOldTokenAbcdefghijklmnopq";
/// A token the mock rejects with 401 "Invalid credentials in Authorization header".
pub const TOKEN_INVALID: &str = "hf_MockRevokedTokenAbcdefghijklmnowxyz";

/// One file of a mock repo.
#[derive(Debug, Clone)]
pub struct MockFile {
    /// Path in the repo.
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Served as an LFS file (302 to the CDN, sha256 etag) rather than a git file.
    pub lfs: bool,
    /// Size announced by model info instead of the real one (to simulate huge repos).
    pub declared_size: Option<u64>,
}

impl MockFile {
    /// A git (non-LFS) file.
    pub fn git(path: &str, content: &[u8]) -> Self {
        MockFile {
            path: path.into(),
            content: content.to_vec(),
            lfs: false,
            declared_size: None,
        }
    }
    /// An LFS file.
    pub fn lfs(path: &str, content: Vec<u8>) -> Self {
        MockFile {
            path: path.into(),
            content,
            lfs: true,
            declared_size: None,
        }
    }
    /// The blob name: sha256 for LFS files, the git blob sha1 otherwise.
    pub fn etag(&self) -> String {
        if self.lfs {
            hex::encode(Sha256::digest(&self.content))
        } else {
            crate::hub::download::git_blob_sha1(&self.content)
        }
    }
    fn size(&self) -> u64 {
        self.content.len() as u64
    }
}

/// Who may read a repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Gated (`gated: "manual"`): info is public, files need [`TOKEN_GRANTED`].
    Gated,
    /// Private: invisible without [`TOKEN_GRANTED`].
    Private,
}

/// A mock repo at one commit.
#[derive(Debug, Clone)]
pub struct MockRepo {
    /// `owner/name`.
    pub id: String,
    /// The 40-hex commit `main` points to.
    pub commit: String,
    /// Access rule.
    pub access: Access,
    /// Files.
    pub files: Vec<MockFile>,
}

/// What can go wrong, once, on the next body GET of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Send the headers and this many body bytes, then close the connection.
    DropAfter(u64),
    /// Answer 200 with the whole file to a Range request.
    IgnoreRange,
    /// Answer with a body cut to this many bytes, `Content-Length` matching (a clean but short
    /// answer).
    ShortBody(u64),
    /// Send the right length of wrong bytes (the first byte flipped).
    Corrupt,
    /// Answer this status (429 carries `Retry-After: 1`).
    Status(u16),
}

/// A fault on a file path, used once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The repo path of the file whose body GET it hits.
    pub path: String,
    /// What happens.
    pub kind: FaultKind,
}

/// Scenario switches.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// The repos served.
    pub repos: Vec<MockRepo>,
    /// Answer every request with a 200 HTML login page (a captive portal or proxy).
    pub captive_portal: bool,
    /// Answer every request with 429.
    pub rate_limited: bool,
    /// Throttle CDN bodies to about this many bytes per second.
    pub cdn_bytes_per_sec: Option<u64>,
    /// How long a signed CDN link stays valid (default one hour). A request that starts after
    /// its `Expires` gets 403 "Request has expired", as S3/CloudFront answer; a transfer that
    /// started in time runs to its end.
    pub cdn_url_ttl: Option<Duration>,
    /// One-shot faults, used in order.
    pub faults: Vec<Fault>,
}

/// One request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `hub` or `cdn`.
    pub server: &'static str,
    /// The `Host` header.
    pub host: String,
    /// `GET`/`HEAD`.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// Whether an `Authorization` header came.
    pub authorization: bool,
    /// The status answered.
    pub status: u16,
    /// Body bytes actually written to the socket.
    pub body_bytes: u64,
}

struct State {
    config: MockConfig,
    faults: VecDeque<Fault>,
    requests: Vec<RequestRecord>,
    cdn_port: u16,
}

/// A running mock hub. Dropping it stops both listeners.
pub struct MockHub {
    /// `http://127.0.0.1:<port>`: use as `HF_ENDPOINT`.
    pub endpoint: String,
    /// `http://localhost:<port>`: the CDN.
    pub cdn: String,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for MockHub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl MockHub {
    /// Starts on random ports (inside a tokio runtime).
    pub async fn start(config: MockConfig) -> std::io::Result<Self> {
        Self::start_on(config, 0).await
    }

    /// Starts the hub on `port` (0 = any) and the CDN on a random port.
    pub async fn start_on(config: MockConfig, port: u16) -> std::io::Result<Self> {
        let hub = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let cdn = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let (hub_port, cdn_port) = (hub.local_addr()?.port(), cdn.local_addr()?.port());
        let state = Arc::new(Mutex::new(State {
            faults: config.faults.iter().cloned().collect(),
            config,
            requests: Vec::new(),
            cdn_port,
        }));
        let tasks = vec![
            tokio::spawn(serve(hub, "hub", state.clone())),
            tokio::spawn(serve(cdn, "cdn", state.clone())),
        ];
        Ok(MockHub {
            endpoint: format!("http://127.0.0.1:{hub_port}"),
            cdn: format!("http://localhost:{cdn_port}"),
            state,
            tasks,
        })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state).requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state).requests.clear();
    }

    /// Queues a one-shot fault.
    pub fn add_fault(&self, path: &str, kind: FaultKind) {
        lock(&self.state).faults.push_back(Fault {
            path: path.into(),
            kind,
        });
    }

    /// Changes the scenario switches while running.
    pub fn configure(&self, f: impl FnOnce(&mut MockConfig)) {
        f(&mut lock(&self.state).config);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deterministic pseudo-random bytes (for LFS contents).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// The id of the demo repo every scenario serves.
pub const DEMO_REPO: &str = super::download::DEFAULT_REPO;
/// The commit of the demo repo.
pub const DEMO_COMMIT: &str = "9f30c71f441d010e5429c532364a86705536c53a";

/// A small DeepSeek-OCR-shaped repo: config, index naming one shard, tokenizer files, the
/// shard as an LFS file of `shard_size` bytes, and an LFS file in a subfolder.
pub fn demo_repo(access: Access, shard_size: usize) -> MockRepo {
    let index = br#"{"metadata":{"total_size":0},"weight_map":{"model.embed_tokens.weight":"model-00001-of-000001.safetensors","lm_head.weight":"model-00001-of-000001.safetensors"}}"#;
    MockRepo {
        id: DEMO_REPO.into(),
        commit: DEMO_COMMIT.into(),
        access,
        files: vec![
            MockFile::git(
                "config.json",
                br#"{"model_type":"deepseek_vl_v2","architectures":["DeepseekOCRForCausalLM"]}"#,
            ),
            MockFile::git("model.safetensors.index.json", index),
            MockFile::git("tokenizer_config.json", br#"{"model_max_length":8192}"#),
            MockFile::git("README.md", b"# DeepSeek-OCR (mock)\n"),
            MockFile::lfs("tokenizer.json", pseudo_random(96 * 1024, 7)),
            MockFile::lfs(
                "model-00001-of-000001.safetensors",
                pseudo_random(shard_size, 1),
            ),
            MockFile::lfs("assets/fig1.png", pseudo_random(40 * 1024, 3)),
        ],
    }
}

/// Named scenarios for the standalone server and the dashboard's tests:
/// `ok`, `gated`, `private`, `captive-portal`, `rate-limited`, `slow` (CDN at 1 MiB/s, 24 MiB
/// shard), `expiring` (CDN links valid 2 s, CDN at 2 MiB/s, the 8 MiB shard dropped at 5 MiB,
/// so its resume meets an expired link), `flaky` (every body GET of the shard drops after 1 MiB, three times), `huge`
/// (model info announces a 1 PB shard).
pub fn scenario(name: &str) -> Option<MockConfig> {
    let base = |access| MockConfig {
        repos: vec![demo_repo(access, 3 * 1024 * 1024)],
        ..MockConfig::default()
    };
    let shard = "model-00001-of-000001.safetensors";
    Some(match name {
        "ok" => base(Access::Public),
        "gated" => base(Access::Gated),
        "private" => base(Access::Private),
        "captive-portal" => MockConfig {
            captive_portal: true,
            ..base(Access::Public)
        },
        "rate-limited" => MockConfig {
            rate_limited: true,
            ..base(Access::Public)
        },
        "slow" => MockConfig {
            repos: vec![demo_repo(Access::Public, 24 * 1024 * 1024)],
            cdn_bytes_per_sec: Some(1024 * 1024),
            ..MockConfig::default()
        },
        "expiring" => MockConfig {
            repos: vec![demo_repo(Access::Public, 8 * 1024 * 1024)],
            cdn_bytes_per_sec: Some(2 * 1024 * 1024),
            cdn_url_ttl: Some(Duration::from_secs(2)),
            faults: vec![Fault {
                path: shard.into(),
                kind: FaultKind::DropAfter(5 * 1024 * 1024),
            }],
            ..MockConfig::default()
        },
        "flaky" => MockConfig {
            faults: (0..3)
                .map(|_| Fault {
                    path: shard.into(),
                    kind: FaultKind::DropAfter(1024 * 1024),
                })
                .collect(),
            ..base(Access::Public)
        },
        "huge" => {
            let mut config = base(Access::Public);
            for f in &mut config.repos[0].files {
                if f.path == shard {
                    f.declared_size = Some(1 << 50);
                }
            }
            config
        }
        _ => return None,
    })
}

/// The scenario names [`scenario`] knows.
pub const SCENARIOS: &[&str] = &[
    "ok",
    "gated",
    "private",
    "captive-portal",
    "rate-limited",
    "slow",
    "expiring",
    "flaky",
    "huge",
];

async fn serve(listener: TcpListener, server: &'static str, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(handle_connection(stream, server, state.clone()));
    }
}

struct Request {
    method: String,
    target: String,
    host: String,
    range: Option<String>,
    authorization: Option<String>,
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut req = Request {
        method,
        target,
        host: String::new(),
        range: None,
        authorization: None,
    };
    for _ in 0..100 {
        line.clear();
        stream.read_line(&mut line).await.ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            return Some(req);
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => req.host = value,
            "range" => req.range = Some(value),
            "authorization" => req.authorization = Some(value),
            _ => {}
        }
    }
    None
}

/// An answer: status, headers, body, and how to send it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close after this many body bytes (a dropped connection).
    drop_after: Option<u64>,
    /// Throttle the body.
    bytes_per_sec: Option<u64>,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            drop_after: None,
            bytes_per_sec: None,
        }
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn json(self, value: serde_json::Value) -> Self {
        let mut r = self.header("Content-Type", "application/json; charset=utf-8");
        r.body = value.to_string().into_bytes();
        r
    }
    fn error(status: u16, code: Option<&str>, message: &str) -> Self {
        let mut r = Reply::new(status).header("X-Error-Message", message);
        if let Some(code) = code {
            r = r.header("X-Error-Code", code);
        }
        r.json(serde_json::json!({ "error": message }))
    }
}

async fn handle_connection(stream: TcpStream, server: &'static str, state: Arc<Mutex<State>>) {
    let mut stream = BufReader::new(stream);
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let reply = route(&req, server, &state);
    let head_only = req.method == "HEAD";
    let (status, sent) = write_reply(stream.get_mut(), reply, head_only).await;
    lock(&state).requests.push(RequestRecord {
        server,
        host: req.host,
        method: req.method,
        target: req.target,
        range: req.range,
        authorization: req.authorization.is_some(),
        status,
        body_bytes: sent,
    });
}

async fn write_reply(stream: &mut TcpStream, reply: Reply, head_only: bool) -> (u16, u64) {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    let has_length = reply
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    head.push_str("Connection: close\r\nX-Request-Id: Root=1-mock\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return (reply.status, 0);
    }
    if head_only {
        let _ = stream.shutdown().await;
        return (reply.status, 0);
    }
    let limit = reply
        .drop_after
        .map_or(reply.body.len(), |n| (n as usize).min(reply.body.len()));
    let chunk = reply
        .bytes_per_sec
        .map_or(64 * 1024, |r| (r / 20).max(1) as usize);
    let mut sent = 0usize;
    for piece in reply.body[..limit].chunks(chunk) {
        if stream.write_all(piece).await.is_err() {
            break;
        }
        sent += piece.len();
        if reply.bytes_per_sec.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = stream.flush().await;
    if reply.drop_after.is_none() {
        let _ = stream.shutdown().await;
    }
    (reply.status, sent as u64)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// Who is calling: none, a known token, or a rejected one.
enum Caller {
    Anonymous,
    Granted,
    WriteOld,
    NotGranted,
    Invalid,
}

fn caller(req: &Request) -> Caller {
    match req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
    {
        None => Caller::Anonymous,
        Some(TOKEN_GRANTED) => Caller::Granted,
        Some(TOKEN_WRITE_OLD) => Caller::WriteOld,
        Some(TOKEN_NOT_GRANTED) => Caller::NotGranted,
        Some(_) => Caller::Invalid,
    }
}

fn route(req: &Request, server: &'static str, state: &Mutex<State>) -> Reply {
    let mut st = lock(state);
    if st.config.captive_portal {
        let mut r = Reply::new(200).header("Content-Type", "text/html");
        r.body = b"<html><body>Please log in to the Wi-Fi</body></html>".to_vec();
        return r;
    }
    if st.config.rate_limited {
        return Reply::error(429, None, "You have been rate-limited").header("Retry-After", "1");
    }
    let path = req.target.split('?').next().unwrap_or("").to_string();
    let path = percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .into_owned();
    if server == "cdn" {
        return cdn_file(&mut st, &path, req);
    }
    let who = caller(req);
    if matches!(who, Caller::Invalid) {
        return Reply::error(401, None, crate::hub::client::INVALID_CREDENTIALS);
    }
    if path == "/api/whoami-v2" {
        return whoami(&who);
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        return model_info(&st, rest, &who);
    }
    if let Some(rest) = path.strip_prefix("/api/resolve-cache/models/") {
        return resolve_cache(&mut st, rest, req);
    }
    if let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") {
        return resolve(&st, repo, rest, &who);
    }
    Reply::error(404, None, "Not Found")
}

fn whoami(who: &Caller) -> Reply {
    let (name, token_name, role) = match who {
        Caller::Granted => ("alice", "dsocr-mock", "read"),
        Caller::WriteOld => ("carol", "old-write", "write"),
        Caller::NotGranted => ("bob", "plain", "fineGrained"),
        _ => return Reply::error(401, None, "Invalid username or password."),
    };
    Reply::new(200).json(serde_json::json!({
        "type": "user", "id": "0", "name": name, "fullname": name.to_uppercase(),
        "email": format!("{name}@example.com"), "emailVerified": true, "canPay": false,
        "isPro": false, "periodEnd": null, "avatarUrl": "/avatars/x.svg",
        "orgs": [{"type": "org", "id": "1", "name": "acme", "fullname": "Acme"}],
        "auth": {"type": "access_token", "accessToken": {
            "displayName": token_name, "role": role,
            "createdAt": if matches!(who, Caller::WriteOld) { "2024-01-05T08:00:00.000Z" } else { "2026-07-23T10:27:03.276Z" },
            "fineGrained": {"canReadGatedRepos": false, "global": [],
                "scoped": [{"entity": {"_id": "0", "type": "user", "name": name},
                            "permissions": ["repo.content.read"]}]}}}
    }))
}

/// The repo and whether the caller may see it (`Err` = the reply to send instead).
fn visible_repo<'a>(st: &'a State, id: &str, who: &Caller) -> Result<&'a MockRepo, Reply> {
    let repo = st.config.repos.iter().find(|r| r.id == id).or_else(|| {
        st.config
            .repos
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(id))
    });
    let hidden = match repo {
        None => true,
        Some(r) => {
            r.access == Access::Private && !matches!(who, Caller::Granted | Caller::WriteOld)
        }
    };
    match (repo, hidden, who) {
        (Some(r), false, _) => Ok(r),
        (_, _, Caller::Anonymous) => Err(Reply::error(401, None, "Invalid username or password.")
            .header(
                "WWW-Authenticate",
                "Bearer realm=\"Authentication required\", charset=\"UTF-8\"",
            )),
        _ => Err(Reply::error(
            404,
            Some("RepoNotFound"),
            "Repository not found",
        )),
    }
}

fn revision_commit(repo: &MockRepo, rev: &str) -> Option<String> {
    (rev == "main" || rev == repo.commit).then(|| repo.commit.clone())
}

fn model_info(st: &State, rest: &str, who: &Caller) -> Reply {
    if let Some((id, rev)) = rest.split_once("/tree/") {
        return tree(st, id, rev, who);
    }
    let (id, rev) = match rest.split_once("/revision/") {
        Some((id, rev)) => (id, rev),
        None => (rest, "main"),
    };
    let repo = match visible_repo(st, id, who) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let Some(commit) = revision_commit(repo, rev) else {
        return Reply::error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        );
    };
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|f| {
            let size = f.declared_size.unwrap_or(f.size());
            let mut s =
                serde_json::json!({"rfilename": f.path, "size": size, "blobId": blob_id(f)});
            if f.lfs {
                s["lfs"] =
                    serde_json::json!({"sha256": f.etag(), "size": size, "pointerSize": 134});
            }
            s
        })
        .collect();
    let gated = match repo.access {
        Access::Gated => serde_json::json!("manual"),
        _ => serde_json::json!(false),
    };
    Reply::new(200).json(serde_json::json!({
        "_id": "0", "id": repo.id, "modelId": repo.id, "author": repo.id.split('/').next(),
        "sha": commit, "private": repo.access == Access::Private, "disabled": false,
        "gated": gated, "tags": [], "downloads": 0, "likes": 0, "siblings": siblings,
    }))
}

/// The git blob id model info reports: the content's for git files, the pointer's for LFS.
fn blob_id(f: &MockFile) -> String {
    if !f.lfs {
        return f.etag();
    }
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        f.etag(),
        f.size()
    );
    crate::hub::download::git_blob_sha1(pointer.as_bytes())
}

/// `GET /api/models/{id}/tree/{rev}?recursive=true` (what Python's `snapshot_download` lists).
fn tree(st: &State, id: &str, rev: &str, who: &Caller) -> Reply {
    let repo = match visible_repo(st, id, who) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if revision_commit(repo, rev).is_none() {
        return Reply::error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        );
    }
    let mut dirs: Vec<String> = repo
        .files
        .iter()
        .filter_map(|f| f.path.rsplit_once('/').map(|(d, _)| d.to_string()))
        .collect();
    dirs.dedup();
    let mut entries: Vec<serde_json::Value> = dirs
        .iter()
        .map(|d| serde_json::json!({"type": "directory", "oid": "0".repeat(40), "size": 0, "path": d}))
        .collect();
    for f in &repo.files {
        let mut e = serde_json::json!({"type": "file", "oid": blob_id(f), "size": f.size(), "path": f.path});
        if f.lfs {
            e["lfs"] = serde_json::json!({"oid": f.etag(), "size": f.size(), "pointerSize": 134});
        }
        entries.push(e);
    }
    Reply::new(200).json(serde_json::Value::Array(entries))
}

fn resolve(st: &State, id: &str, rest: &str, who: &Caller) -> Reply {
    let repo = match visible_repo(st, id, who) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let Some((rev, file_path)) = rest.split_once('/') else {
        return Reply::error(404, Some("EntryNotFound"), "Entry not found");
    };
    let Some(commit) = revision_commit(repo, rev) else {
        return Reply::error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        );
    };
    if repo.access == Access::Gated {
        match who {
            Caller::Anonymous => {
                return Reply::error(
                    401,
                    Some("GatedRepo"),
                    "Access to model is restricted. You must have access to it and be authenticated to access it. Please log in.",
                );
            }
            Caller::NotGranted => {
                return Reply::error(
                    403,
                    Some("GatedRepo"),
                    "Access to model is restricted and you are not in the authorized list. Visit the repo page to ask for access.",
                );
            }
            _ => {}
        }
    }
    let Some(file) = repo.files.iter().find(|f| f.path == file_path) else {
        return Reply::error(404, Some("EntryNotFound"), "Entry not found")
            .header("X-Repo-Commit", commit);
    };
    let etag = format!("\"{}\"", file.etag());
    let reply = |status: u16, location: String| {
        Reply::new(status)
            .header("Location", location)
            .header("X-Repo-Commit", commit.clone())
            .header("X-Linked-Etag", etag.clone())
            .header("Accept-Ranges", "bytes")
    };
    if file.lfs {
        let ttl = st.config.cdn_url_ttl.unwrap_or(Duration::from_secs(3600));
        let blob_path = format!("/blobs/{}", file.etag());
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let mut r = reply(
            302,
            format!(
                "http://localhost:{}{blob_path}?Expires={expires_ms}&Signature={}",
                st.cdn_port,
                signature(&blob_path, expires_ms)
            ),
        )
        .header("X-Linked-Size", file.size().to_string());
        r.body = b"Found. Redirecting to the CDN".to_vec();
        r
    } else {
        reply(
            307,
            format!(
                "/api/resolve-cache/models/{id}/{commit}/{}?etag=%22{}%22",
                file_path,
                file.etag()
            ),
        )
    }
}

fn resolve_cache(st: &mut State, rest: &str, req: &Request) -> Reply {
    let found = st.config.repos.iter().find_map(|r| {
        let prefix = format!("{}/{}/", r.id, r.commit);
        let head = rest.get(..prefix.len())?;
        let tail = head
            .eq_ignore_ascii_case(&prefix)
            .then(|| &rest[prefix.len()..])?;
        r.files
            .iter()
            .find(|f| f.path == tail)
            .map(|f| (r.commit.clone(), f.clone()))
    });
    let Some((commit, file)) = found else {
        return Reply::error(404, Some("EntryNotFound"), "Entry not found");
    };
    let reply = body_reply(st, &file, req, None).header("X-Repo-Commit", commit);
    reply.header("ETag", format!("\"{}\"", file.etag()))
}

/// Milliseconds since the epoch (the mock's `Expires` is in milliseconds so tests can use
/// short lifetimes; the real CDN's is in seconds).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The mock's link signature: sha256 of path, expiry and a fixed secret, 32 hex.
fn signature(path: &str, expires: u64) -> String {
    let digest = Sha256::digest(format!("{path}\n{expires}\nmock-cdn-secret").as_bytes());
    hex::encode(&digest[..16])
}

/// Checks a CDN link's `Expires` and `Signature` (the reply to send when it fails).
fn check_signed(path: &str, target: &str) -> Result<(), Reply> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let denied = |message: &str| {
        let mut r = Reply::new(403).header("Content-Type", "application/xml");
        r.body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>{message}</Message></Error>"
        )
        .into_bytes();
        r
    };
    let expires = param("Expires").and_then(|e| e.parse::<u64>().ok());
    let (Some(expires), Some(sig)) = (expires, param("Signature")) else {
        return Err(denied(
            "Missing Key-Pair-Id query parameter or cookie value",
        ));
    };
    if sig != signature(path, expires) {
        return Err(denied("Invalid signature"));
    }
    if now_ms() >= expires {
        return Err(denied("Request has expired"));
    }
    Ok(())
}

fn cdn_file(st: &mut State, path: &str, req: &Request) -> Reply {
    if let Err(reply) = check_signed(path, &req.target) {
        return reply;
    }
    let hash = path.strip_prefix("/blobs/").unwrap_or("");
    let file = st
        .config
        .repos
        .iter()
        .flat_map(|r| r.files.iter())
        .find(|f| f.lfs && f.etag() == hash)
        .cloned();
    let Some(file) = file else {
        return Reply::new(404);
    };
    let rate = st.config.cdn_bytes_per_sec;
    body_reply(st, &file, req, rate).header("ETag", "\"xet-0123456789abcdef\"")
}

/// A 200/206/416 answer for a file body, with the next matching fault applied.
fn body_reply(st: &mut State, file: &MockFile, req: &Request, rate: Option<u64>) -> Reply {
    let fault = if req.method == "GET" {
        let pos = st.faults.iter().position(|f| f.path == file.path);
        pos.and_then(|p| st.faults.remove(p)).map(|f| f.kind)
    } else {
        None
    };
    if let Some(FaultKind::Status(code)) = fault {
        let r = Reply::error(code, None, "injected failure");
        return if code == 429 {
            r.header("Retry-After", "1")
        } else {
            r
        };
    }
    let len = file.size();
    let range = req
        .range
        .as_deref()
        .filter(|_| fault != Some(FaultKind::IgnoreRange))
        .and_then(parse_range);
    let mut reply = match range {
        Some((start, _)) if start >= len && len > 0 => {
            return Reply::new(416).header("Content-Range", format!("bytes */{len}"));
        }
        Some((start, end)) => {
            let end = end
                .unwrap_or(len.saturating_sub(1))
                .min(len.saturating_sub(1));
            let mut r =
                Reply::new(206).header("Content-Range", format!("bytes {start}-{end}/{len}"));
            r.body = file.content[start as usize..=end as usize].to_vec();
            r
        }
        None => {
            let mut r = Reply::new(200);
            r.body = file.content.clone();
            r
        }
    };
    reply.bytes_per_sec = rate;
    match fault {
        Some(FaultKind::DropAfter(n)) => {
            let full = reply.body.len();
            reply = reply.header("Content-Length", full.to_string());
            reply.drop_after = Some(n);
        }
        Some(FaultKind::ShortBody(n)) => reply.body.truncate(n as usize),
        Some(FaultKind::Corrupt) => {
            if let Some(b) = reply.body.first_mut() {
                *b ^= 0xff;
            }
        }
        _ => {}
    }
    reply.header("Accept-Ranges", "bytes")
}

/// `bytes=a-b` / `bytes=a-` → (a, b).
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((start, end))
}
