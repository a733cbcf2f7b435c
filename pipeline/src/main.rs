//! `infermon`: monitor ML models in production. See README.md.
//!
//! Only the command line: each subcommand is a module of
//! [`infermon::commands`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use infermon::commands::{self, generate, model, profile, record, replay, report, silence};
use infermon::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "infermon", version, about = "Monitor ML models in production")]
struct Cli {
    /// Config file (TOML); built-in defaults when absent.
    #[arg(long, global = true, env = "INFERMON_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The streaming monitor: Kafka in, InfluxDB (or a file) and alerts out,
    /// until SIGTERM/SIGINT. Configured by --config ([kafka], [[influxdb]],
    /// [monitor], ...).
    Monitor,
    /// An inference worker: requests from Kafka, ONNX Runtime
    /// (ORT_DYLIB_PATH), predictions with timings to Kafka, until
    /// SIGTERM/SIGINT. Configured by [worker] and [[worker.models]].
    Worker,
    /// Replay recorded traffic. With --offline: straight through the
    /// operators (a backtest), writing line protocol to a file (or, with
    /// --influxdb, to the configured [[influxdb]]).
    Replay(replay::Args),
    /// One self-contained HTML report (inline SVG charts) of a backtest's
    /// line protocol and alerts log: what fired, latency, errors, drift,
    /// quality, gradients per model.
    Report(report::Args),
    /// Model versions served by workers: `rollback` pins a model
    /// directory to the version before the current one (workers swap within
    /// their reload interval), `release` removes the pin.
    Model {
        #[command(subcommand)]
        action: model::Args,
    },
    /// Record Kafka traffic to a replayable file (JSON Lines + zstd, with a
    /// "topic" field per event), until SIGTERM/SIGINT, --duration or --idle.
    Record(record::Args),
    /// Generate recorded traffic with documented incidents.
    Generate(generate::Args),
    /// Silences: label matchers that mute notifications until they expire.
    Silence {
        #[command(subcommand)]
        action: silence::Args,
    },
    /// Build drift reference profiles (one per model) from recorded traffic,
    /// for `[drift.reference_files]`.
    Profile(profile::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Monitor => commands::monitor::run(&config, commands::stop_on_signals()?).await,
        Command::Worker => commands::worker::run(&config),
        Command::Replay(args) => replay::run(args, &config).await,
        Command::Report(args) => report::run(args),
        Command::Model { action } => model::run(action, &config),
        Command::Record(args) => record::run(args, &config),
        Command::Generate(args) => generate::run(args),
        Command::Silence { action } => silence::run(action, &config),
        Command::Profile(args) => profile::run(args, &config),
    }
}
