//! The partial monitor's sink: the partials topic. Each turn's messages
//! (closed windows, labels, progress of every source partition) are
//! produced and flushed together; the watermark counts as acknowledged
//! only once the broker acknowledged every one, so input offsets are
//! committed behind acknowledged partials (at-least-once).
//!
//! Windows and labels are keyed by model, so one merge consumer owns each
//! model's series; progress goes to every partition, since every merge
//! consumer needs every source partition's watermark.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use infermon_operators::PartialMessage;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::sources::kafka::{self, DeliveryCounter, KafkaConfig};

/// The producer of the partials topic.
pub struct PartialsTopic {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    acked: i64,
    /// Partitions of the topic (progress goes to each).
    partitions: i32,
    /// Bytes produced (for metrics and the benchmark).
    pub bytes: u64,
}

impl PartialsTopic {
    /// An idempotent producer for `topic`.
    ///
    /// # Errors
    /// Bad producer settings.
    pub fn new(config: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        let producer: ThreadedProducer<DeliveryCounter> = config
            .idempotent_producer_config(&[("compression.type", "lz4"), ("linger.ms", "5")])?
            .create_with_context(DeliveryCounter::default())
            .context("creating the partials producer")?;
        let partitions = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("partials topic {topic}: metadata"))?
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        anyhow::ensure!(
            partitions > 0,
            "partials topic {topic} has no partitions (create it first)"
        );
        Ok(Self {
            partitions,
            producer,
            topic: topic.to_string(),
            acked: i64::MIN,
            bytes: 0,
        })
    }

    /// Produce `messages` and wait for the broker; then `watermark` is
    /// acknowledged.
    ///
    /// # Errors
    /// A message the broker refused, or no acknowledgement within 60 s:
    /// the watermark stays where it was (offsets are not committed past
    /// it, and the partials are sent again after a restart).
    pub fn publish(&mut self, messages: &[PartialMessage], watermark: i64) -> anyhow::Result<()> {
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        for m in messages {
            let payload = serde_json::to_vec(m)?;
            let send = |partition: Option<i32>, key: &str| {
                let mut record = BaseRecord::to(&self.topic)
                    .key(key.as_bytes())
                    .payload(payload.as_slice());
                if let Some(p) = partition {
                    record = record.partition(p);
                }
                kafka::produce(&self.producer, record)
                    .map_err(|e| anyhow::anyhow!("partials topic {}: {e}", self.topic))
            };
            match m.model() {
                Some(model) => send(None, model)?,
                None => {
                    for p in 0..self.partitions {
                        send(Some(p), "progress")?;
                    }
                }
            }
            self.bytes += payload.len() as u64;
        }
        self.producer
            .flush(Duration::from_secs(60))
            .with_context(|| format!("partials topic {}: not acknowledged", self.topic))?;
        if self.producer.context().failed.load(Ordering::Relaxed) > failed {
            anyhow::bail!("partials topic {}: a message was refused", self.topic);
        }
        self.acked = self.acked.max(watermark);
        Ok(())
    }

    /// The watermark up to which every partial was acknowledged.
    pub fn acked(&self) -> i64 {
        self.acked
    }
}
