//! Notifications as JSON lines (`--alerts-out`): what offline replays write
//! instead of sending, one Alertmanager alert object plus `receiver` a line.
//!
//! The monitor appends to it and reads it back at start-up: it is the
//! journal of alert state that survives a crash (see [`AlertsFile::open_journal`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use infermon_operators::alerts::policy::parse_ms;
use infermon_operators::alerts::{AlertStatus, Notification, Restored};

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

    /// Open `path` for appending (creating it), after reading back what
    /// earlier runs wrote: per alert fingerprint, the last notification's
    /// status, `startsAt` and event time. Lines that do not parse (a line
    /// torn by a crash) are skipped and counted in the second value.
    pub fn open_journal(path: &Path) -> io::Result<(Self, HashMap<String, Restored>, u64)> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(named)?;
        let mut restored = HashMap::new();
        let mut torn = 0;
        let mut reader = BufReader::new(&mut file);
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            if reader.read_until(b'\n', &mut bytes).map_err(named)? == 0 {
                break;
            }
            // A line torn by a crash may end inside a UTF-8 character.
            let line = String::from_utf8_lossy(&bytes);
            if line.trim().is_empty() {
                continue;
            }
            match journal_entry(&line) {
                Some((fingerprint, r)) => {
                    restored.insert(fingerprint, r);
                }
                None => torn += 1,
            }
        }
        // A line torn by a crash must not swallow the first new one.
        let len = file.seek(SeekFrom::End(0)).map_err(named)?;
        if len > 0 {
            file.seek(SeekFrom::End(-1)).map_err(named)?;
            let mut last = [0u8];
            file.read_exact(&mut last).map_err(named)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(named)?;
            }
        }
        let log = Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            count: 0,
        };
        Ok((log, restored, torn))
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

/// One alerts-log line as (fingerprint, where the alert stood).
fn journal_entry(line: &str) -> Option<(String, Restored)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let status = match v.get("status")?.as_str()? {
        "firing" => AlertStatus::Firing,
        "resolved" => AlertStatus::Resolved,
        _ => return None,
    };
    let key = v.get("idempotencyKey")?.as_str()?;
    let at_ms = key.rsplit(':').next()?.parse().ok()?;
    let strings = |field: &str| {
        v.get(field)?
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect::<Option<_>>()
    };
    let restored = Restored {
        labels: strings("labels")?,
        annotations: strings("annotations").unwrap_or_default(),
        status,
        starts_at_ms: parse_ms(v.get("startsAt")?.as_str()?)?,
        at_ms,
    };
    Some((v.get("fingerprint")?.as_str()?.to_string(), restored))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn n(status: AlertStatus, model: &str, at_ms: i64) -> Notification {
        Notification {
            status,
            labels: [
                ("alertname", "errors"),
                ("model", model),
                ("severity", "critical"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            annotations: BTreeMap::new(),
            starts_at_ms: 60_000,
            ends_at_ms: (status == AlertStatus::Resolved).then_some(at_ms),
            value: 0.1,
            at_ms,
        }
    }

    #[test]
    fn the_journal_gives_each_alert_its_last_state_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let (mut log, restored, torn) = AlertsFile::open_journal(&path).unwrap();
        assert!(restored.is_empty() && torn == 0);
        let (a, b) = (
            n(AlertStatus::Firing, "a", 120_000),
            n(AlertStatus::Firing, "b", 120_000),
        );
        log.write("monitor", &[a.clone(), b.clone()]).unwrap();
        log.write("monitor", &[n(AlertStatus::Resolved, "b", 180_000)])
            .unwrap();
        log.flush().unwrap();
        drop(log);
        // A crash in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"status\":\"fir\xe6\xa8").unwrap(); // inside a UTF-8 character
        drop(f);

        let (mut log, restored, torn) = AlertsFile::open_journal(&path).unwrap();
        assert_eq!(torn, 1);
        assert_eq!(
            restored[&a.fingerprint()],
            Restored {
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                status: AlertStatus::Firing,
                starts_at_ms: 60_000,
                at_ms: 120_000
            }
        );
        assert_eq!(restored[&b.fingerprint()].status, AlertStatus::Resolved);
        assert_eq!(restored[&b.fingerprint()].at_ms, 180_000);
        log.write("monitor", &[n(AlertStatus::Resolved, "a", 240_000)])
            .unwrap();
        log.flush().unwrap();
        drop(log);
        let (_, restored, torn) = AlertsFile::open_journal(&path).unwrap();
        assert_eq!(torn, 1, "the new line is whole");
        assert_eq!(restored[&a.fingerprint()].status, AlertStatus::Resolved);
    }
}
