//! Tokens: every source the Python client reads, which one wins, the `stored_tokens` INI file,
//! login/logout/switch, and masking.
//!
//! Precedence (Python `utils/_auth.py:get_token`, v1.19+): `HF_TOKEN`, then
//! `HUGGING_FACE_HUB_TOKEN` (an empty value falls through), then the file at `HF_TOKEN_PATH`.
//! Values are cleaned like Python's `_clean_token` (`\r`/`\n` removed, whitespace stripped).
//! `stored_tokens` lives beside the token file: an INI file with one `[name]` section per token
//! holding `hf_token = …`. Files are written atomically, mode 0600, in a 0700 folder.
//!
//! A token is held in a [`Secret`], whose `Debug` and `Display` show only [`mask`]ed text.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::HubError;
use super::env::HubEnv;

/// A token value. Formatting it never reveals it: use [`Secret::expose`] to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a cleaned, non-empty token.
    pub fn new(token: &str) -> Option<Self> {
        let cleaned = clean(token);
        (!cleaned.is_empty()).then_some(Secret(cleaned))
    }
    /// The raw token, for an `Authorization` header or a file write only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The masked form, `hf_…abcd`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masks a token for display: the `hf_` prefix (if any), `…`, and the last four characters
/// when the token is long enough that they reveal little (12+ characters).
pub fn mask(token: &str) -> String {
    let token = clean(token);
    let prefix = if token.starts_with("hf_") { "hf_" } else { "" };
    let chars: Vec<char> = token.chars().collect();
    if chars.len() >= 12 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{prefix}…{tail}")
    } else {
        format!("{prefix}…")
    }
}

/// Python's `_clean_token`: line breaks removed, surrounding whitespace stripped.
fn clean(token: &str) -> String {
    token.replace(['\r', '\n'], "").trim().to_string()
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The `HF_TOKEN` variable.
    EnvHfToken,
    /// The legacy `HUGGING_FACE_HUB_TOKEN` variable.
    EnvLegacy,
    /// The token file (`HF_TOKEN_PATH`, by default `$HF_HOME/token`).
    File(PathBuf),
    /// Given directly (to `dsocr login`, or by the dashboard).
    Given,
    /// A credential stored for git or netrc, named by its file and line.
    Credential(String),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::EnvHfToken => f.write_str("the HF_TOKEN environment variable"),
            TokenSource::EnvLegacy => {
                f.write_str("the HUGGING_FACE_HUB_TOKEN environment variable")
            }
            TokenSource::File(p) => write!(f, "the token file {}", p.display()),
            TokenSource::Given => f.write_str("the token given to login"),
            TokenSource::Credential(at) => write!(f, "the stored credential at {at}"),
        }
    }
}

impl TokenSource {
    /// True for the environment variables (which shadow the saved login).
    pub fn is_env(&self) -> bool {
        matches!(self, TokenSource::EnvHfToken | TokenSource::EnvLegacy)
    }
}

/// One token found in one source.
#[derive(Debug, Clone)]
pub struct FoundToken {
    /// Where it came from.
    pub source: TokenSource,
    /// The value.
    pub token: Secret,
}

/// One `[name]` entry of `stored_tokens`.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// The section name (Python: the token's display name at login).
    pub name: String,
    /// The value.
    pub token: Secret,
    /// True when the token file holds this token.
    pub active: bool,
}

/// Everything known locally about tokens.
#[derive(Debug, Clone)]
pub struct TokenStatus {
    /// Every source that holds a token, in precedence order.
    pub found: Vec<FoundToken>,
    /// The named tokens of `stored_tokens`.
    pub stored: Vec<StoredToken>,
    /// `HF_HUB_DISABLE_IMPLICIT_TOKEN` is set: the winner is not sent unless asked.
    pub implicit_disabled: bool,
    /// The token file's permission bits, when it exists (unix).
    pub file_mode: Option<u32>,
    /// The token file's path.
    pub token_path: PathBuf,
}

impl TokenStatus {
    /// The token the Python client would use (the first found), if any.
    pub fn winner(&self) -> Option<&FoundToken> {
        self.found.first()
    }
    /// The token to send with requests: the winner unless implicit sending is disabled.
    pub fn to_send(&self) -> Option<&FoundToken> {
        self.winner().filter(|_| !self.implicit_disabled)
    }
    /// The token in the file, when it differs from an environment token that shadows it.
    pub fn shadowed_file(&self) -> Option<&FoundToken> {
        let winner = self.winner()?;
        let file = self.found.iter().find(|t| !t.source.is_env())?;
        (winner.source.is_env() && file.token != winner.token).then_some(file)
    }
    /// The name of a stored token with this value, if any.
    pub fn name_of(&self, token: &Secret) -> Option<&str> {
        self.stored
            .iter()
            .find(|s| &s.token == token)
            .map(|s| s.name.as_str())
    }
}

/// Refuses tokens that cannot log in before asking the hub: legacy organisation tokens
/// (`api_org_…`), as Python's `hf auth login` does. The CLI, the dashboard and `serve` call it.
pub fn check_login_token(token: &Secret) -> Result<(), HubError> {
    if token.expose().starts_with("api_org") {
        return Err(HubError::OrgToken);
    }
    Ok(())
}

/// Reads every token source (no network).
pub fn status(env: &HubEnv) -> Result<TokenStatus, HubError> {
    let mut found = Vec::new();
    let env_sources = [
        (TokenSource::EnvHfToken, &env.env_token),
        (TokenSource::EnvLegacy, &env.legacy_env_token),
    ];
    for (source, value) in env_sources {
        if let Some(token) = value.as_deref().and_then(Secret::new) {
            found.push(FoundToken { source, token });
        }
    }
    let file_token = read_token_file(&env.token_path)?;
    if let Some(token) = file_token.clone() {
        found.push(FoundToken {
            source: TokenSource::File(env.token_path.clone()),
            token,
        });
    }
    let stored = read_stored(&env.stored_tokens_path())?
        .into_iter()
        .map(|(name, token)| StoredToken {
            active: Some(&token) == file_token.as_ref(),
            name,
            token,
        })
        .collect();
    Ok(TokenStatus {
        found,
        stored,
        implicit_disabled: env.disable_implicit_token,
        file_mode: file_mode(&env.token_path),
        token_path: env.token_path.clone(),
    })
}

fn read_token_file(path: &Path) -> Result<Option<Secret>, HubError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Secret::new(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HubError::io(path, e)),
    }
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn file_mode(_: &Path) -> Option<u32> {
    None
}

/// Reads `stored_tokens` as Python's `configparser` does: sections in order, `hf_token` key
/// (case-insensitive, `=` or `:`), `#`/`;` comment lines. A missing file is empty.
pub fn read_stored(path: &Path) -> Result<Vec<(String, Secret)>, HubError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HubError::io(path, e)),
    };
    Ok(parse_ini(&text))
}

fn parse_ini(text: &str) -> Vec<(String, Secret)> {
    let mut out: Vec<(String, Secret)> = Vec::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let Some(name) = &section else { continue };
        let split = trimmed.find(['=', ':']);
        let Some(at) = split else { continue };
        let (key, value) = (trimmed[..at].trim(), trimmed[at + 1..].trim());
        if !key.eq_ignore_ascii_case("hf_token") {
            continue;
        }
        if let Some(token) = Secret::new(value) {
            out.retain(|(n, _)| n != name);
            out.push((name.clone(), token));
        }
    }
    out
}

fn render_ini(entries: &[(String, Secret)]) -> String {
    entries
        .iter()
        .map(|(name, token)| format!("[{name}]\nhf_token = {}\n\n", token.expose()))
        .collect()
}

/// Saves `token` under `name`: adds or replaces the `stored_tokens` entry, then makes it the
/// active token (the token file). Validate it with whoami first.
pub fn save(env: &HubEnv, name: &str, token: &Secret) -> Result<(), HubError> {
    let path = env.stored_tokens_path();
    let mut entries = read_stored(&path)?;
    entries.retain(|(n, _)| n != name);
    entries.push((name.to_string(), token.clone()));
    write_private(&path, render_ini(&entries).as_bytes())?;
    write_private(&env.token_path, token.expose().as_bytes())
}

/// What [`logout`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutReport {
    /// Names removed from `stored_tokens`.
    pub removed_names: Vec<String>,
    /// The token file was removed (the active token was logged out).
    pub removed_active: bool,
}

/// Logs out `name` (its `stored_tokens` entry, and the token file if it was active), or with
/// `None` everything: the token file and `stored_tokens`.
pub fn logout(env: &HubEnv, name: Option<&str>) -> Result<LogoutReport, HubError> {
    let stored_path = env.stored_tokens_path();
    let mut entries = read_stored(&stored_path)?;
    let active = read_token_file(&env.token_path)?;
    let Some(name) = name else {
        let removed_names = entries.into_iter().map(|(n, _)| n).collect();
        remove_if_exists(&stored_path)?;
        let removed_active = remove_if_exists(&env.token_path)?;
        return Ok(LogoutReport {
            removed_names,
            removed_active,
        });
    };
    let Some(pos) = entries.iter().position(|(n, _)| n == name) else {
        return Err(HubError::UnknownTokenName {
            name: name.to_string(),
        });
    };
    let (_, token) = entries.remove(pos);
    write_private(&stored_path, render_ini(&entries).as_bytes())?;
    let removed_active = active.as_ref() == Some(&token) && remove_if_exists(&env.token_path)?;
    Ok(LogoutReport {
        removed_names: vec![name.to_string()],
        removed_active,
    })
}

/// Makes the stored token `name` the active one (writes the token file).
pub fn switch(env: &HubEnv, name: &str) -> Result<(), HubError> {
    let entries = read_stored(&env.stored_tokens_path())?;
    let token = entries
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| HubError::UnknownTokenName {
            name: name.to_string(),
        })?;
    write_private(&env.token_path, token.expose().as_bytes())
}

fn remove_if_exists(path: &Path) -> Result<bool, HubError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HubError::io(path, e)),
    }
}

/// Writes `bytes` to `path` atomically with mode 0600, creating the folder 0700 if missing.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    super::fsutil::write_atomic(path, bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "hf_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaWXYZ";
    const B: &str = "hf_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1234";

    fn env_in(dir: &Path, vars: &[(&str, &str)]) -> HubEnv {
        let home = dir.to_string_lossy().into_owned();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubEnv::from_lookup(move |k| {
            if k == "HF_HOME" {
                return Some(home.clone());
            }
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn masks_never_reveal_the_body() {
        assert_eq!(mask(A), "hf_…WXYZ");
        assert_eq!(mask("hf_short"), "hf_…");
        assert_eq!(mask("api_org_abcdefghijkl"), "…ijkl");
        assert_eq!(format!("{:?}", Secret::new(A).unwrap()), "Secret(hf_…WXYZ)");
        assert_eq!(Secret::new("  \r\n "), None);
        assert_eq!(Secret::new(" hf_x\r\n").unwrap().expose(), "hf_x");
    }

    #[test]
    fn precedence_env_then_legacy_then_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("token"), format!("{B}\n")).unwrap();
        let s = status(&env_in(
            dir.path(),
            &[("HF_TOKEN", ""), ("HUGGING_FACE_HUB_TOKEN", A)],
        ))
        .unwrap();
        assert_eq!(s.found.len(), 2);
        assert_eq!(s.winner().unwrap().source, TokenSource::EnvLegacy);
        assert_eq!(s.shadowed_file().unwrap().token.expose(), B);
        let s = status(&env_in(dir.path(), &[])).unwrap();
        assert!(matches!(s.winner().unwrap().source, TokenSource::File(_)));
        assert!(s.shadowed_file().is_none());
        let s = status(&env_in(
            dir.path(),
            &[("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")],
        ))
        .unwrap();
        assert!(s.winner().is_some() && s.to_send().is_none());
    }

    #[test]
    fn ini_matches_configparser_rules() {
        let text = "# c\n[one]\nHF_TOKEN : hf_1\nother = x\n\n[two]\nhf_token=hf_2\n[one]\nhf_token = hf_3\n";
        let parsed: Vec<(String, String)> = parse_ini(text)
            .into_iter()
            .map(|(n, t)| (n, t.expose().to_string()))
            .collect();
        assert_eq!(
            parsed,
            vec![("two".into(), "hf_2".into()), ("one".into(), "hf_3".into())]
        );
    }

    #[cfg(unix)]
    #[test]
    fn save_switch_logout_round_trip_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("hf");
        let env = env_in(&home, &[]);
        save(&env, "first", &Secret::new(A).unwrap()).unwrap();
        save(&env, "second", &Secret::new(B).unwrap()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&env.token_path), 0o600);
        assert_eq!(mode(&env.stored_tokens_path()), 0o600);
        assert_eq!(fs::read_to_string(&env.token_path).unwrap(), B);
        switch(&env, "first").unwrap();
        let s = status(&env).unwrap();
        assert_eq!(s.winner().unwrap().token.expose(), A);
        assert_eq!(s.name_of(&s.winner().unwrap().token), Some("first"));
        let r = logout(&env, Some("second")).unwrap();
        assert!(!r.removed_active);
        let r = logout(&env, Some("first")).unwrap();
        assert!(r.removed_active);
        assert!(!env.token_path.exists());
        assert!(matches!(
            logout(&env, Some("first")),
            Err(HubError::UnknownTokenName { .. })
        ));
        save(&env, "third", &Secret::new(A).unwrap()).unwrap();
        let r = logout(&env, None).unwrap();
        assert_eq!(r.removed_names, vec!["third".to_string()]);
        assert!(!env.stored_tokens_path().exists());
    }
}
