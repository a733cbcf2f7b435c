//! Which kind of event a topic carries, and the default topic names.

use serde::{Deserialize, Serialize};

/// The kinds of event infermon understands; each topic carries exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    /// Scoring requests from the e-commerce services.
    Requests,
    /// Predictions with per-stage timings, from inference workers.
    Predictions,
    /// Clicks and purchases, joined to predictions by `request_id`.
    Feedback,
    /// Gradient telemetry of training runs.
    Training,
}

impl TopicKind {
    /// All kinds, in a stable order (for reports and tests).
    pub const ALL: [TopicKind; 4] = [
        TopicKind::Requests,
        TopicKind::Predictions,
        TopicKind::Feedback,
        TopicKind::Training,
    ];

    /// A short name for logs and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Requests => "requests",
            TopicKind::Predictions => "predictions",
            TopicKind::Feedback => "feedback",
            TopicKind::Training => "training",
        }
    }
}

/// Topic names, configurable because every Kafka shop has its own naming rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    /// Topic of `RequestEvent`s.
    pub requests: String,
    /// Topic of `PredictionEvent`s.
    pub predictions: String,
    /// Topic of `FeedbackEvent`s.
    pub feedback: String,
    /// Topic of `TrainingEvent`s.
    pub training: String,
    /// Where infermon puts messages it cannot decode.
    pub dlq: String,
    /// Commands to every inference worker (rollbacks), keyed by model.
    pub control: String,
    /// The scale-out's internal topic: partial monitors publish each
    /// source partition's closed windows and watermarks here; the merge
    /// stage reads them.
    pub partials: String,
    /// The key predictions are produced with (workers, `replay
    /// --to-kafka`).
    pub prediction_key: PredictionKey,
}

/// The key of a prediction message, which decides its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionKey {
    /// By model: a model's stream is one partition (ordered, one monitor
    /// holds all of it).
    #[default]
    Model,
    /// By request id, like feedback: with the same partition count,
    /// predictions and their labels are co-partitioned, so one model
    /// spreads over partitions and partial monitors (the scale-out).
    RequestId,
}

impl PredictionKey {
    /// The event field whose value is the key.
    pub fn field(self) -> &'static str {
        match self {
            PredictionKey::Model => "model",
            PredictionKey::RequestId => "request_id",
        }
    }
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            requests: "inference.requests".into(),
            predictions: "inference.predictions".into(),
            feedback: "inference.feedback".into(),
            training: "training.telemetry".into(),
            dlq: "infermon.dlq".into(),
            control: "infermon.control".into(),
            partials: "infermon.partials".into(),
            prediction_key: PredictionKey::Model,
        }
    }
}

impl TopicNames {
    /// The kind of event a topic carries, or `None` for a topic we do not read.
    pub fn kind_of(&self, topic: &str) -> Option<TopicKind> {
        if topic == self.predictions {
            Some(TopicKind::Predictions)
        } else if topic == self.feedback {
            Some(TopicKind::Feedback)
        } else if topic == self.training {
            Some(TopicKind::Training)
        } else if topic == self.requests {
            Some(TopicKind::Requests)
        } else {
            None
        }
    }

    /// The topic name for a kind.
    pub fn name_of(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Requests => &self.requests,
            TopicKind::Predictions => &self.predictions,
            TopicKind::Feedback => &self.feedback,
            TopicKind::Training => &self.training,
        }
    }
}
