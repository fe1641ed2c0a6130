//! The Hugging Face hub, resolved the way the Python client resolves it: endpoint, cache and
//! token; whoami; diagnosis of failures; resumable verified downloads; the cache.
//!
//! # Library API (used by the CLI and the dashboard)
//! - [`env::HubEnv`]: endpoint, `HF_HOME`, cache, token path, offline flags
//!   ([`env::HubEnv::from_process`] or any lookup).
//! - [`token`]: [`token::status`] lists every token source, the winner and `stored_tokens`,
//!   masked ([`token::mask`]); [`token::save`], [`token::logout`], [`token::switch`].
//! - [`client::HubClient`]: whoami, model info, file metadata, typed [`HubError`]s.
//! - [`error::HubError`]: every failure, each message saying what to do.
//!
//! hf-hub is not used: this layer reads the environment, classifies errors, keeps the token off
//! other hosts and resumes partial files itself (see `HUB.md` §6 for what hf-hub lacks).

pub mod cache;
pub mod client;
pub mod diagnose;
pub mod download;
pub mod env;
pub mod error;
mod fsutil;
pub mod mock;
pub mod token;

pub use client::HubClient;
pub use env::HubEnv;
pub use error::HubError;
