//! Logs go to a file in the user's state folder (cache folder where there is none) and to the
//! log pane, never to the screen.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use super::action::{ActionSender, Update};

/// The log file: `$XDG_STATE_HOME/dsocr/dsocr.log` on Linux.
pub fn log_path() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "dsocr")?;
    let dir = dirs.state_dir().unwrap_or_else(|| dirs.cache_dir());
    Some(dir.join("dsocr.log"))
}

/// Writes each record to the file and sends its text to the log pane.
#[derive(Clone)]
struct Sink {
    file: Arc<Mutex<File>>,
    pane: ActionSender,
}

/// One record being formatted.
struct Record {
    sink: Sink,
    buf: Vec<u8>,
}

impl Write for Record {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Ok(mut f) = self.sink.file.lock() {
            let _ = f.write_all(&self.buf);
        }
        let text = String::from_utf8_lossy(&self.buf);
        let line = text.trim_end();
        if !line.is_empty() {
            self.sink.pane.send(Update::Log(line.to_string()));
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Record;

    fn make_writer(&'a self) -> Self::Writer {
        Record {
            sink: self.clone(),
            buf: Vec::new(),
        }
    }
}

/// Install the subscriber (filter from `DSOCR_LOG`, default `info`). Returns the file's path.
pub fn init(pane: ActionSender) -> io::Result<PathBuf> {
    let path = log_path().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no home folder to put the log file in; set HOME",
        )
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let filter = EnvFilter::try_from_env("DSOCR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let sink = Sink {
        file: Arc::new(Mutex::new(file)),
        pane,
    };
    // A second init in one process (tests) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(sink)
        .try_init();
    Ok(path)
}
