//! `infermon`: monitor ML models in production. See README.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use infermon::alerts::Silence;
use infermon::alerts::policy::{append_silence, read_silences_file, silences_table};
use infermon::bench::{BenchOptions, run_bench};
use infermon::bench_drift::{DriftBenchOptions, run_drift_bench};
use infermon::bench_ingest::{IngestBenchOptions, bare_consumer, bundled_files, run_ingest_bench};
use infermon::config::Config;
use infermon::generate::{write_bundled, write_recording, write_requests};
use infermon::record::{RecordOptions, record};
use infermon::references::profile_recordings;
use infermon::replay::{ReplayOptions, peak_rss_kib, replay, summary_table};
use infermon::replay_to_kafka::{ToKafkaOptions, replay_to_kafka};
use infermon::sinks::alerts_file::AlertsFile;
use infermon::sinks::line_protocol_file::LineProtocolFile;
use infermon::sinks::rejects_file::RejectsFile;
use infermon_replay_data::{GenerateOptions, Scenario};
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
    /// operators (a backtest), writing line protocol to a file.
    Replay {
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
    },
    /// Model versions served by workers: `rollback` pins a model
    /// directory to the version before the current one (workers swap within
    /// their reload interval), `release` removes the pin.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Record Kafka traffic to a replayable file (JSON Lines + zstd, with a
    /// "topic" field per event), until SIGTERM/SIGINT, --duration or --idle.
    Record {
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
    },
    /// Generate recorded traffic with documented incidents.
    Generate {
        /// Scenario: latency-regression, error-burst, input-shift,
        /// feature-null, gradient-explosion or day.
        #[arg(long, default_value = "day")]
        scenario: String,
        /// Output file (.zst to compress).
        #[arg(long, required_unless_present = "bundled")]
        out: Option<PathBuf>,
        /// Length, e.g. "30m", "24h" (default: the scenario's bundled length).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Multiply request rates (e.g. 4 for a ~1.1M-event day).
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// RNG seed (default: the bundled recording's).
        #[arg(long)]
        seed: Option<u64>,
        /// zstd level for .zst output.
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
        /// Regenerate every bundled recording and incidents.json into DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "out")]
        bundled: Option<PathBuf>,
        /// Write scoring requests for real workers (ctr-ranker features,
        /// query-encoder texts; the scenario's input incident) instead of
        /// predictions: see replay-data/record-live.sh.
        #[arg(long, conflicts_with = "bundled")]
        requests: bool,
    },
    /// Silences: label matchers that mute notifications until they expire.
    Silence {
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// Build drift reference profiles (one per model) from recorded traffic,
    /// for `[drift.reference_files]`.
    Profile {
        /// Recorded traffic files (JSON Lines, optionally .zst).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output JSON (an object keyed by model).
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure offline replay throughput against a bare serde_json parse of
    /// the same file, in one run.
    Bench {
        /// A recorded traffic file.
        file: PathBuf,
        /// Rounds per variant (interleaved; the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Time `infermon monitor` ingesting a pre-filled predictions topic
    /// against a bare rdkafka consumer reading the same topic, in one run.
    BenchIngest {
        /// Files whose predictions fill the topic (default: the bundled
        /// recordings), cycled and shifted in time.
        files: Vec<PathBuf>,
        /// Brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Predictions in the topic.
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        /// Rounds (the median is reported).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Scratch directory (configs, monitor logs).
        #[arg(long, default_value = "bench-ingest")]
        dir: PathBuf,
        /// Internal: be the bare consumer of this topic, print JSON.
        #[arg(long, hide = true)]
        bare_topic: Option<String>,
    },
    /// Time the worker's path (encode, ONNX Runtime, timings, events, JSON,
    /// publish) against a bare ONNX Runtime loop on the same model and
    /// batch sizes, in one run (needs ORT_DYLIB_PATH).
    BenchWorker {
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
    BenchDrift {
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

#[derive(Subcommand)]
enum ModelAction {
    /// Serve the previous version: pin a model directory shared by the
    /// workers (`--dir`), and/or tell every worker through the control
    /// topic (`--model`, brokers from the config or `--brokers`).
    Rollback {
        /// Model directory (feature_spec.json + <version>/model.onnx).
        #[arg(long, required_unless_present = "model")]
        dir: Option<PathBuf>,
        /// Model name, to send the command on the control topic.
        #[arg(long)]
        model: Option<String>,
        /// The version to take out (default: the one `--dir` serves).
        #[arg(long)]
        version: Option<String>,
        /// Kafka brokers (default: the config's).
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Serve the highest version again.
    Release {
        /// Model directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SilenceAction {
    /// Add a silence (appended to the silences file).
    Add {
        /// Label matcher NAME=VALUE, or NAME=!VALUE for "not"; repeatable.
        #[arg(long = "matcher", required = true, value_parser = parse_matcher)]
        matchers: Vec<(String, String)>,
        /// How long from now, e.g. "2h".
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Who and why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Silences file (default: `[alerts] silences_file`).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List the silences of the silences file.
    Ls {
        /// Silences file (default: `[alerts] silences_file`).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn parse_matcher(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

fn silences_file(config: &Config, file: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    file.or_else(|| config.alerts.silences_file.clone())
        .context("no silences file: pass --file or set [alerts] silences_file")
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
        Command::Record {
            topics,
            out,
            brokers,
            from_beginning,
            duration,
            idle,
        } => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())?;
            }
            let t = &config.topics;
            let topics = if topics.is_empty() {
                vec![
                    t.requests.clone(),
                    t.predictions.clone(),
                    t.feedback.clone(),
                    t.training.clone(),
                ]
            } else {
                topics
            };
            let opts = RecordOptions {
                brokers: brokers.unwrap_or_else(|| config.kafka.brokers.clone()),
                topics,
                out,
                from_beginning,
                duration,
                idle,
            };
            let report = record(&opts, stop)?;
            for (topic, n) in &report.events {
                println!("{topic}: {n} events");
            }
            for (topic, n) in &report.skipped {
                println!("{topic}: {n} messages skipped (not a JSON object)");
            }
            println!("recording: {}", report.path.display());
        }
        Command::Model { action } => match action {
            ModelAction::Rollback {
                dir,
                model,
                version,
                brokers,
            } => {
                let mut from = version;
                if let Some(dir) = &dir {
                    let (was, to) = infermon::worker::rollback(dir)?;
                    println!("{}: rolled back from version {was} to {to}", dir.display());
                    from.get_or_insert(was);
                }
                if let Some(model) = model {
                    let from = from.context(
                        "--model: name the version to take out with --version (or give --dir)",
                    )?;
                    let mut kafka = config.kafka.clone();
                    if let Some(b) = brokers {
                        kafka.brokers = b;
                    }
                    let producer = kafka
                        .producer_config()?
                        .create_with_context(infermon::sources::kafka::DeliveryCounter::default())?;
                    let command = infermon::worker::ControlCommand::rollback(
                        &model,
                        Some(&from),
                        "infermon model rollback",
                    );
                    infermon::worker::publish_command(&producer, &config.topics.control, &command)?;
                    println!(
                        "{}: rollback of {model} version {from} sent",
                        config.topics.control
                    );
                }
            }
            ModelAction::Release { dir } => {
                let pin = dir.join(infermon::worker::PIN_FILE);
                if pin.exists() {
                    std::fs::remove_file(&pin)?;
                }
                println!("{}: serving the highest version again", dir.display());
            }
        },
        Command::Worker => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())?;
            }
            infermon::worker::run(&config, stop)?;
        }
        Command::Monitor => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())?;
            }
            infermon::monitor::run(&config, stop).await?;
        }
        Command::Replay {
            files,
            offline,
            to_kafka,
            speed,
            metrics_out,
            rejects_out,
            alerts_out,
            send,
            send_timeout,
            quiet,
        } => {
            if let Some(brokers) = to_kafka {
                let opts = ToKafkaOptions {
                    files,
                    brokers,
                    speed,
                };
                let report = replay_to_kafka(&config, &opts)?;
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
            if !offline {
                bail!(
                    "say where to replay: --offline (through the operators) or --to-kafka BROKERS"
                );
            }
            let mut sink = LineProtocolFile::create(&metrics_out)?;
            let mut rejects = RejectsFile::new(&rejects_out);
            let mut alerts = AlertsFile::create(&alerts_out)?;
            let opts = ReplayOptions {
                files,
                progress: !quiet,
                send: send.then_some(send_timeout),
            };
            let report = replay(&config, &opts, &mut sink, &mut rejects, &mut alerts).await?;
            print!("{}", summary_table(&report));
            println!("metrics: {}", metrics_out.display());
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
            if let Some(kib) = peak_rss_kib() {
                println!("peak RSS: {:.1} MiB", kib as f64 / 1024.0);
            }
            let undelivered: u64 = report.receivers.iter().map(|(_, w)| w.undelivered).sum();
            if undelivered > 0 {
                bail!("{undelivered} notification groups could not be delivered (see the log)");
            }
        }
        Command::Generate {
            scenario,
            out,
            duration,
            rate_scale,
            seed,
            zstd_level,
            bundled,
            requests,
        } => {
            if let Some(dir) = bundled {
                return write_bundled(&dir);
            }
            let scenario = Scenario::from_name(&scenario)
                .with_context(|| format!("unknown scenario {scenario:?}"))?;
            let mut opts = GenerateOptions::bundled(scenario);
            opts.rate_scale = rate_scale;
            if let Some(d) = duration {
                opts.duration_s = d.as_secs();
            }
            if let Some(s) = seed {
                opts.seed = s;
            }
            let out = out.expect("clap requires --out without --bundled");
            if requests {
                let stats = write_requests(&opts, &out, zstd_level)?;
                println!(
                    "{}: {} requests ({} ctr-ranker, {} query-encoder)",
                    out.display(),
                    stats.ctr + stats.text,
                    stats.ctr,
                    stats.text
                );
                return Ok(());
            }
            let stats = write_recording(&opts, &out, zstd_level)?;
            println!(
                "{}: {} lines ({} predictions, {} feedback, {} training)",
                out.display(),
                stats.lines,
                stats.predictions,
                stats.feedback,
                stats.training
            );
            for i in opts.incidents() {
                println!(
                    "  incident {:?} on {} {}: {}..{} ms; alert {}",
                    i.name, i.model, i.series, i.start_ms, i.end_ms, i.alert
                );
            }
        }
        Command::Silence { action } => match action {
            SilenceAction::Add {
                matchers,
                duration,
                comment,
                file,
            } => {
                let path = silences_file(&config, file)?;
                let now = SystemTime::now();
                let silence = Silence {
                    matchers: matchers.into_iter().collect(),
                    starts_at: Some(humantime::format_rfc3339_seconds(now).to_string()),
                    ends_at: humantime::format_rfc3339_seconds(now + duration).to_string(),
                    comment,
                };
                append_silence(&path, &silence).map_err(anyhow::Error::msg)?;
                println!("silenced until {} ({})", silence.ends_at, path.display());
            }
            SilenceAction::Ls { file } => {
                let path = silences_file(&config, file)?;
                let all = read_silences_file(&path).map_err(anyhow::Error::msg)?;
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                print!("{}", silences_table(&all, now_ms));
            }
        },
        Command::Profile { files, out } => {
            let profiles = profile_recordings(&config, &files)?;
            let json = serde_json::to_string_pretty(&profiles)?;
            std::fs::write(&out, json).with_context(|| format!("writing {}", out.display()))?;
            for (model, p) in &profiles {
                println!(
                    "{model} (newest version {}): {} features",
                    p.model_version,
                    p.features.len()
                );
            }
            println!("profiles: {}", out.display());
        }
        Command::BenchDrift {
            reference,
            current,
            features,
            rounds,
        } => {
            let report = run_drift_bench(&DriftBenchOptions {
                reference,
                current,
                features,
                rounds,
            })?;
            println!("{report}");
        }
        Command::BenchIngest {
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
            let files = if files.is_empty() {
                bundled_files(std::path::Path::new("."))
            } else {
                files
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
        Command::BenchWorker {
            model_dir,
            requests,
            batch_sizes,
            brokers,
            topic,
            rounds,
            threads,
            device,
        } => {
            let opts = infermon::worker::WorkerBenchOptions {
                dir: model_dir,
                requests,
                batch_sizes,
                kafka: brokers.map(|b| (b, topic)),
                rounds,
                threads,
                device,
            };
            print!("{}", infermon::worker::bench(&opts)?);
        }
        Command::Bench { file, rounds } => {
            let table = run_bench(&config, &BenchOptions { file, rounds }).await?;
            print!("{table}");
        }
    }
    Ok(())
}
