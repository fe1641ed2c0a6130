//! The Hugging Face hub, resolved the way the Python client resolves it: endpoint, cache and
//! token; whoami; diagnosis of failures; resumable verified downloads; the cache.
//!
//! # Library API (used by the CLI and the dashboard)
//! - [`env::HubEnv`]: endpoint, `HF_HOME`, cache, token path, offline flags, resolved like
//!   Python ([`env::HubEnv::from_process`], or [`env::HubEnv::from_lookup`] with any lookup).
//! - [`token`]: [`token::status`] lists every token source in precedence order, the winner
//!   ([`token::TokenStatus::winner`]), what is sent ([`token::TokenStatus::to_send`]), a
//!   shadowed login ([`token::TokenStatus::shadowed_file`]) and `stored_tokens`; tokens live in
//!   [`token::Secret`]s that format masked (`hf_…abcd`); [`token::save`] (after a whoami),
//!   [`token::logout`], [`token::switch`].
//! - [`client::HubClient`]: built from an env and a token; [`client::HubClient::whoami`],
//!   [`client::HubClient::model_info`], [`client::HubClient::file_metadata`]; every failure is
//!   a typed [`HubError`] whose message says what to do.
//! - [`diagnose::diagnose`]: a [`diagnose::Report`] of [`diagnose::Finding`]s
//!   (`code`, `severity`, `message`, `fix`) and `ready`; libtorch facts come in as
//!   [`diagnose::TorchFacts`].
//! - [`download::download`]: a [`download::DownloadRequest`] fetched with
//!   [`download::DownloadEvent`]s (plan, per-file and total progress with speed and ETA,
//!   retries, lock waits, done) sent on a tokio `UnboundedSender`, stopped by a
//!   `tokio_util::sync::CancellationToken` (the partial file stays for the next run).
//! - [`cache`]: [`cache::scan`] (Python's `scan_cache_dir` sizes), [`cache::verify`] (re-hash
//!   with a progress callback), [`cache::remove`], [`cache::completeness`] (what a
//!   DeepSeek-OCR snapshot lacks), [`cache::RepoPaths`] for the layout.
//! - [`shellrc`]: token variables and tokens written in shell startup files (file and line);
//!   [`credentials`]: hub tokens in git's store files and `~/.netrc`; [`lfs`]: Git LFS
//!   pointer files where weights should be ([`lfs::folder_problem`] for `ocr`, `serve`, the
//!   dashboard); every [`HubError`] has a stable [`HubError::code`] and a [`HubError::fix`].
//! - `mock::MockHub` (cargo feature `mock`, off in the shipped binary): a real HTTP mock hub
//!   on 127.0.0.1 with scenarios and faults, for tests and demos (`cargo run --release
//!   --features mock --example mock_hub -- --scenario ok --port 8765`). The tests get it without
//!   `--features`: the package is its own dev-dependency with `mock` on.
//!
//! Everything network-bound is async (tokio); the CLI runs a runtime per command.
//!
//! The `hf-hub` crate is not used: every version lacks something needed here (
//! no environment/`HF_TOKEN` resolution in 0.4/1.1, no typed gated/invalid-token errors in 0.x,
//! the token sent to the CDN by 0.x `metadata()`, no cross-run resume in 1.x, no integrity
//! check), so this layer speaks the hub's HTTP protocol itself with `reqwest`.

pub mod cache;
pub mod client;
pub mod credentials;
pub mod diagnose;
pub mod download;
pub mod env;
pub mod error;
mod fsutil;
pub mod lfs;
pub mod localdir;
#[cfg(feature = "mock")]
pub mod mock;
pub mod shellrc;
pub mod token;

pub use client::HubClient;
pub use env::HubEnv;
pub use error::HubError;
