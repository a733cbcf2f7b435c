//! The decode stage: bytes → validated events → Arrow batches, the same
//! for Kafka messages ([`kafka`], on a thread beside the monitor loop) and
//! recorded lines ([`file`], on a thread per file). Both decode with the
//! contract's decoder (`infermon_schemas`), check event times with the
//! operators' `EventTimeGuard`, collect events in an [`EventsBuilder`], and
//! hand on what failed with a reason naming the field (DLQ / rejects file).

pub mod file;
pub mod kafka;

use arrow::array::RecordBatch;
use infermon_schemas::{EventRef, FeedbackEvent, PredictionBatchBuilder, TopicKind, TrainingEvent};

/// Decoded events of one input (a file's batch, a partition's share of a
/// poll), by kind, in arrival order.
#[derive(Debug)]
pub struct Events {
    /// Predictions as an Arrow batch (possibly empty).
    pub predictions: RecordBatch,
    /// Feedback labels, for the quality join.
    pub feedback: Vec<FeedbackEvent>,
    /// Training telemetry steps.
    pub training: Vec<TrainingEvent>,
    /// Events per topic kind, in [`TopicKind::ALL`] order.
    pub counts: [u64; 4],
    /// Smallest and largest event time, ms.
    pub ts_range: Option<(i64, i64)>,
}

/// Collects decoded events into [`Events`].
pub struct EventsBuilder {
    predictions: PredictionBatchBuilder,
    feedback: Vec<FeedbackEvent>,
    training: Vec<TrainingEvent>,
    counts: [u64; 4],
    ts_range: Option<(i64, i64)>,
}

impl EventsBuilder {
    /// For predictions carrying these segment keys.
    pub fn new(segment_keys: &[String]) -> Self {
        Self {
            predictions: PredictionBatchBuilder::new(segment_keys),
            feedback: Vec::new(),
            training: Vec::new(),
            counts: [0; 4],
            ts_range: None,
        }
    }

    /// An accepted event.
    pub fn add(&mut self, event: EventRef<'_>) {
        let ts = event.ts();
        self.ts_range = Some(match self.ts_range {
            None => (ts, ts),
            Some((lo, hi)) => (lo.min(ts), hi.max(ts)),
        });
        let kind = event.kind();
        self.counts[TopicKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)] += 1;
        match event {
            EventRef::Prediction(p) => self.predictions.push_ref(&p),
            EventRef::Feedback(f) => self.feedback.push(f),
            EventRef::Training(t) => self.training.push(t),
            EventRef::Request(_) => {}
        }
    }

    /// The events so far; the builder starts empty again.
    pub fn finish(&mut self) -> Events {
        Events {
            predictions: self.predictions.finish(),
            feedback: std::mem::take(&mut self.feedback),
            training: std::mem::take(&mut self.training),
            counts: std::mem::take(&mut self.counts),
            ts_range: self.ts_range.take(),
        }
    }
}
