//! `dsocr doctor|whoami|login|logout|auth|download|cache`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct DoctorArgs {}
#[derive(Debug, Args)]
pub struct WhoamiArgs {}
#[derive(Debug, Args)]
pub struct LoginArgs {}
#[derive(Debug, Args)]
pub struct LogoutArgs {}
#[derive(Debug, Args)]
pub struct AuthArgs {}
#[derive(Debug, Args)]
pub struct DownloadArgs {}
#[derive(Debug, Args)]
pub struct CacheArgs {}

fn not_yet(what: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dsocr {what}` is not implemented in this version yet")
}

pub fn doctor(_: DoctorArgs) -> anyhow::Result<ExitCode> {
    not_yet("doctor")
}
pub fn whoami(_: WhoamiArgs) -> anyhow::Result<ExitCode> {
    not_yet("whoami")
}
pub fn login(_: LoginArgs) -> anyhow::Result<ExitCode> {
    not_yet("login")
}
pub fn logout(_: LogoutArgs) -> anyhow::Result<ExitCode> {
    not_yet("logout")
}
pub fn auth(_: AuthArgs) -> anyhow::Result<ExitCode> {
    not_yet("auth")
}
pub fn download(_: DownloadArgs) -> anyhow::Result<ExitCode> {
    not_yet("download")
}
pub fn cache(_: CacheArgs) -> anyhow::Result<ExitCode> {
    not_yet("cache")
}
