//! The hub layer against a real HTTP mock hub on 127.0.0.1 (`dsocr::hub::mock`) and against the
//! real Python client (`huggingface_hub`, from the venv `scripts/env.sh` sets up; its
//! interpreter comes from `DSOCR_PYTHON`).
//!
//! One test per diagnosis code (scenario in, code out), per download fault (outcome measured
//! from the bytes the mock actually sent), the token never reaching the CDN host, lock
//! waiting, Ctrl-C / kill then resume, and Python interop both ways.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use dsocr::hub::cache::{self, FileCheck, RepoPaths};
use dsocr::hub::client::RetryPolicy;
use dsocr::hub::diagnose::{self, DiagnoseOptions, Report, Severity, TorchFacts};
use dsocr::hub::download::{self, DownloadEvent, DownloadOutcome, DownloadRequest};
use dsocr::hub::mock::{self, Access, FaultKind, MockConfig, MockHub};
use dsocr::hub::token::{self, FoundToken};
use dsocr::hub::{HubClient, HubEnv, HubError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod common;

const SHARD: &str = "model-00001-of-000001.safetensors";
const SHARD_SIZE: usize = 3 * 1024 * 1024;

/// A temporary `HF_HOME` plus the variables a test sets.
struct Home {
    dir: tempfile::TempDir,
    vars: HashMap<String, String>,
}

impl Home {
    fn new(endpoint: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut vars = HashMap::new();
        vars.insert("HF_HOME".to_string(), dir.path().display().to_string());
        vars.insert("HF_ENDPOINT".to_string(), endpoint.to_string());
        // Shell startup files, .git-credentials and .netrc are read from HOME: never the
        // real ones.
        vars.insert("HOME".to_string(), dir.path().display().to_string());
        Home { dir, vars }
    }
    fn set(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.into(), v.into());
        self
    }
    fn env(&self) -> HubEnv {
        let vars = self.vars.clone();
        HubEnv::from_lookup(move |k| vars.get(k).cloned())
    }
    fn cache(&self) -> PathBuf {
        self.env().hub_cache
    }
    fn save_token(&self, tok: &str) {
        let env = self.env();
        std::fs::write(&env.token_path, tok).expect("write token");
    }
    /// A `dsocr` command with exactly this environment (no proxies, no outside HF_*).
    fn dsocr(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dsocr"));
        self.isolate(&mut cmd);
        cmd.args(args);
        cmd
    }
    /// Run `dsocr ARGS` with `input` on its standard input; its output once it exits.
    async fn dsocr_with_stdin(&self, args: &[&str], input: &str) -> std::process::Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.dsocr(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn dsocr");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("write stdin");
        drop(stdin);
        child.wait_with_output().await.expect("dsocr output")
    }
    fn python(&self, code: &str) -> tokio::process::Command {
        let python = std::env::var("DSOCR_PYTHON").unwrap_or_else(|_| {
            panic!("DSOCR_PYTHON is not set: source scripts/env.sh (it installs huggingface_hub in the venv and exports DSOCR_PYTHON) before running the hub tests")
        });
        let mut cmd = tokio::process::Command::new(python);
        self.isolate(&mut cmd);
        cmd.env("HF_HUB_DISABLE_TELEMETRY", "1").arg("-c").arg(code);
        cmd
    }
    fn isolate(&self, cmd: &mut tokio::process::Command) {
        common::remove_outside_hub_env(cmd.as_std_mut());
        cmd.env_remove("XDG_CONFIG_HOME")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .envs(&self.vars);
    }
}

async fn run(mut cmd: tokio::process::Command) -> (i32, String, String) {
    let out = cmd.output().await.expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn hub(access: Access) -> MockHub {
    let config = MockConfig {
        repos: vec![mock::demo_repo(access, SHARD_SIZE)],
        ..MockConfig::default()
    };
    MockHub::start(config).await.expect("mock hub")
}

async fn named(name: &str) -> MockHub {
    MockHub::start(mock::scenario(name).expect("scenario"))
        .await
        .expect("mock hub")
}

fn client(home: &Home) -> HubClient {
    let env = home.env();
    let status = token::status(&env).expect("token status");
    HubClient::new(env, status.to_send().cloned())
        .expect("client")
        .with_retry(RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
        })
}

async fn diagnose_with(home: &Home, repo: &str, revision: &str) -> Report {
    let opts = DiagnoseOptions {
        repo: repo.into(),
        revision: revision.into(),
        torch: None,
        model_dir: None,
    };
    diagnose::diagnose(&home.env(), &opts).await
}

async fn diagnose_home(home: &Home) -> Report {
    diagnose_with(home, mock::DEMO_REPO, "main").await
}

fn expect_code<'a>(report: &'a Report, code: &str, severity: Severity) -> &'a diagnose::Finding {
    let f = report
        .get(code)
        .unwrap_or_else(|| panic!("no {code} in {:#?}", report.findings));
    assert_eq!(f.severity, severity, "{f:?}");
    assert!(
        !f.message.contains("hf_Mock") || f.message.contains('…'),
        "unmasked token: {f:?}"
    );
    f
}

/// Runs a library download, collecting its events.
async fn fetch(
    home: &Home,
    req: &DownloadRequest,
) -> (Result<DownloadOutcome, HubError>, Vec<DownloadEvent>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = download::download(&client(home), req, &tx, &CancellationToken::new()).await;
    drop(tx);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    (result, events)
}

fn demo() -> DownloadRequest {
    DownloadRequest::new(mock::DEMO_REPO)
}

/// The CDN requests for the shard, as (range, status, body bytes).
fn shard_gets(hub: &MockHub) -> Vec<(Option<String>, u16, u64)> {
    let shard = mock::demo_repo(Access::Public, SHARD_SIZE)
        .files
        .into_iter()
        .find(|f| f.path == SHARD)
        .expect("shard")
        .etag();
    hub.requests()
        .into_iter()
        .filter(|r| r.server == "cdn" && r.method == "GET" && r.target.contains(&shard))
        .map(|r| (r.range, r.status, r.body_bytes))
        .collect()
}

fn shard_blob_ok(home: &Home, outcome: &DownloadOutcome) {
    let file = outcome.snapshot.join(SHARD);
    let bytes = std::fs::read(&file).expect("shard in snapshot");
    assert_eq!(bytes, mock::pseudo_random(SHARD_SIZE, 1));
    let paths = RepoPaths::new(&home.cache(), mock::DEMO_REPO).expect("paths");
    assert_eq!(paths.partial_bytes(), 0, "no partial file left");
}

// ---------------------------------------------------------------- diagnosis codes

#[tokio::test(flavor = "multi_thread")]
async fn diag_token_none_repo_ok_cache_missing_disk_ok() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let r = diagnose_home(&home).await;
    expect_code(&r, "token.none", Severity::Info);
    expect_code(&r, "endpoint.ok", Severity::Ok);
    expect_code(&r, "repo.ok", Severity::Ok);
    expect_code(&r, "cache.missing", Severity::Warning);
    expect_code(&r, "disk.ok", Severity::Ok);
    assert!(r.ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_token_ok_names_user_and_source() {
    let hub = hub(Access::Gated).await;
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_GRANTED);
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "token.ok", Severity::Ok);
    assert!(
        f.message.contains("alice") && f.message.contains("token file"),
        "{f:?}"
    );
    expect_code(&r, "repo.ok", Severity::Ok);
    assert!(r.ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_token_invalid_from_env_shadowing_file() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint).set("HF_TOKEN", mock::TOKEN_INVALID);
    home.save_token(mock::TOKEN_GRANTED);
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "token.invalid", Severity::Error);
    assert!(f.message.contains("HF_TOKEN"), "{f:?}");
    assert!(f.message.contains("shadows"), "{f:?}");
    assert!(f.message.contains("retry anonymously"), "{f:?}");
    expect_code(&r, "token.env_shadows_file", Severity::Warning);
    let f = expect_code(&r, "token.sources", Severity::Info);
    assert!(
        f.message
            .starts_with("the HF_TOKEN environment variable hf_…wxyz (used); the token file"),
        "{f:?}"
    );
    assert!(f.message.ends_with("hf_…pqrs (ignored)"), "{f:?}");
    expect_code(&r, "repo.ok", Severity::Ok);
    assert!(!r.ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_token_invalid_from_file() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_INVALID);
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "token.invalid", Severity::Error);
    assert!(
        f.message.contains("token file") && f.fix.contains("dsocr login"),
        "{f:?}"
    );
    assert!(r.get("token.env_shadows_file").is_none());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn diag_token_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_GRANTED);
    let path = home.env().token_path;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "token.file_permissions", Severity::Warning);
    assert!(f.fix.contains("chmod 600"));
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_offline_sends_nothing() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint).set("HF_HUB_OFFLINE", "1");
    let r = diagnose_home(&home).await;
    expect_code(&r, "offline.enabled", Severity::Warning);
    expect_code(&r, "cache.missing", Severity::Warning);
    assert!(r.get("endpoint.ok").is_none());
    assert!(hub.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_endpoint_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }; // closed again: nothing listens there
    let home = Home::new(&format!("http://127.0.0.1:{port}"));
    let r = diagnose_home(&home).await;
    expect_code(&r, "endpoint.unreachable", Severity::Error);
    assert!(!r.ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_endpoint_not_a_hub() {
    let hub = named("captive-portal").await;
    let home = Home::new(&hub.endpoint);
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "endpoint.not_a_hub", Severity::Error);
    assert!(f.message.contains("captive portal"), "{f:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_repo_not_found_anonymous_says_maybe_private() {
    let hub = hub(Access::Private).await;
    let home = Home::new(&hub.endpoint);
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "repo.not_found", Severity::Error);
    assert!(f.message.contains("private: log in"), "{f:?}");
    assert!(f.fix.contains("unsloth/DeepSeek-OCR"), "{f:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_repo_not_found_with_token() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_NOT_GRANTED);
    let r = diagnose_with(&home, "someone/typo-repo", "main").await;
    let f = expect_code(&r, "repo.not_found", Severity::Error);
    assert!(f.message.contains("a token was sent"), "{f:?}");
    expect_code(&r, "token.ok", Severity::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_repo_gated_login_required() {
    let hub = hub(Access::Gated).await;
    let home = Home::new(&hub.endpoint);
    let r = diagnose_home(&home).await;
    expect_code(&r, "repo.gated.login_required", Severity::Error);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_repo_gated_not_granted() {
    let hub = hub(Access::Gated).await;
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_NOT_GRANTED);
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "repo.gated.not_granted", Severity::Error);
    assert!(
        f.fix
            .contains(&format!("{}/{}", hub.endpoint, mock::DEMO_REPO)),
        "{f:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_repo_revision_not_found() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let r = diagnose_with(&home, mock::DEMO_REPO, "v9-does-not-exist").await;
    expect_code(&r, "repo.revision_not_found", Severity::Error);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_rate_limited() {
    let hub = named("rate-limited").await;
    let home = Home::new(&hub.endpoint);
    let r = diagnose_home(&home).await;
    expect_code(&r, "rate_limited", Severity::Error);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_disk_insufficient_for_a_huge_repo() {
    let hub = named("huge").await;
    let home = Home::new(&hub.endpoint);
    let r = diagnose_home(&home).await;
    expect_code(&r, "disk.insufficient", Severity::Error);
    // and the download refuses before writing anything
    let (result, _) = fetch(&home, &demo()).await;
    assert!(
        matches!(result, Err(HubError::DiskFull { .. })),
        "{result:?}"
    );
    assert!(hub.requests().iter().all(|r| r.server == "hub"));
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_cache_ok_incomplete_corrupt() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let (outcome, _) = fetch(&home, &demo()).await;
    let outcome = outcome.expect("download");
    let r = diagnose_home(&home).await;
    expect_code(&r, "cache.ok", Severity::Ok);
    assert!(r.get("disk.ok").is_none(), "nothing to download");

    let readme = outcome.snapshot.join("README.md");
    std::fs::remove_file(&readme).expect("remove link");
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "cache.incomplete", Severity::Warning);
    assert!(f.message.contains("1 of 7"), "{f:?}");

    let blob = std::fs::canonicalize(outcome.snapshot.join("config.json")).expect("blob");
    std::fs::write(&blob, b"{}").expect("damage blob");
    let r = diagnose_home(&home).await;
    let f = expect_code(&r, "cache.corrupt", Severity::Error);
    assert!(f.message.contains("config.json"), "{f:?}");
    assert!(!r.ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_torch_facts() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let mut opts = DiagnoseOptions {
        torch: Some(TorchFacts {
            cuda_available: true,
            device_count: 2,
        }),
        ..DiagnoseOptions::default()
    };
    let r = diagnose::diagnose(&home.env(), &opts).await;
    assert!(
        expect_code(&r, "torch.ok", Severity::Ok)
            .message
            .contains('2')
    );
    opts.torch = Some(TorchFacts {
        cuda_available: false,
        device_count: 0,
    });
    let r = diagnose::diagnose(&home.env(), &opts).await;
    expect_code(&r, "torch.cuda_unavailable", Severity::Warning);
}

#[test]
fn every_code_is_documented_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for code in diagnose::CODES {
        assert!(
            readme.contains(&format!("`{code}`")),
            "README lacks `{code}`"
        );
    }
}

// ---------------------------------------------------------------- downloads and faults

#[tokio::test(flavor = "multi_thread")]
async fn download_writes_python_layout_and_never_sends_the_token_to_the_cdn() {
    let hub = hub(Access::Gated).await;
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_GRANTED);
    let (outcome, events) = fetch(&home, &demo()).await;
    let outcome = outcome.expect("download");
    shard_blob_ok(&home, &outcome);
    let reqs = hub.requests();
    let cdn: Vec<_> = reqs.iter().filter(|r| r.server == "cdn").collect();
    assert_eq!(cdn.len(), 3, "three LFS files come from the CDN: {cdn:?}");
    for r in &cdn {
        assert!(!r.authorization, "Authorization reached the CDN: {r:?}");
        assert!(r.host.starts_with("localhost:"), "{r:?}");
    }
    assert!(
        reqs.iter()
            .filter(|r| r.server == "hub")
            .all(|r| r.authorization)
    );
    // layout: relative links, refs/main, CACHEDIR.TAG
    let paths = RepoPaths::new(&home.cache(), mock::DEMO_REPO).expect("paths");
    let link = std::fs::read_link(outcome.snapshot.join("assets/fig1.png")).expect("symlink");
    assert!(link.starts_with("../../../blobs"), "{link:?}");
    assert_eq!(
        std::fs::read_to_string(paths.ref_file("main")).expect("ref"),
        mock::DEMO_COMMIT
    );
    assert!(home.cache().join("CACHEDIR.TAG").is_file());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DownloadEvent::Done { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DownloadEvent::Progress(p) if p.total_bytes == p.total_size))
    );
    // a second run fetches nothing
    hub.clear_requests();
    let (again, _) = fetch(&home, &demo()).await;
    assert_eq!(again.expect("second run").downloaded, 0);
    assert!(
        hub.requests()
            .iter()
            .all(|r| r.server == "hub" && r.method == "GET")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_drop_mid_body_resumes_without_resending() {
    let hub = hub(Access::Public).await;
    hub.add_fault(SHARD, FaultKind::DropAfter(1024 * 1024));
    let home = Home::new(&hub.endpoint);
    let (outcome, events) = fetch(&home, &demo()).await;
    shard_blob_ok(&home, &outcome.expect("download"));
    let gets = shard_gets(&hub);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0], (None, 200, 1024 * 1024));
    assert_eq!(gets[1].0.as_deref(), Some("bytes=1048576-"));
    assert_eq!(gets[1].1, 206);
    let sent: u64 = gets.iter().map(|g| g.2).sum();
    assert_eq!(
        sent,
        SHARD_SIZE as u64,
        "bytes re-sent: {}",
        sent - SHARD_SIZE as u64
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DownloadEvent::Retrying { path, .. } if path == SHARD))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_200_instead_of_206_restarts_cleanly() {
    let hub = hub(Access::Public).await;
    hub.add_fault(SHARD, FaultKind::DropAfter(1024 * 1024));
    hub.add_fault(SHARD, FaultKind::IgnoreRange);
    let home = Home::new(&hub.endpoint);
    let (outcome, events) = fetch(&home, &demo()).await;
    shard_blob_ok(&home, &outcome.expect("download"));
    let gets = shard_gets(&hub);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1].0.as_deref(), Some("bytes=1048576-"));
    assert_eq!(gets[1].1, 200, "the server ignored Range");
    assert_eq!(gets[1].2, SHARD_SIZE as u64, "whole file re-sent once");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DownloadEvent::Restarted { path } if path == SHARD))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_short_body_resumes_from_what_arrived() {
    let hub = hub(Access::Public).await;
    hub.add_fault(SHARD, FaultKind::ShortBody(5000));
    let home = Home::new(&hub.endpoint);
    let (outcome, _) = fetch(&home, &demo()).await;
    shard_blob_ok(&home, &outcome.expect("download"));
    let gets = shard_gets(&hub);
    assert_eq!(gets[0].2, 5000);
    assert_eq!(gets[1].0.as_deref(), Some("bytes=5000-"));
    assert_eq!(gets.iter().map(|g| g.2).sum::<u64>(), SHARD_SIZE as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_429_waits_for_retry_after_then_succeeds() {
    let hub = hub(Access::Public).await;
    hub.add_fault(SHARD, FaultKind::Status(429));
    let home = Home::new(&hub.endpoint);
    let (outcome, events) = fetch(&home, &demo()).await;
    shard_blob_ok(&home, &outcome.expect("download"));
    let waited = events.iter().find_map(|e| match e {
        DownloadEvent::Retrying { path, wait_ms, .. } if path == SHARD => Some(*wait_ms),
        _ => None,
    });
    assert_eq!(waited, Some(1000), "Retry-After: 1 is honoured");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_persistent_500_gives_a_clear_error() {
    let hub = hub(Access::Public).await;
    for _ in 0..4 {
        hub.add_fault(SHARD, FaultKind::Status(500));
    }
    let home = Home::new(&hub.endpoint);
    let (result, _) = fetch(&home, &demo()).await;
    let err = result.expect_err("must fail");
    assert!(
        matches!(err, HubError::TooManyRetries { attempts: 4, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(SHARD) && text.contains("run the same command again"),
        "{text}"
    );
    assert_eq!(shard_gets(&hub).len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_corrupt_body_never_reaches_snapshots() {
    let hub = hub(Access::Public).await;
    hub.add_fault(SHARD, FaultKind::Corrupt);
    let home = Home::new(&hub.endpoint);
    let (result, _) = fetch(&home, &demo()).await;
    let err = result.expect_err("must fail verification");
    assert!(matches!(err, HubError::Integrity { .. }), "{err:?}");
    let paths = RepoPaths::new(&home.cache(), mock::DEMO_REPO).expect("paths");
    assert!(!paths.snapshot_dir(mock::DEMO_COMMIT).join(SHARD).exists());
    assert_eq!(paths.partial_bytes(), 0, "the bad partial file is deleted");
    let (again, _) = fetch(&home, &demo()).await;
    shard_blob_ok(&home, &again.expect("clean retry"));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_token_on_public_repo_falls_back_to_anonymous() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint).set("HF_TOKEN", mock::TOKEN_INVALID);
    let (outcome, events) = fetch(&home, &demo()).await;
    let outcome = outcome.expect("anonymous download");
    assert!(outcome.anonymous_fallback);
    let said = events.iter().find_map(|e| match e {
        DownloadEvent::AnonymousFallback { reason } => Some(reason.clone()),
        _ => None,
    });
    let said = said.expect("fallback event");
    assert!(
        said.contains("HF_TOKEN") && !said.contains(mock::TOKEN_INVALID),
        "{said}"
    );
    // gated repo: no fallback, the token error stands
    let gated = self::hub(Access::Gated).await;
    let home = Home::new(&gated.endpoint).set("HF_TOKEN", mock::TOKEN_INVALID);
    let (result, _) = fetch(&home, &demo()).await;
    assert!(
        matches!(result, Err(HubError::InvalidToken { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn include_exclude_and_local_dir() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let local = home.dir.path().join("local");
    let req = DownloadRequest {
        include: vec!["*.json".into()],
        exclude: vec!["tokenizer*".into()],
        local_dir: Some(local.clone()),
        ..demo()
    };
    let (outcome, _) = fetch(&home, &req).await;
    let outcome = outcome.expect("download");
    assert_eq!(
        outcome.files,
        vec!["config.json", "model.safetensors.index.json"]
    );
    assert!(local.join("config.json").is_file());
    let meta =
        std::fs::read_to_string(local.join(".cache/huggingface/download/config.json.metadata"))
            .expect("metadata");
    assert!(
        meta.starts_with(&format!("{}\n", mock::DEMO_COMMIT)),
        "{meta}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_process_waits_on_the_lock() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let shard = mock::demo_repo(Access::Public, SHARD_SIZE)
        .files
        .into_iter()
        .find(|f| f.path == SHARD)
        .expect("shard");
    let paths = RepoPaths::new(&home.cache(), mock::DEMO_REPO).expect("paths");
    let lock_path = paths.lock_file(&shard.etag());
    std::fs::create_dir_all(lock_path.parent().expect("dir")).expect("lock dir");
    let holder = std::fs::File::create(&lock_path).expect("lock file");
    holder.lock().expect("hold the lock");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = client(&home);
    let task = tokio::spawn(async move {
        download::download(&c, &demo(), &tx, &CancellationToken::new()).await
    });
    let waited = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(DownloadEvent::WaitingForLock { path, .. })) => break path,
            Ok(Some(_)) => continue,
            other => panic!("no WaitingForLock event: {other:?}"),
        }
    };
    assert_eq!(waited, SHARD);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "must wait while the lock is held");
    holder.unlock().expect("release");
    let outcome = task
        .await
        .expect("join")
        .expect("download after the lock is released");
    shard_blob_ok(&home, &outcome);
}

/// Starts `dsocr download` against a slow CDN, stops it with `signal` once part of the shard
/// is on disk, then resumes; returns (partial bytes at stop, CDN GETs of the second run).
#[cfg(unix)]
async fn interrupt_then_resume(signal: i32) -> (u64, Vec<(Option<String>, u16, u64)>, i32) {
    let config = MockConfig {
        repos: vec![mock::demo_repo(Access::Public, SHARD_SIZE)],
        cdn_bytes_per_sec: Some(512 * 1024),
        ..MockConfig::default()
    };
    let hub = MockHub::start(config).await.expect("mock");
    let home = Home::new(&hub.endpoint);
    let paths = RepoPaths::new(&home.cache(), mock::DEMO_REPO).expect("paths");
    let mut child = home
        .dsocr(&["download", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dsocr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while paths.partial_bytes() < 256 * 1024 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no partial download appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid") as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, signal) };
    let status = child.wait().await.expect("wait");
    let code = status.code().unwrap_or(-1);
    let partial = paths.partial_bytes();
    // the mock records the interrupted GET once it notices the closed socket
    while shard_gets(&hub).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first GET was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        partial > 0 && partial < SHARD_SIZE as u64,
        "partial {partial}"
    );
    hub.configure(|c| c.cdn_bytes_per_sec = None);
    hub.clear_requests();
    let (rc, _, err) = run(home.dsocr(&["download"])).await;
    assert_eq!(rc, 0, "{err}");
    let snapshot = paths.snapshot_dir(mock::DEMO_COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join(SHARD)).expect("shard"),
        mock::pseudo_random(SHARD_SIZE, 1)
    );
    let gets = shard_gets(&hub);
    let resent: u64 = gets.iter().map(|g| g.2).sum();
    eprintln!(
        "signal {signal}: stopped at {partial} of {SHARD_SIZE} bytes; the resume sent {resent} bytes"
    );
    (partial, gets, code)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_leaves_a_partial_that_resumes() {
    let (partial, gets, code) = interrupt_then_resume(libc::SIGINT).await;
    assert_eq!(code, 130, "Ctrl-C exits 130 after saving the partial");
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].0, Some(format!("bytes={partial}-")));
    assert_eq!(
        gets[0].2,
        SHARD_SIZE as u64 - partial,
        "only the rest is sent"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn kill_leaves_a_partial_that_resumes() {
    let (partial, gets, _) = interrupt_then_resume(libc::SIGKILL).await;
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].0, Some(format!("bytes={partial}-")));
    assert_eq!(gets[0].2, SHARD_SIZE as u64 - partial);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_verify_finds_a_damaged_blob_and_rm_frees_it() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let (outcome, _) = fetch(&home, &demo()).await;
    let outcome = outcome.expect("download");
    let mut seen = 0u64;
    let checks = cache::verify(
        &home.cache(),
        mock::DEMO_REPO,
        Some("main"),
        &mut |_, done, _| seen = seen.max(done),
    )
    .expect("verify");
    assert_eq!(checks.len(), 7);
    assert!(
        checks.iter().all(|c| c.check == FileCheck::Ok),
        "{checks:?}"
    );
    assert_eq!(
        seen, SHARD_SIZE as u64,
        "progress reaches the largest file's size"
    );
    let blob = std::fs::canonicalize(outcome.snapshot.join(SHARD)).expect("blob");
    let mut bytes = std::fs::read(&blob).expect("read");
    bytes[10] ^= 1;
    std::fs::write(&blob, bytes).expect("damage");
    let (rc, out, _) = run(home.dsocr(&["cache", "verify"])).await;
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains(SHARD) && out.contains("CORRUPT"), "{out}");
    let (rc, out, err) = run(home.dsocr(&["cache", "rm", mock::DEMO_REPO])).await;
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("3.3 MB freed"), "{out}");
    assert!(cache::scan(&home.cache()).expect("scan").repos.is_empty());
}

// ---------------------------------------------------------------- CLI

#[tokio::test(flavor = "multi_thread")]
async fn cli_doctor_json_and_exit_code() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint).set("HF_TOKEN", mock::TOKEN_INVALID);
    let (rc, out, _) = run(home.dsocr(&["doctor", "--json"])).await;
    assert_eq!(rc, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["ready"], false);
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(codes.contains(&"token.invalid"), "{codes:?}");
    for f in v["findings"].as_array().expect("findings") {
        for k in ["code", "severity", "message", "fix"] {
            assert!(f[k].is_string(), "{f}");
        }
    }
    assert!(!out.contains(mock::TOKEN_INVALID), "token printed in full");
    let home = Home::new(&hub.endpoint);
    let (rc, out, _) = run(home.dsocr(&["doctor"])).await;
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("repo.ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_login_whoami_auth_logout() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let out = home
        .dsocr_with_stdin(
            &["login", "--token-stdin"],
            &format!("{}\n", mock::TOKEN_INVALID),
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "an invalid token is refused");
    assert!(
        !home.env().token_path.exists(),
        "nothing saved for a refused token"
    );

    let out = home
        .dsocr_with_stdin(
            &["login", "--token-stdin"],
            &format!("{}\n", mock::TOKEN_GRANTED),
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("alice")
            && stdout.contains("hf_…pqrs")
            && !stdout.contains(mock::TOKEN_GRANTED),
        "{stdout}"
    );

    let (rc, out, _) = run(home.dsocr(&["whoami"])).await;
    assert_eq!(rc, 0);
    assert!(
        out.contains("alice") && out.contains("acme") && out.contains("\"dsocr-mock\""),
        "{out}"
    );
    assert!(out.contains("created: 2026-07-23 ("), "{out}");
    assert!(!out.contains("can write"), "{out}");
    assert!(!out.contains(mock::TOKEN_GRANTED));

    let home2 = Home::new(&hub.endpoint).set("HF_TOKEN", mock::TOKEN_NOT_GRANTED);
    std::fs::copy(home.env().token_path, home2.env().token_path).expect("copy token");
    let (rc, out, _) = run(home2.dsocr(&["auth", "list"])).await;
    assert_eq!(rc, 0);
    assert!(
        out.contains("used    hf_…rstu from the HF_TOKEN environment variable"),
        "{out}"
    );
    assert!(out.contains("ignored hf_…pqrs"), "{out}");

    let (rc, out, _) = run(home.dsocr(&["logout"])).await;
    assert_eq!(rc, 0, "{out}");
    assert!(!home.env().token_path.exists());
    let (rc, _, err) = run(home.dsocr(&["whoami"])).await;
    assert_eq!(rc, 1);
    assert!(err.contains("no token found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_download_suggests_the_other_repo() {
    let hub = hub(Access::Gated).await;
    let home = Home::new(&hub.endpoint);
    let (rc, _, err) = run(home.dsocr(&["download"])).await;
    assert_eq!(rc, 1);
    assert!(
        err.contains("unsloth/DeepSeek-OCR") && err.contains("gated"),
        "{err}"
    );
}

// ---------------------------------------------------------------- Python interop

async fn python_ok(home: &Home, code: &str) -> String {
    let (rc, out, err) = run(home.python(code)).await;
    assert_eq!(rc, 0, "python failed:\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn python_reads_a_cache_filled_by_dsocr() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let (rc, out, err) = run(home.dsocr(&["download", "--json"])).await;
    assert_eq!(rc, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"plan"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "file_done").count(), 7);
    let last_progress = events
        .iter()
        .rev()
        .find(|e| e["event"] == "progress")
        .expect("progress");
    assert_eq!(last_progress["total_bytes"], last_progress["total_size"]);
    assert!(last_progress["bytes_per_sec"].is_number());
    let ours = cache::scan(&home.cache()).expect("scan");
    let out = python_ok(
        &home,
        &format!(
            r#"
import json, warnings
from huggingface_hub import scan_cache_dir, hf_hub_download
with warnings.catch_warnings():
    warnings.simplefilter("error")
    info = scan_cache_dir()
    path = hf_hub_download("{repo}", "{shard}", local_files_only=True)
    sub = hf_hub_download("{repo}", "assets/fig1.png", local_files_only=True)
repo = list(info.repos)[0]
print(json.dumps({{"warnings": [str(w) for w in info.warnings], "size": repo.size_on_disk,
    "files": repo.nb_files, "refs": sorted(repo.refs), "shard": open(path, "rb").read().hex()[:64],
    "shard_len": len(open(path, "rb").read()), "sub": len(open(sub, "rb").read())}}))
"#,
            repo = mock::DEMO_REPO,
            shard = SHARD
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("python json");
    assert_eq!(v["warnings"], serde_json::json!([]));
    assert_eq!(v["size"], ours.repos[0].size_on_disk);
    assert_eq!(v["files"], 7);
    assert_eq!(v["refs"], serde_json::json!(["main"]));
    assert_eq!(v["shard_len"], SHARD_SIZE);
    assert_eq!(
        v["shard"],
        hex::encode(&mock::pseudo_random(SHARD_SIZE, 1)[..32])
    );
    assert_eq!(v["sub"], 40 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn dsocr_lists_a_cache_filled_by_python() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let out = python_ok(
        &home,
        &format!(
            r#"
from huggingface_hub import snapshot_download, scan_cache_dir
snapshot_download("{}")
print(list(scan_cache_dir().repos)[0].size_on_disk)
"#,
            mock::DEMO_REPO
        ),
    )
    .await;
    let python_size: u64 = out
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .parse()
        .expect("size");
    let (rc, out, err) = run(home.dsocr(&["cache", "ls", "--json"])).await;
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let repo = &v["repos"][0];
    assert_eq!(repo["repo_id"], mock::DEMO_REPO);
    assert_eq!(repo["size_on_disk"], python_size);
    assert_eq!(repo["revisions"][0]["commit"], mock::DEMO_COMMIT);
    assert_eq!(repo["revisions"][0]["refs"], serde_json::json!(["main"]));
    assert_eq!(
        repo["revisions"][0]["files"].as_array().map(Vec::len),
        Some(7)
    );
    assert_eq!(v["warnings"], serde_json::json!([]));
    let (rc, out, _) = run(home.dsocr(&["cache", "ls"])).await;
    assert_eq!(rc, 0);
    assert!(out.contains("main complete"), "{out}");
    // and the Python cache satisfies a dsocr download without refetching
    hub.clear_requests();
    let (outcome, _) = fetch(&home, &demo()).await;
    assert_eq!(outcome.expect("download").downloaded, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_interoperate_with_python_both_ways() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let out = home
        .dsocr_with_stdin(
            &["login", "--token-stdin", "--name", "from-dsocr"],
            mock::TOKEN_GRANTED,
        )
        .await;
    assert_eq!(out.status.code(), Some(0));
    let out = python_ok(
        &home,
        r#"
from huggingface_hub import get_token
from huggingface_hub.utils._auth import get_stored_tokens
print(get_token()); print(sorted(get_stored_tokens().items()))
"#,
    )
    .await;
    assert!(
        out.starts_with(&format!("{}\n", mock::TOKEN_GRANTED)),
        "{out}"
    );
    assert!(
        out.contains(&format!("('from-dsocr', '{}')", mock::TOKEN_GRANTED)),
        "{out}"
    );

    let py = python_ok(
        &home,
        &format!(
            r#"
from huggingface_hub import login
login(token="{}", add_to_git_credential=False)
"#,
            mock::TOKEN_NOT_GRANTED
        ),
    )
    .await;
    let _ = py;
    let status = token::status(&home.env()).expect("status");
    let FoundToken { token, .. } = status.winner().expect("winner").clone();
    assert_eq!(token.expose(), mock::TOKEN_NOT_GRANTED);
    assert_eq!(status.name_of(&token), Some("plain"));
    assert!(
        status
            .stored
            .iter()
            .any(|s| s.name == "from-dsocr" && !s.active)
    );
    let (rc, out, _) = run(home.dsocr(&["auth", "switch", "from-dsocr"])).await;
    assert_eq!(rc, 0, "{out}");
    let out = python_ok(
        &home,
        "from huggingface_hub import get_token; print(get_token())",
    )
    .await;
    assert_eq!(out.trim(), mock::TOKEN_GRANTED);
}

// ---------------------------------------------------------------- traps
// Tokens in startup files and credential stores, LFS pointers, repo ids in another case,
// expired CDN links, token hygiene, pruning, Python's local dirs.

fn findings_json(out: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(out).expect("one JSON object");
    v["findings"].as_array().expect("findings").clone()
}

fn finding<'a>(findings: &'a [serde_json::Value], code: &str) -> &'a serde_json::Value {
    findings
        .iter()
        .find(|f| f["code"] == code)
        .unwrap_or_else(|| panic!("no {code} in {findings:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_doctor_names_the_startup_file_line_that_sets_hf_token() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint).set("HF_TOKEN", mock::TOKEN_INVALID);
    let bashrc = home.dir.path().join(".bashrc");
    std::fs::write(
        &bashrc,
        format!(
            "# ~/.bashrc\nalias ll='ls -l'\nexport HF_TOKEN={}\n",
            mock::TOKEN_INVALID
        ),
    )
    .expect("bashrc");
    // A token written in another file, not exported in this shell.
    std::fs::create_dir_all(home.dir.path().join(".config/fish")).expect("fish dir");
    std::fs::write(
        home.dir.path().join(".config/fish/config.fish"),
        format!("set -gx HUGGING_FACE_HUB_TOKEN {}\n", mock::TOKEN_GRANTED),
    )
    .expect("fish config");
    let (rc, out, _) = run(home.dsocr(&["doctor", "--json"])).await;
    assert_eq!(rc, 1, "{out}");
    assert!(!out.contains(mock::TOKEN_INVALID) && !out.contains(mock::TOKEN_GRANTED));
    let f = findings_json(&out);
    let invalid = finding(&f, "token.invalid");
    let msg = invalid["message"].as_str().expect("message");
    assert!(msg.contains(".bashrc line 3"), "{msg}");
    let fix = invalid["fix"].as_str().expect("fix");
    assert!(
        fix.contains("line 3 of") && fix.contains(".bashrc") && fix.contains("dsocr login"),
        "{fix}"
    );
    let origin = finding(&f, "token.env_from_file");
    let msg = origin["message"].as_str().expect("message");
    assert!(
        msg.contains(".bashrc line 3") && msg.contains("hf_…"),
        "{msg}"
    );
    let plain = finding(&f, "token.plaintext_in_shell_file");
    let msg = plain["message"].as_str().expect("message");
    assert!(msg.contains("config.fish line 1"), "{msg}");
    assert!(
        !msg.contains(".bashrc"),
        "the exported line is not repeated: {msg}"
    );
    assert_eq!(plain["severity"], "warning");
}

#[tokio::test(flavor = "multi_thread")]
async fn diag_git_credentials_and_netrc_are_checked_with_whoami() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let host = hub.endpoint.trim_start_matches("http://");
    std::fs::write(
        home.dir.path().join(".git-credentials"),
        format!(
            "https://me:ghp_x@github.com\nhttp://hf_user:{}@{host}\n",
            mock::TOKEN_INVALID
        ),
    )
    .expect("git-credentials");
    std::fs::write(
        home.dir.path().join(".netrc"),
        format!(
            "machine 127.0.0.1\n  login alice\n  password {}\n",
            mock::TOKEN_GRANTED
        ),
    )
    .expect("netrc");
    let r = diagnose_home(&home).await;
    let bad = expect_code(&r, "token.git_credential_invalid", Severity::Error);
    assert!(bad.message.contains(".git-credentials line 2"), "{bad:?}");
    assert!(bad.fix.contains("delete line 2 of"), "{bad:?}");
    let plain = expect_code(&r, "token.git_credential_plaintext", Severity::Info);
    assert!(
        plain.message.contains(".netrc line 1") && plain.message.contains("valid, user alice"),
        "{plain:?}"
    );
    assert!(!r.ready);
    // The same through the CLI, as a user runs it.
    let (rc, out, _) = run(home.dsocr(&["doctor", "--json"])).await;
    assert_eq!(rc, 1);
    let f = findings_json(&out);
    let msg = finding(&f, "token.git_credential_invalid")["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(msg.contains(".git-credentials"), "{msg}");
    assert!(!out.contains(mock::TOKEN_INVALID), "token printed in full");
}

fn pointer_folder(root: &std::path::Path) -> PathBuf {
    let dir = root.join("cloned-without-lfs");
    std::fs::create_dir_all(&dir).expect("dir");
    // Only the weights, as pointers: the LFS check comes before "no config.json".
    for (name, size) in [
        ("model-00001-of-000001.safetensors", 6_672_212_480u64),
        ("extra.safetensors", 1024),
    ] {
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {size}\n",
            "ab".repeat(32)
        );
        std::fs::write(dir.join(name), pointer).expect("pointer");
    }
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn lfs_pointer_folders_are_named_by_ocr_and_doctor() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let dir = pointer_folder(home.dir.path());
    let image = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/preprocess/letter-1275x1650.base.global.png"
    );
    let dir_arg = dir.to_str().expect("path");
    let (rc, _, err) =
        run(home.dsocr(&["ocr", image, "--model", dir_arg, "--device", "cpu"])).await;
    assert_ne!(rc, 0, "{err}");
    assert!(err.contains("Git LFS pointer"), "{err}");
    assert!(
        err.contains("6.7 GB") && err.contains("git lfs pull"),
        "{err}"
    );
    assert!(!err.contains("header length"), "{err}");
    let (rc, out, _) = run(home.dsocr(&["doctor", "--json", "--model", dir_arg])).await;
    assert_eq!(rc, 1);
    let f = findings_json(&out);
    let lfs = finding(&f, "lfs.pointer");
    assert!(
        lfs["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(SHARD) && m.contains("so are extra.safetensors")),
        "{lfs}"
    );
    assert!(
        lfs["fix"]
            .as_str()
            .is_some_and(|m| m.contains("--local-dir"))
    );
    // `dsocr download --local-dir` replaces the pointers with the real files.
    let (rc, _, err) = run(home.dsocr(&["download", "--local-dir", dir_arg])).await;
    assert_eq!(rc, 0, "{err}");
    let shard = std::fs::read(dir.join(SHARD)).expect("shard");
    assert_eq!(shard, mock::pseudo_random(SHARD_SIZE, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn repo_ids_match_in_any_case_and_reuse_the_cached_folder() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let (outcome, _) = fetch(&home, &demo()).await;
    let first = outcome.expect("download");
    hub.clear_requests();
    let lower = "deepseek-ai/deepseek-ocr";
    let (rc, out, err) = run(home.dsocr(&["download", lower])).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.trim(), first.snapshot.display().to_string());
    assert!(err.contains("deepseek-ai/DeepSeek-OCR"), "{err}");
    assert!(err.contains("models--deepseek-ai--DeepSeek-OCR"), "{err}");
    assert!(err.contains("nothing downloaded"), "{err}");
    let reqs = hub.requests();
    assert!(
        reqs.iter()
            .all(|r| r.server == "hub" && r.target.starts_with("/api/models/")),
        "only model info was asked for: {reqs:?}"
    );
    let folders: Vec<_> = std::fs::read_dir(home.cache())
        .expect("cache")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("models--"))
        .collect();
    assert_eq!(folders.len(), 1, "one copy only");
    // doctor says the typed name differs
    let r = diagnose_with(&home, lower, "main").await;
    let case = expect_code(&r, "repo.case", Severity::Warning);
    assert!(
        case.message.contains("deepseek-ai/DeepSeek-OCR"),
        "{case:?}"
    );
    expect_code(&r, "cache.ok", Severity::Ok);
    // offline, the cache folder is matched in any case
    let offline = Home {
        dir: tempfile::tempdir().expect("dir"),
        vars: home.vars.clone(),
    }
    .set("HF_HUB_OFFLINE", "1");
    let (rc, out, err) = run(offline.dsocr(&["download", "DEEPSEEK-AI/deepseek-ocr"])).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.trim(), first.snapshot.display().to_string());
    let r = diagnose_with(&offline, lower, "main").await;
    expect_code(&r, "repo.case", Severity::Warning);
    expect_code(&r, "cache.ok", Severity::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_link_after_a_drop_is_refreshed_and_completes_in_one_run() {
    const BIG: usize = 8 * 1024 * 1024;
    const DROP: u64 = 5 * 1024 * 1024;
    let config = MockConfig {
        repos: vec![mock::demo_repo(Access::Public, BIG)],
        // 5 MiB take ~1.25 s at 4 MiB/s: the link (1 s) has expired when the resume starts.
        cdn_bytes_per_sec: Some(4 * 1024 * 1024),
        cdn_url_ttl: Some(Duration::from_secs(1)),
        ..MockConfig::default()
    };
    let hub = MockHub::start(config).await.expect("mock hub");
    hub.add_fault(SHARD, FaultKind::DropAfter(DROP));
    let home = Home::new(&hub.endpoint);
    let (rc, out, err) = run(home.dsocr(&["download", "--json", "--include", SHARD])).await;
    assert_eq!(rc, 0, "{out}\n{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let refreshed: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "link_refreshed")
        .collect();
    assert_eq!(refreshed.len(), 1, "{events:?}");
    assert_eq!(refreshed[0]["resume_at"], DROP);
    assert_eq!(refreshed[0]["status"], 403);
    assert!(!out.contains("Signature=") && !err.contains("Signature="));
    let expected = mock::demo_repo(Access::Public, BIG)
        .files
        .into_iter()
        .find(|f| f.path == SHARD)
        .expect("shard");
    let cdn: Vec<(u16, Option<String>, u64)> = hub
        .requests()
        .into_iter()
        .filter(|r| r.server == "cdn" && r.method == "GET")
        .map(|r| (r.status, r.range, r.body_bytes))
        .collect();
    assert_eq!(cdn.len(), 3, "{cdn:?}");
    assert_eq!((cdn[0].0, cdn[0].2), (200, DROP));
    assert_eq!(cdn[1].0, 403, "the old link expired: {cdn:?}");
    assert_eq!(cdn[2].0, 206);
    assert_eq!(cdn[2].1.as_deref(), Some("bytes=5242880-"));
    assert_eq!(cdn[0].2 + cdn[2].2, BIG as u64, "nothing sent twice");
    // sha256-verified: the blob is named by its sha256 and holds exactly the content.
    let paths = RepoPaths::new(&home.cache(), mock::DEMO_REPO).expect("paths");
    let blob = std::fs::read(paths.blob(&expected.etag())).expect("blob");
    assert_eq!(blob, expected.content);
    assert_eq!(paths.partial_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cdn_refusing_fresh_links_is_not_called_a_token_problem() {
    let config = MockConfig {
        repos: vec![mock::demo_repo(Access::Public, SHARD_SIZE)],
        cdn_url_ttl: Some(Duration::ZERO),
        ..MockConfig::default()
    };
    let hub = MockHub::start(config).await.expect("mock hub");
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_GRANTED);
    let req = DownloadRequest {
        include: vec![SHARD.into()],
        ..demo()
    };
    let (result, _) = fetch(&home, &req).await;
    let e = result.expect_err("every link is expired");
    assert!(
        matches!(e, HubError::CdnRefused { status: 403, .. }),
        "{e:?}"
    );
    assert_eq!(e.code(), "download.cdn_refused");
    let text = e.to_string();
    assert!(!text.contains("Signature") && !text.contains('?'), "{text}");
    assert!(!text.contains("give your token"), "{text}");
    let refusals = hub
        .requests()
        .iter()
        .filter(|r| r.server == "cdn" && r.status == 403)
        .count();
    assert_eq!(refusals, 3, "first link plus two fresh ones");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_hygiene_write_role_and_age() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    home.save_token(mock::TOKEN_WRITE_OLD);
    let r = diagnose_home(&home).await;
    let ok = expect_code(&r, "token.ok", Severity::Ok);
    assert!(ok.message.contains("created 2024-01-05"), "{ok:?}");
    let w = expect_code(&r, "token.more_than_read", Severity::Warning);
    assert!(w.fix.contains("a read token is enough"), "{w:?}");
    expect_code(&r, "token.old", Severity::Info);
    let (rc, out, _) = run(home.dsocr(&["whoami"])).await;
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("created: 2024-01-05") && out.contains("consider rotating"),
        "{out}"
    );
    assert!(out.contains("a read token is enough"), "{out}");
    home.save_token(mock::TOKEN_GRANTED);
    let r = diagnose_home(&home).await;
    assert!(r.get("token.more_than_read").is_none() && r.get("token.old").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_login_token_flag_warns_and_org_tokens_are_refused() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let (rc, _, err) = run(home.dsocr(&["login", "--token", mock::TOKEN_GRANTED])).await;
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("shell history") && err.contains("ps"), "{err}");
    let (rc, _, err) = run(home.dsocr(&["login", "--token", "api_org_abcdefghijklmnop"])).await;
    assert_eq!(rc, 1);
    assert!(
        err.contains("error [token.org_token]: organisation tokens"),
        "{err}"
    );
    assert_eq!(
        token::check_login_token(&token::Secret::new("api_org_x").expect("secret"))
            .expect_err("org")
            .code(),
        "token.org_token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_prune_removes_detached_revisions_only() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let (outcome, _) = fetch(&home, &demo()).await;
    let outcome = outcome.expect("download");
    let paths = RepoPaths::new(&home.cache(), mock::DEMO_REPO).expect("paths");
    // An older revision no ref points to: one file shared with main, one blob of its own.
    let old = "1111111111111111111111111111111111111111";
    let old_dir = paths.snapshot_dir(old);
    std::fs::create_dir_all(&old_dir).expect("old snapshot");
    std::fs::write(paths.blob("0ld0b10b"), b"only the old revision").expect("blob");
    std::os::unix::fs::symlink("../../blobs/0ld0b10b", old_dir.join("old.txt")).expect("link");
    let shared = std::fs::read_link(outcome.snapshot.join("config.json")).expect("link");
    std::os::unix::fs::symlink(&shared, old_dir.join("config.json")).expect("link");
    let (rc, out, _) = run(home.dsocr(&["cache", "prune", "--dry-run"])).await;
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains(&format!("would remove {}@{old} (21 B)", mock::DEMO_REPO)),
        "{out}"
    );
    assert!(
        old_dir.is_dir() && paths.blob("0ld0b10b").is_file(),
        "dry run deleted"
    );
    let (rc, out, _) = run(home.dsocr(&["cache", "prune"])).await;
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("1 detached revision(s), 21 B freed"), "{out}");
    assert!(!old_dir.exists() && !paths.blob("0ld0b10b").exists());
    assert!(
        outcome.snapshot.join("config.json").is_file(),
        "main kept its shared blob"
    );
    assert!(cache::prune(&home.cache(), true).expect("prune").is_empty());
}

#[test]
fn hub_errors_have_stable_codes_and_fixes() {
    let errors = [
        HubError::InvalidToken {
            origin: token::TokenSource::EnvHfToken,
        },
        HubError::RepoNotFound {
            repo: "o/r".into(),
            token_sent: false,
        },
        HubError::GatedLoginRequired { repo: "o/r".into() },
        HubError::RateLimited { retry_after: None },
        HubError::DiskFull {
            dir: PathBuf::from("/x"),
            needed: 2,
            available: 1,
        },
    ];
    for e in &errors {
        assert!(
            diagnose::CODES.contains(&e.code()),
            "{} is not a doctor code",
            e.code()
        );
        assert!(!e.fix().is_empty());
    }
    assert_eq!(
        dsocr::hub::error::short_url(
            "http://localhost:9/blobs/abc?Expires=1&Signature=deadbeef&Key-Pair-Id=K"
        ),
        "http://localhost:9/blobs/abc"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_local_dir_is_checked_against_the_repo_and_resumed() {
    let hub = hub(Access::Public).await;
    let home = Home::new(&hub.endpoint);
    let dir = home.dir.path().join("deepseek_ocr");
    let dir_s = dir.display().to_string();
    let shard = mock::demo_repo(Access::Public, SHARD_SIZE)
        .files
        .into_iter()
        .find(|f| f.path == SHARD)
        .expect("shard");
    // Python downloads everything, then the shard is "interrupted": its file and metadata go,
    // and Python's partial file holds its first MiB, under the name huggingface_hub gives it.
    let partial = python_ok(
        &home,
        &format!(
            r#"
from pathlib import Path
from huggingface_hub import snapshot_download
from huggingface_hub._local_folder import get_local_download_paths
snapshot_download("{repo}", local_dir="{dir_s}")
p = get_local_download_paths(Path("{dir_s}"), "{SHARD}")
p.file_path.unlink(); p.metadata_path.unlink()
print(p.incomplete_path("{etag}"))
"#,
            repo = mock::DEMO_REPO,
            etag = shard.etag()
        ),
    )
    .await;
    std::fs::write(partial.trim(), &shard.content[..1 << 20]).expect("partial");
    let (rc, out, _) = run(home.dsocr(&["doctor", "--json", "--model", &dir_s])).await;
    assert_eq!(rc, 1, "{out}");
    let f = findings_json(&out);
    let msg = finding(&f, "model.incomplete")["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(
        msg.contains("Python local_dir") && msg.contains(SHARD) && msg.contains("1 of 7"),
        "{msg}"
    );
    assert!(
        msg.contains("1.0 MB already downloaded will be resumed"),
        "{msg}"
    );
    hub.clear_requests();
    let (rc, _, err) = run(home.dsocr(&["download", "--local-dir", &dir_s])).await;
    assert_eq!(rc, 0, "{err}");
    let cdn: Vec<(Option<String>, u64)> = hub
        .requests()
        .into_iter()
        .filter(|r| r.server == "cdn" && r.method == "GET")
        .map(|r| (r.range, r.body_bytes))
        .collect();
    assert_eq!(
        cdn,
        vec![(
            Some("bytes=1048576-".to_string()),
            (SHARD_SIZE - (1 << 20)) as u64
        )],
        "only the rest of the shard is fetched; the other files are taken from the folder"
    );
    assert_eq!(
        std::fs::read(dir.join(SHARD)).expect("shard"),
        shard.content
    );
    assert!(!std::path::Path::new(partial.trim()).exists());
    let (rc, out, _) = run(home.dsocr(&["doctor", "--json", "--model", &dir_s])).await;
    let f = findings_json(&out);
    assert_eq!(finding(&f, "model.ok")["severity"], "ok", "{out}");
    assert_eq!(rc, 0, "{out}");
}
