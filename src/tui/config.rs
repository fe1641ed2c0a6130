//! The dashboard's reading of the config file (`crate::settings` says where it lives and what
//! its `[ocr]` table means): key bindings merged over the built-in ones (`super::keys`),
//! colours (`NO_COLOR` honoured, true colour reduced to the 256-colour palette where the
//! terminal does not announce true colour), and the problems found in the file.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

use super::keys::{Command, Key, Keymap};
use crate::settings::OcrSettings;

/// Colours of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    /// Titles and highlights.
    pub accent: Color,
    /// Border of the focused pane.
    pub focus: Color,
    /// Borders of other panes.
    pub border: Color,
    /// Good news.
    pub ok: Color,
    /// Warnings.
    pub warn: Color,
    /// Errors.
    pub error: Color,
    /// Less important text.
    pub muted: Color,
    /// Background of the selected row.
    pub selection: Color,
    /// Grounding boxes in the preview.
    pub boxes: Color,
    /// Whether colours are off (`NO_COLOR`): styles then use bold/reverse only.
    pub mono: bool,
}

impl Default for Theme {
    fn default() -> Self {
        Self {
            accent: Color::Cyan,
            focus: Color::LightCyan,
            border: Color::DarkGray,
            ok: Color::Green,
            warn: Color::Yellow,
            error: Color::LightRed,
            muted: Color::Gray,
            selection: Color::Indexed(238),
            boxes: Color::LightMagenta,
            mono: false,
        }
    }
}

impl Theme {
    /// No colours at all.
    pub fn mono() -> Self {
        Self {
            accent: Color::Reset,
            focus: Color::Reset,
            border: Color::Reset,
            ok: Color::Reset,
            warn: Color::Reset,
            error: Color::Reset,
            muted: Color::Reset,
            selection: Color::Reset,
            boxes: Color::Reset,
            mono: true,
        }
    }

    /// Foreground style of a colour (bold when mono, so emphasis survives).
    pub fn fg(&self, color: Color) -> Style {
        if self.mono {
            Style::default()
        } else {
            Style::default().fg(color)
        }
    }

    /// Style of the selected row.
    pub fn selected(&self) -> Style {
        if self.mono {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
                .bg(self.selection)
                .add_modifier(Modifier::BOLD)
        }
    }

    /// Style of a title / emphasis.
    pub fn title(&self) -> Style {
        self.fg(self.accent).add_modifier(Modifier::BOLD)
    }

    fn set(&mut self, name: &str, color: Color) -> Result<(), String> {
        let slot = match name {
            "accent" => &mut self.accent,
            "focus" => &mut self.focus,
            "border" => &mut self.border,
            "ok" => &mut self.ok,
            "warn" => &mut self.warn,
            "error" => &mut self.error,
            "muted" => &mut self.muted,
            "selection" => &mut self.selection,
            "boxes" => &mut self.boxes,
            _ => return Err(format!("unknown colour name `{name}`")),
        };
        *slot = color;
        Ok(())
    }

    fn to_256(mut self) -> Self {
        for c in [
            &mut self.accent,
            &mut self.focus,
            &mut self.border,
            &mut self.ok,
            &mut self.warn,
            &mut self.error,
            &mut self.muted,
            &mut self.selection,
            &mut self.boxes,
        ] {
            *c = to_256(*c);
        }
        self
    }
}

/// Nearest colour of the xterm 256-colour cube/grey ramp for an RGB colour; others unchanged.
pub fn to_256(color: Color) -> Color {
    let Color::Rgb(r, g, b) = color else {
        return color;
    };
    let level = |v: u8| -> u8 {
        if v < 48 {
            0
        } else if v < 115 {
            1
        } else {
            (v - 35) / 40
        }
    };
    let cube = |l: u8| if l == 0 { 0 } else { 55 + 40 * l as i32 };
    let (lr, lg, lb) = (level(r), level(g), level(b));
    let cube_err = sq(cube(lr) - r as i32) + sq(cube(lg) - g as i32) + sq(cube(lb) - b as i32);
    let avg = (r as i32 + g as i32 + b as i32) / 3;
    let grey = ((avg - 3).max(0) / 10).min(23);
    let gv = 8 + 10 * grey;
    let grey_err = sq(gv - r as i32) + sq(gv - g as i32) + sq(gv - b as i32);
    if grey_err < cube_err {
        Color::Indexed(232 + grey as u8)
    } else {
        Color::Indexed(16 + 36 * lr + 6 * lg + lb)
    }
}

fn sq(v: i32) -> i32 {
    v * v
}

/// The user's config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    keys: HashMap<Command, Vec<String>>,
    #[serde(default)]
    colors: HashMap<String, String>,
    #[serde(default)]
    ocr: OcrSettings,
}

/// What the dashboard runs with: bindings, colours, and the problems found in the user's file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    /// Key bindings.
    pub keymap: Keymap,
    /// Colours.
    pub theme: Theme,
    /// How OCR runs.
    pub ocr: OcrSettings,
    /// One line per problem in the config file (the rest of the file still applies).
    pub warnings: Vec<String>,
}

/// Facts from the environment that change how colours are chosen.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColorEnv {
    /// `NO_COLOR` is set and non-empty.
    pub no_color: bool,
    /// `COLORTERM` says `truecolor` or `24bit`.
    pub truecolor: bool,
}

impl ColorEnv {
    /// Read `NO_COLOR` and `COLORTERM`.
    pub fn from_env() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let truecolor = std::env::var("COLORTERM")
            .is_ok_and(|v| v.eq_ignore_ascii_case("truecolor") || v.eq_ignore_ascii_case("24bit"));
        Self {
            no_color,
            truecolor,
        }
    }
}

impl Settings {
    /// Defaults, then the file at `path` if it exists, then `env`'s colour rules.
    pub fn load(path: Option<&Path>, env: ColorEnv) -> Self {
        let text = match path.map(std::fs::read_to_string) {
            Some(Ok(text)) => Some(text),
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                let mut s = Self::from_toml("", env);
                s.warnings.push(format!(
                    "cannot read {}: {e}; using the default keys and colours",
                    path.map_or_else(String::new, |p| p.display().to_string())
                ));
                return s;
            }
            _ => None,
        };
        Self::from_toml(text.as_deref().unwrap_or(""), env)
    }

    /// Defaults merged with a config file's text.
    pub fn from_toml(text: &str, env: ColorEnv) -> Self {
        let mut settings = Self::default();
        let file: ConfigFile = match toml::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let msg = e.message().to_string();
                settings.warnings.push(format!(
                    "config file ignored: {msg}; fix it or delete it to use the defaults"
                ));
                ConfigFile::default()
            }
        };
        settings.ocr = file.ocr;
        for (cmd, keys) in file.keys {
            let mut parsed = Vec::new();
            for k in keys {
                match k.parse::<Key>() {
                    Ok(key) => parsed.push(key),
                    Err(e) => settings.warnings.push(format!("[keys] {e}")),
                }
            }
            settings.keymap.set(cmd, parsed);
        }
        for (name, value) in file.colors {
            let result = Color::from_str(&value)
                .map_err(|_| format!("[colors] {name}: cannot read colour `{value}`"))
                .and_then(|c| {
                    settings
                        .theme
                        .set(&name, c)
                        .map_err(|e| format!("[colors] {e}"))
                });
            if let Err(e) = result {
                settings.warnings.push(e);
            }
        }
        if env.no_color {
            settings.theme = Theme::mono();
        } else if !env.truecolor {
            settings.theme = settings.theme.to_256();
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::Pane;

    fn key(s: &str) -> Key {
        s.parse().expect("valid key in test")
    }

    #[test]
    fn user_file_overrides_and_reports_errors() {
        let s = Settings::from_toml(
            "[keys]\nquit = [\"Ctrl-q\"]\nhelp = [\"Hyper-h\"]\n[colors]\naccent = \"#ff0000\"\nnope = \"red\"\n",
            ColorEnv {
                no_color: false,
                truecolor: true,
            },
        );
        assert_eq!(
            s.keymap.lookup(key("Ctrl-q"), Pane::Login),
            Some(Command::Quit)
        );
        assert_eq!(s.keymap.lookup(key("q"), Pane::Login), None);
        assert_eq!(s.theme.accent, Color::Rgb(255, 0, 0));
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        let s = Settings::from_toml(
            "[colors]\nselection = \"238\"\nfocus = \"lightcyan\"\n",
            ColorEnv::default(),
        );
        assert_eq!(s.theme.selection, Color::Indexed(238));
        assert_eq!(s.theme.focus, Color::LightCyan);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn broken_file_falls_back_to_defaults() {
        let s = Settings::from_toml("[keys\n", ColorEnv::default());
        assert_eq!(s.keymap, Keymap::default());
        assert_eq!(s.warnings.len(), 1);
        let s = Settings::from_toml("[keys]\nfly = [\"x\"]\n", ColorEnv::default());
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn no_color_and_256() {
        let s = Settings::from_toml(
            "",
            ColorEnv {
                no_color: true,
                truecolor: true,
            },
        );
        assert!(s.theme.mono);
        let s = Settings::from_toml("[colors]\naccent = \"#ff0000\"\n", ColorEnv::default());
        assert_eq!(s.theme.accent, Color::Indexed(196));
        assert_eq!(to_256(Color::Rgb(128, 128, 128)), Color::Indexed(244));
        assert_eq!(to_256(Color::Rgb(0, 0, 0)), Color::Indexed(16));
    }
}
