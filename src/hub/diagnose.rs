//! Root-cause diagnosis: `dsocr doctor` and the dashboard's doctor panel.
//!
//! [`diagnose`] checks, in order: the environment, every token source, offline mode, the
//! endpoint (reachable, latency, really a hub), whoami, the repo (model info + `HEAD` of
//! `config.json`), the local cache (missing / incomplete / corrupt / complete), free disk for
//! what is missing, and the libtorch facts the caller passes in ([`TorchFacts`]; the hub layer
//! does not load libtorch itself). Each [`Finding`] has a stable `code` (listed in
//! [`CODES`]), a [`Severity`], a one-line `message` and a `fix`. The report is `ready` when no
//! finding is an error.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::HubError;
use super::cache::{RepoPaths, completeness};
use super::client::{HubClient, ModelInfo, RetryPolicy};
use super::credentials::{self, StoredCredential};
use super::download::{ALTERNATE_REPO, DEFAULT_REPO};
use super::env::HubEnv;
use super::fsutil::available_space;
use super::shellrc::{self, TokenLine};
use super::token::{self, FoundToken, Secret, TokenSource, TokenStatus};
use crate::units::human_bytes;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// All good.
    Ok,
    /// Worth knowing.
    Info,
    /// Works, but something is off.
    Warning,
    /// Blocks downloading or running the model.
    Error,
}

/// One diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier, e.g. `token.invalid`.
    pub code: &'static str,
    /// How bad.
    pub severity: Severity,
    /// What is the case, in one line (tokens masked).
    pub message: String,
    /// What to do (empty when nothing).
    pub fix: String,
}

/// The whole diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Findings in check order.
    pub findings: Vec<Finding>,
    /// No finding is an error.
    pub ready: bool,
}

impl Report {
    /// The finding with this code, if any.
    pub fn get(&self, code: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }
}

/// Every code [`diagnose`] can emit.
pub const CODES: &[&str] = &[
    "env.summary",
    "token.none",
    "token.sources",
    "token.ok",
    "token.invalid",
    "token.env_shadows_file",
    "token.file_permissions",
    "token.unreadable",
    "token.implicit_disabled",
    "token.env_from_file",
    "token.plaintext_in_shell_file",
    "token.git_credential_invalid",
    "token.git_credential_plaintext",
    "token.more_than_read",
    "token.old",
    "offline.enabled",
    "endpoint.ok",
    "endpoint.unreachable",
    "endpoint.not_a_hub",
    "repo.ok",
    "repo.case",
    "repo.not_found",
    "repo.gated.login_required",
    "repo.gated.not_granted",
    "repo.forbidden",
    "repo.revision_not_found",
    "repo.error",
    "rate_limited",
    "disk.ok",
    "disk.insufficient",
    "cache.missing",
    "cache.incomplete",
    "cache.corrupt",
    "cache.ok",
    "lfs.pointer",
    "model.ok",
    "model.incomplete",
    "torch.ok",
    "torch.cuda_unavailable",
];

/// libtorch facts, filled by the caller (the CLI asks `tch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorchFacts {
    /// `tch::Cuda::is_available()`.
    pub cuda_available: bool,
    /// `tch::Cuda::device_count()`.
    pub device_count: i64,
}

/// What to diagnose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnoseOptions {
    /// The repo to check.
    pub repo: String,
    /// Its revision.
    pub revision: String,
    /// libtorch facts, when known.
    pub torch: Option<TorchFacts>,
    /// A local model folder to check too (`dsocr doctor --model DIR`, the dashboard's folder).
    pub model_dir: Option<PathBuf>,
}

impl Default for DiagnoseOptions {
    fn default() -> Self {
        DiagnoseOptions {
            repo: DEFAULT_REPO.into(),
            revision: "main".into(),
            torch: None,
            model_dir: None,
        }
    }
}

struct Diag {
    findings: Vec<Finding>,
}

impl Diag {
    fn add(
        &mut self,
        code: &'static str,
        severity: Severity,
        message: String,
        fix: impl Into<String>,
    ) {
        if !self.findings.iter().any(|f| f.code == code) {
            self.findings.push(Finding {
                code,
                severity,
                message,
                fix: fix.into(),
            });
        }
    }
}

/// Runs every check (one attempt per request, no retries). Never fails: problems are findings.
pub async fn diagnose(env: &HubEnv, opts: &DiagnoseOptions) -> Report {
    let mut d = Diag {
        findings: Vec::new(),
    };
    let set: Vec<String> = env
        .set_variables
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    d.add(
        "env.summary",
        Severity::Info,
        format!(
            "endpoint {}, cache {}, token file {}{}",
            env.endpoint,
            env.hub_cache.display(),
            env.token_path.display(),
            if set.is_empty() {
                String::new()
            } else {
                format!("; set: {}", set.join(" "))
            }
        ),
        "",
    );
    let status = match token::status(env) {
        Ok(s) => Some(s),
        Err(e) => {
            d.add(
                "token.unreadable",
                Severity::Error,
                e.to_string(),
                "fix the file's permissions or remove it",
            );
            None
        }
    };
    let shell_lines = shellrc::scan(env);
    if let Some(s) = &status {
        local_token_checks(&mut d, s);
    }
    shell_file_checks(&mut d, env, &shell_lines);
    let info = if env.offline {
        d.add(
            "offline.enabled",
            Severity::Warning,
            "offline mode is on (HF_HUB_OFFLINE): the hub is not contacted, only the cache is used"
                .into(),
            "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to download or check access",
        );
        None
    } else {
        online_checks(&mut d, env, status.as_ref(), &shell_lines, opts).await
    };
    credential_checks(&mut d, env).await;
    cache_checks(&mut d, env, opts, info.as_ref());
    if let Some(dir) = &opts.model_dir {
        model_dir_check(&mut d, dir, info.as_ref());
    }
    if let Some(t) = opts.torch {
        torch_check(&mut d, t);
    }
    let ready = !d.findings.iter().any(|f| f.severity == Severity::Error);
    Report {
        findings: d.findings,
        ready,
    }
}

fn local_token_checks(d: &mut Diag, s: &TokenStatus) {
    let Some(winner) = s.winner() else {
        d.add(
            "token.none",
            Severity::Info,
            format!(
                "no token found (HF_TOKEN, HUGGING_FACE_HUB_TOKEN, {}): requests are anonymous",
                s.token_path.display()
            ),
            "public repos work without one; for gated or private repos run `dsocr login`",
        );
        return;
    };
    let sources: Vec<String> = s
        .found
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "{} {} ({})",
                f.source,
                f.token,
                if i == 0 { "used" } else { "ignored" }
            )
        })
        .collect();
    d.add("token.sources", Severity::Info, sources.join("; "), "");
    if let Some(file) = s.shadowed_file() {
        d.add(
            "token.env_shadows_file",
            Severity::Warning,
            format!(
                "{} ({}) is used instead of the saved login in {} ({})",
                winner.source,
                winner.token,
                s.token_path.display(),
                file.token
            ),
            "unset the variable to use the saved login, or make it hold the token you mean",
        );
    }
    if let Some(mode) = s.file_mode.filter(|m| m & 0o077 != 0) {
        d.add(
            "token.file_permissions",
            Severity::Warning,
            format!(
                "the token file {} is readable by others (mode {mode:o})",
                s.token_path.display()
            ),
            format!("chmod 600 {}", s.token_path.display()),
        );
    }
    if s.implicit_disabled {
        d.add(
            "token.implicit_disabled",
            Severity::Info,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN is set: the token is not sent with requests".into(),
            "unset it to send the token (needed for gated or private repos)",
        );
    }
}

/// The startup-file line that sets the variable `source` names, when it is one.
fn env_origin<'a>(
    env: &HubEnv,
    lines: &'a [TokenLine],
    source: &TokenSource,
) -> Option<&'a TokenLine> {
    let (var, value) = match source {
        TokenSource::EnvHfToken => ("HF_TOKEN", env.env_token.as_deref()),
        TokenSource::EnvLegacy => ("HUGGING_FACE_HUB_TOKEN", env.legacy_env_token.as_deref()),
        _ => return None,
    };
    shellrc::origin(lines, var, &Secret::new(value?)?)
}

/// `token.env_from_file` (a set token variable and the startup-file line that sets it) and
/// `token.plaintext_in_shell_file` (other tokens written in startup files).
fn shell_file_checks(d: &mut Diag, env: &HubEnv, lines: &[TokenLine]) {
    let mut origins: Vec<&TokenLine> = Vec::new();
    let mut said = Vec::new();
    let mut fixes = Vec::new();
    for (source, var, value) in [
        (TokenSource::EnvHfToken, "HF_TOKEN", &env.env_token),
        (
            TokenSource::EnvLegacy,
            "HUGGING_FACE_HUB_TOKEN",
            &env.legacy_env_token,
        ),
    ] {
        let Some(secret) = value.as_deref().and_then(Secret::new) else {
            continue;
        };
        let Some(line) = env_origin(env, lines, &source) else {
            continue;
        };
        origins.push(line);
        let written = match &line.token {
            Some(t) if *t == secret => format!("{var}={t}"),
            Some(t) => format!("{var}={t}, a different value: something later sets it again"),
            None => format!("{var} from a command or variable"),
        };
        said.push(format!(
            "{var} ({secret}) is set in {} ({written})",
            line.location()
        ));
        fixes.push(format!(
            "edit line {} of {} to hold the token you mean, or remove that line and use `dsocr login`",
            line.line,
            line.file.display()
        ));
    }
    if !said.is_empty() {
        d.add(
            "token.env_from_file",
            Severity::Info,
            format!(
                "{}: it comes back in every new shell, so `unset` lasts for one shell only",
                said.join("; ")
            ),
            format!("{}; then open a new shell", fixes.join("; ")),
        );
    }
    let plain: Vec<String> = lines
        .iter()
        .filter(|l| l.token.is_some() && !origins.contains(l))
        .map(|l| {
            format!(
                "{} ({}{})",
                l.location(),
                l.token.as_ref().map(Secret::masked).unwrap_or_default(),
                l.variable
                    .as_deref()
                    .map(|v| format!(" in {v}, not exported in this shell"))
                    .unwrap_or_default()
            )
        })
        .collect();
    if !plain.is_empty() {
        d.add(
            "token.plaintext_in_shell_file",
            Severity::Warning,
            format!(
                "a token is written in plain text in a shell startup file: {}",
                plain.join("; ")
            ),
            "remove the line and use `dsocr login` (it saves the token with mode 0600); revoke the token at https://huggingface.co/settings/tokens if the file was ever shared",
        );
    }
}

/// `token.git_credential_invalid` / `token.git_credential_plaintext`: hub tokens in git's
/// store files and `~/.netrc`, each checked with whoami (unless offline).
async fn credential_checks(d: &mut Diag, env: &HubEnv) {
    let found = credentials::find(env);
    if found.is_empty() {
        return;
    }
    let (mut rejected, mut plain) = (Vec::new(), Vec::new());
    for c in &found {
        let verdict = if env.offline {
            None
        } else {
            Some(check_credential(env, c).await)
        };
        match verdict {
            Some(Err(HubError::InvalidToken { .. })) => rejected.push(c),
            Some(Ok(user)) => plain.push(format!(
                "{} ({}, valid, user {user})",
                c.location(),
                c.token
            )),
            Some(Err(e)) => plain.push(format!(
                "{} ({}, not checked: {})",
                c.location(),
                c.token,
                e.code()
            )),
            None => plain.push(format!(
                "{} ({}, not checked: offline)",
                c.location(),
                c.token
            )),
        }
    }
    if !rejected.is_empty() {
        let list: Vec<String> = rejected
            .iter()
            .map(|c| format!("{} ({} for {})", c.location(), c.token, c.host))
            .collect();
        let fixes: Vec<String> = rejected
            .iter()
            .map(|c| format!("delete line {} of {}", c.line, c.file.display()))
            .collect();
        d.add(
            "token.git_credential_invalid",
            Severity::Error,
            format!(
                "git keeps a token the hub rejects (invalid, revoked or expired): {}; `git clone`/`git pull` of hub repos fail with it",
                list.join("; ")
            ),
            format!(
                "{} (or run `git credential reject` for the host); then, if git needs one, `dsocr login` and use a credential helper that does not store tokens in plain text",
                fixes.join("; ")
            ),
        );
    }
    if !plain.is_empty() {
        d.add(
            "token.git_credential_plaintext",
            Severity::Info,
            format!(
                "a hub token sits in plain text for git: {}",
                plain.join("; ")
            ),
            "prefer a credential helper that encrypts (`git config --global credential.helper libsecret`, or `cache`) and delete the line",
        );
    }
}

/// whoami with a stored credential: the user name, or why not.
async fn check_credential(env: &HubEnv, c: &StoredCredential) -> Result<String, HubError> {
    let found = FoundToken {
        source: TokenSource::Credential(c.location()),
        token: c.token.clone(),
    };
    let client = HubClient::new(env.clone(), Some(found))?.with_retry(RetryPolicy::none());
    client.whoami().await.map(|w| w.name)
}

/// The findings for a local model folder alone (`lfs.pointer`, `model.incomplete` or
/// `model.ok`): for the dashboard's folder and `serve`.
pub fn model_dir_findings(dir: &Path) -> Vec<Finding> {
    let mut d = Diag {
        findings: Vec::new(),
    };
    model_dir_check(&mut d, dir, None);
    d.findings
}

fn model_dir_check(d: &mut Diag, dir: &Path, info: Option<&ModelInfo>) {
    if !dir.is_dir() {
        d.add(
            "model.incomplete",
            Severity::Error,
            format!("the model folder {} does not exist", dir.display()),
            "give the folder holding config.json, tokenizer.json and *.safetensors",
        );
        return;
    }
    if let Some(problem) = super::lfs::folder_problem(dir) {
        d.add(
            "lfs.pointer",
            Severity::Error,
            problem,
            super::lfs::fix_for(dir),
        );
        return;
    }
    if let (Some(local), Some(info)) = (super::localdir::read(dir), info) {
        local_dir_against_info(d, &local, info);
        return;
    }
    let has_weights = std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        })
        .unwrap_or(false);
    let mut lacking: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .map(str::to_string)
        .collect();
    if !has_weights {
        lacking.push("*.safetensors".into());
    }
    lacking.extend(
        completeness(dir)
            .missing
            .into_iter()
            .filter(|m| m.ends_with(".safetensors")),
    );
    if lacking.is_empty() {
        d.add(
            "model.ok",
            Severity::Ok,
            format!(
                "the model folder {} has its config, tokenizer and weights",
                dir.display()
            ),
            "",
        );
    } else {
        d.add(
            "model.incomplete",
            Severity::Error,
            format!(
                "the model folder {} lacks {}",
                dir.display(),
                lacking.join(", ")
            ),
            format!(
                "`dsocr download --local-dir {}` fetches the missing files",
                dir.display()
            ),
        );
    }
}

/// A Python `snapshot_download(local_dir=…)` folder compared with the repo's files.
fn local_dir_against_info(d: &mut Diag, local: &super::localdir::LocalDir, info: &ModelInfo) {
    let dir = &local.dir;
    let commits: std::collections::BTreeSet<&str> =
        local.files.iter().map(|f| f.commit.as_str()).collect();
    let at = match commits.iter().next() {
        Some(c) if commits.len() == 1 => format!("commit {}", short(c)),
        Some(_) => format!("{} commits", commits.len()),
        None => "no file recorded yet".into(),
    };
    let (mut missing, mut missing_bytes, mut partial) = (Vec::new(), 0u64, 0u64);
    for s in &info.siblings {
        let size = s.size.unwrap_or(0);
        let ok = std::fs::metadata(dir.join(&s.rfilename))
            .is_ok_and(|m| m.is_file() && s.size.is_none_or(|n| n == m.len()));
        if !ok {
            missing.push(s.rfilename.clone());
            missing_bytes += size;
            if let Some(etag) = s
                .lfs
                .as_ref()
                .map(|l| l.sha256.as_str())
                .or(s.blob_id.as_deref())
                && let Some((_, n)) = local.partial(&s.rfilename, etag)
            {
                partial += n;
            }
        }
    }
    let what = format!(
        "{} (a Python local_dir download of {}, {at})",
        dir.display(),
        info.id
    );
    let stale = if commits.len() == 1 && !commits.contains(info.sha.as_str()) {
        format!("; the hub is now at {}", short(&info.sha))
    } else {
        String::new()
    };
    if missing.is_empty() {
        d.add(
            "model.ok",
            Severity::Ok,
            format!("{what} has every file of the repo{stale}"),
            "",
        );
    } else {
        let resumes = if partial > 0 {
            format!(
                "; {} already downloaded will be resumed",
                human_bytes(partial)
            )
        } else {
            String::new()
        };
        d.add(
            "model.incomplete",
            Severity::Error,
            format!(
                "{what} lacks {} of {} files ({}): {}{resumes}{stale}",
                missing.len(),
                info.siblings.len(),
                human_bytes(missing_bytes),
                missing.join(", ")
            ),
            format!(
                "dsocr download {} --local-dir {} (it resumes Python's partial files)",
                info.id,
                dir.display()
            ),
        );
    }
}

/// Endpoint, whoami and repo checks; returns the model info when it could be read.
async fn online_checks(
    d: &mut Diag,
    env: &HubEnv,
    status: Option<&TokenStatus>,
    shell_lines: &[TokenLine],
    opts: &DiagnoseOptions,
) -> Option<ModelInfo> {
    let sent = status.and_then(|s| s.to_send().cloned());
    let client = match HubClient::new(env.clone(), sent.clone()) {
        Ok(c) => c.with_retry(RetryPolicy::none()),
        Err(e) => {
            d.add(
                "endpoint.unreachable",
                Severity::Error,
                e.to_string(),
                "fix HF_ENDPOINT",
            );
            return None;
        }
    };
    let started = Instant::now();
    let first = client.model_info(&opts.repo, Some(&opts.revision)).await;
    let ms = started.elapsed().as_millis();
    match &first {
        Err(e @ HubError::Unreachable { .. }) => {
            d.add(
                "endpoint.unreachable",
                Severity::Error,
                e.to_string(),
                "check the network, proxy variables (HTTPS_PROXY, NO_PROXY) and HF_ENDPOINT",
            );
            return None;
        }
        Err(e @ HubError::NotAHub { .. }) => {
            d.add(
                "endpoint.not_a_hub",
                Severity::Error,
                e.to_string(),
                "log in to the captive portal or fix the proxy, or correct HF_ENDPOINT",
            );
            return None;
        }
        _ => d.add(
            "endpoint.ok",
            Severity::Ok,
            format!("{} answers as a hub ({ms} ms)", env.endpoint),
            "",
        ),
    }
    let token_invalid = sent.is_some() && matches!(first, Err(HubError::InvalidToken { .. }));
    if let Some(found) = &sent {
        let origin = env_origin(env, shell_lines, &found.source);
        whoami_check(d, &client, found, status, origin).await;
    }
    let (repo_client, info) = if token_invalid {
        let anon = client.anonymous();
        let again = anon.model_info(&opts.repo, Some(&opts.revision)).await;
        if again
            .as_ref()
            .is_ok_and(|i| i.gated.is_none() && !i.private)
        {
            note_public_fallback(d, &opts.repo);
        }
        (anon, again)
    } else {
        (client, first)
    };
    if let Ok(i) = &info {
        case_check(d, &opts.repo, &i.id, &env.hub_cache);
    }
    repo_checks(d, &repo_client, opts, info).await
}

/// `repo.case`: the name typed differs from the hub's (canonical) one.
fn case_check(d: &mut Diag, typed: &str, canonical: &str, cache: &Path) {
    if canonical.is_empty() || canonical == typed {
        return;
    }
    let how = if canonical.eq_ignore_ascii_case(typed) {
        "the hub matches repo ids in any case, but the Hugging Face cache does not: Python keeps a second full copy under the other spelling"
    } else {
        "the hub redirected the old name"
    };
    let folder = RepoPaths::new(cache, canonical)
        .ok()
        .filter(RepoPaths::exists)
        .map(|p| format!("; dsocr uses the cached folder {}", p.repo_dir.display()))
        .unwrap_or_default();
    d.add(
        "repo.case",
        Severity::Warning,
        format!("you asked for {typed}; the hub's name is {canonical} ({how}){folder}"),
        format!("write {canonical} (in scripts, `from_pretrained` and `snapshot_download` too)"),
    );
}

async fn whoami_check(
    d: &mut Diag,
    client: &HubClient,
    found: &token::FoundToken,
    status: Option<&TokenStatus>,
    rc_origin: Option<&TokenLine>,
) {
    match client.whoami().await {
        Ok(who) => {
            let role = who.token_role.as_deref().unwrap_or("unknown role");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_secs());
            let age = who.token_age_days(now);
            let created = match (&who.token_created_at, age) {
                (Some(at), Some(days)) => {
                    format!(", created {} ({days} days ago)", at.get(..10).unwrap_or(at))
                }
                _ => String::new(),
            };
            let set_in = rc_origin
                .map(|l| format!(" (set in {})", l.location()))
                .unwrap_or_default();
            d.add(
                "token.ok",
                Severity::Ok,
                format!(
                    "logged in as {} (token {:?}, {role}, {}{created}) from {}{set_in}",
                    who.name, who.token_name, found.token, found.source
                ),
                "",
            );
            token_hygiene(d, &who, found, age);
        }
        Err(HubError::InvalidToken { origin }) => {
            let shadow = status
                .and_then(|s| s.shadowed_file())
                .map(|f| {
                    format!(
                        "; it shadows the different saved login in {} ({})",
                        f.source, f.token
                    )
                })
                .unwrap_or_default();
            let set_in = rc_origin
                .map(|l| format!("; the variable is set in {}", l.location()))
                .unwrap_or_default();
            let fix = if let Some(l) = rc_origin {
                format!(
                    "edit line {} of {} to hold a valid token, or remove that line and use `dsocr login`; then open a new shell (`unset` fixes this shell only)",
                    l.line,
                    l.file.display()
                )
            } else if origin.is_env() && !shadow.is_empty() {
                "unset the variable to use the saved login, or set it to a valid token".to_string()
            } else if origin.is_env() {
                "set the variable to a valid token or unset it; create tokens at https://huggingface.co/settings/tokens".to_string()
            } else {
                "run `dsocr login` with a valid token, or `dsocr logout` to go anonymous"
                    .to_string()
            };
            d.add(
                "token.invalid",
                Severity::Error,
                format!(
                    "the token {} from {origin} is rejected: 401 Invalid credentials in Authorization header (invalid, revoked or expired){set_in}{shadow}",
                    found.token
                ),
                fix,
            );
        }
        Err(e @ HubError::RateLimited { .. }) => rate_limited(d, &e),
        Err(e) => d.add(
            "token.invalid",
            Severity::Error,
            format!("whoami failed: {e}"),
            "check the token with `dsocr whoami`",
        ),
    }
}

/// `token.more_than_read` and `token.old`.
fn token_hygiene(d: &mut Diag, who: &super::client::WhoAmI, found: &FoundToken, age: Option<u64>) {
    if who.can_write() {
        d.add(
            "token.more_than_read",
            Severity::Warning,
            format!(
                "the token {} ({:?}) can write to the hub, but downloading only reads",
                found.token, who.token_name
            ),
            "a read token is enough: create one (type Read) at https://huggingface.co/settings/tokens and `dsocr login` with it",
        );
    }
    if let Some(days) = age.filter(|d| *d > 365) {
        d.add(
            "token.old",
            Severity::Info,
            format!("the token {} was created {days} days ago", found.token),
            "rotate it: create a new token, `dsocr login` with it, then delete the old one at https://huggingface.co/settings/tokens",
        );
    }
}

fn note_public_fallback(d: &mut Diag, repo: &str) {
    if let Some(f) = d.findings.iter_mut().find(|f| f.code == "token.invalid") {
        f.message.push_str(&format!(
            "; {repo} is public, so downloads retry anonymously"
        ));
    }
}

fn rate_limited(d: &mut Diag, e: &HubError) {
    d.add(
        "rate_limited",
        Severity::Error,
        e.to_string(),
        "wait a few minutes; logged-in users get higher limits",
    );
}

async fn repo_checks(
    d: &mut Diag,
    client: &HubClient,
    opts: &DiagnoseOptions,
    info: Result<ModelInfo, HubError>,
) -> Option<ModelInfo> {
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            repo_error(d, client, opts, e);
            return None;
        }
    };
    match client
        .file_metadata(&opts.repo, &info.sha, "config.json")
        .await
    {
        Ok(_) | Err(HubError::EntryNotFound { .. }) => {
            let size: u64 = info.siblings.iter().filter_map(|s| s.size).sum();
            d.add(
                "repo.ok",
                Severity::Ok,
                format!(
                    "{}@{} is readable: commit {}, {} files, {}",
                    opts.repo,
                    opts.revision,
                    short(&info.sha),
                    info.siblings.len(),
                    human_bytes(size)
                ),
                "",
            );
            Some(info)
        }
        Err(e) => {
            repo_error(d, client, opts, e);
            Some(info)
        }
    }
}

fn repo_error(d: &mut Diag, client: &HubClient, opts: &DiagnoseOptions, e: HubError) {
    let other = if opts.repo == ALTERNATE_REPO {
        DEFAULT_REPO
    } else {
        ALTERNATE_REPO
    };
    match e {
        HubError::RepoNotFound { token_sent, .. } => {
            let msg = if token_sent {
                format!("{} not found (a token was sent: the name is wrong or your account cannot see it)", opts.repo)
            } else {
                format!("{} not found, or private: log in (no token was sent)", opts.repo)
            };
            d.add("repo.not_found", Severity::Error, msg,
                format!("check the name (the known DeepSeek-OCR repos are {DEFAULT_REPO} and {other}); for a private repo run `dsocr login`"));
        }
        HubError::GatedLoginRequired { .. } => d.add(
            "repo.gated.login_required", Severity::Error,
            format!("{} is gated and the request was anonymous", opts.repo),
            format!("run `dsocr login` with a token of an account that accepted the terms at {}; or try {other}", client.repo_page(&opts.repo)),
        ),
        HubError::GatedNotGranted { url, .. } => d.add(
            "repo.gated.not_granted", Severity::Error,
            format!("{} is gated and your account has not been granted access", opts.repo),
            format!("accept the terms at {url} (or wait for manual approval); or try {other}"),
        ),
        HubError::Forbidden { message, .. } => d.add(
            "repo.forbidden", Severity::Error,
            format!("access to {} is forbidden: {message}", opts.repo),
            "give your fine-grained token read access to this repo (and to gated repos)",
        ),
        HubError::RevisionNotFound { .. } => d.add(
            "repo.revision_not_found", Severity::Error,
            format!("revision {} does not exist in {}", opts.revision, opts.repo),
            "use an existing branch, tag or commit (default: main)",
        ),
        e @ HubError::RateLimited { .. } => rate_limited(d, &e),
        HubError::InvalidToken { .. } => {} // already reported by whoami
        e => d.add("repo.error", Severity::Error, e.to_string(), "retry later"),
    }
}

fn cache_checks(d: &mut Diag, env: &HubEnv, opts: &DiagnoseOptions, info: Option<&ModelInfo>) {
    let repo = info
        .map(|i| i.id.as_str())
        .filter(|id| !id.is_empty())
        .unwrap_or(&opts.repo);
    let Ok(paths) = RepoPaths::new(&env.hub_cache, repo) else {
        return;
    };
    if info.is_none() && paths.exists() && paths.repo_id() != opts.repo {
        d.add(
            "repo.case",
            Severity::Warning,
            format!(
                "you asked for {}; the cache holds it as {} (the hub matches repo ids in any case, the cache does not)",
                opts.repo,
                paths.repo_id()
            ),
            format!("write {}", paths.repo_id()),
        );
    }
    let commit = info
        .map(|i| i.sha.clone())
        .or_else(|| paths.resolve_revision(&opts.revision));
    let snapshot = commit
        .as_ref()
        .map(|c| paths.snapshot_dir(c))
        .filter(|s| s.is_dir());
    let fetch = format!("dsocr download {repo} --revision {}", opts.revision);
    let missing_bytes = match (info, &snapshot) {
        (Some(info), _) => cache_against_info(d, &paths, info, &fetch),
        (None, Some(snapshot)) => {
            let c = completeness(snapshot);
            if let Some(problem) = super::lfs::folder_problem(snapshot) {
                d.add("lfs.pointer", Severity::Error, problem, fetch.clone());
            } else if c.is_complete() {
                d.add(
                    "cache.ok",
                    Severity::Ok,
                    format!("{} has every file DeepSeek-OCR needs", snapshot.display()),
                    "",
                );
            } else {
                d.add(
                    "cache.incomplete",
                    Severity::Warning,
                    format!("{} lacks {}", snapshot.display(), c.missing.join(", ")),
                    fetch.clone(),
                );
            }
            None
        }
        (None, None) => {
            d.add(
                "cache.missing",
                Severity::Warning,
                format!(
                    "{}@{} is not in the cache {}",
                    opts.repo,
                    opts.revision,
                    env.hub_cache.display()
                ),
                fetch,
            );
            None
        }
    };
    if let Some(needed) = missing_bytes {
        disk_check(d, &paths, needed);
    }
}

/// Compares the snapshot with model info; returns the bytes still missing.
fn cache_against_info(
    d: &mut Diag,
    paths: &RepoPaths,
    info: &ModelInfo,
    fetch: &str,
) -> Option<u64> {
    let snapshot = paths.snapshot_dir(&info.sha);
    let (mut missing, mut corrupt, mut missing_bytes) = (Vec::new(), Vec::new(), 0u64);
    for s in &info.siblings {
        let file = snapshot.join(&s.rfilename);
        let size = s.size.unwrap_or(0);
        match std::fs::metadata(&file) {
            Ok(m) if s.size.is_none_or(|n| n == m.len()) => {}
            Ok(m) => corrupt.push(format!(
                "{} ({} bytes, expected {size})",
                s.rfilename,
                m.len()
            )),
            Err(_) if std::fs::symlink_metadata(&file).is_ok() => {
                corrupt.push(format!("{} (broken link)", s.rfilename));
                missing_bytes += size;
            }
            Err(_) => {
                missing.push(s.rfilename.clone());
                missing_bytes += size;
            }
        }
    }
    let partial = paths.partial_bytes();
    if snapshot.is_dir()
        && let Some(problem) = super::lfs::folder_problem(&snapshot)
    {
        d.add(
            "lfs.pointer",
            Severity::Error,
            problem,
            format!("remove the pointer files from the cache, then `{fetch}`"),
        );
    }
    if !corrupt.is_empty() {
        d.add(
            "cache.corrupt",
            Severity::Error,
            format!(
                "{} has damaged files: {}",
                snapshot.display(),
                corrupt.join(", ")
            ),
            format!("run `dsocr cache verify {}` then `{fetch}`", info.id),
        );
    } else if !snapshot.is_dir() {
        d.add(
            "cache.missing",
            Severity::Warning,
            format!(
                "{} ({}) is not in the cache {}",
                info.id,
                short(&info.sha),
                paths.cache.display()
            ),
            fetch.to_string(),
        );
    } else if !missing.is_empty() {
        let resumable = if partial > 0 {
            format!(
                "; {} already downloaded will be resumed",
                human_bytes(partial)
            )
        } else {
            String::new()
        };
        d.add(
            "cache.incomplete",
            Severity::Warning,
            format!(
                "{} lacks {} of {} files ({}){resumable}",
                snapshot.display(),
                missing.len(),
                info.siblings.len(),
                human_bytes(missing_bytes)
            ),
            fetch.to_string(),
        );
    } else {
        d.add(
            "cache.ok",
            Severity::Ok,
            format!(
                "{} is complete ({} files)",
                snapshot.display(),
                info.siblings.len()
            ),
            "",
        );
    }
    Some(missing_bytes.saturating_sub(partial))
}

fn disk_check(d: &mut Diag, paths: &RepoPaths, needed: u64) {
    let Ok(available) = available_space(&paths.repo_dir) else {
        return;
    };
    if needed > available {
        d.add(
            "disk.insufficient",
            Severity::Error,
            format!(
                "{} must be downloaded but only {} are free in {}",
                human_bytes(needed),
                human_bytes(available),
                paths.cache.display()
            ),
            "free disk space or point HF_HUB_CACHE (or HF_HOME) at a larger disk",
        );
    } else if needed > 0 {
        d.add(
            "disk.ok",
            Severity::Ok,
            format!(
                "{} to download, {} free",
                human_bytes(needed),
                human_bytes(available)
            ),
            "",
        );
    }
}

fn torch_check(d: &mut Diag, t: TorchFacts) {
    if t.cuda_available && t.device_count > 0 {
        d.add(
            "torch.ok",
            Severity::Ok,
            format!("libtorch sees {} CUDA device(s)", t.device_count),
            "",
        );
    } else {
        d.add(
            "torch.cuda_unavailable",
            Severity::Warning,
            "libtorch sees no CUDA device: OCR runs on the CPU (slow)".into(),
            "install an NVIDIA driver and a CUDA build of libtorch, or use --device cpu knowingly",
        );
    }
}

fn short(commit: &str) -> &str {
    commit.get(..8).unwrap_or(commit)
}
