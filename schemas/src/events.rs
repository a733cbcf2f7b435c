//! The v1 events as plain Rust values, already validated.
//!
//! Decoding lives in [`crate::decode`]; these types only serialize, so the
//! generator and workers write exactly what the contract says.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;

/// A model input value: the contract allows numbers, strings or null.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Feature {
    /// A numeric feature (price, click-through rate, ...).
    Number(f64),
    /// A categorical feature (category, country, ...).
    Category(String),
    /// Explicitly missing; counted by the null-rate drift statistic.
    Null,
}

/// A [`Feature`] as decoded, its text borrowed from the message when it
/// holds no escapes.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureRef<'a> {
    /// A numeric feature.
    Number(f64),
    /// A categorical feature.
    Category(Cow<'a, str>),
    /// Explicitly missing.
    Null,
}

impl FeatureRef<'_> {
    /// The owned value.
    pub fn into_owned(self) -> Feature {
        match self {
            FeatureRef::Number(v) => Feature::Number(v),
            FeatureRef::Category(c) => Feature::Category(c.into_owned()),
            FeatureRef::Null => Feature::Null,
        }
    }
}

impl Feature {
    /// The value as a [`FeatureRef`] borrowing this one.
    pub fn borrowed(&self) -> FeatureRef<'_> {
        match self {
            Feature::Number(v) => FeatureRef::Number(*v),
            Feature::Category(c) => FeatureRef::Category(Cow::Borrowed(c)),
            Feature::Null => FeatureRef::Null,
        }
    }
}

/// Whether the model produced a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The model answered.
    Ok,
    /// Bad input, session failure or timeout; counted in the error rate.
    Error,
}

impl Status {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// Per-stage wall time of one request, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Time waiting in the dynamic batcher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<f64>,
    /// Feature mapping / tokenisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<f64>,
    /// The model run itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference: Option<f64>,
    /// Turning outputs into a score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postprocess: Option<f64>,
    /// End to end; the one stage every producer must report.
    pub total: f64,
}

impl PredictionEvent {
    /// Append this event's JSON to `buf`. Not generic on purpose: the
    /// serializer is compiled here, in an optimised crate, for the
    /// worker's per-request hot path.
    pub fn write_json(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(buf, self)
    }
}

/// A scoring request from an e-commerce service (topic `inference.requests`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestEvent {
    /// Joins request, prediction and feedback.
    pub request_id: String,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// Which model should score it.
    pub model: String,
    /// Slicing dimensions (site, surface, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub segment: BTreeMap<String, String>,
    /// Model inputs by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, Feature>,
    /// Query text, for text models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One model answer with its timings (topic `inference.predictions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionEvent {
    /// The request this answers.
    pub request_id: String,
    /// The request's event time, ms since the Unix epoch.
    pub ts: i64,
    /// Model name.
    pub model: String,
    /// Deployed version; latency and drift are compared across versions.
    pub model_version: String,
    /// Which worker served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// `cpu` or `cuda:N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Ok or error.
    pub status: Status,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Size of the batch the request ran in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Per-stage wall time.
    pub timings_ms: Timings,
    /// The model's primary scalar output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Inputs as the model saw them (possibly sampled).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, Feature>,
    /// Slicing dimensions.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub segment: BTreeMap<String, String>,
    /// Where the prediction was shown in a ranked list (search results, a
    /// feed slate), when it was (contract extension: `list_id`, `item_id`,
    /// `position` at the top level of the prediction).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<Box<RankedItem>>,
}

/// A [`PredictionEvent`] as decoded: the same fields, its text borrowed
/// from the message where it holds no escapes, and its maps as vectors
/// sorted by key with one entry per key (the last one sent, as the
/// `BTreeMap`s of the owned event keep). The monitor decodes into this and
/// appends it to the Arrow builders, so no `String` or map is built per
/// message.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRef<'a> {
    /// The request this answers.
    pub request_id: Cow<'a, str>,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// Model name.
    pub model: Cow<'a, str>,
    /// Deployed version.
    pub model_version: Cow<'a, str>,
    /// Which worker served it.
    pub worker: Option<Cow<'a, str>>,
    /// `cpu` or `cuda:N`.
    pub device: Option<Cow<'a, str>>,
    /// Ok or error.
    pub status: Status,
    /// Why it failed, when it did.
    pub error: Option<Cow<'a, str>>,
    /// Size of the batch the request ran in.
    pub batch_size: Option<u32>,
    /// Per-stage wall time.
    pub timings_ms: Timings,
    /// The model's primary scalar output.
    pub score: Option<f64>,
    /// Inputs by name, sorted by name, one per name.
    pub features: Vec<(Cow<'a, str>, FeatureRef<'a>)>,
    /// Slicing dimensions, sorted by key, one per key.
    pub segment: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Its place in a ranked list: list id, item id, position (1 = top).
    pub ranking: Option<(Cow<'a, str>, Option<Cow<'a, str>>, u32)>,
}

impl PredictionRef<'_> {
    /// The owned event.
    pub fn into_owned(self) -> PredictionEvent {
        PredictionEvent {
            request_id: self.request_id.into_owned(),
            ts: self.ts,
            model: self.model.into_owned(),
            model_version: self.model_version.into_owned(),
            worker: self.worker.map(Cow::into_owned),
            device: self.device.map(Cow::into_owned),
            status: self.status,
            error: self.error.map(Cow::into_owned),
            batch_size: self.batch_size,
            timings_ms: self.timings_ms,
            score: self.score,
            features: owned_features(self.features),
            segment: owned_segment(self.segment),
            ranking: self.ranking.map(|(list_id, item_id, position)| {
                Box::new(RankedItem {
                    list_id: list_id.into_owned(),
                    item_id: item_id.map(Cow::into_owned),
                    position,
                })
            }),
        }
    }
}

/// Decoded features as the owned events keep them.
pub(crate) fn owned_features(v: Vec<(Cow<'_, str>, FeatureRef<'_>)>) -> BTreeMap<String, Feature> {
    v.into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Decoded segment values as the owned events keep them.
pub(crate) fn owned_segment(v: Vec<(Cow<'_, str>, Cow<'_, str>)>) -> BTreeMap<String, String> {
    v.into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl From<PredictionEvent> for PredictionRef<'static> {
    fn from(e: PredictionEvent) -> Self {
        PredictionRef {
            request_id: Cow::Owned(e.request_id),
            ts: e.ts,
            model: Cow::Owned(e.model),
            model_version: Cow::Owned(e.model_version),
            worker: e.worker.map(Cow::Owned),
            device: e.device.map(Cow::Owned),
            status: e.status,
            error: e.error.map(Cow::Owned),
            batch_size: e.batch_size,
            timings_ms: e.timings_ms,
            score: e.score,
            features: (e.features.into_iter())
                .map(|(k, v)| {
                    let v = match v {
                        Feature::Number(x) => FeatureRef::Number(x),
                        Feature::Category(c) => FeatureRef::Category(Cow::Owned(c)),
                        Feature::Null => FeatureRef::Null,
                    };
                    (Cow::Owned(k), v)
                })
                .collect(),
            segment: (e.segment.into_iter())
                .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)))
                .collect(),
            ranking: e.ranking.map(|r| {
                let r = *r;
                (Cow::Owned(r.list_id), r.item_id.map(Cow::Owned), r.position)
            }),
        }
    }
}

impl PredictionEvent {
    /// The event as a [`PredictionRef`] borrowing this one.
    pub fn borrowed(&self) -> PredictionRef<'_> {
        fn text(s: &Option<String>) -> Option<Cow<'_, str>> {
            s.as_deref().map(Cow::Borrowed)
        }
        PredictionRef {
            request_id: Cow::Borrowed(&self.request_id),
            ts: self.ts,
            model: Cow::Borrowed(&self.model),
            model_version: Cow::Borrowed(&self.model_version),
            worker: text(&self.worker),
            device: text(&self.device),
            status: self.status,
            error: text(&self.error),
            batch_size: self.batch_size,
            timings_ms: self.timings_ms,
            score: self.score,
            features: (self.features.iter())
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), v.borrowed()))
                .collect(),
            segment: (self.segment.iter())
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                .collect(),
            ranking: self.ranking.as_ref().map(|r| {
                (
                    Cow::Borrowed(r.list_id.as_str()),
                    r.item_id.as_deref().map(Cow::Borrowed),
                    r.position,
                )
            }),
        }
    }
}

/// One item of a ranked list: the list it was shown in, the item, and its
/// position. Ranking quality (NDCG@k, MRR, HitRate@k) is judged per list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankedItem {
    /// The list (query, slate) the item was shown in; every item of one
    /// list carries the same id.
    pub list_id: String,
    /// The item; feedback naming it (`item_id`) labels this prediction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// Position shown, 1 = top.
    pub position: u32,
}

/// A user's reaction to a prediction (topic `inference.feedback`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackEvent {
    /// The prediction's request.
    pub request_id: String,
    /// When the feedback happened, ms since the Unix epoch.
    pub ts: i64,
    /// click, purchase, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// 1 = positive, 0 = negative.
    pub label: u8,
    /// The item of a ranked list the feedback is about (contract extension):
    /// it labels the prediction with the same `request_id` and `item_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
}

/// One optimiser step of a training run (topic `training.telemetry`).
///
/// Non-finite `grad_norm` / `loss` (sent as `null`, `"NaN"` or `"Infinity"`)
/// are kept as `f64::NAN` / infinities so the anomaly detector sees them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingEvent {
    /// Training run id.
    pub run_id: String,
    /// Model being trained.
    pub model: String,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// Optimiser step.
    pub step: u64,
    /// Training loss, if reported (may be non-finite).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_lenient"
    )]
    pub loss: Option<f64>,
    /// Global gradient norm (may be non-finite).
    #[serde(serialize_with = "serialize_lenient_required")]
    pub grad_norm: f64,
    /// Learning rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Per-layer gradient norms.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub layer_grad_norms: BTreeMap<String, f64>,
    /// NaN/Inf gradient values in this step.
    pub nonfinite: u64,
}

/// JSON has no NaN: write non-finite floats as the strings the contract allows.
fn serialize_lenient_required<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_str("NaN")
    } else if v.is_infinite() {
        s.serialize_str(if *v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*v)
    }
}

fn serialize_lenient<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => serialize_lenient_required(v, s),
        None => s.serialize_none(),
    }
}
