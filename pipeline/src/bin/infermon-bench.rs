//! `infermon-bench`: infermon's benchmarks, each timed side by side with a
//! bare baseline in one run (see docs/benchmarks.md). Built only with
//! `--features bench`, so the shipped `infermon` carries none of it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use infermon::bench::drift::{DriftBenchOptions, run_drift_bench};
use infermon::bench::ingest::{IngestBenchOptions, bare_consumer, bundled_files, run_ingest_bench};
use infermon::bench::replay::{BenchOptions, run_bench};
use infermon::bench::scale_out::{ScaleOutBenchOptions, run_scale_out_bench};
use infermon::bench::worker::{WorkerBenchOptions, bench};
use infermon::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "infermon-bench", version, about = "Benchmarks of infermon")]
struct Cli {
    /// Config file (TOML); built-in defaults when absent.
    #[arg(long, global = true, env = "INFERMON_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure offline replay throughput against a bare serde_json parse of
    /// the same file, in one run.
    Replay {
        /// A recorded traffic file.
        file: PathBuf,
        /// Rounds per variant (interleaved; the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Time `infermon monitor` ingesting pre-filled predictions, feedback
    /// and training topics against a bare rdkafka consumer reading the same
    /// topics, in one run.
    Ingest {
        /// Files whose events fill the topics (default: the bundled
        /// recordings), cycled and shifted in time.
        files: Vec<PathBuf>,
        /// Brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Events in the topics, all kinds together.
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        /// Rounds (the median is reported).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Scratch directory (configs, monitor logs).
        #[arg(long, default_value = "bench-ingest")]
        dir: PathBuf,
        /// Internal: be the bare consumer of these topics (comma-separated),
        /// print JSON.
        #[arg(long, hide = true)]
        bare_topic: Option<String>,
    },
    /// The scale-out: CPU per 1M messages of 1..4 partial monitors on an
    /// 8-partition topic, and the merge stage's CPU per window at 1x and
    /// 10x the event rate (real broker, the real binary).
    ScaleOut {
        /// Files whose predictions fill the topics (default: the bundled
        /// recordings).
        files: Vec<PathBuf>,
        /// Brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Predictions in the partial-stage topic.
        #[arg(long, default_value_t = 400_000)]
        messages: u64,
        /// Scratch directory (configs, logs).
        #[arg(long, default_value = "bench-scale-out")]
        dir: PathBuf,
    },
    /// Time the worker's path (encode, ONNX Runtime, timings, events, JSON,
    /// publish) against a bare ONNX Runtime loop on the same model and
    /// batch sizes, in one run (needs ORT_DYLIB_PATH).
    Worker {
        /// Model directory (feature_spec.json + <version>/model.onnx).
        #[arg(long, default_value = "inference/models/ctr-ranker")]
        model_dir: PathBuf,
        /// Requests per run.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        batch_sizes: Vec<usize>,
        /// Publish predictions to Kafka at these brokers (topic: --topic).
        #[arg(long)]
        brokers: Option<String>,
        /// Topic for --brokers.
        #[arg(long, default_value = "bench.predictions")]
        topic: String,
        /// Interleaved rounds (median reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// ONNX Runtime intra-op threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// `cpu` or `cuda:N` (CPU fallback with a warning, as in the worker).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Time the drift operator on raw feature matrices (f64 LE, row-major);
    /// driven by tests/reference/drift_bench.py, which times scipy alongside.
    Drift {
        /// Reference matrix.
        #[arg(long)]
        reference: PathBuf,
        /// Current matrix (one window).
        #[arg(long)]
        current: PathBuf,
        /// Columns per row.
        #[arg(long)]
        features: usize,
        /// Rounds (the fastest is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Replay { file, rounds } => {
            print!(
                "{}",
                run_bench(&config, &BenchOptions { file, rounds }).await?
            );
        }
        Command::Drift {
            reference,
            current,
            features,
            rounds,
        } => {
            let opts = DriftBenchOptions {
                reference,
                current,
                features,
                rounds,
            };
            println!("{}", run_drift_bench(&opts)?);
        }
        Command::Ingest {
            files,
            brokers,
            messages,
            rounds,
            dir,
            bare_topic,
        } => {
            if let Some(topic) = bare_topic {
                let run = bare_consumer(&brokers, &topic, messages)?;
                println!("{}", serde_json::to_string(&run)?);
                return Ok(());
            }
            let files = match files.is_empty() {
                true => bundled_files(std::path::Path::new(".")),
                false => files,
            };
            let opts = IngestBenchOptions {
                brokers,
                messages,
                rounds,
                files,
                dir,
            };
            print!("{}", run_ingest_bench(&opts).await?);
        }
        Command::ScaleOut {
            files,
            brokers,
            messages,
            dir,
        } => {
            let files = match files.is_empty() {
                true => bundled_files(std::path::Path::new(".")),
                false => files,
            };
            let opts = ScaleOutBenchOptions {
                brokers,
                messages,
                files,
                dir,
            };
            print!("{}", run_scale_out_bench(&opts).await?);
        }
        Command::Worker {
            model_dir,
            requests,
            batch_sizes,
            brokers,
            topic,
            rounds,
            threads,
            device,
        } => {
            let opts = WorkerBenchOptions {
                dir: model_dir,
                requests,
                batch_sizes,
                kafka: brokers.map(|b| (b, topic)),
                rounds,
                threads,
                device,
            };
            print!("{}", bench(&opts)?);
        }
    }
    Ok(())
}
