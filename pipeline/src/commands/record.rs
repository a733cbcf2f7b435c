//! `infermon record`: Kafka traffic to a replayable file.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::record::{RecordOptions, record};

/// Record Kafka traffic to a replayable file (JSON Lines + zstd, with a
/// "topic" field per event), until SIGTERM/SIGINT, --duration or --idle.
#[derive(clap::Args)]
pub struct Args {
    /// Topics (default: the configured requests, predictions, feedback
    /// and training topics).
    #[arg(long, num_args = 1..)]
    topics: Vec<String>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Brokers (default: [kafka] brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Also what the topics already hold (default: only new traffic).
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop once nothing arrived for this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
}

/// Run it.
///
/// # Errors
/// The consumer cannot be created (a bad `[kafka]` property), or the
/// output cannot be written.
pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let stop = super::stop_on_signals()?;
    let t = &config.topics;
    let topics = if args.topics.is_empty() {
        vec![
            t.requests.clone(),
            t.predictions.clone(),
            t.feedback.clone(),
            t.training.clone(),
        ]
    } else {
        args.topics
    };
    let mut kafka = config.kafka.clone();
    if let Some(b) = args.brokers {
        kafka.brokers = b;
    }
    let opts = RecordOptions {
        kafka,
        topics,
        out: args.out,
        from_beginning: args.from_beginning,
        duration: args.duration,
        idle: args.idle,
    };
    let report = record(&opts, stop)?;
    for (topic, n) in &report.events {
        println!("{topic}: {n} events");
    }
    for (topic, n) in &report.skipped {
        println!("{topic}: {n} messages skipped (not a JSON object)");
    }
    println!("recording: {}", report.path.display());
    Ok(())
}
