//! `dsocr doctor|whoami|login|logout|auth|download|cache`: thin wrappers over [`crate::hub`].

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::hub::cache;
use crate::hub::diagnose::{self, DiagnoseOptions, Severity, TorchFacts};
use crate::hub::download::{self, ALTERNATE_REPO, DEFAULT_REPO, DownloadEvent, DownloadRequest};
use crate::hub::token::{self, FoundToken, Secret, TokenSource};
use crate::hub::{HubClient, HubEnv, HubError};
use crate::units::human_bytes;

/// `dsocr doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The repo to check access to
    #[arg(long, default_value = DEFAULT_REPO)]
    pub repo: String,
    /// Its revision (branch, tag or commit)
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Also check this local model folder (Git LFS pointers, missing files)
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Print one JSON object {"findings":[…],"ready":bool}
    #[arg(long)]
    pub json: bool,
}

/// `dsocr whoami`.
#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `dsocr login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Read the token from standard input instead of prompting
    #[arg(long)]
    pub token_stdin: bool,
    /// The token itself (discouraged: it stays in shell history and shows in `ps`)
    #[arg(long, conflicts_with = "token_stdin")]
    pub token: Option<String>,
    /// Name to store it under (default: the token's name on the hub)
    #[arg(long)]
    pub name: Option<String>,
}

/// `dsocr logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Remove only this stored token (default: all of them and the active token)
    #[arg(long)]
    pub name: Option<String>,
}

/// `dsocr auth`.
#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

/// `dsocr auth list|switch`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// List every token source and stored token (masked), and which one is used
    List,
    /// Make a stored token the active one
    Switch {
        /// The stored token's name
        name: String,
    },
}

/// `dsocr download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The model repo
    #[arg(default_value = DEFAULT_REPO)]
    pub repo: String,
    /// Branch, tag or commit
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Only files matching this glob (repeatable)
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip files matching this glob (repeatable)
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Also put the files in this folder
    #[arg(long)]
    pub local_dir: Option<PathBuf>,
    /// Print progress as JSON lines on stdout
    #[arg(long)]
    pub json: bool,
}

/// `dsocr cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// `dsocr cache ls|verify|rm`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached repos, revisions, sizes, partial downloads and problems
    Ls {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Re-hash cached files against their blob names (sha256 / git sha1)
    Verify {
        /// The repo
        #[arg(default_value = DEFAULT_REPO)]
        repo: String,
        /// Only this revision (default: all)
        #[arg(long)]
        revision: Option<String>,
    },
    /// Remove detached revisions (no branch or tag points to them) and the blobs only they use
    Prune {
        /// Only say what would be removed and how much it frees
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a repo (or one revision) from the cache
    Rm {
        /// The repo
        repo: String,
        /// Only this revision (commit or ref)
        #[arg(long)]
        revision: Option<String>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn client_for(env: &HubEnv) -> anyhow::Result<HubClient> {
    let status = token::status(env)?;
    Ok(HubClient::new(env.clone(), status.to_send().cloned())?)
}

/// `dsocr doctor`: every check, one line each; exit 0 only when ready.
pub fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let env = HubEnv::from_process();
    let opts = DiagnoseOptions {
        repo: args.repo,
        revision: args.revision,
        torch: Some(TorchFacts {
            cuda_available: tch::Cuda::is_available(),
            device_count: tch::Cuda::device_count(),
        }),
        model_dir: args.model,
    };
    let report = runtime()?.block_on(diagnose::diagnose(&env, &opts));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for f in &report.findings {
            let tag = match f.severity {
                Severity::Ok => "ok",
                Severity::Info => "info",
                Severity::Warning => "warn",
                Severity::Error => "ERROR",
            };
            println!("[{tag:>5}] {:<30} {}", f.code, f.message);
            if !f.fix.is_empty() && f.severity >= Severity::Warning {
                println!("        {:<30} fix: {}", "", f.fix);
            }
        }
        println!(
            "{}",
            if report.ready {
                "ready"
            } else {
                "not ready: fix the errors above"
            }
        );
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `dsocr whoami`.
pub fn whoami(args: WhoamiArgs) -> anyhow::Result<ExitCode> {
    let env = HubEnv::from_process();
    let status = token::status(&env)?;
    let found = status.winner().cloned().ok_or(HubError::TokenRequired)?;
    let client = HubClient::new(env.clone(), Some(found.clone()))?;
    let who = runtime()?.block_on(client.whoami())?;
    if args.json {
        let mut value = serde_json::to_value(&who)?;
        value["token"] = found.token.masked().into();
        value["token_source"] = found.source.to_string().into();
        value["endpoint"] = env.endpoint.clone().into();
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "user:    {} ({})",
        who.name,
        who.fullname.as_deref().unwrap_or("-")
    );
    if !who.orgs.is_empty() {
        println!("orgs:    {}", who.orgs.join(", "));
    }
    println!(
        "token:   {:?} {} ({}), from {}",
        who.token_name,
        found.token,
        who.token_role.as_deref().unwrap_or("unknown role"),
        found.source
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs());
    if let (Some(at), Some(days)) = (&who.token_created_at, who.token_age_days(now)) {
        let advice = if days > 365 {
            ": consider rotating it"
        } else {
            ""
        };
        println!(
            "created: {} ({days} days ago{advice})",
            at.get(..10).unwrap_or(at)
        );
    }
    if who.can_write() {
        println!("note:    this token can write; a read token is enough for downloading");
    }
    if let Some(gated) = who.can_read_gated_repos {
        println!(
            "gated:   fine-grained token {} read gated repos",
            if gated { "can" } else { "cannot" }
        );
    }
    for scope in &who.scoped {
        println!("scope:   {scope}");
    }
    if !env.is_default_endpoint() {
        println!("endpoint: {}", env.endpoint);
    }
    Ok(ExitCode::SUCCESS)
}

fn read_token(from_stdin: bool) -> anyhow::Result<Secret> {
    let raw = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the token from stdin")?;
        line
    } else {
        rpassword::prompt_password("Hugging Face token (input hidden): ")
            .context("cannot read the token from the terminal; use --token-stdin")?
    };
    Secret::new(&raw).context("no token given")
}

/// `dsocr login`: validate with whoami, then save (token file + stored_tokens, 0600).
pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let env = HubEnv::from_process();
    let secret = match &args.token {
        Some(t) => {
            eprintln!(
                "warning: a token given with --token stays in your shell history and is visible to other users in `ps`; prefer the prompt or --token-stdin, and consider rotating this token"
            );
            Secret::new(t).context("no token given")?
        }
        None => read_token(args.token_stdin)?,
    };
    token::check_login_token(&secret)?;
    let found = FoundToken {
        source: TokenSource::Given,
        token: secret.clone(),
    };
    let client = HubClient::new(env.clone(), Some(found))?;
    let who = runtime()?.block_on(client.whoami())?;
    let name = args.name.unwrap_or_else(|| who.token_name.clone());
    token::save(&env, &name, &secret)?;
    println!(
        "logged in as {} with token {:?} ({}), saved to {}",
        who.name,
        name,
        secret,
        env.token_path.display()
    );
    let status = token::status(&env)?;
    if let Some(w) = status.winner().filter(|w| w.source.is_env()) {
        eprintln!(
            "warning: {} ({}) is set and takes precedence over this login; unset it to use the new token",
            w.source, w.token
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dsocr logout`.
pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let env = HubEnv::from_process();
    let report = token::logout(&env, args.name.as_deref())?;
    match (&args.name, report.removed_active) {
        (Some(n), true) => {
            println!("removed stored token {n:?}; it was the active token, so you are logged out")
        }
        (Some(n), false) => println!("removed stored token {n:?}; the active token is unchanged"),
        (None, _) => println!(
            "logged out: removed the token file and {} stored token(s)",
            report.removed_names.len()
        ),
    }
    let status = token::status(&env)?;
    if let Some(w) = status.winner().filter(|w| w.source.is_env()) {
        eprintln!(
            "warning: {} ({}) is still set, so requests still use a token; unset it to be anonymous",
            w.source, w.token
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dsocr auth list|switch`.
pub fn auth(args: AuthArgs) -> anyhow::Result<ExitCode> {
    let env = HubEnv::from_process();
    match args.command {
        AuthCommand::List => {
            let status = token::status(&env)?;
            if status.found.is_empty() {
                println!(
                    "no token found (HF_TOKEN, HUGGING_FACE_HUB_TOKEN, {})",
                    env.token_path.display()
                );
            }
            for (i, f) in status.found.iter().enumerate() {
                let mark = if i == 0 { "used   " } else { "ignored" };
                let name = status
                    .name_of(&f.token)
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default();
                println!("{mark} {}{name} from {}", f.token, f.source);
            }
            if status.implicit_disabled {
                println!(
                    "HF_HUB_DISABLE_IMPLICIT_TOKEN is set: the token is not sent unless asked for"
                );
            }
            println!("stored tokens ({}):", env.stored_tokens_path().display());
            for s in &status.stored {
                println!(
                    "  {} {:<20} {}",
                    if s.active { "*" } else { " " },
                    s.name,
                    s.token
                );
            }
        }
        AuthCommand::Switch { name } => {
            token::switch(&env, &name)?;
            println!("the active token is now {name:?}");
            let status = token::status(&env)?;
            if let Some(w) = status.winner().filter(|w| w.source.is_env()) {
                eprintln!(
                    "warning: {} ({}) takes precedence over the switched token; unset it",
                    w.source, w.token
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dsocr download`: progress on stderr (or JSON lines on stdout); Ctrl-C leaves a resumable
/// partial file.
pub fn download(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let env = HubEnv::from_process();
    let client = client_for(&env)?;
    let req = DownloadRequest {
        repo: args.repo.clone(),
        revision: args.revision,
        include: args.include,
        exclude: args.exclude,
        local_dir: args.local_dir,
    };
    let rt = runtime()?;
    let result = rt.block_on(async {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_signal.cancel();
            }
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let json = args.json;
        let printer = tokio::spawn(async move {
            let mut view = ProgressView::new();
            while let Some(event) = rx.recv().await {
                if json {
                    if let Ok(line) = serde_json::to_string(&event) {
                        println!("{line}");
                    }
                } else {
                    view.show(&event);
                }
            }
        });
        let result = download::download(&client, &req, &tx, &cancel).await;
        drop(tx);
        let _ = printer.await;
        result
    });
    match result {
        Ok(outcome) => {
            if !args.json {
                eprintln!();
                if outcome.downloaded == 0 {
                    eprintln!(
                        "nothing downloaded: {} was already complete in {}",
                        outcome.repo,
                        outcome.snapshot.display()
                    );
                } else {
                    eprintln!(
                        "{} downloaded and verified (sha256 / git sha1) into {}",
                        human_bytes(outcome.downloaded),
                        outcome.snapshot.display()
                    );
                }
                println!("{}", outcome.snapshot.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(HubError::Cancelled) => {
            eprintln!("\ncancelled: partial files are kept; run the same command again to resume");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(with_repo_hint(e, &args.repo)),
    }
}

fn with_repo_hint(e: HubError, repo: &str) -> anyhow::Error {
    let repo_problem = matches!(
        e,
        HubError::RepoNotFound { .. }
            | HubError::GatedLoginRequired { .. }
            | HubError::GatedNotGranted { .. }
            | HubError::RevisionNotFound { .. }
    );
    let other = if repo == ALTERNATE_REPO {
        DEFAULT_REPO
    } else {
        ALTERNATE_REPO
    };
    if repo_problem {
        anyhow::Error::new(e).context(format!(
            "downloading {repo} failed; the other known DeepSeek-OCR repo is {other}: `dsocr download {other}`"
        ))
    } else {
        e.into()
    }
}

/// Human progress on stderr: one updating line on a terminal, milestones otherwise.
struct ProgressView {
    tty: bool,
    last_line: Instant,
}

impl ProgressView {
    fn new() -> Self {
        ProgressView {
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
        }
    }

    fn show(&mut self, event: &DownloadEvent) {
        let mut err = std::io::stderr();
        let line = match event {
            DownloadEvent::AnonymousFallback { reason } => format!("warning: {reason}"),
            DownloadEvent::CanonicalId {
                requested,
                canonical,
            } => format!(
                "note: the hub's name for {requested} is {canonical}; using {canonical} (the cache's folder names are case-sensitive)"
            ),
            DownloadEvent::Plan {
                folder,
                commit,
                files,
                to_fetch,
            } => {
                let cached = files.iter().filter(|f| f.cached).count();
                let all = if cached == files.len() {
                    "; everything is already cached, nothing to download"
                } else {
                    ""
                };
                format!(
                    "commit {commit}: {} files, {cached} already cached, {} to fetch, in {}{all}",
                    files.len(),
                    human_bytes(*to_fetch),
                    folder.display()
                )
            }
            DownloadEvent::LinkRefreshed {
                path,
                resume_at,
                status,
            } => format!(
                "{path}: the download link expired (HTTP {status}); got a fresh one from the hub, continuing at {}",
                human_bytes(*resume_at)
            ),
            DownloadEvent::WaitingForLock { path, lock } => {
                format!(
                    "waiting: another process is downloading {path} (lock {})",
                    lock.display()
                )
            }
            DownloadEvent::FileStart {
                path,
                size,
                resumed_from,
            } if *resumed_from > 0 => {
                format!(
                    "{path}: resuming at {} of {}",
                    human_bytes(*resumed_from),
                    human_bytes(*size)
                )
            }
            DownloadEvent::Restarted { path } => {
                format!("{path}: the server ignored the resume request; restarting")
            }
            DownloadEvent::Retrying {
                path,
                attempt,
                wait_ms,
                reason,
            } => {
                format!(
                    "{path}: {reason}; retry {attempt} in {:.1} s",
                    *wait_ms as f64 / 1000.0
                )
            }
            DownloadEvent::FileDone { path, .. } if !self.tty => format!("{path}: done, verified"),
            DownloadEvent::Progress(p) => {
                let pct = |a: u64, b: u64| {
                    if b == 0 {
                        100.0
                    } else {
                        100.0 * a as f64 / b as f64
                    }
                };
                let eta = p
                    .eta_secs
                    .map(|s| format!(", ETA {:.0} s", s))
                    .unwrap_or_default();
                let text = format!(
                    "{} {:5.1}% | total {:5.1}% of {} | {}/s{eta}",
                    p.path,
                    pct(p.file_bytes, p.file_size),
                    pct(p.total_bytes, p.total_size),
                    human_bytes(p.total_size),
                    human_bytes(p.bytes_per_sec as u64)
                );
                if self.tty {
                    let _ = write!(err, "\r\x1b[2K{text}");
                    let _ = err.flush();
                    return;
                }
                if self.last_line.elapsed().as_secs() < 2 {
                    return;
                }
                self.last_line = Instant::now();
                text
            }
            _ => return,
        };
        let prefix = if self.tty { "\r\x1b[2K" } else { "" };
        let _ = writeln!(err, "{prefix}{line}");
    }
}

/// `dsocr cache ls|verify|rm`.
pub fn cache(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let env = HubEnv::from_process();
    match args.command {
        CacheCommand::Ls { json } => cache_ls(&env, json),
        CacheCommand::Verify { repo, revision } => cache_verify(&env, &repo, revision.as_deref()),
        CacheCommand::Prune { dry_run } => {
            let pruned = cache::prune(&env.hub_cache, dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for r in &pruned {
                println!(
                    "{verb} {}@{} ({})",
                    r.repo_id,
                    r.commit,
                    human_bytes(r.freed)
                );
            }
            let freed: u64 = pruned.iter().map(|r| r.freed).sum();
            println!(
                "{} detached revision(s), {} {}",
                pruned.len(),
                human_bytes(freed),
                if dry_run { "would be freed" } else { "freed" }
            );
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Rm { repo, revision } => {
            let freed = cache::remove(&env.hub_cache, &repo, revision.as_deref())?;
            println!(
                "removed {repo}{}: {} freed",
                revision.map(|r| format!("@{r}")).unwrap_or_default(),
                human_bytes(freed)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cache_ls(env: &HubEnv, json: bool) -> anyhow::Result<ExitCode> {
    let scan = cache::scan(&env.hub_cache)?;
    if json {
        println!("{}", serde_json::to_string(&scan)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("cache: {}", scan.cache_dir.display());
    println!("{:<40} {:>10} {:>6}  REFS / STATE", "REPO", "SIZE", "FILES");
    for repo in &scan.repos {
        let files: usize = repo.revisions.iter().map(|r| r.files.len()).sum();
        let id = if repo.repo_type == "model" {
            repo.repo_id.clone()
        } else {
            format!("{}:{}", repo.repo_type, repo.repo_id)
        };
        println!("{id:<40} {:>10} {files:>6}", human_bytes(repo.size_on_disk));
        for rev in &repo.revisions {
            let state =
                if repo.repo_type == "model" && rev.files.iter().any(|f| f.path == "config.json") {
                    let c = cache::completeness(&repo.path.join("snapshots").join(&rev.commit));
                    if c.is_complete() {
                        "complete".to_string()
                    } else {
                        format!("missing {}", c.missing.join(", "))
                    }
                } else {
                    String::new()
                };
            println!(
                "  {} {:>10} {:>6}  {} {state}",
                &rev.commit,
                human_bytes(rev.size_on_disk),
                rev.files.len(),
                rev.refs.join(",")
            );
        }
        for p in &repo.partials {
            println!(
                "  partial download: {} ({})",
                p.path.display(),
                human_bytes(p.bytes)
            );
        }
    }
    for w in &scan.warnings {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn cache_verify(env: &HubEnv, repo: &str, revision: Option<&str>) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let mut progress = |path: &str, done: u64, size: u64| {
        if tty && (last.elapsed().as_millis() > 100 || done == size) {
            last = Instant::now();
            eprint!(
                "\r\x1b[2Khashing {path} {}/{}",
                human_bytes(done),
                human_bytes(size)
            );
        }
    };
    let results = cache::verify(&env.hub_cache, repo, revision, &mut progress)?;
    if tty {
        eprintln!();
    }
    let mut bad = 0;
    for r in &results {
        let text = match &r.check {
            cache::FileCheck::Ok => "ok".to_string(),
            cache::FileCheck::Mismatch { actual } => {
                bad += 1;
                format!("CORRUPT (content hashes to {actual})")
            }
            cache::FileCheck::Missing => {
                bad += 1;
                "MISSING (broken link)".to_string()
            }
            cache::FileCheck::Unverifiable => "present (blob name is not a hash)".to_string(),
        };
        println!("{:<60} {text}", r.path);
    }
    println!("{} files checked, {bad} bad", results.len());
    if bad > 0 {
        println!("fix: `dsocr cache rm {repo}` then `dsocr download {repo}`");
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
