//! The terminal's lifecycle: raw mode, alternate screen and bracketed paste on; all of it
//! restored on exit, on error (guard dropped) and on panic (hook).

use std::io::{self, Write};

use crossterm::event::{DisableBracketedPaste, EnableBracketedPaste};
use crossterm::execute;
use ratatui::DefaultTerminal;

/// Restores the terminal when dropped.
pub struct Guard {
    _private: (),
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Take over the terminal. Our panic hook goes in first, so ratatui's (which restores raw mode
/// and the screen) wraps it.
pub fn init() -> io::Result<(DefaultTerminal, Guard)> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = execute!(io::stdout(), DisableBracketedPaste);
        tracing::error!("panic: {info}");
        previous(info);
    }));
    let terminal = ratatui::try_init()?;
    // Outermost, so that a broken PDF's caught panic does not reach ratatui's restore.
    crate::document::silence_renderer_panics();
    let guard = Guard { _private: () };
    execute!(io::stdout(), EnableBracketedPaste)?;
    Ok((terminal, guard))
}

/// Give the terminal back: paste mode off, raw mode off, main screen back.
pub fn restore() {
    let _ = execute!(io::stdout(), DisableBracketedPaste);
    ratatui::restore();
    let _ = io::stdout().flush();
}
