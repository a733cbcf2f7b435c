//! Where results go. Points: a line-protocol file, or InfluxDB servers (v1
//! or v2) behind on-disk spools, all behind one [`Sink`] trait so the
//! monitor and the replay write through the same [`Sinks`]. Beside them:
//! the rejects file (lines that failed to decode) and the alerts log.

pub mod alerts_file;
pub mod influxdb;
pub mod line_protocol_file;
pub mod partials;
pub mod rejects_file;
pub mod spool;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use infermon_schemas::Point;

use influxdb::{InfluxDbConfig, InfluxSink};
use line_protocol_file::LineProtocolFile;
use rejects_file::InfluxRejects;
use spool::SpoolStats;

/// A destination for points, acknowledging how far it has written.
pub trait Sink: Send {
    /// Its name in logs and metrics (`file`, or the `[[influxdb]]` name).
    fn name(&self) -> &str;

    /// Line protocol (newline-terminated lines) of the points emitted once
    /// the event-time watermark reached `watermark` (ms).
    ///
    /// # Errors
    /// The file or the spool cannot be written.
    fn push(&mut self, lines: &[u8], watermark: i64) -> io::Result<()>;

    /// The watermark up to which every push of the current generation is
    /// durably written (`i64::MIN`: none yet).
    fn acked(&self) -> i64;

    /// The window state was rebuilt (a rebalance): acknowledgements of
    /// pushes before now say nothing about the new state.
    fn new_generation(&mut self);

    /// Consumption should pause until the sink catches up.
    fn full(&self) -> bool {
        false
    }

    /// Spool counters, for `/metrics` (sinks with a spool).
    fn spool_stats(&self) -> Option<Arc<SpoolStats>> {
        None
    }

    /// Wait at most `deadline` for writes to finish; returns the bytes left
    /// behind (kept on disk for the next run where the sink spools).
    fn close(self: Box<Self>, deadline: Duration) -> u64;
}

/// Where the points go, as `[[influxdb]]` and the command line say.
#[derive(Debug, Clone)]
pub struct SinkSettings<'a> {
    /// InfluxDB servers; none means the file.
    pub influxdb: &'a [InfluxDbConfig],
    /// Line protocol goes here when no InfluxDB is configured.
    pub metrics_out: PathBuf,
    /// Spools live under `<state_dir>/spool/<name>` unless configured.
    pub state_dir: &'a Path,
    /// Points an InfluxDB server refused, with its message.
    pub rejects_out: &'a Path,
}

/// Every sink, fed the same points once encoded.
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
    buf: String,
    /// Points written so far.
    pub points: u64,
    /// Watermark of the last points pushed.
    pushed: i64,
}

impl Sinks {
    /// The configured InfluxDB servers, or the line-protocol file when
    /// there are none.
    ///
    /// # Errors
    /// A sink that cannot start (bad URL, missing secret, unwritable
    /// spool or file), named.
    pub fn open(settings: &SinkSettings<'_>) -> anyhow::Result<Self> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let rejects = Arc::new(Mutex::new(InfluxRejects::new(settings.rejects_out)));
        for c in settings.influxdb {
            let hook = InfluxRejects::hook(rejects.clone(), c.name.clone());
            sinks.push(Box::new(InfluxSink::start(c, settings.state_dir, hook)?));
            tracing::info!(sink = %c.name, url = %c.url, api = ?c.api, "writing to InfluxDB");
        }
        if sinks.is_empty() {
            let path = &settings.metrics_out;
            tracing::debug!(path = %path.display(), "no [[influxdb]]: writing line protocol to a file");
            let file = LineProtocolFile::create(path)
                .with_context(|| format!("metrics_out {}", path.display()))?;
            sinks.push(Box::new(file));
        }
        Ok(Self::of(sinks))
    }

    /// These sinks.
    pub fn of(sinks: Vec<Box<dyn Sink>>) -> Self {
        Self {
            sinks,
            buf: String::with_capacity(1 << 12),
            points: 0,
            pushed: i64::MIN,
        }
    }

    /// Where the points go, for the end-of-run message.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.sinks.iter().map(|s| s.name()).collect();
        names.join(", ")
    }

    /// Points emitted once the watermark reached `watermark`.
    ///
    /// # Errors
    /// A sink cannot be written (named).
    pub fn push(&mut self, points: &[Point], watermark: i64) -> anyhow::Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for p in points {
            if p.write_line_protocol(&mut self.buf) {
                self.points += 1;
            }
        }
        for s in &mut self.sinks {
            s.push(self.buf.as_bytes(), watermark)
                .with_context(|| format!("sink {}", s.name()))?;
        }
        self.pushed = watermark;
        Ok(())
    }

    /// Every point pushed is acknowledged by every sink.
    pub fn drained(&self) -> bool {
        self.acked() >= self.pushed
    }

    /// What is written for good, given that everything up to `released`
    /// was handed to [`Sinks::push`] (or had no points): `released` once
    /// every push is acknowledged, else the acknowledged watermark.
    pub fn written(&self, released: i64) -> i64 {
        if self.drained() {
            released
        } else {
            self.acked()
        }
    }

    /// See [`Sink::new_generation`].
    pub fn new_generation(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.new_generation());
    }

    /// The watermark every sink has acknowledged for the current window
    /// state (`i64::MIN`: none yet).
    pub fn acked(&self) -> i64 {
        self.sinks
            .iter()
            .map(|s| s.acked())
            .min()
            .unwrap_or(i64::MIN)
    }

    /// Some sink asks consumption to pause.
    pub fn full(&self) -> bool {
        self.sinks.iter().any(|s| s.full())
    }

    /// Spool counters by sink name.
    pub fn spool_stats(&self) -> Vec<(&str, Arc<SpoolStats>)> {
        self.sinks
            .iter()
            .filter_map(|s| Some((s.name(), s.spool_stats()?)))
            .collect()
    }

    /// Wait up to `deadline` (in all) for the sinks to finish; returns the
    /// bytes left behind, all sinks together.
    pub fn close(self, deadline: Duration) -> u64 {
        let until = std::time::Instant::now() + deadline;
        let mut left = 0;
        for s in self.sinks {
            let name = s.name().to_string();
            let n = s.close(until.saturating_duration_since(std::time::Instant::now()));
            if n > 0 {
                tracing::warn!(sink = %name, bytes = n, "points left in the spool for the next run");
            }
            left += n;
        }
        left
    }
}
