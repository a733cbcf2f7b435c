//! `infermon replay FILES... --to-kafka BROKERS [--speed X]`: recorded
//! traffic back into Kafka, each event to its topic with the contract's key
//! (requests and feedback by `request_id`, predictions by `model`, training
//! by `run_id`), paced like the recording (× speed; 0 = as fast as the
//! broker takes it). Files are sent one after another, lines in file order.
//!
//! The producer is idempotent, zstd-compressed and lingers a few ms to
//! batch; a message the broker does not acknowledge is counted and makes
//! the command fail, never silently lost.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde_json::Value;

use infermon_schemas::{TopicNames, recording};

use crate::sources::kafka::{DeliveryCounter, KafkaConfig};

/// What to send where.
#[derive(Debug, Clone)]
pub struct ToKafkaOptions {
    /// Recorded traffic files (JSON Lines, optionally .zst).
    pub files: Vec<PathBuf>,
    /// Pacing factor: 1 = recorded pace, 10 = ten times faster, 0 = no pacing.
    pub speed: f64,
}

/// What was sent.
#[derive(Debug, Clone, Default)]
pub struct ToKafkaReport {
    /// Messages acknowledged by the broker, per topic.
    pub produced: BTreeMap<String, u64>,
    /// Lines that were not an event of a known topic (skipped, counted).
    pub skipped: u64,
    /// Messages the broker never acknowledged.
    pub failed: u64,
}

/// Send the files; fails if any message was not acknowledged.
pub fn replay_to_kafka(
    kafka: &KafkaConfig,
    t: &TopicNames,
    opts: &ToKafkaOptions,
) -> anyhow::Result<ToKafkaReport> {
    let producer: ThreadedProducer<DeliveryCounter> = kafka
        .idempotent_producer_config(&[("message.timeout.ms", "60000")])?
        .create_with_context(DeliveryCounter::default())
        .context("creating the Kafka producer")?;
    // Recorded `topic` values → (topic to produce to, key field).
    let routes: BTreeMap<&str, (&str, &str)> = [
        (t.requests.as_str(), "request_id"),
        (t.predictions.as_str(), t.prediction_key.field()),
        (t.feedback.as_str(), "request_id"),
        (t.training.as_str(), "run_id"),
    ]
    .into_iter()
    .map(|(topic, key)| (topic, (topic, key)))
    .collect();

    let mut report = ToKafkaReport::default();
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    for path in &opts.files {
        let started = Instant::now();
        let mut first_ts: Option<i64> = None;
        for (n, line) in recording::open(path)?.lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut event: Value = match serde_json::from_str(&line) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    report.skipped += 1;
                    tracing::warn!(file = %path.display(), line = n + 1, "not a JSON object; skipped");
                    continue;
                }
            };
            let recorded = event.get("topic").and_then(Value::as_str).unwrap_or("");
            let Some(&(topic, key_field)) = routes.get(recorded) else {
                report.skipped += 1;
                tracing::warn!(file = %path.display(), line = n + 1, topic = recorded, "unknown topic; skipped");
                continue;
            };
            let topic = topic.to_string();
            event.as_object_mut().expect("checked").remove("topic");
            let key = event
                .get(key_field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if opts.speed > 0.0
                && let Some(ts) = event.get("ts").and_then(Value::as_i64)
            {
                let first = *first_ts.get_or_insert(ts);
                let due =
                    Duration::from_secs_f64(((ts - first).max(0) as f64 / 1000.0) / opts.speed);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let payload = serde_json::to_vec(&event)?;
            let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => bail!("producing to {topic}: {e}"),
                }
            }
            *sent.entry(topic).or_default() += 1;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("waiting for Kafka to acknowledge")?;
    let acks = producer.context();
    report.failed = acks.failed.load(Ordering::Relaxed);
    let total: u64 = sent.values().sum();
    let ok = acks.delivered.load(Ordering::Relaxed);
    if report.failed > 0 || ok != total {
        bail!(
            "{} of {total} messages were not acknowledged by Kafka ({} failed)",
            total - ok.min(total),
            report.failed
        );
    }
    report.produced = sent;
    Ok(report)
}
