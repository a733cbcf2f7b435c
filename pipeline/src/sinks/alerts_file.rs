//! Notifications as JSON lines (`--alerts-out`): what offline replays write
//! instead of sending, one Alertmanager alert object plus `receiver` a line.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::alerts::Notification;

/// The alerts log.
pub struct AlertsFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// Notifications written so far.
    pub count: u64,
}

impl AlertsFile {
    /// Create (truncate) `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            count: 0,
        })
    }

    /// Where the lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append notifications for `receiver`.
    pub fn write(&mut self, receiver: &str, notifications: &[Notification]) -> io::Result<()> {
        for n in notifications {
            serde_json::to_writer(&mut self.out, &n.alerts_log_line(receiver))?;
            self.out.write_all(b"\n")?;
            self.count += 1;
        }
        Ok(())
    }

    /// Flush to disk.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
