//! Hub tokens that git keeps in plain text: `~/.git-credentials` (and the file of
//! `credential.helper store --file F`, and `~/.config/git/credentials`) and `~/.netrc`.
//!
//! Cloning `https://huggingface.co/…` with the token as the password makes git's `store`
//! helper write `https://user:<token>@huggingface.co` to a plain file. [`find`] lists the
//! entries for the hub's host (the endpoint's, plus `huggingface.co` and `hf.co`) with file and
//! line; the caller checks each token with whoami. Passwords are kept in [`Secret`]s.

use std::fs;
use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;
use reqwest::Url;

use super::env::HubEnv;
use super::token::Secret;

/// Which kind of file a credential was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialFile {
    /// git's `store` helper file.
    GitStore,
    /// `~/.netrc`.
    Netrc,
}

/// One stored credential for the hub's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the entry.
    pub line: usize,
    /// git store file or netrc.
    pub kind: CredentialFile,
    /// The host it is for.
    pub host: String,
    /// The user name stored with it.
    pub user: String,
    /// The password: the token.
    pub token: Secret,
}

impl StoredCredential {
    /// `FILE line N`.
    pub fn location(&self) -> String {
        format!("{} line {}", self.file.display(), self.line)
    }
}

/// The hosts whose credentials are hub tokens: the endpoint's and the public hub's.
pub fn hub_hosts(env: &HubEnv) -> Vec<String> {
    let mut hosts = vec!["huggingface.co".to_string(), "hf.co".to_string()];
    if let Some(h) = Url::parse(&env.endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        && !hosts.contains(&h)
    {
        hosts.push(h);
    }
    hosts
}

/// git's store files: `~/.git-credentials`, `$XDG_CONFIG_HOME/git/credentials`, and any
/// `--file` given to `credential.helper store` in `~/.gitconfig` or `~/.config/git/config`.
pub fn git_store_files(env: &HubEnv) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let home = env.user_home.as_deref();
    if let Some(h) = home {
        files.push(h.join(".git-credentials"));
    }
    let config = env.config_home();
    if let Some(c) = &config {
        files.push(c.join("git/credentials"));
    }
    let configs = home
        .map(|h| h.join(".gitconfig"))
        .into_iter()
        .chain(config.map(|c| c.join("git/config")));
    for cfg in configs {
        if let Ok(text) = fs::read_to_string(&cfg) {
            for f in store_files_in_gitconfig(&text, home) {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
    }
    files
}

/// `helper = store --file F` (or `--file=F`) values of a git config file.
fn store_files_in_gitconfig(text: &str, home: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("helper") {
            continue;
        }
        let value = value.trim().trim_matches('"');
        let words: Vec<&str> = value.split_whitespace().collect();
        if words.first() != Some(&"store") {
            continue;
        }
        let file = words.iter().enumerate().find_map(|(i, w)| {
            w.strip_prefix("--file=")
                .map(str::to_string)
                .or_else(|| (*w == "--file").then(|| words.get(i + 1).map(|s| s.to_string()))?)
        });
        if let Some(f) = file {
            out.push(expand_home(&f, home));
        }
    }
    out
}

fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(tail), Some(h)) => h.join(tail),
        _ => PathBuf::from(path),
    }
}

/// Every hub credential in git's store files and `~/.netrc`.
pub fn find(env: &HubEnv) -> Vec<StoredCredential> {
    let hosts = hub_hosts(env);
    let mut out = Vec::new();
    for file in git_store_files(env) {
        if let Ok(text) = fs::read_to_string(&file) {
            out.extend(parse_git_store(&file, &text, &hosts));
        }
    }
    if let Some(h) = &env.user_home {
        let netrc = h.join(".netrc");
        if let Ok(text) = fs::read_to_string(&netrc) {
            out.extend(parse_netrc(&netrc, &text, &hosts));
        }
    }
    out
}

/// Lines `https://user:password@host[:port][/path]`.
pub fn parse_git_store(file: &Path, text: &str, hosts: &[String]) -> Vec<StoredCredential> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Ok(url) = Url::parse(line.trim()) else {
            continue;
        };
        let Some(host) = url.host_str().filter(|h| hosts.iter().any(|x| x == h)) else {
            continue;
        };
        let password = percent_decode_str(url.password().unwrap_or(""))
            .decode_utf8_lossy()
            .into_owned();
        let Some(token) = Secret::new(&password) else {
            continue;
        };
        out.push(StoredCredential {
            file: file.to_path_buf(),
            line: i + 1,
            kind: CredentialFile::GitStore,
            host: host.to_string(),
            user: percent_decode_str(url.username())
                .decode_utf8_lossy()
                .into_owned(),
            token,
        });
    }
    out
}

/// `machine HOST login USER password TOKEN` entries (over any number of lines).
pub fn parse_netrc(file: &Path, text: &str, hosts: &[String]) -> Vec<StoredCredential> {
    let words: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .flat_map(|(i, l)| {
            let l = l.split_once('#').map_or(l, |(a, _)| a);
            l.split_whitespace().map(move |w| (i + 1, w))
        })
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i].1 != "machine" || i + 1 >= words.len() {
            i += 1;
            continue;
        }
        let (line, host) = (words[i].0, words[i + 1].1);
        let (mut user, mut password) = (String::new(), None);
        let mut j = i + 2;
        while j + 1 < words.len() && !matches!(words[j].1, "machine" | "default") {
            match words[j].1 {
                "login" => user = words[j + 1].1.to_string(),
                "password" => password = Secret::new(words[j + 1].1),
                _ => {}
            }
            j += 2;
        }
        if let Some(token) = password.filter(|_| hosts.iter().any(|h| h == host)) {
            out.push(StoredCredential {
                file: file.to_path_buf(),
                line,
                kind: CredentialFile::Netrc,
                host: host.to_string(),
                user,
                token,
            });
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH";

    #[test]
    fn git_store_lines_for_the_hub_only() {
        let hosts = vec!["huggingface.co".to_string(), "127.0.0.1".to_string()];
        let text = format!(
            "https://alice:{T}@github.com\nhttps://hf_user:{T}@huggingface.co\nnot a url\nhttp://u:p%40ss@127.0.0.1:8765\n"
        );
        let found = parse_git_store(Path::new("/h/.git-credentials"), &text, &hosts);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].line, 2);
        assert_eq!(found[0].user, "hf_user");
        assert_eq!(found[0].token.expose(), T);
        assert_eq!(found[1].token.expose(), "p@ss");
        assert_eq!(found[1].location(), "/h/.git-credentials line 4");
    }

    #[test]
    fn netrc_entries_span_lines() {
        let hosts = vec!["huggingface.co".to_string()];
        let text = format!(
            "machine github.com login a password b\n# hub\nmachine huggingface.co\n  login hf_user\n  password {T}\ndefault login x password y\n"
        );
        let found = parse_netrc(Path::new("/h/.netrc"), &text, &hosts);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 3);
        assert_eq!(found[0].token.expose(), T);
        assert_eq!(found[0].kind, CredentialFile::Netrc);
    }

    #[test]
    fn store_helper_file_from_gitconfig() {
        let text = "[credential]\n\thelper = store --file ~/.my-creds\n[credential \"x\"]\n  helper = \"store --file=/etc/c\"\n  helper = cache\n";
        assert_eq!(
            store_files_in_gitconfig(text, Some(Path::new("/h"))),
            vec![PathBuf::from("/h/.my-creds"), PathBuf::from("/etc/c")]
        );
    }
}
