//! Hub jobs on tokio: the same `crate::hub` calls as the CLI, adapted to actions.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc::unbounded_channel;
use tokio_util::sync::CancellationToken;

use crate::hub::HubError;
use crate::hub::cache;
use crate::hub::client::HubClient;
use crate::hub::diagnose::{self, DiagnoseOptions, Severity};
use crate::hub::download::{self, DownloadEvent, DownloadRequest};
use crate::hub::env::HubEnv;
use crate::hub::token::{self, FoundToken, Secret, TokenSource, TokenStatus};
use crate::tui::action::{ActionSender, Outcome, Update};
use crate::tui::state::{
    DiagnosisView, FileState, LoginState, RepoRow, RevisionRow, StoredToken, TokenView, WhoamiView,
};

/// Token sources, then whoami, then the diagnosis for `repo`.
pub async fn refresh_login(tx: ActionSender, repo: String) {
    let env = HubEnv::from_process();
    let status = match token::status(&env) {
        Ok(s) => s,
        Err(e) => {
            tx.send(Update::Whoami(Err(e.to_string())));
            return;
        }
    };
    let shell_lines = crate::hub::shellrc::scan(&env);
    tx.send(Update::LoginStatus(Box::new(login_state(
        &status,
        &env,
        &shell_lines,
    ))));
    let who = match status.to_send() {
        Some(found) => whoami(&env, found.clone()).await,
        None => Err("not logged in: press n to paste a token".to_string()),
    };
    tx.send(Update::Whoami(who));
    let opts = DiagnoseOptions {
        repo,
        ..DiagnoseOptions::default()
    };
    let report = diagnose::diagnose(&env, &opts).await;
    let worst = report
        .findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
        .max_by_key(|f| f.severity)
        .map(|f| DiagnosisView {
            code: f.code.to_string(),
            cause: f.message.clone(),
            fix: f.fix.clone(),
        });
    tx.send(Update::Diagnosis(worst));
}

async fn whoami(env: &HubEnv, found: FoundToken) -> Result<WhoamiView, String> {
    let client = HubClient::new(env.clone(), Some(found)).map_err(|e| e.to_string())?;
    let who = client.whoami().await.map_err(|e| e.to_string())?;
    Ok(WhoamiView {
        user: who.name,
        orgs: who.orgs,
        token_name: Some(who.token_name),
        role: who.token_role,
    })
}

fn login_state(
    status: &TokenStatus,
    env: &HubEnv,
    shell_lines: &[crate::hub::shellrc::TokenLine],
) -> LoginState {
    // A token variable set in a shell startup file: name the file and line.
    let set_in = |source: &TokenSource| {
        let (var, value) = match source {
            TokenSource::EnvHfToken => ("HF_TOKEN", env.env_token.as_deref()),
            TokenSource::EnvLegacy => ("HUGGING_FACE_HUB_TOKEN", env.legacy_env_token.as_deref()),
            _ => return String::new(),
        };
        value
            .and_then(Secret::new)
            .and_then(|v| crate::hub::shellrc::origin(shell_lines, var, &v))
            .map(|l| format!(" (set in {})", l.location()))
            .unwrap_or_default()
    };
    let view = |f: &FoundToken| TokenView {
        masked: f.token.masked(),
        source: format!("{}{}", source_label(&f.source), set_in(&f.source)),
    };
    LoginState {
        active: status.winner().map(view),
        others: status.found.iter().skip(1).map(view).collect(),
        stored: status
            .stored
            .iter()
            .map(|s| StoredToken {
                name: s.name.clone(),
                masked: s.token.masked(),
                active: s.active,
            })
            .collect(),
        ..LoginState::default()
    }
}

fn source_label(source: &TokenSource) -> String {
    match source {
        TokenSource::EnvHfToken => "HF_TOKEN".to_string(),
        TokenSource::EnvLegacy => "HUGGING_FACE_HUB_TOKEN".to_string(),
        TokenSource::File(p) => p.display().to_string(),
        TokenSource::Given => "login".to_string(),
        TokenSource::Credential(at) => at.clone(),
    }
}

/// Validate `token` with whoami and save it like `dsocr login`, then refresh.
pub async fn login(tx: ActionSender, token: String, repo: String) {
    let env = HubEnv::from_process();
    let Some(secret) = Secret::new(&token) else {
        tx.error("Login failed", "the token is empty; paste a token (hf_…)");
        return;
    };
    if let Err(e) = token::check_login_token(&secret) {
        tx.error("Login failed", e.to_string());
        return;
    }
    let found = FoundToken {
        source: TokenSource::Given,
        token: secret.clone(),
    };
    let result = async {
        let client = HubClient::new(env.clone(), Some(found))?;
        let who = client.whoami().await?;
        token::save(&env, &who.token_name, &secret)?;
        Ok::<_, HubError>(who.name)
    }
    .await;
    match result {
        Ok(user) => tx.send(Update::Log(format!("logged in as {user}"))),
        Err(e) => tx.error("Login failed", e.to_string()),
    }
    refresh_login(tx, repo).await;
}

/// Log out the active stored token (everything when the active token is not a stored one).
pub async fn logout(tx: ActionSender, repo: String) {
    let env = HubEnv::from_process();
    let result = token::status(&env).and_then(|st| {
        let name = st.stored.iter().find(|s| s.active).map(|s| s.name.clone());
        token::logout(&env, name.as_deref())
    });
    match result {
        Ok(r) => tx.send(Update::Log(format!(
            "logged out: {}",
            r.removed_names.join(", ")
        ))),
        Err(e) => tx.error("Logout failed", e.to_string()),
    }
    refresh_login(tx, repo).await;
}

/// Make a stored token the active one, then refresh.
pub async fn switch(tx: ActionSender, name: String, repo: String) {
    let env = HubEnv::from_process();
    if let Err(e) = token::switch(&env, &name) {
        tx.error("Switching tokens failed", e.to_string());
    }
    refresh_login(tx, repo).await;
}

/// Scan the hub cache.
pub fn scan_cache(tx: &ActionSender) {
    let env = HubEnv::from_process();
    let result = cache::scan(&env.hub_cache)
        .map(|scan| scan.repos.into_iter().map(cached_repo).collect())
        .map_err(|e| e.to_string());
    tx.send(Update::CacheScanned(result));
}

fn cached_repo(repo: cache::CachedRepo) -> RepoRow {
    let revisions = repo
        .revisions
        .iter()
        .map(|r| RevisionRow {
            commit: r.commit.clone(),
            refs: r.refs.clone(),
            size: r.size_on_disk,
            missing: cache::completeness(&repo.path.join("snapshots").join(&r.commit)).missing,
        })
        .collect();
    RepoRow {
        repo: repo.repo_id,
        revisions,
    }
}

/// Re-hash a cached repo; report mismatches in a dialog, success in the log.
pub fn verify(tx: &ActionSender, repo: &str) {
    let env = HubEnv::from_process();
    tx.send(Update::Log(format!("verifying {repo}…")));
    match cache::verify(&env.hub_cache, repo, None, &mut |_, _, _| {}) {
        Ok(files) => {
            let bad: Vec<String> = files
                .iter()
                .filter(|f| {
                    matches!(
                        f.check,
                        cache::FileCheck::Mismatch { .. } | cache::FileCheck::Missing
                    )
                })
                .map(|f| f.path.clone())
                .collect();
            if bad.is_empty() {
                tx.send(Update::Log(format!(
                    "{repo}: {} files verified",
                    files.len()
                )));
            } else {
                tx.error(
                    "Verification failed",
                    format!(
                        "{repo}: {} damaged or missing: {}; delete the revision (D) and download it again (d)",
                        bad.len(),
                        bad.join(", ")
                    ),
                );
            }
        }
        Err(e) => tx.error("Verification failed", e.to_string()),
    }
}

/// Delete one revision, then rescan.
pub fn delete(tx: &ActionSender, repo: &str, commit: &str) {
    let env = HubEnv::from_process();
    match cache::remove(&env.hub_cache, repo, Some(commit)) {
        Ok(freed) => tx.send(Update::Log(format!(
            "deleted {repo}@{commit}: {} freed",
            crate::units::human_bytes(freed)
        ))),
        Err(e) => tx.error("Delete failed", e.to_string()),
    }
    scan_cache(tx);
}

/// Download (resuming partial files) with progress events turned into actions.
pub async fn download(tx: ActionSender, repo: String, revision: String, cancel: CancellationToken) {
    let env = HubEnv::from_process();
    let found = token::status(&env).ok().and_then(|s| s.to_send().cloned());
    let client = match HubClient::new(env, found) {
        Ok(c) => c,
        Err(e) => {
            tx.send(Update::DownloadFinished(Outcome::Failed(failure(&e))));
            return;
        }
    };
    let mut req = DownloadRequest::new(&repo);
    req.revision = revision;
    let (events_tx, mut events) = unbounded_channel();
    let forward = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut index = HashMap::new();
            while let Some(ev) = events.recv().await {
                forward_event(&tx, &mut index, ev);
            }
        })
    };
    let result = download::download(&client, &req, &events_tx, &cancel).await;
    drop(events_tx);
    let _ = forward.await;
    tx.send(Update::DownloadFinished(match result {
        Ok(_) => Outcome::Done(()),
        Err(_) if cancel.is_cancelled() => Outcome::Cancelled,
        Err(e) => Outcome::Failed(failure(&e)),
    }));
}

fn forward_event(tx: &ActionSender, index: &mut HashMap<String, usize>, ev: DownloadEvent) {
    match ev {
        DownloadEvent::Plan { files, .. } => {
            *index = files
                .iter()
                .enumerate()
                .map(|(i, f)| (f.path.clone(), i))
                .collect();
            tx.send(Update::DownloadStarted(
                files
                    .into_iter()
                    .map(|f| {
                        let done = if f.cached { f.size } else { 0 };
                        (f.path, f.size, done)
                    })
                    .collect(),
            ));
        }
        DownloadEvent::FileStart {
            path, resumed_from, ..
        } => {
            if let Some(&file) = index.get(&path) {
                tx.send(Update::DownloadProgress {
                    file,
                    done: resumed_from,
                    speed: None,
                    eta: None,
                });
            }
        }
        DownloadEvent::Progress(p) => {
            if let Some(&file) = index.get(&p.path) {
                tx.send(Update::DownloadProgress {
                    file,
                    done: p.file_bytes,
                    speed: Some(p.bytes_per_sec),
                    eta: p.eta_secs.map(Duration::from_secs_f64),
                });
            }
        }
        DownloadEvent::FileDone { path, .. } => {
            if let Some(&file) = index.get(&path) {
                tx.send(Update::DownloadFile {
                    file,
                    state: FileState::Done,
                });
            }
        }
        DownloadEvent::Retrying {
            path,
            attempt,
            wait_ms,
            reason,
        } => tx.send(Update::Log(format!(
            "{path}: {reason}; retry {attempt} in {wait_ms} ms"
        ))),
        DownloadEvent::AnonymousFallback { reason } => {
            tx.send(Update::Log(format!("token not used: {reason}")));
        }
        DownloadEvent::Restarted { path } => {
            tx.send(Update::Log(format!(
                "{path}: the server ignored the resume; restarting"
            )));
        }
        DownloadEvent::CanonicalId {
            requested,
            canonical,
        } => tx.send(Update::Log(format!(
            "the hub's name for {requested} is {canonical}; using that (one cache folder)"
        ))),
        DownloadEvent::LinkRefreshed {
            path, resume_at, ..
        } => tx.send(Update::Log(format!(
            "{path}: the download link expired; continuing at byte {resume_at} with a fresh one"
        ))),
        DownloadEvent::WaitingForLock { path, .. } => {
            tx.send(Update::Log(format!("{path}: waiting for another download")));
        }
        DownloadEvent::Done { snapshot, .. } => {
            tx.send(Update::Log(format!(
                "downloaded into {}",
                snapshot.display()
            )));
        }
    }
}

/// A download failure as the pane shows it: the hub's message and the way on.
fn failure(e: &HubError) -> DiagnosisView {
    let fix = if e.is_transient() || matches!(e, HubError::TooManyRetries { .. }) {
        "press R to resume; the bytes already on disk are kept".to_string()
    } else {
        format!("{}, then press R to resume", e.fix())
    };
    DiagnosisView {
        code: e.code().to_string(),
        cause: e.to_string(),
        fix,
    }
}
