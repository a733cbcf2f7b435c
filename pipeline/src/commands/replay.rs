//! `infermon replay`: recorded traffic through the operators (`--offline`,
//! a backtest) or back into Kafka (`--to-kafka`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::config::Config;
use crate::replay::{ReplayOptions, peak_rss_kib, replay, summary_table};
use crate::replay_to_kafka::{ToKafkaOptions, replay_to_kafka};
use crate::report::write_report;
use crate::sinks::alerts_file::AlertsFile;
use crate::sinks::rejects_file::RejectsFile;
use crate::sinks::{SinkSettings, Sinks};

/// Replay recorded traffic. With --offline: straight through the operators
/// (a backtest), writing line protocol to a file (or, with --influxdb, to
/// the configured `[[influxdb]]`).
#[derive(clap::Args)]
pub struct Args {
    /// Recorded traffic files (JSON Lines, optionally .zst).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Run through the operators here instead of producing to Kafka.
    #[arg(long, conflicts_with = "to_kafka")]
    offline: bool,
    /// Produce the recorded events to Kafka at these brokers instead
    /// (each to its topic, keyed as the contract says).
    #[arg(long, value_name = "BROKERS")]
    to_kafka: Option<String>,
    /// With --to-kafka: pace like the recording, this many times faster
    /// (0 = as fast as possible).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Line protocol output.
    #[arg(long, default_value = "infermon-metrics.lp")]
    metrics_out: PathBuf,
    /// Lines that failed to decode, with the reason (created on the first).
    #[arg(long, default_value = "infermon-rejects.jsonl")]
    rejects_out: PathBuf,
    /// Alert notifications, one JSON line each (Alertmanager alert
    /// object plus "receiver"), instead of sending them.
    #[arg(long, default_value = "infermon-alerts.jsonl")]
    alerts_out: PathBuf,
    /// Also deliver notifications to the configured receivers
    /// (`[[alerts.webhooks]]`, `[[alerts.emails]]`).
    #[arg(long)]
    send: bool,
    /// With --send: how long to wait at the end for deliveries.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    send_timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Write the points to the configured `[[influxdb]]` servers (through
    /// the monitor's spools, in `[monitor] state_dir`) instead of
    /// --metrics-out.
    #[arg(long)]
    influxdb: bool,
    /// At the end, write the HTML report of this backtest (from
    /// --metrics-out and --alerts-out) to this file.
    #[arg(long, value_name = "FILE", conflicts_with = "influxdb")]
    report: Option<PathBuf>,
}

/// Run it.
///
/// # Errors
/// Unreadable files, a sink or receiver that cannot start, undelivered
/// notifications or messages.
pub async fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    if let Some(brokers) = args.to_kafka {
        let mut kafka = config.kafka.clone();
        kafka.brokers = brokers;
        let opts = ToKafkaOptions {
            files: args.files,
            speed: args.speed,
        };
        let report = replay_to_kafka(&kafka, &config.topics, &opts)?;
        for (topic, n) in &report.produced {
            println!("{topic}: {n} messages");
        }
        if report.skipped > 0 {
            println!(
                "skipped {} lines that were not events of a known topic",
                report.skipped
            );
        }
        return Ok(());
    }
    if !args.offline {
        bail!("say where to replay: --offline (through the operators) or --to-kafka BROKERS");
    }
    if args.influxdb && config.influxdb.is_empty() {
        bail!("--influxdb: no [[influxdb]] in the config");
    }
    let metrics_out = args.metrics_out.clone();
    let mut sinks = Sinks::open(&SinkSettings {
        influxdb: if args.influxdb { &config.influxdb } else { &[] },
        metrics_out: args.metrics_out.clone(),
        state_dir: &config.monitor.state_dir,
        rejects_out: &config.monitor.rejects_out,
    })?;
    let mut rejects = RejectsFile::new(&args.rejects_out);
    let mut alerts = AlertsFile::create(&args.alerts_out)?;
    let opts = ReplayOptions {
        files: args.files,
        progress: !args.quiet,
        send: args.send.then_some(args.send_timeout),
    };
    let report = replay(config, &opts, &mut sinks, &mut rejects, &mut alerts).await?;
    print!("{}", summary_table(&report));
    println!("metrics: {}", sinks.describe());
    let left = sinks.close(args.send_timeout);
    println!(
        "alerts: {} ({} notifications)",
        alerts.path().display(),
        alerts.count
    );
    if rejects.count > 0 {
        println!(
            "rejects: {} ({} lines)",
            rejects.path().display(),
            rejects.count
        );
    }
    if let Some(out) = &args.report {
        alerts.flush()?;
        let t0 = std::time::Instant::now();
        let written = write_report(&metrics_out, Some(alerts.path()), out)?;
        super::report::print_written(out, &written, t0);
    }
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    let undelivered: u64 = report.receivers.iter().map(|(_, w)| w.undelivered).sum();
    if undelivered > 0 {
        bail!("{undelivered} notification groups could not be delivered (see the log)");
    }
    if left > 0 {
        bail!("{left} bytes of points were not written by the end (kept in the spool)");
    }
    Ok(())
}
