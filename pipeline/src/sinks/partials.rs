//! The partial monitor's sink: the partials topic. Each turn's messages
//! (closed windows, labels, progress of every source partition) are
//! produced and flushed together; the watermark counts as acknowledged
//! only once the broker acknowledged every one, so input offsets are
//! committed behind acknowledged partials (at-least-once).

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use infermon_operators::PartialMessage;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::sources::kafka::{self, DeliveryCounter, KafkaConfig};

/// Every partial goes to one partition (one active merge consumer), in
/// the order produced.
const KEY: &[u8] = b"partials";

/// The producer of the partials topic.
pub struct PartialsTopic {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    acked: i64,
    /// Bytes produced (for metrics and the benchmark).
    pub bytes: u64,
}

impl PartialsTopic {
    /// An idempotent producer for `topic`.
    ///
    /// # Errors
    /// Bad producer settings.
    pub fn new(config: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        let producer = config
            .idempotent_producer_config(&[("compression.type", "lz4"), ("linger.ms", "5")])?
            .create_with_context(DeliveryCounter::default())
            .context("creating the partials producer")?;
        Ok(Self {
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
            self.bytes += payload.len() as u64;
            let record = BaseRecord::to(&self.topic)
                .key(KEY)
                .payload(payload.as_slice());
            kafka::produce(&self.producer, record)
                .map_err(|e| anyhow::anyhow!("partials topic {}: {e}", self.topic))?;
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
