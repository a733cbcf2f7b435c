//! Kafka as a source: a consumer group over the predictions, feedback and
//! training topics, with offsets stored by hand (at-least-once), rebalance
//! events handed to the monitor loop, and a DLQ producer for messages that
//! do not decode.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::sources::offsets::TopicPartition;
use crate::telemetry::Labels;

/// How to reach the brokers and read from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group; monitors sharing it split the partitions.
    pub group_id: String,
    /// Extra librdkafka properties, passed through as they are (security,
    /// timeouts, ...), for consumer and DLQ producer alike.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables
    /// (property → variable), for secrets such as `sasl.password`.
    pub properties_env: BTreeMap<String, String>,
    /// Messages decoded per batch at most.
    pub batch_size: usize,
    /// A batch waits at most this long to fill.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// How often safe offsets are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Larger values are not events: they go to the DLQ.
    pub max_event_bytes: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "infermon-monitor".into(),
            properties: BTreeMap::new(),
            properties_env: BTreeMap::new(),
            batch_size: 1024,
            batch_linger: Duration::from_millis(50),
            commit_interval: Duration::from_secs(5),
            max_event_bytes: 512 * 1024,
        }
    }
}

/// librdkafka properties that only consumers take: a producer given one
/// logs a CONFWARN, which on-call engineers should not have to read past.
const CONSUMER_ONLY: [&str; 22] = [
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.remote.assignor",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "coordinator.query.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "isolation.level",
    "check.crcs",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
];

/// The one place Kafka clients are configured: brokers, then the role's
/// defaults, then the user's `properties` and `properties_env` (the user's
/// word wins over ours).
impl KafkaConfig {
    /// A consumer in `group`, with `defaults` for its role.
    ///
    /// # Errors
    /// A `properties_env` variable that is not set (named).
    pub fn consumer_config(
        &self,
        group: &str,
        defaults: &[(&str, &str)],
    ) -> anyhow::Result<ClientConfig> {
        let mut role = vec![("group.id", group)];
        role.extend_from_slice(defaults);
        self.client_config(&role)
    }

    /// A plain producer (DLQ, control commands).
    ///
    /// # Errors
    /// As [`Self::consumer_config`].
    pub fn producer_config(&self) -> anyhow::Result<ClientConfig> {
        self.producer_with(&[])
    }

    /// An idempotent, zstd-compressed producer for event streams (worker
    /// predictions, `replay --to-kafka`), with `defaults` for its role.
    ///
    /// # Errors
    /// As [`Self::consumer_config`].
    pub fn idempotent_producer_config(
        &self,
        defaults: &[(&str, &str)],
    ) -> anyhow::Result<ClientConfig> {
        let mut role = vec![
            ("enable.idempotence", "true"),
            ("compression.type", "zstd"),
            ("linger.ms", "5"),
        ];
        role.extend_from_slice(defaults);
        self.producer_with(&role)
    }

    fn producer_with(&self, defaults: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        let mut c = self.client_config(defaults)?;
        for k in CONSUMER_ONLY {
            c.remove(k);
        }
        Ok(c)
    }

    fn client_config(&self, defaults: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, var) in &self.properties_env {
            let v = std::env::var(var).map_err(|_| {
                anyhow::anyhow!("kafka property {k} comes from ${var}, which is not set")
            })?;
            c.set(k, v);
        }
        Ok(c)
    }
}

/// A rebalance, as the loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// These partitions are ours now.
    Assigned(Vec<TopicPartition>),
    /// These partitions are no longer ours.
    Revoked(Vec<TopicPartition>),
}

/// Consumer callbacks: commit what is safe before partitions leave, queue
/// rebalances for the loop, export lag from librdkafka statistics.
pub struct MonitorContext {
    /// Rebalances since the loop last looked.
    pub events: Mutex<Vec<Assignment>>,
    /// The offsets (with watermark metadata) safe to commit right now.
    pub safe: Mutex<Option<TopicPartitionList>>,
    /// Messages not yet read per partition, from the latest librdkafka
    /// statistics.
    pub lag: Mutex<HashMap<TopicPartition, i64>>,
    /// Consumer lag per partition (the monitor's `consumer_lag_messages`).
    lag_gauges: Family<Labels, Gauge>,
}

impl ClientContext for MonitorContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // Messages not yet handed to us: from our read position
                // (the committed offset lags on purpose, see offsets.rs).
                let position = [p.app_offset, p.committed_offset, p.lo_offset]
                    .into_iter()
                    .find(|&o| o >= 0);
                let (Some(position), true) = (position, partition >= 0 && p.hi_offset >= 0) else {
                    continue;
                };
                let lag = (p.hi_offset - position).max(0);
                self.lag
                    .lock()
                    .expect("lag lock")
                    .insert((topic.clone(), partition), lag);
                let labels: Labels = vec![
                    ("topic".into(), topic.clone()),
                    ("partition".into(), partition.to_string()),
                ];
                self.lag_gauges.get_or_create(&labels).set(lag);
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for MonitorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Hand over cleanly: the next owner resumes from what is safe.
            if let Some(safe) = self.safe.lock().expect("safe lock").take()
                && safe.count() > 0
                && let Err(e) = consumer.commit(&safe, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "commit on revoke failed; the next owner re-reads more");
            }
            tracing::info!(partitions = ?partitions(tpl), "partitions revoked");
            self.events
                .lock()
                .expect("events lock")
                .push(Assignment::Revoked(partitions(tpl)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?partitions(tpl), "partitions assigned");
                // Lag seen before the rebalance says nothing about now.
                self.lag.lock().expect("lag lock").clear();
                self.events
                    .lock()
                    .expect("events lock")
                    .push(Assignment::Assigned(partitions(tpl)));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
    }
}

/// The consumer of the monitored topics.
pub type MonitorConsumer = BaseConsumer<MonitorContext>;

/// Create the group consumer and subscribe to `topics`. Offsets are
/// committed only by [`commit`]: auto commit and auto offset store are off.
/// The lag per partition is set on `lag_gauges` from librdkafka's
/// statistics.
pub fn consumer(
    config: &KafkaConfig,
    topics: &[&str],
    lag_gauges: Family<Labels, Gauge>,
) -> anyhow::Result<MonitorConsumer> {
    let c = config.consumer_config(
        &config.group_id,
        &[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // Lag (for /metrics and for telling idle partitions from lagging ones).
            ("statistics.interval.ms", "1000"),
            // A full prefetch queue (queued.max.messages.kbytes, 64 MiB: some
            // 130k events) postpones the next fetch by this; librdkafka's
            // 1000 ms let a monitor that drains faster than that starve
            // (a catch-up ran at 160k events/s, half idle).
            ("fetch.queue.backoff.ms", "100"),
        ],
    )?;
    let context = MonitorContext {
        events: Mutex::new(Vec::new()),
        safe: Mutex::new(None),
        lag: Mutex::new(HashMap::new()),
        lag_gauges,
    };
    let consumer: MonitorConsumer = c.create_with_context(context)?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// Metadata stored with each committed offset: the acknowledged watermark,
/// so a later owner skips windows already written.
pub fn offset_metadata(acked_watermark: i64) -> String {
    format!("infermon:acked_watermark={acked_watermark}")
}

/// The acknowledged watermark in a committed offset's metadata.
pub fn parse_offset_metadata(metadata: &str) -> Option<i64> {
    metadata
        .strip_prefix("infermon:acked_watermark=")?
        .parse()
        .ok()
}

/// The offsets to commit, each with its partition's acknowledged
/// watermark as metadata.
pub fn commit_list(offsets: &[(TopicPartition, i64, i64)]) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset, _) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    for (mut e, (_, _, watermark)) in tpl.elements().into_iter().zip(offsets) {
        e.set_metadata(offset_metadata(*watermark));
    }
    Ok(tpl)
}

/// Where each of `assigned` was left: the acknowledged watermark from its
/// committed offset's metadata (`None` if never committed by us).
pub fn committed_floors(
    consumer: &MonitorConsumer,
    assigned: &[TopicPartition],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<TopicPartition, Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in assigned {
        tpl.add_partition(t, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let floor = match e.offset() {
                Offset::Offset(_) => parse_offset_metadata(e.metadata()),
                _ => None,
            };
            ((e.topic().to_string(), e.partition()), floor)
        })
        .collect())
}

/// Producer callbacks counting what the broker acknowledged and what it
/// refused after librdkafka's retries (each refusal logged): how every
/// producer here (replay, DLQ, worker) learns that a message was lost.
#[derive(Debug, Default)]
pub struct DeliveryCounter {
    /// Messages the broker acknowledged.
    pub delivered: AtomicU64,
    /// Messages it refused for good.
    pub failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, m)) => {
                tracing::error!(error = %e, topic = m.topic(), "message not delivered to Kafka");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A message as read, detached from the consumer (handed to the decode
/// thread, and to the DLQ as it came).
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value (empty when null).
    pub payload: Vec<u8>,
}

impl RawMessage {
    /// Copy a consumed message.
    pub fn of(msg: &BorrowedMessage<'_>) -> Self {
        Self {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().unwrap_or_default().to_vec(),
        }
    }
}

/// Messages as read, copied out of librdkafka into one buffer (handed to
/// the decode thread): a batch costs a few allocations, not three per
/// message. A rejected message becomes a [`RawMessage`] for the DLQ.
#[derive(Debug, Default)]
pub struct RawBatch {
    /// Keys and values, back to back.
    bytes: Vec<u8>,
    /// The batch's topics (a handful) with their message counts: messages
    /// refer to them by index.
    topics: Vec<(String, u64)>,
    messages: Vec<RawMeta>,
}

#[derive(Debug)]
struct RawMeta {
    topic: usize,
    partition: i32,
    offset: i64,
    /// `bytes[key.0..key.1]`, if the message has a key.
    key: Option<(usize, usize)>,
    /// `bytes[payload.0..payload.1]` (empty when null).
    payload: (usize, usize),
}

/// One message of a [`RawBatch`].
#[derive(Debug, Clone, Copy)]
pub struct RawRef<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Its index in [`RawBatch::topics`].
    pub topic_index: usize,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value (empty when null).
    pub payload: &'a [u8],
}

impl RawBatch {
    /// Copy a consumed message in.
    pub fn push(&mut self, msg: &BorrowedMessage<'_>) {
        let topic = match self.topics.iter().position(|(t, _)| t == msg.topic()) {
            Some(i) => i,
            None => {
                self.topics.push((msg.topic().to_string(), 0));
                self.topics.len() - 1
            }
        };
        self.topics[topic].1 += 1;
        let mut copy = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            (start, self.bytes.len())
        };
        let key = msg.key().map(&mut copy);
        let payload = copy(msg.payload().unwrap_or_default());
        self.messages.push(RawMeta {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            key,
            payload,
        });
    }

    /// Messages in the batch.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when nothing was read.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The topics read, in order of first appearance, with their message
    /// counts.
    pub fn topics(&self) -> &[(String, u64)] {
        &self.topics
    }

    /// Forget everything read (keeps the buffers).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.topics.clear();
        self.messages.clear();
    }

    /// The messages in the order read.
    pub fn iter(&self) -> impl Iterator<Item = RawRef<'_>> {
        self.messages.iter().map(|m| RawRef {
            topic: &self.topics[m.topic].0,
            topic_index: m.topic,
            partition: m.partition,
            offset: m.offset,
            key: m.key.map(|(a, b)| &self.bytes[a..b]),
            payload: &self.bytes[m.payload.0..m.payload.1],
        })
    }
}

impl RawRef<'_> {
    /// The message on its own (for the DLQ).
    pub fn to_message(&self) -> RawMessage {
        RawMessage {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.map(<[u8]>::to_vec),
            payload: self.payload.to_vec(),
        }
    }
}

/// Hand `record` to the producer, waiting while its local queue is full (a
/// burst: librdkafka drains it as the broker acknowledges) instead of
/// failing; any other error is returned. Nothing is dropped, so the
/// at-least-once rules hold.
pub fn produce<C: ProducerContext<DeliveryOpaque = ()> + 'static>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    let mut waited = Duration::ZERO;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                if waited.is_zero() || waited.as_secs() >= 10 {
                    tracing::warn!(
                        topic = r.topic,
                        "producer queue full: waiting for the broker"
                    );
                    waited = Duration::from_millis(1);
                }
                record = r;
                std::thread::sleep(Duration::from_millis(5));
                waited += Duration::from_millis(5);
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Messages that are not events go here, with why and where from.
pub struct Dlq {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    /// Failures already reported by [`Dlq::flush`].
    reported: u64,
}

impl Dlq {
    /// A producer to `topic`.
    pub fn new(config: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        let producer = config
            .producer_config()?
            .set("enable.idempotence", "true")
            .set("compression.type", "zstd")
            .set("linger.ms", "20")
            .create_with_context(DeliveryCounter::default())?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            reported: 0,
        })
    }

    /// Send the original bytes and key of `msg` with the contract's headers.
    pub fn send(&self, msg: &RawMessage, reason: &str) -> anyhow::Result<()> {
        let partition = msg.partition.to_string();
        let offset = msg.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "infermon-error",
                value: Some(reason),
            })
            .insert(Header {
                key: "infermon-source-topic",
                value: Some(msg.topic.as_str()),
            })
            .insert(Header {
                key: "infermon-source-partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "infermon-source-offset",
                value: Some(&offset),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .payload(msg.payload.as_slice())
            .headers(headers);
        if let Some(key) = &msg.key {
            record = record.key(key.as_slice());
        }
        produce(&self.producer, record)
            .map_err(|e| anyhow::anyhow!("DLQ produce to {}: {e}", self.topic))
    }

    /// Wait until everything sent is acknowledged (before committing past
    /// the messages it came from). An error when a message was refused: the
    /// caller must not commit past it.
    pub fn flush(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| anyhow::anyhow!("DLQ flush: {e}"))?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > self.reported {
            self.reported = failed;
            anyhow::bail!("{failed} DLQ messages refused by the broker so far");
        }
        Ok(())
    }

    /// DLQ messages the broker refused so far.
    pub fn failed(&self) -> u64 {
        self.producer.context().failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_get_the_shared_properties_but_not_the_consumer_ones() {
        let mut k = KafkaConfig::default();
        k.properties
            .insert("session.timeout.ms".into(), "6000".into());
        k.properties.insert("sasl.username".into(), "u".into());
        let p = k.producer_config().unwrap();
        assert_eq!(p.get("session.timeout.ms"), None);
        assert_eq!(p.get("sasl.username"), Some("u"));
        assert_eq!(
            k.consumer_config("g", &[])
                .unwrap()
                .get("session.timeout.ms"),
            Some("6000")
        );
    }

    #[test]
    fn offset_metadata_round_trips() {
        assert_eq!(
            parse_offset_metadata(&offset_metadata(1_763_645_760_000)),
            Some(1_763_645_760_000)
        );
        assert_eq!(
            parse_offset_metadata(&offset_metadata(i64::MIN)),
            Some(i64::MIN)
        );
        assert_eq!(parse_offset_metadata(""), None);
        assert_eq!(parse_offset_metadata("someone else's"), None);
    }
}
