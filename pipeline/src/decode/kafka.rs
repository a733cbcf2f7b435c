//! Kafka messages → events, on a thread of its own: the monitor loop polls
//! Kafka and runs the window engine while the previous batch of messages is
//! decoded here, as the offline replay decodes on a reader thread. Event
//! times are checked per partition against the wall clock.
//!
//! Batches carry the generation of the window state they were read for; the
//! loop drops results of an earlier generation (read before a rebalance).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use infermon_operators::event_time::REASON_CODE as EVENT_TIME;
use infermon_operators::{Check, EventTimeGuard, WindowSpec};
use infermon_schemas::{TopicKind, TopicNames, decode};

use super::{Events, EventsBuilder};

use crate::sources::kafka::{RawBatch, RawMessage};
use crate::sources::offsets::TopicPartition;
use crate::telemetry::now_ms;

/// What the decoder needs to know of the config.
#[derive(Debug, Clone)]
pub struct DecodeSettings {
    /// Topic names (the event kind of each topic).
    pub topics: TopicNames,
    /// Segment keys of the prediction schema.
    pub segment_keys: Vec<String>,
    /// Larger values are rejected.
    pub max_event_bytes: usize,
    /// Window geometry, for when a message is no longer needed.
    pub spec: WindowSpec,
    /// Label wait, ms.
    pub label_wait_ms: i64,
    /// Event-time plausibility, copied for each partition.
    pub event_time: EventTimeGuard,
}

impl DecodeSettings {
    /// The watermark at which an event's last contribution is written: its
    /// last window's end, plus the label wait for predictions and feedback.
    pub fn release_at(&self, kind: TopicKind, ts: i64) -> i64 {
        let last_end = self.spec.starts(ts).last().map_or(ts, |s| self.spec.end(s));
        match kind {
            TopicKind::Training => last_end,
            _ => last_end + self.label_wait_ms,
        }
    }
}

/// A message that is not an event, with why (for the DLQ).
#[derive(Debug)]
pub struct Rejected {
    /// The message as read.
    pub raw: RawMessage,
    /// Low-cardinality reason for counters.
    pub code: &'static str,
    /// One-line reason naming the field (the `infermon-error` header).
    pub reason: String,
}

/// The decoded events of one partition in one batch.
#[derive(Debug)]
pub struct PartitionEvents {
    /// The accepted events.
    pub events: Events,
    /// Every message read: offset and the watermark at which it is released
    /// (`None` for rejected messages).
    pub reads: Vec<(i64, Option<i64>)>,
}

/// Offsets read, each with the watermark that releases it.
type Reads = Vec<(i64, Option<i64>)>;

/// One decoded batch.
#[derive(Debug, Default)]
pub struct DecodedBatch {
    /// Window-state generation the messages were read for.
    pub generation: u64,
    /// Per partition, in order of first appearance.
    pub partitions: Vec<(TopicPartition, PartitionEvents)>,
    /// Messages for the DLQ.
    pub rejected: Vec<Rejected>,
    /// Messages per topic.
    pub consumed: BTreeMap<String, u64>,
    /// The messages' buffer, emptied: the next poll reads into it (a fresh
    /// one per batch cost page faults and zeroing).
    pub spent: RawBatch,
}

/// The decode thread and its two channels.
pub struct Decoder {
    tx: SyncSender<(u64, RawBatch)>,
    rx: Receiver<DecodedBatch>,
    in_flight: usize,
}

impl Decoder {
    /// Start the thread.
    pub fn start(settings: DecodeSettings) -> std::io::Result<Self> {
        let (tx, jobs) = sync_channel::<(u64, RawBatch)>(2);
        let (done, rx) = sync_channel(2);
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || {
                let mut guards = Guards::new();
                let mut current = None;
                for (generation, raw) in jobs {
                    // A rebalance starts the partitions' progress afresh: a
                    // partition may come back after hours elsewhere.
                    if current.replace(generation) != Some(generation) {
                        guards.clear();
                    }
                    let batch = decode_batch(&settings, &mut guards, generation, raw);
                    if done.send(batch).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            tx,
            rx,
            in_flight: 0,
        })
    }

    /// Hand over a batch (blocks while two are queued).
    pub fn send(&mut self, generation: u64, raw: RawBatch) -> anyhow::Result<()> {
        self.tx
            .send((generation, raw))
            .map_err(|_| anyhow::anyhow!("the decode thread stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// The next decoded batch: waits when more than `keep` are in flight,
    /// else returns one only if ready.
    pub fn next(&mut self, keep: usize) -> anyhow::Result<Option<DecodedBatch>> {
        if self.in_flight == 0 {
            return Ok(None);
        }
        let got = if self.in_flight > keep {
            Some(
                self.rx
                    .recv()
                    .map_err(|_| anyhow::anyhow!("the decode thread stopped"))?,
            )
        } else {
            match self.rx.try_recv() {
                Ok(b) => Some(b),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    anyhow::bail!("the decode thread stopped")
                }
            }
        };
        if got.is_some() {
            self.in_flight -= 1;
        }
        Ok(got)
    }
}

/// Event-time guards per partition (they outlive batches and rebalances:
/// a partition's progress is a fact of its data).
/// A handful per monitor: a scan, no key allocated per message.
type Guards = Vec<(TopicPartition, EventTimeGuard)>;

fn decode_batch(
    s: &DecodeSettings,
    guards: &mut Guards,
    generation: u64,
    mut raw: RawBatch,
) -> DecodedBatch {
    let wall_now = now_ms();
    let mut out = DecodedBatch {
        generation,
        ..DecodedBatch::default()
    };
    let mut partitions: Vec<TopicPartition> = Vec::new();
    // Events per partition, aligned with `out.partitions`.
    let mut builders: Vec<(EventsBuilder, Reads)> = Vec::new();
    // Per topic of the batch, not per message.
    out.consumed = raw.topics().iter().cloned().collect();
    let kinds: Vec<TopicKind> = (raw.topics().iter())
        .map(|(t, _)| s.topics.kind_of(t).unwrap_or(TopicKind::Predictions))
        .collect();
    for m in raw.iter() {
        let kind = kinds[m.topic_index];
        let decoded = if m.payload.is_empty() {
            Err((
                "empty",
                "empty message value: expected a JSON event".to_string(),
            ))
        } else if m.payload.len() > s.max_event_bytes {
            Err((
                "too_large",
                format!(
                    "value of {} bytes exceeds max_event_bytes = {}",
                    m.payload.len(),
                    s.max_event_bytes
                ),
            ))
        } else {
            decode(kind, m.payload)
                .map_err(|e| (e.reason(), e.to_string()))
                .and_then(|event| {
                    let i = match guards
                        .iter()
                        .position(|((t, p), _)| *p == m.partition && *t == m.topic)
                    {
                        Some(i) => i,
                        None => {
                            let fresh = s.event_time.clone();
                            guards.push(((m.topic.to_string(), m.partition), fresh));
                            guards.len() - 1
                        }
                    };
                    let guard = &mut guards[i].1;
                    // Live, nothing is held: `check` never says Ahead here.
                    match guard.check(event.ts(), Some(wall_now)) {
                        Check::Reject(reason) => Err((EVENT_TIME, reason)),
                        Check::Accept | Check::Ahead => Ok(event),
                    }
                })
        };
        // A batch holds a handful of partitions: a scan, no key allocated
        // per message.
        let slot = match partitions
            .iter()
            .position(|(t, p)| *p == m.partition && *t == m.topic)
        {
            Some(i) => i,
            None => {
                partitions.push((m.topic.to_string(), m.partition));
                builders.push((EventsBuilder::new(&s.segment_keys), Vec::new()));
                partitions.len() - 1
            }
        };
        let (events, reads) = &mut builders[slot];
        let event = match decoded {
            Ok(e) => e,
            Err((code, reason)) => {
                reads.push((m.offset, None));
                out.rejected.push(Rejected {
                    raw: m.to_message(),
                    code,
                    reason,
                });
                continue;
            }
        };
        reads.push((m.offset, Some(s.release_at(kind, event.ts()))));
        events.add(event);
    }
    raw.clear();
    out.spent = raw;
    out.partitions = partitions
        .into_iter()
        .zip(builders)
        .map(|(tp, (mut events, reads))| {
            let events = events.finish();
            (tp, PartitionEvents { events, reads })
        })
        .collect();
    out
}
