//! Terminal input on its own thread: crossterm events become [`Input`] actions.

use std::thread;

use crossterm::event::{self, Event};

use super::action::{Action, ActionSender, Input};

/// Read terminal events until the dashboard's channel closes or the terminal fails.
pub fn spawn_input(tx: ActionSender) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("dsocr-input".to_string())
        .spawn(move || {
            loop {
                let input = match event::read() {
                    Ok(Event::Key(k)) => Input::Key(k),
                    Ok(Event::Paste(s)) => Input::Paste(s),
                    Ok(Event::Mouse(m)) => Input::Mouse(m),
                    Ok(Event::Resize(w, h)) => Input::Resize(w, h),
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
                if tx.0.send(Action::Input(input)).is_err() {
                    return;
                }
            }
        })
}
