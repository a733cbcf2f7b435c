//! `infermon-bench scale-out`: what the scale-out costs, with the real
//! binary as separate processes against a real broker.
//!
//! - Partial stage: one model's predictions, keyed by request id, in a
//!   pre-filled 8-partition topic; N = 1..4 partial monitors (one consumer
//!   group) read all of it. Per N: each monitor's CPU seconds per 1M of
//!   the messages it read (flat in N when the work splits), and the wall
//!   time from start until every message was read.
//! - Merge stage: one partial monitor and the merge stage over the same
//!   windows and series at 1× and 10× the event rate (passes of the files
//!   laid on the same event times): the merge's CPU per window should not
//!   follow the rate. The partials topic's bytes per window and series.

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

use super::ingest::{Layout, fill_topic, proc_usage, unique};

/// The model whose predictions fill the topics (the most in the bundled
/// recordings).
const MODEL: &str = "ads-ctr";
const PARTITIONS: i32 = 8;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ScaleOutBenchOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Predictions in the partial-stage topic.
    pub messages: u64,
    /// Recorded files whose predictions fill the topics.
    pub files: Vec<PathBuf>,
    /// Scratch directory for configs and logs.
    pub dir: PathBuf,
}

/// A running `infermon monitor` of one role.
struct Stage {
    child: Child,
    port: u16,
}

impl Stage {
    fn start(dir: &Path, name: &str, role: &str, toml: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join(format!("{name}.toml"));
        let state = dir.join(format!("state-{name}"));
        std::fs::write(
            &config,
            format!(
                "{toml}\n[monitor]\nrole = \"{role}\"\nlisten = \"127.0.0.1:{port}\"\nstate_dir = {state:?}\n\
                 metrics_out = {:?}\nalerts_out = {:?}\nthreads = 1\n",
                dir.join(format!("{name}.lp")),
                dir.join(format!("{name}-alerts.jsonl")),
            ),
        )?;
        let exe = std::env::current_exe()?.with_file_name("infermon");
        let child = Command::new(exe)
            .arg("--config")
            .arg(&config)
            .arg("monitor")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
            .spawn()?;
        Ok(Self { child, port })
    }

    /// Sum of a metric's samples (0 while the endpoint is not up).
    ///
    /// # Errors
    /// The process exited (its log says why).
    fn metric(&mut self, name: &str) -> anyhow::Result<f64> {
        if let Some(status) = self.child.try_wait()? {
            bail!("a monitor exited: {status} (see its log)");
        }
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let Some(text) = ureq::get(&url)
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
        else {
            return Ok(0.0);
        };
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    fn cpu(&self) -> anyhow::Result<f64> {
        Ok(proc_usage(&self.child.id().to_string())?.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Topics, group and drift: the model's reference is its first 5,000
/// recorded predictions (drift of every feature is computed).
fn kafka_toml(
    opts: &ScaleOutBenchOptions,
    base: &str,
    partials: &str,
    group: &str,
) -> anyhow::Result<String> {
    let reference = opts.dir.join(format!("{base}-reference.jsonl"));
    if !reference.exists() {
        let mut out = String::new();
        let mut n = 0;
        'files: for f in &opts.files {
            for line in infermon_schemas::recording::open(f)?.lines() {
                let mut v: Value = serde_json::from_str(&line?)?;
                if v["topic"] == "inference.predictions" && v["model"] == MODEL {
                    v["topic"] = Value::from(format!("{base}.predictions"));
                    out.push_str(&v.to_string());
                    out.push('\n');
                    n += 1;
                    if n == 5_000 {
                        break 'files;
                    }
                }
            }
        }
        std::fs::write(&reference, out)?;
    }
    Ok(format!(
        "[topics]\npredictions = \"{base}.predictions\"\nfeedback = \"{base}.feedback\"\n\
         training = \"{base}.training\"\npartials = \"{partials}\"\nprediction_key = \"request_id\"\n\n\
         [kafka]\nbrokers = {:?}\ngroup_id = \"{group}\"\n[kafka.properties]\n\
         \"session.timeout.ms\" = \"6000\"\n\n[window]\nidle_timeout = \"5s\"\n\n\
         [drift.reference_files]\n{MODEL:?} = {reference:?}\n",
        opts.brokers
    ))
}

async fn create_topic(brokers: &str, name: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Wait until `done`, at most 15 minutes.
fn wait(what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    while !done()? {
        if Instant::now() > deadline {
            bail!("{what}: not done in 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One partial-stage run with `n` monitors: (CPU s per 1M messages of
/// each monitor, wall seconds).
async fn partial_run(
    opts: &ScaleOutBenchOptions,
    base: &str,
    n: usize,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let partials = format!("{base}.partials-n{n}");
    create_topic(&opts.brokers, &partials).await?;
    let group = format!("bench-partial-{}-{n}", unique());
    let toml = kafka_toml(opts, base, &partials, &group)?;
    let started = Instant::now();
    let mut stages: Vec<Stage> = (0..n)
        .map(|i| Stage::start(&opts.dir, &format!("partial-n{n}-{i}"), "partial", &toml))
        .collect::<anyhow::Result<_>>()?;
    let consumed = |s: &mut Stage| s.metric("infermon_consumed_messages_total");
    wait("partial monitors", || {
        let mut sum = 0.0;
        for s in stages.iter_mut() {
            sum += consumed(s)?;
        }
        Ok(sum as u64 >= opts.messages)
    })?;
    let wall = started.elapsed().as_secs_f64();
    let mut per_million = Vec::new();
    for s in stages.iter_mut() {
        let read = consumed(s)?;
        if read > 0.0 {
            per_million.push(s.cpu()? / read * 1e6);
        }
    }
    stages.into_iter().for_each(Stage::stop);
    Ok((per_million, wall))
}

/// One merge-stage run over `passes` passes of the files laid on the same
/// event times: (merge CPU s, windows merged, window partial bytes,
/// series entries in them).
async fn merge_run(
    opts: &ScaleOutBenchOptions,
    passes: i64,
) -> anyhow::Result<(u64, f64, f64, u64, u64)> {
    let base = format!("benchso{}", unique());
    let layout = Layout {
        partitions: PARTITIONS,
        key: "request_id",
        model: Some(MODEL),
        passes: Some(passes),
        shift_time: false,
        every_kind: false,
    };
    let (_, messages) = fill_topic(&opts.brokers, &opts.files, u64::MAX, &base, layout).await?;
    let partials = format!("{base}.partials");
    create_topic(&opts.brokers, &partials).await?;
    let id = unique();
    let merge_toml = kafka_toml(opts, &base, &partials, &format!("bench-merge-{id}"))?;
    let mut merge = Stage::start(&opts.dir, &format!("merge-x{passes}"), "merge", &merge_toml)?;
    let partial_toml = kafka_toml(opts, &base, &partials, &format!("bench-p-{id}"))?;
    let mut partial = Stage::start(
        &opts.dir,
        &format!("feeder-x{passes}"),
        "partial",
        &partial_toml,
    )?;
    wait("the partial monitor", || {
        Ok(partial.metric("infermon_consumed_messages_total")? as u64 >= messages)
    })?;
    // The partial monitor goes idle and publishes its last windows; the
    // merge stage reads all of it: nothing changes for 3 s.
    let mut last = (-1, -1.0, -1.0);
    let mut quiet = 0;
    wait("the merge stage", || {
        std::thread::sleep(Duration::from_millis(900));
        let now = (
            high_watermark(&opts.brokers, &partials)?,
            merge.metric("infermon_consumed_messages_total")?,
            merge.metric("infermon_windows_emitted_total")?,
        );
        let settled = now == last && now.1 as i64 >= now.0 && now.2 > 0.0;
        quiet = if settled { quiet + 1 } else { 0 };
        last = now;
        Ok(quiet >= 3)
    })?;
    let published = last.0;
    let cpu = merge.cpu()?;
    let windows = merge.metric("infermon_windows_emitted_total")?;
    partial.stop();
    merge.stop();
    let (bytes, series) = window_bytes(&opts.brokers, &partials, published)?;
    Ok((messages, cpu, windows, bytes, series))
}

fn high_watermark(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    Ok(c.fetch_watermarks(topic, 0, Duration::from_secs(10))?.1)
}

/// Bytes of the `window` messages of the partials topic and the series
/// entries they carry.
fn window_bytes(brokers: &str, topic: &str, messages: i64) -> anyhow::Result<(u64, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-read-{}", unique()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    c.subscribe(&[topic])?;
    let (mut read, mut bytes, mut series) = (0, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    while read < messages && Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m?;
        read += 1;
        let payload = m.payload().unwrap_or_default();
        let v: Value = serde_json::from_slice(payload).context("a partials message")?;
        if v["kind"] == "window" {
            bytes += payload.len() as u64;
            series += v["window"]["series"]
                .as_array()
                .map_or(0, |s| s.len() as u64);
        }
    }
    Ok((bytes, series))
}

/// Both parts; a table for docs/benchmarks.md.
pub async fn run_scale_out_bench(opts: &ScaleOutBenchOptions) -> anyhow::Result<String> {
    std::fs::create_dir_all(&opts.dir)?;
    let base = format!("benchsp{}", unique());
    let layout = Layout {
        partitions: PARTITIONS,
        key: "request_id",
        model: Some(MODEL),
        passes: None,
        shift_time: true,
        every_kind: false,
    };
    let (fill_secs, _) =
        fill_topic(&opts.brokers, &opts.files, opts.messages, &base, layout).await?;
    let mut t = String::new();
    writeln!(
        t,
        "Partial stage: {} {MODEL} predictions keyed by request_id in an {PARTITIONS}-partition topic (filled in {fill_secs:.1} s)",
        opts.messages
    )?;
    writeln!(
        t,
        "| partial monitors | CPU s / 1M msgs, each monitor | wall s |"
    )?;
    writeln!(t, "|---:|---|---:|")?;
    for n in 1..=4 {
        let (per_million, wall) = partial_run(opts, &base, n).await?;
        let each: Vec<String> = per_million.iter().map(|c| format!("{c:.2}")).collect();
        writeln!(t, "| {n} | {} | {wall:.1} |", each.join(", "))?;
    }
    writeln!(
        t,
        "\nMerge stage: 1 partial monitor + the merge stage, the same windows and series at 1x and 10x the rate"
    )?;
    writeln!(
        t,
        "| rate | predictions | windows merged | merge CPU s | merge CPU ms / window | partials bytes / window / series |"
    )?;
    writeln!(t, "|---:|---:|---:|---:|---:|---:|")?;
    for passes in [1, 10] {
        let (messages, cpu, windows, bytes, series) = merge_run(opts, passes).await?;
        writeln!(
            t,
            "| {passes}x | {messages} | {windows:.0} | {cpu:.2} | {:.2} | {:.0} |",
            cpu / windows.max(1.0) * 1e3,
            bytes as f64 / series.max(1) as f64,
        )?;
    }
    Ok(t)
}
