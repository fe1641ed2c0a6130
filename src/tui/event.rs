//! Terminal input on its own thread: crossterm events become actions.

use std::thread;

use crossterm::event::{self, Event};

use super::action::Action;
use super::action::ActionSender;

/// Read terminal events until the dashboard's channel closes or the terminal fails.
pub fn spawn_input(tx: ActionSender) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("dsocr-input".to_string())
        .spawn(move || {
            loop {
                let action = match event::read() {
                    Ok(Event::Key(k)) => Action::Key(k),
                    Ok(Event::Paste(s)) => Action::Paste(s),
                    Ok(Event::Mouse(m)) => Action::Mouse(m),
                    Ok(Event::Resize(w, h)) => Action::Resize(w, h),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!("terminal input failed: {e}");
                        tx.error(
                            "Terminal input failed",
                            format!("{e}; restart dsocr in a working terminal"),
                        );
                        return;
                    }
                };
                if tx.0.send(action).is_err() {
                    return;
                }
            }
        })
}
