//! Where the hub lives and where its files go, resolved from the environment exactly as the
//! Python client (`huggingface_hub/constants.py`) resolves them.
//!
//! | value | resolved from, first that is set |
//! | --- | --- |
//! | endpoint | `HF_ENDPOINT` (trailing `/` removed), else `https://huggingface.co` |
//! | home | `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` |
//! | hub cache | `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `<home>/hub` |
//! | token file | `HF_TOKEN_PATH`, else `<home>/token` |
//! | offline | `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` truthy (`1/ON/YES/TRUE`) |
//! | implicit token off | `HF_HUB_DISABLE_IMPLICIT_TOKEN` truthy |
//!
//! `~` and `$VAR`/`${VAR}` in paths are expanded like Python's `expanduser` + `expandvars`.
//! [`HubEnv::from_lookup`] takes any variable lookup, so tests and the dashboard can resolve a
//! configuration without touching the process environment.

use std::path::{Path, PathBuf};

/// The public hub, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Every variable this module reads, in the order `dsocr doctor` reports them.
pub const VARIABLES: &[&str] = &[
    "HF_ENDPOINT",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_TOKEN_PATH",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
];

/// The resolved hub configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEnv {
    /// Base URL of the hub, without a trailing `/`.
    pub endpoint: String,
    /// `HF_HOME`: the folder holding the token file and the hub cache by default.
    pub home: PathBuf,
    /// `HF_HUB_CACHE`: where `models--org--name` folders live.
    pub hub_cache: PathBuf,
    /// The file holding the active token (`HF_TOKEN_PATH`).
    pub token_path: PathBuf,
    /// `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`) as set, uncleaned; see [`crate::hub::token`].
    pub env_token: Option<String>,
    /// `HUGGING_FACE_HUB_TOKEN` as set, uncleaned (the legacy name).
    pub legacy_env_token: Option<String>,
    /// Offline mode: no request may be sent.
    pub offline: bool,
    /// Tokens are not sent unless asked for explicitly.
    pub disable_implicit_token: bool,
    /// The variables of [`VARIABLES`] that are set, with their values (tokens masked).
    pub set_variables: Vec<(String, String)>,
    /// `HOME`, when set: where shell startup files, `.git-credentials` and `.netrc` live.
    pub user_home: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`, when set (git's and fish's config folder; default `~/.config`).
    pub xdg_config_home: Option<PathBuf>,
}

impl HubEnv {
    /// Resolves from the process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Resolves from `lookup(name) -> value` (a set-but-empty variable counts as set, as in
    /// Python, except where Python uses `or`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let home_dir = lookup("HOME").unwrap_or_default();
        let expand = |v: &str| expand_path(v, &home_dir, &lookup);
        let home = match (get("HF_HOME"), get("XDG_CACHE_HOME")) {
            (Some(h), _) => expand(&h),
            (None, Some(x)) => expand(&x).join("huggingface"),
            (None, None) => expand("~/.cache").join("huggingface"),
        };
        let hub_cache = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(|p| expand(&p))
            .unwrap_or_else(|| home.join("hub"));
        let token_path = get("HF_TOKEN_PATH")
            .map(|p| expand(&p))
            .unwrap_or_else(|| home.join("token"));
        let endpoint = get("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let truthy = |name: &str| lookup(name).is_some_and(|v| is_true(&v));
        let set_variables = VARIABLES
            .iter()
            .filter_map(|name| {
                let value = lookup(name)?;
                let shown = if matches!(*name, "HF_TOKEN" | "HUGGING_FACE_HUB_TOKEN") {
                    crate::hub::token::mask(&value)
                } else {
                    value
                };
                Some((name.to_string(), shown))
            })
            .collect();
        HubEnv {
            endpoint,
            home,
            hub_cache,
            token_path,
            env_token: lookup("HF_TOKEN"),
            legacy_env_token: lookup("HUGGING_FACE_HUB_TOKEN"),
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            disable_implicit_token: truthy("HF_HUB_DISABLE_IMPLICIT_TOKEN"),
            set_variables,
            user_home: get("HOME").map(PathBuf::from),
            xdg_config_home: get("XDG_CONFIG_HOME").map(|x| expand(&x)),
        }
    }

    /// The `stored_tokens` file: beside the token file, as Python places it.
    pub fn stored_tokens_path(&self) -> PathBuf {
        self.token_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("stored_tokens")
    }

    /// `$XDG_CONFIG_HOME`, else `~/.config` (None without `HOME`).
    pub fn config_home(&self) -> Option<PathBuf> {
        self.xdg_config_home
            .clone()
            .or_else(|| self.user_home.as_ref().map(|h| h.join(".config")))
    }

    /// True when the endpoint is the public huggingface.co hub.
    pub fn is_default_endpoint(&self) -> bool {
        self.endpoint == DEFAULT_ENDPOINT
    }
}

/// Python's `constants._is_true`: `1`, `ON`, `YES`, `TRUE` in any case.
pub fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// `os.path.expanduser(os.path.expandvars(p))`: unknown variables are left as written.
fn expand_path(raw: &str, home: &str, lookup: &impl Fn(&str) -> Option<String>) -> PathBuf {
    let vars = expand_vars(raw, lookup);
    let user = if vars == "~" {
        home.to_string()
    } else if let Some(rest) = vars.strip_prefix("~/") {
        format!("{}/{rest}", home.trim_end_matches('/'))
    } else {
        vars
    };
    PathBuf::from(user)
}

fn expand_vars(raw: &str, lookup: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match lookup(name).filter(|_| !name.is_empty()) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[pos..pos + 1 + consumed]),
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HubEnv {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_home() {
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(e.endpoint, "https://huggingface.co");
        assert_eq!(e.home, PathBuf::from("/home/u/.cache/huggingface"));
        assert_eq!(e.hub_cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(
            e.token_path,
            PathBuf::from("/home/u/.cache/huggingface/token")
        );
        assert_eq!(
            e.stored_tokens_path(),
            PathBuf::from("/home/u/.cache/huggingface/stored_tokens")
        );
        assert!(!e.offline && !e.disable_implicit_token);
    }

    #[test]
    fn xdg_then_hf_home_then_hub_cache_take_precedence() {
        let e = env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(e.home, PathBuf::from("/x/huggingface"));
        let e = env(&[
            ("HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HF_HOME", "~/hf"),
        ]);
        assert_eq!(e.home, PathBuf::from("/h/hf"));
        assert_eq!(e.hub_cache, PathBuf::from("/h/hf/hub"));
        let e = env(&[("HF_HOME", "/a"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]);
        assert_eq!(e.hub_cache, PathBuf::from("/legacy"));
        let e = env(&[
            ("HF_HOME", "/a"),
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
            ("HF_HUB_CACHE", "$HF_HOME/c"),
        ]);
        assert_eq!(e.hub_cache, PathBuf::from("/a/c"));
    }

    #[test]
    fn token_path_endpoint_and_flags() {
        let e = env(&[
            ("HF_HOME", "/a"),
            ("HF_TOKEN_PATH", "${HF_HOME}/t/tok"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "0"),
            ("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"),
        ]);
        assert_eq!(e.token_path, PathBuf::from("/a/t/tok"));
        assert_eq!(e.stored_tokens_path(), PathBuf::from("/a/t/stored_tokens"));
        assert_eq!(e.endpoint, "http://127.0.0.1:9");
        assert!(e.offline);
        assert!(!e.disable_implicit_token);
        let shown: Vec<_> = e.set_variables.iter().map(|(_, v)| v.as_str()).collect();
        assert!(shown.contains(&"hf_…EFGH"), "{shown:?}");
        assert!(!shown.iter().any(|v| v.contains("abcdefgh")));
        assert!(shown.contains(&"0"), "flags are shown as set: {shown:?}");
    }

    #[test]
    fn unknown_variables_stay_literal() {
        let e = env(&[("HF_HOME", "/a/$NOPE/${ALSO_NOPE}/$")]);
        assert_eq!(e.home, PathBuf::from("/a/$NOPE/${ALSO_NOPE}/$"));
    }
}
