//! `infermon replay --offline`: recorded traffic straight through the
//! operators, in event-time order, to line protocol (a backtest).
//!
//! source (files, decoded on their own threads) → k-way merge by event time
//! → window engine → closed windows → points (+ custom SQL metrics) → sink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use infermon_operators::alerts::{AlertStatus, PolicyStats};
use infermon_operators::{Emitted, Shards};
use infermon_schemas::{FieldValue, Point, TopicKind};

use crate::alerts::{AlertOutputs, DeliveryStats};
use crate::config::Config;
use crate::decode::file::DecodedBatch;
use crate::sinks::Sinks;
use crate::sinks::alerts_file::AlertsFile;
use crate::sinks::rejects_file::RejectsFile;
use crate::sources::recording::RecordingSource;

/// What to replay and where to.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Recorded traffic files.
    pub files: Vec<PathBuf>,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
    /// Also deliver notifications to the configured receivers, waiting at
    /// most this long at the end for them to drain.
    pub send: Option<Duration>,
}

/// Receiver name on offline alert lines (nothing is sent).
pub const OFFLINE_RECEIVER: &str = "alerts-file";

/// Per (model, version) totals for the end-of-run table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesSummary {
    /// Windows closed that had this model version in them.
    pub windows: u64,
    /// Prediction events.
    pub events: u64,
    /// Late events (arrived after their window closed).
    pub late: u64,
    /// Rejected lines that named this model version.
    pub rejected: u64,
    /// Smallest and largest per-window total-latency p99, ms.
    pub p99_range: Option<(f64, f64)>,
    /// Windows in which at least one feature (or the score) drifted.
    pub drifted_windows: u64,
}

/// Everything a replay did, for the summary and for tests.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Per (model, model_version); rejected lines without a model are under
    /// ("(unparsed)", "").
    pub series: BTreeMap<(String, String), SeriesSummary>,
    /// Events by topic kind.
    pub events: BTreeMap<&'static str, u64>,
    /// Rejected lines by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Windows closed.
    pub windows: u64,
    /// Points written.
    pub points: u64,
    /// Gradient anomalies by kind.
    pub anomalies: BTreeMap<&'static str, u64>,
    /// Feedback labels matched to a prediction / without one.
    pub labels: (u64, u64),
    /// Training steps that arrived after their window closed.
    pub late_training_steps: u64,
    /// Firing notifications by alert name.
    pub alerts_fired: BTreeMap<String, u64>,
    /// Notifications muted by silences and inhibition.
    pub muted: PolicyStats,
    /// Delivery per receiver (with `--send`), e.g. `webhook oncall`.
    pub receivers: Vec<(String, DeliveryStats)>,
    /// Wall time.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// All decoded events.
    pub fn total_events(&self) -> u64 {
        self.events.values().sum()
    }

    /// All rejected lines.
    pub fn total_rejected(&self) -> u64 {
        self.rejected.values().sum()
    }
}

struct Input {
    source: RecordingSource,
    id: usize,
    pending: Option<DecodedBatch>,
}

impl Input {
    /// Merge key: inputs whose next batch is oldest go first.
    fn next_ts(&self) -> i64 {
        match &self.pending {
            Some(b) => b.events.ts_range.map_or(i64::MIN, |r| r.0),
            None => i64::MAX,
        }
    }
}

/// Run the replay, writing points to `sinks` and bad lines to `rejects`.
pub async fn replay(
    config: &Config,
    opts: &ReplayOptions,
    sinks: &mut Sinks,
    rejects: &mut RejectsFile,
    alerts_log: &mut AlertsFile,
) -> anyhow::Result<ReplayReport> {
    let started = Instant::now();
    let mut topology = config.topology().await?;
    let mut alerts = AlertOutputs::new(
        &config.alerts,
        opts.send.is_some(),
        OFFLINE_RECEIVER,
        alerts_log,
    )?;
    let mut engine = topology.shards(Vec::new(), config.monitor.threads())?;
    let mut report = ReplayReport::default();

    let bytes_read = Arc::new(AtomicU64::new(0));
    let mut total_bytes = 0;
    let mut inputs = Vec::new();
    for path in &opts.files {
        total_bytes += std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        let mut source = RecordingSource::open(
            path,
            config.topics.clone(),
            &config.window,
            bytes_read.clone(),
        )?;
        let id = engine.add_input(0);
        let pending = source.next_batch().transpose()?;
        match pending.as_ref().and_then(|b| b.events.ts_range) {
            // An input will not deliver anything much older than its next batch.
            Some((lo, _)) => engine.observe(id, lo, 0),
            None if pending.is_none() => engine.finish_input(id),
            None => {}
        }
        inputs.push(Input {
            source,
            id,
            pending,
        });
    }

    let bar = progress_bar(opts.progress, total_bytes);
    // Offline, processing time stands still: inputs end, they never idle.
    let now = 0;
    let mut out = |emitted: Emitted, watermark: i64, report: &mut ReplayReport| {
        report.add(&emitted);
        sinks.push(&emitted.points, watermark)?;
        alerts.deliver(&emitted.evaluations)
    };
    while let Some(input) = inputs
        .iter_mut()
        .filter(|i| i.pending.is_some())
        .min_by_key(|i| i.next_ts())
    {
        let anomalies = step(input, &mut engine, rejects, &mut report, now)?;
        let released = engine.fire(now)?;
        if !anomalies.is_empty() || !released.is_empty() {
            let emitted = topology.emit(anomalies, released).await?;
            out(emitted, engine.watermark().unwrap_or(i64::MIN), &mut report)?;
        }
        bar.set_position(bytes_read.load(Ordering::Relaxed));
        bar.set_message(format!("{} events", report.total_events()));
    }
    out(topology.finish(&mut engine).await?, i64::MAX, &mut report)?;
    report.receivers = alerts.finish(opts.send.unwrap_or_default())?;
    report.muted = topology.muted();
    if let Some(stats) = engine.label_stats() {
        report.labels = (stats.matched, stats.unmatched);
    }
    report.late_training_steps = engine.late_training_steps();
    rejects.flush()?;
    bar.finish_and_clear();

    for (key, stats) in engine.series_stats() {
        let s = report
            .series
            .entry((key.model, key.model_version))
            .or_default();
        s.events += stats.events;
        s.late += stats.late;
    }
    report.points = sinks.points;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One batch of one input into the engine: events counted, rejected lines
/// to the rejects file, the input's next batch read ahead. Returns the
/// gradient anomalies it judged, as points.
fn step(
    input: &mut Input,
    engine: &mut Shards,
    rejects: &mut RejectsFile,
    report: &mut ReplayReport,
    now: i64,
) -> anyhow::Result<Vec<Point>> {
    let batch = input.pending.take().expect("filtered on pending");
    let file = input.source.path.display().to_string();
    for (kind, n) in TopicKind::ALL.iter().zip(batch.events.counts) {
        *report.events.entry(kind.as_str()).or_default() += n;
    }
    for r in &batch.rejects {
        rejects.write(&file, r)?;
        *report.rejected.entry(r.reason_code).or_default() += 1;
        let key = r
            .model
            .clone()
            .unwrap_or_else(|| ("(unparsed)".into(), String::new()));
        report.series.entry(key).or_default().rejected += 1;
    }
    let events = &batch.events;
    engine.push_predictions(input.id, &events.predictions, now)?;
    engine.push_feedback(input.id, &events.feedback);
    let anomalies = engine.push_training(input.id, &events.training, now);
    for a in &anomalies {
        *report.anomalies.entry(a.kind.as_str()).or_default() += 1;
    }
    if let Some((_, hi)) = events.ts_range {
        engine.observe(input.id, hi, now);
    }
    input.pending = input.source.next_batch().transpose()?;
    match input.pending.as_ref() {
        None => engine.finish_input(input.id),
        Some(next) => {
            if let Some((lo, _)) = next.events.ts_range {
                engine.observe(input.id, lo, now);
            }
        }
    }
    Ok(anomalies.iter().map(|a| a.point()).collect())
}

impl ReplayReport {
    /// Count what the topology emitted: windows per series, drifted
    /// windows, the p99 range, firing notifications.
    fn add(&mut self, emitted: &Emitted) {
        self.windows += emitted.windows as u64;
        let mut seen = BTreeSet::new();
        let mut drifted = BTreeSet::new();
        for p in &emitted.points {
            let (Some(model), Some(version)) = (p.tag_value("model"), p.tag_value("model_version"))
            else {
                continue;
            };
            let key = (model, version, p.timestamp_ns);
            let s = self
                .series
                .entry((model.to_string(), version.to_string()))
                .or_default();
            if p.measurement == "throughput" && seen.insert(key) {
                s.windows += 1;
            }
            if p.measurement == "drift"
                && p.field_value("drifted") == Some(&FieldValue::Bool(true))
                && drifted.insert(key)
            {
                s.drifted_windows += 1;
            }
            if p.measurement == "latency"
                && p.tag_value("stage") == Some("total")
                && let Some(FieldValue::Float(p99)) = p.field_value("p99")
            {
                s.p99_range = Some(match s.p99_range {
                    None => (*p99, *p99),
                    Some((lo, hi)) => (lo.min(*p99), hi.max(*p99)),
                });
            }
        }
        for n in emitted.passed().filter(|n| n.status == AlertStatus::Firing) {
            *self
                .alerts_fired
                .entry(n.labels["alertname"].clone())
                .or_default() += 1;
        }
    }
}

fn progress_bar(enabled: bool, total_bytes: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// The end-of-run table, as text.
pub fn summary_table(report: &ReplayReport) -> String {
    let header = [
        "model",
        "version",
        "windows",
        "events",
        "late",
        "rejected",
        "drifted",
        "p99 total ms (min..max)",
    ];
    let mut rows: Vec<[String; 8]> = Vec::new();
    for ((model, version), s) in &report.series {
        rows.push([
            model.clone(),
            version.clone(),
            s.windows.to_string(),
            s.events.to_string(),
            s.late.to_string(),
            s.rejected.to_string(),
            s.drifted_windows.to_string(),
            s.p99_range
                .map_or("-".into(), |(lo, hi)| format!("{lo:.1}..{hi:.1}")),
        ]);
    }
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    out.push_str(&format!(
        "\n{} events ({}), {} rejected{}, {} windows, {} points in {:.2} s ({:.0} events/s)\n",
        report.total_events(),
        report
            .events
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        report.total_rejected(),
        if report.rejected.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                report
                    .rejected
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        report.windows,
        report.points,
        secs,
        report.total_events() as f64 / secs,
    ));
    if !report.anomalies.is_empty() {
        let kinds: Vec<String> = report
            .anomalies
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!("gradient anomalies: {}\n", kinds.join(", ")));
    }
    if !report.alerts_fired.is_empty() {
        let names: Vec<String> = report
            .alerts_fired
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!("alerts fired: {}\n", names.join(", ")));
    }
    if report.muted != PolicyStats::default() {
        out.push_str(&format!(
            "alerts muted: {} silenced, {} inhibited\n",
            report.muted.silenced, report.muted.inhibited
        ));
    }
    for (name, w) in &report.receivers {
        out.push_str(&format!(
            "{name}: {} delivered, {} retries, {} rejected (4xx), {} dropped (queue full), {} undelivered\n",
            w.delivered, w.retries, w.rejected, w.dropped, w.undelivered
        ));
    }
    if report.labels != (0, 0) {
        out.push_str(&format!(
            "feedback labels: {} joined, {} without a waiting prediction\n",
            report.labels.0, report.labels.1
        ));
    }
    out
}

/// Peak resident set size of this process in KiB (Linux), for reports.
pub fn peak_rss_kib() -> Option<u64> {
    peak_rss_kib_of("self")
}

/// Peak resident set size of process `pid` (a number or `self`), KiB.
pub fn peak_rss_kib_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
