//! Lines that failed to decode, kept with their reason (`--rejects-out`),
//! and points an InfluxDB server refused (`[monitor] rejects_out`).
//! Created on the first reject, so a clean run leaves no empty file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::decode::file::Reject;

/// A JSON-lines file of rejected input.
pub struct RejectsFile {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    /// Rejects written.
    pub count: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    file: &'a str,
    line: u64,
    reason: &'a str,
    raw: &'a str,
}

impl RejectsFile {
    /// Rejects will go to `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            out: None,
            count: 0,
        }
    }

    /// Where the rejects go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record one reject from `file`.
    pub fn write(&mut self, file: &str, r: &Reject) -> io::Result<()> {
        if self.out.is_none() {
            let f = File::create(&self.path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
            self.out = Some(BufWriter::new(f));
        }
        let out = self.out.as_mut().expect("just created");
        serde_json::to_writer(
            &mut *out,
            &Line {
                file,
                line: r.line,
                reason: &r.reason,
                raw: &r.raw,
            },
        )?;
        out.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Flush to disk.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

/// Points an InfluxDB server refused for good (a 4xx other than 408/429),
/// one JSON line per refused batch: `sink`, the server's `reason`, the
/// `lines`. Appended to, so a restart keeps earlier ones.
pub struct InfluxRejects {
    path: PathBuf,
    out: Option<File>,
}

impl InfluxRejects {
    /// Refused points will go to `path` (opened on the first).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            out: None,
        }
    }

    /// Append one refused batch; an error names the file.
    pub fn append(&mut self, sink: &str, reason: &str, body: &[u8]) -> io::Result<()> {
        let named =
            |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", self.path.display()));
        if self.out.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(named)?;
            self.out = Some(file);
        }
        let line = serde_json::json!({
            "sink": sink,
            "reason": reason,
            "lines": String::from_utf8_lossy(body),
        });
        let out = self.out.as_mut().expect("opened above");
        let written = writeln!(out, "{line}").and_then(|()| out.flush());
        if written.is_err() {
            self.out = None; // reopen next time
        }
        written.map_err(named)
    }

    /// The spool's reject hook for sink `name`: refused batches are
    /// appended; when that fails the error is logged with how many points
    /// were lost, never dropped silently.
    pub fn hook(rejects: Arc<Mutex<Self>>, name: String) -> crate::sinks::spool::RejectHook {
        Box::new(move |reason: &str, body: &[u8]| {
            let appended = rejects
                .lock()
                .expect("rejects lock")
                .append(&name, reason, body);
            if let Err(e) = appended {
                tracing::error!(
                    sink = %name, error = %e, %reason,
                    points = body.iter().filter(|b| **b == b'\n').count(),
                    "refused points could not be kept in the rejects file"
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_points_are_appended_and_a_failure_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("influx-rejects.jsonl");
        let mut r = InfluxRejects::new(&path);
        r.append(
            "influx1",
            "partial write: field type conflict",
            b"m x=1 1\n",
        )
        .unwrap();
        r.append("influx1", "again", b"m x=2 2\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["sink"], "influx1");
        assert_eq!(lines[1]["lines"], "m x=2 2\n");

        let missing = dir.path().join("no-such-dir/rejects.jsonl");
        let err = InfluxRejects::new(&missing)
            .append("influx1", "x", b"m x=1 1\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("no-such-dir/rejects.jsonl"),
            "{err}"
        );
    }
}
