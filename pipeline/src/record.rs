//! `infermon record --topics T... --out DIR`: Kafka traffic to a replayable
//! file (JSON Lines, zstd), each event with a `"topic"` field naming where
//! it came from — the format `replay` reads.
//!
//! The recorder reads every partition by assignment, not in a consumer
//! group, so it never takes partitions away from the monitors. It starts
//! at the end of each partition (only new traffic) or, with
//! `--from-beginning`, at its start; it stops on SIGTERM/SIGINT, after
//! `--duration`, or once nothing arrived for `--idle`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use infermon_schemas::recording::RecordingWriter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Map, Value};

use crate::sources::kafka::KafkaConfig;

/// What to record and when to stop.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// `[kafka]`: brokers and the user's client properties.
    pub kafka: KafkaConfig,
    /// Topics to record.
    pub topics: Vec<String>,
    /// Output directory; the file is `recording-<unix seconds>.jsonl.zst`.
    pub out: PathBuf,
    /// Read what the topics already hold, not only new traffic.
    pub from_beginning: bool,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop once nothing arrived for this long.
    pub idle: Option<Duration>,
}

/// What was recorded.
#[derive(Debug, Clone, Default)]
pub struct RecordReport {
    /// The file written.
    pub path: PathBuf,
    /// Events written per topic.
    pub events: BTreeMap<String, u64>,
    /// Messages that were not a JSON object (not written), per topic.
    pub skipped: BTreeMap<String, u64>,
}

/// Record until a stop condition; `stop` is set by SIGTERM/SIGINT.
pub fn record(opts: &RecordOptions, stop: Arc<AtomicBool>) -> anyhow::Result<RecordReport> {
    // Assignment only: the group id is never joined or committed.
    let consumer: BaseConsumer = opts
        .kafka
        .consumer_config(
            "infermon-record",
            &[
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
        )?
        .create()?;
    let start = if opts.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut tpl = TopicPartitionList::new();
    for topic in &opts.topics {
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of topic {topic}"))?;
        let t = meta
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .with_context(|| format!("topic {topic} does not exist"))?;
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), start)?;
        }
    }
    consumer.assign(&tpl)?;

    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let path = opts.out.join(format!("recording-{secs}.jsonl.zst"));
    let mut out = RecordingWriter::create(&path, 3)?;
    tracing::info!(topics = ?opts.topics, path = %path.display(), "recording");

    let mut report = RecordReport {
        path: path.clone(),
        ..RecordReport::default()
    };
    let started = Instant::now();
    let mut last_event = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && opts.duration.is_none_or(|d| started.elapsed() < d)
        && opts.idle.is_none_or(|d| last_event.elapsed() < d)
    {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        last_event = Instant::now();
        let topic = msg.topic().to_string();
        let parsed = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<Map<String, Value>>(p).ok());
        let Some(event) = parsed else {
            *report.skipped.entry(topic).or_default() += 1;
            continue;
        };
        out.write_event(&topic, event)?;
        *report.events.entry(topic).or_default() += 1;
    }
    out.finish()?;
    Ok(report)
}
