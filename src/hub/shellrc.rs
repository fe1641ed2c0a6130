//! Tokens written in shell startup files: where `HF_TOKEN` comes back from at every login.
//!
//! A guide that says "put `export HF_TOKEN=...` in `~/.bashrc`" leaves a token that returns in
//! every new shell, so `unset HF_TOKEN` fixes one shell only. [`scan`] reads the usual startup
//! files ([`startup_files`]) and the files they `source` (one level deep), and reports every
//! line that assigns `HF_TOKEN`/`HUGGING_FACE_HUB_TOKEN` or holds a literal `hf_…` token, with
//! its file and line number. Tokens are kept in [`Secret`]s (shown masked).

use std::fs;
use std::path::{Path, PathBuf};

use super::env::HubEnv;
use super::token::Secret;

/// The variables the hub client reads a token from.
pub const TOKEN_VARIABLES: &[&str] = &["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"];

/// One line of a startup file that sets a token variable or holds a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLine {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The variable it assigns (`HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`), if it assigns one.
    pub variable: Option<String>,
    /// The token written on the line, when it is a literal (not `$(…)` or `$VAR`).
    pub token: Option<Secret>,
}

impl TokenLine {
    /// `FILE line N`.
    pub fn location(&self) -> String {
        format!("{} line {}", self.file.display(), self.line)
    }
}

/// The startup files checked, in the order a login shell reads them: bash, sh, zsh, fish,
/// then `/etc/environment` (PAM).
pub fn startup_files(env: &HubEnv) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = &env.user_home {
        for name in [
            ".bashrc",
            ".bash_profile",
            ".bash_login",
            ".profile",
            ".zshrc",
            ".zprofile",
            ".zshenv",
            ".zlogin",
        ] {
            files.push(home.join(name));
        }
    }
    if let Some(config) = env.config_home() {
        files.push(config.join("fish/config.fish"));
    }
    files.push(PathBuf::from("/etc/environment"));
    files
}

/// Every token line in the startup files of `env` and the files they source (one level).
pub fn scan(env: &HubEnv) -> Vec<TokenLine> {
    let home = env.user_home.clone();
    let mut out = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for file in startup_files(env) {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        seen.push(file.clone());
        let sourced = scan_text(&file, &text, home.as_deref(), &mut out);
        for child in sourced {
            if seen.contains(&child) || startup_files(env).contains(&child) {
                continue;
            }
            if let Ok(text) = fs::read_to_string(&child) {
                seen.push(child.clone());
                scan_text(&child, &text, home.as_deref(), &mut out);
            }
        }
    }
    out
}

/// Where a token variable that is set now was most likely set: the line assigning `variable`
/// the same literal value, else the last line assigning it (the one a shell keeps).
pub fn origin<'a>(lines: &'a [TokenLine], variable: &str, value: &Secret) -> Option<&'a TokenLine> {
    let assigning: Vec<&TokenLine> = lines
        .iter()
        .filter(|l| l.variable.as_deref() == Some(variable))
        .collect();
    assigning
        .iter()
        .find(|l| l.token.as_ref() == Some(value))
        .or_else(|| assigning.last())
        .copied()
}

/// Scans one file's text into `out`; returns the files it sources.
fn scan_text(
    file: &Path,
    text: &str,
    home: Option<&Path>,
    out: &mut Vec<TokenLine>,
) -> Vec<PathBuf> {
    let mut sourced = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(path) = sourced_file(line, home, file) {
            sourced.push(path);
        }
        let assigned = assignment(line);
        let literal = assigned
            .as_ref()
            .and_then(|(_, v)| v.clone())
            .or_else(|| hf_token_in(line));
        if assigned.is_none() && literal.is_none() {
            continue;
        }
        out.push(TokenLine {
            file: file.to_path_buf(),
            line: i + 1,
            variable: assigned.map(|(name, _)| name),
            token: literal.as_deref().and_then(Secret::new),
        });
    }
    sourced
}

/// `export HF_TOKEN=v`, `HF_TOKEN=v`, `declare -x HF_TOKEN=v`, `set -gx HF_TOKEN v` (fish),
/// `setenv HF_TOKEN v` (csh): the variable and the literal value (None when computed).
fn assignment(line: &str) -> Option<(String, Option<String>)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        for var in TOKEN_VARIABLES {
            if let Some(value) = word.strip_prefix(var).and_then(|r| r.strip_prefix('=')) {
                let prefix_ok = words[..i].iter().all(|w| {
                    matches!(*w, "export" | "declare" | "typeset" | "readonly" | "local")
                        || w.starts_with('-')
                });
                if prefix_ok {
                    let rest = line
                        .split_once(&format!("{var}="))
                        .map_or(value, |(_, r)| r);
                    return Some((var.to_string(), literal(rest)));
                }
            }
            if *word == *var && i > 0 {
                let fish = words[0] == "set" && words[1..i].iter().all(|w| w.starts_with('-'));
                let csh = words[0] == "setenv" && i == 1;
                if fish || csh {
                    let rest = words[i + 1..].join(" ");
                    return Some((var.to_string(), literal(&rest)));
                }
            }
        }
    }
    None
}

/// The literal value at the start of `rest` (quotes removed), or None when it is computed
/// (`$…`, `` ` ``) or empty.
fn literal(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let value = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next().unwrap_or("")
    } else if let Some(q) = rest.strip_prefix('\'') {
        q.split('\'').next().unwrap_or("")
    } else {
        rest.split(|c: char| c.is_whitespace() || c == ';')
            .next()
            .unwrap_or("")
    };
    let computed = value.contains('$') || value.contains('`');
    (!value.is_empty() && !computed).then(|| value.to_string())
}

/// A literal `hf_` token (`hf_` + 30 or more letters and digits) anywhere on the line.
fn hf_token_in(line: &str) -> Option<String> {
    let mut rest = line;
    while let Some(at) = rest.find("hf_") {
        let before_ok = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at + 3..];
        let len = tail
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tail.len());
        if before_ok && len >= 30 {
            return Some(rest[at..at + 3 + len].to_string());
        }
        rest = &rest[at + 3..];
    }
    None
}

/// `source FILE` or `. FILE`: the file, with `~`, `$HOME` and `${HOME}` expanded; a relative
/// path is taken from the home folder (where login shells start).
fn sourced_file(line: &str, home: Option<&Path>, from: &Path) -> Option<PathBuf> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if first != "source" && first != "." {
        return None;
    }
    let raw = words.next()?.trim_matches(|c| c == '"' || c == '\'');
    let home_str = home.map(|h| h.display().to_string());
    let expanded = match &home_str {
        Some(h) => {
            let r = raw.replace("${HOME}", h).replace("$HOME", h);
            match r.strip_prefix("~/") {
                Some(tail) => format!("{h}/{tail}"),
                None => r,
            }
        }
        None => raw.to_string(),
    };
    if expanded.contains('$') || expanded.contains('*') {
        return None;
    }
    let path = PathBuf::from(expanded);
    Some(if path.is_absolute() {
        path
    } else {
        home.map(|h| h.join(&path))
            .or_else(|| from.parent().map(|p| p.join(&path)))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH";

    fn lines_of(text: &str) -> Vec<TokenLine> {
        let mut out = Vec::new();
        scan_text(
            Path::new("/h/.bashrc"),
            text,
            Some(Path::new("/h")),
            &mut out,
        );
        out
    }

    #[test]
    fn assignments_in_every_shell_syntax() {
        let text = format!(
            "# export HF_TOKEN=commented\nexport HF_TOKEN={T}\nHUGGING_FACE_HUB_TOKEN=\"{T}\"\nset -gx HF_TOKEN '{T}'\nsetenv HF_TOKEN {T}\nexport HF_TOKEN=$(cat ~/.tok)\nalias up='hf upload --token {T}'\nexport HF_TOKENS=x\n"
        );
        let l = lines_of(&text);
        let summary: Vec<(usize, Option<&str>, bool)> = l
            .iter()
            .map(|l| (l.line, l.variable.as_deref(), l.token.is_some()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (2, Some("HF_TOKEN"), true),
                (3, Some("HUGGING_FACE_HUB_TOKEN"), true),
                (4, Some("HF_TOKEN"), true),
                (5, Some("HF_TOKEN"), true),
                (6, Some("HF_TOKEN"), false),
                (7, None, true),
            ]
        );
        assert_eq!(l[0].token.as_ref().unwrap().expose(), T);
        assert_eq!(l[1].token.as_ref().unwrap().expose(), T);
        assert_eq!(l[2].token.as_ref().unwrap().expose(), T);
        assert_eq!(l[0].location(), "/h/.bashrc line 2");
    }

    #[test]
    fn origin_prefers_the_same_value_then_the_last_assignment() {
        let other = "hf_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
        let l = lines_of(&format!("export HF_TOKEN={T}\nexport HF_TOKEN={other}\n"));
        let t = Secret::new(T).unwrap();
        assert_eq!(origin(&l, "HF_TOKEN", &t).unwrap().line, 1);
        let u = Secret::new("hf_unknownunknownunknownunknownunkn").unwrap();
        assert_eq!(origin(&l, "HF_TOKEN", &u).unwrap().line, 2);
        assert!(origin(&l, "HUGGING_FACE_HUB_TOKEN", &t).is_none());
    }

    #[test]
    fn sourced_files_are_expanded() {
        let h = Some(Path::new("/h"));
        let f = Path::new("/h/.bashrc");
        assert_eq!(
            sourced_file("source ~/.secrets", h, f),
            Some(PathBuf::from("/h/.secrets"))
        );
        assert_eq!(
            sourced_file(". \"$HOME/.env\"", h, f),
            Some(PathBuf::from("/h/.env"))
        );
        assert_eq!(sourced_file(". .hf", h, f), Some(PathBuf::from("/h/.hf")));
        assert_eq!(sourced_file("source $ZSH/oh-my-zsh.sh", h, f), None);
        assert_eq!(sourced_file("echo source", h, f), None);
    }

    #[test]
    fn scan_follows_one_level_of_source() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        fs::write(home.join(".bashrc"), "# rc\n. ~/.hf_env\n").unwrap();
        fs::write(
            home.join(".hf_env"),
            format!("\n\nexport HF_TOKEN={T}\nsource ~/.deeper\n"),
        )
        .unwrap();
        fs::write(home.join(".deeper"), format!("export HF_TOKEN={T}\n")).unwrap();
        let h = home.display().to_string();
        let env = HubEnv::from_lookup(|k| (k == "HOME").then(|| h.clone()));
        let found = scan(&env);
        let found: Vec<_> = found.iter().filter(|l| l.file.starts_with(home)).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, home.join(".hf_env"));
        assert_eq!(found[0].line, 3);
    }
}
