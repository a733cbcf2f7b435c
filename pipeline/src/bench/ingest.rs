//! `infermon bench-ingest`: how fast `infermon monitor` ingests a pre-filled
//! predictions topic, side by side with a bare rdkafka consumer that only
//! reads the same topic — both as separate processes, one after the other
//! in each round, each timed from its first message to its last, with CPU
//! time and peak RSS read from /proc.

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to measure.
#[derive(Debug, Clone)]
pub struct IngestBenchOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Predictions in the topic.
    pub messages: u64,
    /// Rounds (each runs both consumers once).
    pub rounds: usize,
    /// Recorded files whose predictions fill the topic (cycled, shifted in
    /// time on each pass).
    pub files: Vec<PathBuf>,
    /// Scratch directory for configs and outputs.
    pub dir: PathBuf,
}

/// One consumer's run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct IngestRun {
    /// First to last message, seconds.
    pub secs: f64,
    /// User + system CPU of the whole process, seconds.
    pub cpu_secs: f64,
    /// Peak resident memory, KiB.
    pub peak_rss_kib: u64,
}

/// The bare consumer, run as `infermon-bench ingest --bare-topic T`: read
/// `messages` messages of the topics `topics` (comma-separated) in a fresh
/// consumer group and report.
pub fn bare_consumer(brokers: &str, topics: &str, messages: u64) -> anyhow::Result<IngestRun> {
    let group = format!("bench-bare-{}", unique());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&topics.split(',').collect::<Vec<_>>())?;
    let mut n = 0u64;
    let mut first = None;
    let mut bytes = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < messages {
        if Instant::now() > deadline {
            bail!("bare consumer: {n} of {messages} messages in 10 minutes");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += m.payload_len();
            n += 1;
        }
    }
    std::hint::black_box(bytes);
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let (cpu_secs, peak_rss_kib) = proc_usage("self")?;
    Ok(IngestRun {
        secs,
        cpu_secs,
        peak_rss_kib,
    })
}

pub(crate) fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// CPU seconds (user + system) and peak RSS of a process (`self` or a pid).
pub(crate) fn proc_usage(pid: &str) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // USER_HZ is 100 on Linux.
    Ok((
        ticks / 100.0,
        crate::replay::peak_rss_kib_of(pid).unwrap_or(0),
    ))
}

/// How a bench topic is laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Partitions of each topic.
    pub partitions: i32,
    /// The event field predictions are keyed by.
    pub key: &'static str,
    /// Only this model's predictions (None: all).
    pub model: Option<&'static str>,
    /// Stop after this many passes over the files (None: at `messages`).
    pub passes: Option<i64>,
    /// Each pass over the files is shifted past the previous one in event
    /// time (true: the same rate, a longer stream) or lies on it (false:
    /// the same windows, `passes` times the rate).
    pub shift_time: bool,
    /// Feedback and training telemetry go to their topics too (false:
    /// predictions only).
    pub every_kind: bool,
}

/// Create the topics and fill them with `messages` events: predictions
/// keyed by model, feedback by request id, training steps by model.
async fn fill(opts: &IngestBenchOptions, base: &str) -> anyhow::Result<f64> {
    let layout = Layout {
        partitions: 4,
        key: "model",
        model: None,
        passes: None,
        shift_time: true,
        every_kind: true,
    };
    Ok(
        fill_topic(&opts.brokers, &opts.files, opts.messages, base, layout)
            .await?
            .0,
    )
}

/// Create `{base}.predictions|feedback|training` and fill them with
/// `messages` events of `files` (cycled; request and run ids made unique
/// per pass): the predictions, or every kind with `layout.every_kind`.
/// Returns the seconds it took and the messages sent.
pub(crate) async fn fill_topic(
    brokers: &str,
    files: &[PathBuf],
    messages: u64,
    base: &str,
    layout: Layout,
) -> anyhow::Result<(f64, u64)> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let names: Vec<String> = ["predictions", "feedback", "training"]
        .iter()
        .map(|t| format!("{base}.{t}"))
        .collect();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|t| NewTopic::new(t, layout.partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let mut lines = Vec::new();
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for f in files {
        let reader = infermon_schemas::recording::open(f)?;
        for line in reader.lines() {
            let mut v: Value = serde_json::from_str(&line?)?;
            let topic = match v["topic"].as_str() {
                Some("inference.predictions") => "predictions",
                Some("inference.feedback") if layout.every_kind => "feedback",
                Some("training.telemetry") if layout.every_kind => "training",
                _ => continue,
            };
            if layout.model.is_some_and(|m| v["model"] != m) && topic != "feedback" {
                continue;
            }
            v.as_object_mut().expect("object").remove("topic");
            let ts = v["ts"].as_i64().context("ts")?;
            lo = lo.min(ts);
            hi = hi.max(ts);
            lines.push((format!("{base}.{topic}"), v));
        }
    }
    if !lines.iter().any(|(t, _)| t.ends_with(".predictions")) {
        bail!("no predictions in the given files");
    }
    let span = hi - lo + 60_000;
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", "zstd")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pass = 0i64;
    'fill: loop {
        if layout.passes.is_some_and(|p| pass == p) {
            break;
        }
        for (topic, v) in &lines {
            if sent == messages {
                break 'fill;
            }
            let mut v = v.clone();
            let shift = if layout.shift_time { pass * span } else { 0 };
            let ts = v["ts"].as_i64().expect("checked") + shift;
            v["ts"] = Value::from(ts);
            for id in ["request_id", "run_id"] {
                if let Some(old) = v[id].as_str() {
                    v[id] = Value::from(format!("{old}-{pass}"));
                }
            }
            let body = v.to_string();
            let key = match topic.ends_with(".predictions") {
                true => v[layout.key].as_str(),
                false => v["request_id"].as_str().or(v["model"].as_str()),
            };
            let key = key.unwrap_or("").to_string();
            let mut record = BaseRecord::to(topic).key(&key).payload(&body);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            sent += 1;
        }
        pass += 1;
    }
    producer
        .flush(Duration::from_secs(300))
        .context("filling the topic")?;
    Ok((started.elapsed().as_secs_f64(), sent))
}

/// Run the monitor on `base` until it consumed `messages` predictions.
fn monitor_run(opts: &IngestBenchOptions, base: &str, round: usize) -> anyhow::Result<IngestRun> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = opts.dir.join(format!("round-{round}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("monitor.toml");
    // Defaults, but for the idle timeout: a partition that got no events
    // (keys hash unevenly over 4 partitions) holds the watermark for it,
    // 30 s by default, longer than a run; no window would close, and the
    // bench would measure neither the statistics nor the writes.
    std::fs::write(
        &config,
        format!(
            "[topics]\npredictions = \"{base}.predictions\"\nfeedback = \"{base}.feedback\"\ntraining = \"{base}.training\"\n\n\
             [kafka]\nbrokers = {:?}\ngroup_id = \"bench-monitor-{}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\n\
             [monitor]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = {:?}\nmetrics_out = {:?}\nalerts_out = {:?}\n\n\
             [window]\nidle_timeout = \"1s\"\n",
            opts.brokers,
            unique(),
            dir.join("state"),
            dir.join("metrics.lp"),
            dir.join("alerts.jsonl"),
        ),
    )?;
    // The shipped binary, beside this one in the target directory.
    let exe = std::env::current_exe()?.with_file_name("infermon");
    let mut child = Command::new(exe)
        .arg("--config")
        .arg(&config)
        .arg("monitor")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("monitor.log"))?)
        .spawn()?;
    let pid = child.id().to_string();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let consumed = || -> Option<u64> {
        let text = ureq::get(&url).call().ok()?.into_string().ok()?;
        let n: f64 = text
            .lines()
            .filter(|l| l.starts_with("infermon_consumed_messages_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(n as u64)
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first = None;
    let result = loop {
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "monitor: not done in 15 minutes (see {})",
                dir.display()
            ));
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "monitor exited early: {status} (see {})",
                dir.display()
            ));
        }
        let n = consumed().unwrap_or(0);
        if n > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if n >= opts.messages {
            let secs = first.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
            let (cpu_secs, peak_rss_kib) = proc_usage(&pid)?;
            break Ok(IngestRun {
                secs,
                cpu_secs,
                peak_rss_kib,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = child.wait();
    result
}

fn bare_run(opts: &IngestBenchOptions, base: &str) -> anyhow::Result<IngestRun> {
    let out = Command::new(std::env::current_exe()?)
        .args(["ingest", "--brokers", &opts.brokers])
        .args(["--messages", &opts.messages.to_string()])
        .args([
            "--bare-topic",
            &format!("{base}.predictions,{base}.feedback,{base}.training"),
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("bare consumer failed: {}", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Fill a topic, then time both consumers; a table for docs/benchmarks.md.
pub async fn run_ingest_bench(opts: &IngestBenchOptions) -> anyhow::Result<String> {
    let base = format!("bench{}", unique());
    let fill_secs = fill(opts, &base).await?;
    let mut bare = Vec::new();
    let mut ours = Vec::new();
    for round in 0..opts.rounds.max(1) {
        bare.push(bare_run(opts, &base)?);
        ours.push(monitor_run(opts, &base, round)?);
    }
    let median = |runs: &[IngestRun]| -> IngestRun {
        let mut v = runs.to_vec();
        v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        v[v.len() / 2]
    };
    let (b, m) = (median(&bare), median(&ours));
    let rate = |r: &IngestRun| opts.messages as f64 / r.secs.max(1e-9);
    let mut t = String::new();
    writeln!(
        t,
        "{} events in three 4-partition topics (predictions, feedback, training; filled in {fill_secs:.1} s), {} round(s), median:",
        opts.messages,
        opts.rounds.max(1)
    )?;
    writeln!(
        t,
        "| consumer | msgs/s | × bare | CPU s | CPU s / 1M msgs | peak RSS MiB |"
    )?;
    writeln!(t, "|---|---:|---:|---:|---:|---:|")?;
    for (name, r) in [
        ("bare rdkafka BaseConsumer (read only)", b),
        ("infermon monitor (every operator on)", m),
    ] {
        writeln!(
            t,
            "| {name} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} |",
            rate(&r),
            rate(&r) / rate(&b),
            r.cpu_secs,
            r.cpu_secs / opts.messages as f64 * 1e6,
            r.peak_rss_kib as f64 / 1024.0
        )?;
    }
    for (i, (b, m)) in bare.iter().zip(&ours).enumerate() {
        writeln!(
            t,
            "round {i}: bare {:.2} s, monitor {:.2} s",
            b.secs, m.secs
        )?;
    }
    Ok(t)
}

/// Default fill: the bundled recordings.
pub fn bundled_files(repo: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo.join("replay-data/recordings"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".jsonl.zst"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
