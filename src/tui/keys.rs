//! Key bindings: the commands, one table row per command (where its keys count, what the help
//! and footer call it, its built-in keys), keys as the config file writes them, and the keymap
//! the dashboard looks keys up in. The config file's `[keys]` (`super::config`) replaces a
//! command's keys.

use std::str::FromStr;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde::Deserialize;

use super::app::Pane;

/// A bindable command. The config file names them in snake_case. Each has its row in
/// [`COMMANDS`], at its own index (a new command goes at the end of both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Quit the dashboard.
    Quit,
    /// Show or hide the key help.
    Help,
    /// Show or hide the log pane.
    ToggleLog,
    /// Focus the next pane.
    NextPane,
    /// Focus the previous pane.
    PrevPane,
    /// Cancel the running job (twice: quit).
    Cancel,
    /// Move up.
    Up,
    /// Move down.
    Down,
    /// Scroll a page up.
    PageUp,
    /// Scroll a page down.
    PageDown,
    /// Go to the first row.
    Top,
    /// Go to the last row.
    Bottom,
    /// Confirm / use the selected row.
    Enter,
    /// Close the dialog or overlay.
    Back,
    /// Log in with a new token.
    Login,
    /// Log out (remove the stored token in use).
    Logout,
    /// Use the selected stored token.
    SwitchToken,
    /// Re-read token sources and ask whoami again.
    Recheck,
    /// Download the selected model.
    Download,
    /// Resume the last cancelled or failed download.
    Resume,
    /// Cancel the running download.
    CancelDownload,
    /// Verify the selected cached repo.
    Verify,
    /// Delete the selected cached revision.
    Delete,
    /// Use a local model folder.
    UseFolder,
    /// Choose the model repo by name.
    ChooseModel,
    /// Edit the input image path.
    EditInput,
    /// Next resolution mode.
    CycleMode,
    /// Next prompt preset.
    CyclePreset,
    /// Type a custom prompt.
    EditPrompt,
    /// Run OCR (on a PDF: the chosen page).
    Run,
    /// Run OCR on every page of the PDF input.
    RunAll,
    /// Previous page of the PDF input.
    PrevPage,
    /// Next page of the PDF input.
    NextPage,
    /// Cancel the running OCR.
    CancelOcr,
    /// Copy the result to the clipboard (OSC 52).
    Copy,
    /// Save the result to the output folder.
    Save,
}

/// One command: where its keys are looked up (`None`: everywhere; a pane: only while it has
/// focus), its description in the help overlay and footer, and its built-in keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// The command.
    pub cmd: Command,
    /// Where its keys count.
    pub scope: Option<Pane>,
    /// Short description.
    pub description: &'static str,
    /// Built-in keys, as the config file writes them.
    pub keys: &'static [&'static str],
}

const fn command(
    cmd: Command,
    scope: Option<Pane>,
    description: &'static str,
    keys: &'static [&'static str],
) -> CommandInfo {
    CommandInfo {
        cmd,
        scope,
        description,
        keys,
    }
}

/// Every command, in [`Command`]'s order, which is the help's order.
pub const COMMANDS: &[CommandInfo] = &[
    command(Command::Quit, None, "quit", &["q"]),
    command(Command::Help, None, "help", &["?", "F1"]),
    command(Command::ToggleLog, None, "log", &["L"]),
    command(Command::NextPane, None, "next pane", &["Tab", "Right", "l"]),
    command(
        Command::PrevPane,
        None,
        "previous pane",
        &["BackTab", "Left", "h"],
    ),
    command(
        Command::Cancel,
        None,
        "cancel job (twice: quit)",
        &["Ctrl-c"],
    ),
    command(Command::Up, None, "up", &["Up", "k"]),
    command(Command::Down, None, "down", &["Down", "j"]),
    command(Command::PageUp, None, "page up", &["PageUp", "Ctrl-u"]),
    command(
        Command::PageDown,
        None,
        "page down",
        &["PageDown", "Ctrl-d"],
    ),
    command(Command::Top, None, "top", &["Home", "g"]),
    command(Command::Bottom, None, "bottom", &["End", "G"]),
    command(Command::Enter, None, "select", &["Enter"]),
    command(Command::Back, None, "close", &["Esc"]),
    command(Command::Login, Some(Pane::Login), "log in", &["n"]),
    command(Command::Logout, Some(Pane::Login), "log out", &["o"]),
    command(Command::SwitchToken, Some(Pane::Login), "use token", &["s"]),
    command(Command::Recheck, Some(Pane::Login), "re-check", &["r"]),
    command(Command::Download, Some(Pane::Models), "download", &["d"]),
    command(Command::Resume, Some(Pane::Models), "resume", &["R"]),
    command(
        Command::CancelDownload,
        Some(Pane::Models),
        "cancel",
        &["x"],
    ),
    command(Command::Verify, Some(Pane::Models), "verify", &["v"]),
    command(
        Command::Delete,
        Some(Pane::Models),
        "delete",
        &["Delete", "D"],
    ),
    command(
        Command::UseFolder,
        Some(Pane::Models),
        "local folder",
        &["f"],
    ),
    command(Command::ChooseModel, Some(Pane::Models), "model", &["m"]),
    command(Command::EditInput, Some(Pane::Ocr), "input", &["i"]),
    command(Command::CycleMode, Some(Pane::Ocr), "mode", &["m"]),
    command(Command::CyclePreset, Some(Pane::Ocr), "preset", &["p"]),
    command(Command::EditPrompt, Some(Pane::Ocr), "prompt", &["t"]),
    command(Command::Run, Some(Pane::Ocr), "run", &["r"]),
    command(Command::RunAll, Some(Pane::Ocr), "run all pages", &["a"]),
    command(Command::PrevPage, Some(Pane::Ocr), "prev page", &["["]),
    command(Command::NextPage, Some(Pane::Ocr), "next page", &["]"]),
    command(Command::CancelOcr, Some(Pane::Ocr), "cancel", &["x"]),
    command(Command::Copy, Some(Pane::Ocr), "copy", &["y"]),
    command(Command::Save, Some(Pane::Ocr), "save", &["w"]),
];

impl Command {
    /// Its row of [`COMMANDS`].
    pub fn info(self) -> &'static CommandInfo {
        &COMMANDS[self as usize]
    }

    /// Where its keys are looked up: everywhere (`None`), or only when a pane has focus.
    pub fn scope(self) -> Option<Pane> {
        self.info().scope
    }

    /// Short description for the help overlay and footer.
    pub fn description(self) -> &'static str {
        self.info().description
    }
}

/// A key with modifiers, as written in the config file (`q`, `Ctrl-c`, `Shift-Tab`, `F1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The key.
    pub code: KeyCode,
    /// Ctrl and Alt only; Shift is folded into the character or `BackTab`.
    pub mods: KeyModifiers,
}

impl Key {
    /// The key of a terminal event, normalised like the parsed form.
    pub fn from_event(ev: KeyEvent) -> Self {
        let mods = ev.modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT);
        let code = match ev.code {
            KeyCode::Char(c) if mods.contains(KeyModifiers::CONTROL) => {
                KeyCode::Char(c.to_ascii_lowercase())
            }
            other => other,
        };
        Self { code, mods }
    }
}

impl FromStr for Key {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mods = KeyModifiers::NONE;
        let mut rest = s;
        loop {
            if let Some(r) = strip_prefix_ci(rest, "ctrl-") {
                mods |= KeyModifiers::CONTROL;
                rest = r;
            } else if let Some(r) = strip_prefix_ci(rest, "alt-") {
                mods |= KeyModifiers::ALT;
                rest = r;
            } else {
                break;
            }
        }
        let code = match rest.to_ascii_lowercase().as_str() {
            _ if rest.chars().count() == 1 => {
                let c = rest.chars().next().unwrap_or(' ');
                KeyCode::Char(if mods.is_empty() {
                    c
                } else {
                    c.to_ascii_lowercase()
                })
            }
            "tab" => KeyCode::Tab,
            "backtab" | "shift-tab" => KeyCode::BackTab,
            "enter" | "return" => KeyCode::Enter,
            "esc" | "escape" => KeyCode::Esc,
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "pageup" => KeyCode::PageUp,
            "pagedown" => KeyCode::PageDown,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "delete" | "del" => KeyCode::Delete,
            "backspace" => KeyCode::Backspace,
            "space" => KeyCode::Char(' '),
            f if f.starts_with('f') => f[1..]
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=12).contains(n))
                .map(KeyCode::F)
                .ok_or_else(|| format!("unknown key `{s}`"))?,
            _ => return Err(format!("unknown key `{s}`")),
        };
        Ok(Self { code, mods })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
        .filter(|r| !r.is_empty())
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mods.contains(KeyModifiers::CONTROL) {
            f.write_str("Ctrl-")?;
        }
        if self.mods.contains(KeyModifiers::ALT) {
            f.write_str("Alt-")?;
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("Space"),
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::BackTab => f.write_str("S-Tab"),
            KeyCode::PageUp => f.write_str("PgUp"),
            KeyCode::PageDown => f.write_str("PgDn"),
            KeyCode::Delete => f.write_str("Del"),
            KeyCode::Up => f.write_str("↑"),
            KeyCode::Down => f.write_str("↓"),
            KeyCode::Left => f.write_str("←"),
            KeyCode::Right => f.write_str("→"),
            other => write!(f, "{other}"),
        }
    }
}

/// Commands and their keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Keymap {
    bindings: Vec<(Command, Vec<Key>)>,
}

impl Default for Keymap {
    /// Every command with its built-in keys.
    fn default() -> Self {
        let bindings = COMMANDS
            .iter()
            .map(|c| {
                (
                    c.cmd,
                    c.keys.iter().filter_map(|k| k.parse().ok()).collect(),
                )
            })
            .collect();
        Self { bindings }
    }
}

impl Keymap {
    /// The command a key means with `focus` focused: the pane's own bindings first.
    pub fn lookup(&self, key: Key, focus: Pane) -> Option<Command> {
        let hit = |want: Option<Pane>| {
            self.bindings
                .iter()
                .find(|(cmd, keys)| cmd.scope() == want && keys.contains(&key))
                .map(|(cmd, _)| *cmd)
        };
        hit(Some(focus)).or_else(|| hit(None))
    }

    /// Keys bound to a command.
    pub fn keys(&self, cmd: Command) -> &[Key] {
        self.bindings
            .iter()
            .find(|(c, _)| *c == cmd)
            .map_or(&[], |(_, k)| k.as_slice())
    }

    /// The first key of a command as text, or `-` when unbound.
    pub fn label(&self, cmd: Command) -> String {
        self.keys(cmd)
            .first()
            .map_or_else(|| "-".to_string(), Key::to_string)
    }

    /// All commands in help order.
    pub fn commands(&self) -> impl Iterator<Item = Command> + '_ {
        self.bindings.iter().map(|(c, _)| *c)
    }

    /// Bind `cmd` to `keys` only (the config file's `[keys]`).
    pub(super) fn set(&mut self, cmd: Command, keys: Vec<Key>) {
        if let Some(slot) = self.bindings.iter_mut().find(|(c, _)| *c == cmd) {
            slot.1 = keys;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        s.parse().expect("valid key in test")
    }

    #[test]
    fn every_command_has_its_row() {
        for (i, row) in COMMANDS.iter().enumerate() {
            assert_eq!(row.cmd as usize, i, "{:?} is out of place", row.cmd);
            assert!(!row.description.is_empty() && !row.keys.is_empty());
            for k in row.keys {
                assert!(k.parse::<Key>().is_ok(), "{:?}: bad key {k}", row.cmd);
            }
        }
        assert_eq!(COMMANDS.len(), Command::Save as usize + 1);
        assert_eq!(Command::Recheck.scope(), Some(Pane::Login));
        assert_eq!(Command::Quit.scope(), None);
        assert_eq!(Command::RunAll.description(), "run all pages");
        let km = Keymap::default();
        assert_eq!(km.keys(Command::Help), [key("?"), key("F1")]);
        assert_eq!(km.commands().count(), COMMANDS.len());
    }

    #[test]
    fn parses_keys() {
        assert_eq!(key("q").code, KeyCode::Char('q'));
        assert_eq!(key("Ctrl-c").mods, KeyModifiers::CONTROL);
        assert_eq!(key("ctrl-C").code, KeyCode::Char('c'));
        assert_eq!(key("Shift-Tab").code, KeyCode::BackTab);
        assert_eq!(key("F5").code, KeyCode::F(5));
        assert!("F13".parse::<Key>().is_err());
        assert!("Hyper-x".parse::<Key>().is_err());
        assert!("ctrl-".parse::<Key>().is_err());
    }

    #[test]
    fn pane_bindings_shadow_global_ones() {
        let km = Keymap::default();
        assert_eq!(km.lookup(key("r"), Pane::Login), Some(Command::Recheck));
        assert_eq!(km.lookup(key("r"), Pane::Ocr), Some(Command::Run));
        assert_eq!(km.lookup(key("q"), Pane::Ocr), Some(Command::Quit));
        assert_eq!(km.lookup(key("r"), Pane::Log), None);
    }
}
