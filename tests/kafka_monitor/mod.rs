//! `infermon monitor` against the real servers `.ci/run` starts: the Tansu
//! broker, VictoriaMetrics (InfluxDB v2 write API) and InfluxDB 1.6 (v1).
//!
//! Every test works on topics, a consumer group and an InfluxDB database of
//! its own, and compares what the monitor wrote with the offline replay of
//! the same recording (`replay --offline`): same windows, same values.
//! Windows are complete only once the watermark passes them, so the monitor
//! is expected to have written every offline point up to the final
//! watermark (newest event time − allowed lateness), quality points once
//! their label wait has passed it too.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use crate::support::{
    Alertmanager, Line, Process, Prometheus, create_topics, free_port, infermon, parse_lines,
    promtool, recordings, required_env, run_ok, scrape, tail, unique_id,
};

mod alerts;
mod dlq;
mod points;
mod prometheus;
mod record;
mod scale_out;

/// Lateness that covers the recordings' 20–90 s late events, so the offline
/// and the Kafka runs agree on every row's window (late-data handling has
/// its own tests).
const LATENESS_MS: i64 = 120_000;

/// The default label wait.
const LABEL_WAIT_MS: i64 = 600_000;

/// Topics, group, database and files of one test.
struct Setup {
    brokers: String,
    id: String,
    dir: tempfile::TempDir,
    topics: BTreeMap<&'static str, String>,
    /// More `[topics]` settings (e.g. the prediction key).
    topics_extra: String,
}

impl Setup {
    fn new(name: &str) -> Self {
        Self::with_partitions(name, 4)
    }

    /// Topics of `partitions` partitions each (the DLQ and the partials
    /// topic have one).
    fn with_partitions(name: &str, partitions: i32) -> Self {
        let brokers = required_env("INFERMON_TEST_KAFKA_BROKERS");
        let id = unique_id(name);
        let topics: BTreeMap<&'static str, String> = [
            "requests",
            "predictions",
            "feedback",
            "training",
            "dlq",
            "partials",
        ]
        .into_iter()
        .map(|base| (base, format!("t{id}.{base}")))
        .collect();
        let partitions: Vec<(&str, i32)> = topics
            .iter()
            .map(|(base, t)| {
                let one = matches!(*base, "dlq" | "partials");
                (t.as_str(), if one { 1 } else { partitions })
            })
            .collect();
        create_topics(&brokers, &partitions);
        Self {
            brokers,
            id,
            // INFERMON_TEST_KEEP=1 keeps logs and configs for a look.
            dir: tempfile::Builder::new()
                .prefix(&format!("infermon-{name}-"))
                .disable_cleanup(std::env::var_os("INFERMON_TEST_KEEP").is_some())
                .tempdir()
                .unwrap(),
            topics,
            topics_extra: String::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config file: our topics, lateness, short idle timeout, the group,
    /// plus `extra` TOML.
    /// The idle timeout is longer than any pause between the bursts a test
    /// produces: a partition silent for longer stops holding the watermark,
    /// and its older events that come later are late (counted, not
    /// windowed) — the documented cost of idle detection.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let mut toml = format!(
            "[window]\nallowed_lateness = \"{}ms\"\nidle_timeout = \"10s\"\n\n[topics]\n",
            LATENESS_MS
        );
        for (base, t) in &self.topics {
            toml.push_str(&format!("{base} = {t:?}\n"));
        }
        toml.push_str(&self.topics_extra);
        toml.push_str(&format!(
            "\n[kafka]\nbrokers = {:?}\ngroup_id = \"g{}\"\ncommit_interval = \"500ms\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\n",
            self.brokers, self.id
        ));
        toml.push_str(extra);
        let path = self.path(name);
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// A fresh InfluxDB 1.x database for this test.
    fn influx_v1_db(&self) -> (String, String) {
        let url = required_env("INFERMON_TEST_INFLUXDB_V1_URL");
        let db = format!("t{}", self.id);
        ureq::post(&format!("{url}/query"))
            .send_form(&[("q", &format!("CREATE DATABASE \"{db}\""))])
            .unwrap();
        (url, db)
    }

    /// `[monitor]` settings: own state dir, free port, files in the test dir.
    fn monitor_toml(&self, instance: &str) -> String {
        format!(
            "[monitor]\nlisten = \"127.0.0.1:{}\"\nstate_dir = {:?}\nmetrics_out = {:?}\nalerts_out = {:?}\nrejects_out = {:?}\nshutdown_timeout = \"5s\"\n",
            free_port(),
            self.path(&format!("state-{instance}")),
            self.path(&format!("metrics-{instance}.lp")),
            self.path(&format!("alerts-{instance}.jsonl")),
            self.path(&format!("rejects-{instance}.jsonl")),
        )
    }

    /// Produce recorded lines to our topics with `replay --to-kafka`.
    fn produce(&self, config: &Path, lines: &[String]) {
        let file = self.path(&format!("part-{}.jsonl", lines.len()));
        std::fs::write(&file, self.relabel(lines)).unwrap();
        run_ok(
            infermon()
                .arg("--config")
                .arg(config)
                .arg("replay")
                .arg(&file)
                .args(["--to-kafka", &self.brokers, "--speed", "0"]),
        );
    }

    /// Recorded lines with our topic names.
    fn relabel(&self, lines: &[String]) -> String {
        let mut text = String::new();
        for l in lines {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let base = match v["topic"].as_str().unwrap() {
                "inference.requests" => "requests",
                "inference.predictions" => "predictions",
                "inference.feedback" => "feedback",
                "training.telemetry" => "training",
                other => panic!("unexpected topic {other}"),
            };
            v["topic"] = Value::String(self.topics[base].clone());
            text.push_str(&v.to_string());
            text.push('\n');
        }
        text
    }
}

/// A bundled recording's lines (topics as recorded).
fn recording_lines(name: &str) -> Vec<String> {
    let rec = recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains(name))
        .unwrap();
    infermon_schemas::recording::open(&rec)
        .unwrap()
        .lines()
        .map(Result::unwrap)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// What the offline replay of `lines` writes, restricted to what a live
/// monitor can have completed after reading them all: windows ending at or
/// before the final watermark, quality whose wait also ended. `alerts`
/// points are left out (alert state is checked on its own).
fn expected_points(setup: &Setup, config: &Path, lines: &[String]) -> (Vec<Line>, i64) {
    let max_ts = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["ts"]
                .as_i64()
                .unwrap()
        })
        .max()
        .unwrap();
    expected_points_until(setup, config, lines, max_ts - LATENESS_MS)
}

/// [`expected_points`] up to a given final `watermark`.
fn expected_points_until(
    setup: &Setup,
    config: &Path,
    lines: &[String],
    watermark: i64,
) -> (Vec<Line>, i64) {
    let file = setup.path("all.jsonl");
    std::fs::write(&file, setup.relabel(lines)).unwrap();
    let out = setup.path("offline.lp");
    run_ok(
        infermon()
            .arg("--config")
            .arg(config)
            .args(["replay", "--offline", "--quiet"])
            .arg(&file)
            .arg("--metrics-out")
            .arg(&out)
            .arg("--alerts-out")
            .arg(setup.path("offline-alerts.jsonl"))
            .arg("--rejects-out")
            .arg(setup.path("offline-rejects.jsonl")),
    );
    let points: Vec<Line> = parse_lines(&std::fs::read_to_string(out).unwrap())
        .into_iter()
        .filter(|l| l.measurement != "alerts")
        .filter(|l| {
            let ts = l.ts_ns / 1_000_000;
            if l.measurement == "quality" {
                ts + LABEL_WAIT_MS <= watermark
            } else {
                ts <= watermark
            }
        })
        .collect();
    // The watermark the monitor must have acknowledged once all are written.
    let last = points
        .iter()
        .map(|l| {
            let ts = l.ts_ns / 1_000_000;
            if l.measurement == "quality" {
                ts + LABEL_WAIT_MS
            } else {
                ts
            }
        })
        .max()
        .unwrap();
    (points, last)
}

/// A running `infermon monitor`.
struct Monitor {
    process: Process,
    addr: String,
}

impl Monitor {
    fn start(config: &Path, log: PathBuf) -> Self {
        let text = std::fs::read_to_string(config).unwrap();
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let mut process = Process::spawn(
            "infermon monitor",
            infermon().arg("--config").arg(config).arg("monitor").env(
                "RUST_LOG",
                std::env::var("INFERMON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ),
            Some(log),
        );
        process.wait_ready(&format!("http://{addr}/healthz"), Duration::from_secs(30));
        Self { process, addr }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        match ureq::get(&format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(2))
            .call()
        {
            Ok(r) => Some((r.status(), r.into_string().unwrap())),
            Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap())),
            Err(_) => None,
        }
    }

    /// Sum of a metric's samples whose line contains every `labels` part.
    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        scrape(&format!("http://{}/metrics", self.addr), name, labels)
    }

    fn log_text(&self) -> String {
        self.process.log_text()
    }

    fn wait_for(&self, timeout: Duration, what: &str, mut ok: impl FnMut(&Self) -> bool) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let metrics = self.get("/metrics").map(|(_, t)| t).unwrap_or_default();
        let metrics: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#')).collect();
        panic!(
            "monitor: timed out after {timeout:?} waiting for {what}; metrics:\n{}\nlog:\n{}",
            metrics.join("\n"),
            tail(&self.log_text(), 20)
        );
    }

    /// Wait until every sink has acknowledged `watermark`.
    fn wait_acked(&self, watermark: i64, timeout: Duration) {
        self.wait_for(timeout, &format!("acked watermark {watermark}"), |m| {
            m.metric("infermon_acked_watermark_seconds", &[]) * 1000.0 >= watermark as f64
        });
    }

    /// Wait until offsets up to `watermark` have been committed.
    fn wait_committed(&self, watermark: i64, timeout: Duration) {
        self.wait_for(timeout, &format!("committed watermark {watermark}"), |m| {
            m.metric("infermon_committed_watermark_seconds", &[]) * 1000.0 >= watermark as f64
        });
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(mut self) -> ExitStatus {
        self.process.terminate()
    }

    /// SIGKILL: no flush, no commit.
    fn kill9(mut self) {
        self.process.kill9();
    }
}

/// The first recorded event's time.
fn first_ts(lines: &[String]) -> i64 {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["ts"]
                .as_i64()
                .unwrap()
        })
        .min()
        .unwrap()
}
