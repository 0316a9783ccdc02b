//! The file output: alerts as JSON lines (the events log's line of each), appended to a file
//! created with mode 0600, and reopened at its path after SIGHUP (log rotation).
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Deliver, Failure};
use crate::alert::Alert;

pub(crate) struct AlertFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Set by SIGHUP: the next write opens the path again.
    reopen: Arc<AtomicBool>,
}

impl AlertFile {
    pub(crate) fn new(path: PathBuf, reopen: Arc<AtomicBool>) -> Self {
        Self { path, file: None, reopen }
    }

    fn open(&self) -> std::io::Result<std::fs::File> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)
    }
}

impl Deliver for AlertFile {
    fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        if self.reopen.swap(false, Ordering::SeqCst) {
            self.file = None;
        }
        let mut line = serde_json::to_vec(alert).map_err(|e| Failure::Permanent(format!("encoding: {e}")))?;
        line.push(b'\n');
        let mut file = match self.file.take() {
            Some(file) => file,
            None => self.open().map_err(|e| Failure::Retry(format!("opening: {e}")))?,
        };
        let length_before = file.metadata().map(|m| m.len());
        match file.write_all(&line) {
            Ok(()) => {
                self.file = Some(file);
                Ok(())
            }
            Err(e) => {
                // A partial line is cut off, so the retry's line starts the file's next line.
                if let Ok(length) = length_before {
                    let _ = file.set_len(length);
                }
                Err(Failure::Retry(format!("writing: {e}")))
            }
        }
    }

    fn check(&mut self) -> Result<(), String> {
        self.file = Some(self.open().map_err(|e| format!("opening: {e}"))?);
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
