//! JSON bytes → validated events, with errors that name the field.
//!
//! One lenient-by-type, strict-by-rule pass: every message is parsed into
//! [`AnyEvent`] (all fields of all v1 events, all optional), then the fields
//! its topic requires are checked. Parsing stays on serde's fast derive path;
//! only a message that fails is parsed a second time through
//! `serde_path_to_error` to learn *where* it failed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::events::{
    FeatureRef, FeedbackEvent, PredictionEvent, PredictionRef, RequestEvent, Status, Timings,
    TrainingEvent, owned_features, owned_segment,
};
use crate::topics::{TopicKind, TopicNames};

/// Why a message was rejected. The `Display` text is the one-line reason
/// that goes into the DLQ header or the rejects file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Zero bytes (or only whitespace).
    #[error("empty message")]
    Empty,
    /// Not parseable as JSON at all.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// Valid JSON, but the top level is not an object.
    #[error("expected a JSON object, got {0}")]
    NotAnObject(String),
    /// A field has the wrong type or an impossible value.
    #[error("{path}: {message}")]
    Field {
        /// Dotted path of the field, e.g. `timings_ms.total`.
        path: String,
        /// What is wrong, e.g. `expected number, got "abc"`.
        message: String,
    },
    /// A field the contract requires is absent (or null).
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A recorded line without a `topic`, or with one we do not read.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
}

impl DecodeError {
    /// A stable, low-cardinality label for counters (`reason="wrong_type"`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::NotAnObject(_) => "not_an_object",
            DecodeError::Field { .. } => "invalid_field",
            DecodeError::Missing(_) => "missing_field",
            DecodeError::UnknownTopic(_) => "unknown_topic",
        }
    }
}

/// A successfully decoded event of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// From the requests topic.
    Request(RequestEvent),
    /// From the predictions topic.
    Prediction(PredictionEvent),
    /// From the feedback topic.
    Feedback(FeedbackEvent),
    /// From the training telemetry topic.
    Training(TrainingEvent),
}

impl Decoded {
    /// Event time in ms since the Unix epoch.
    pub fn ts(&self) -> i64 {
        match self {
            Decoded::Request(e) => e.ts,
            Decoded::Prediction(e) => e.ts,
            Decoded::Feedback(e) => e.ts,
            Decoded::Training(e) => e.ts,
        }
    }

    /// Which topic kind it came from.
    pub fn kind(&self) -> TopicKind {
        match self {
            Decoded::Request(_) => TopicKind::Requests,
            Decoded::Prediction(_) => TopicKind::Predictions,
            Decoded::Feedback(_) => TopicKind::Feedback,
            Decoded::Training(_) => TopicKind::Training,
        }
    }
}

/// A decoded event whose prediction borrows the message's text: what the
/// monitor and the replay append to their Arrow builders (see
/// [`PredictionRef`]). Other kinds are few and kept as they are.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "made and consumed once per message: boxing the prediction would put back an allocation per message"
)]
pub enum EventRef<'a> {
    /// From the requests topic.
    Request(RequestEvent),
    /// From the predictions topic.
    Prediction(PredictionRef<'a>),
    /// From the feedback topic.
    Feedback(FeedbackEvent),
    /// From the training telemetry topic.
    Training(TrainingEvent),
}

impl EventRef<'_> {
    /// Event time in ms since the Unix epoch.
    pub fn ts(&self) -> i64 {
        match self {
            EventRef::Request(e) => e.ts,
            EventRef::Prediction(e) => e.ts,
            EventRef::Feedback(e) => e.ts,
            EventRef::Training(e) => e.ts,
        }
    }

    /// Which topic kind it came from.
    pub fn kind(&self) -> TopicKind {
        match self {
            EventRef::Request(_) => TopicKind::Requests,
            EventRef::Prediction(_) => TopicKind::Predictions,
            EventRef::Feedback(_) => TopicKind::Feedback,
            EventRef::Training(_) => TopicKind::Training,
        }
    }

    /// The same event owning its text.
    fn into_static(self) -> EventRef<'static> {
        match self {
            EventRef::Request(e) => EventRef::Request(e),
            EventRef::Prediction(e) => EventRef::Prediction(e.into_owned().into()),
            EventRef::Feedback(e) => EventRef::Feedback(e),
            EventRef::Training(e) => EventRef::Training(e),
        }
    }

    /// The owned event.
    pub fn into_owned(self) -> Decoded {
        match self {
            EventRef::Request(e) => Decoded::Request(e),
            EventRef::Prediction(e) => Decoded::Prediction(e.into_owned()),
            EventRef::Feedback(e) => Decoded::Feedback(e),
            EventRef::Training(e) => Decoded::Training(e),
        }
    }
}

impl Decoded {
    /// The event as an [`EventRef`] borrowing this one.
    pub fn borrowed(&self) -> EventRef<'_> {
        match self {
            Decoded::Request(e) => EventRef::Request(e.clone()),
            Decoded::Prediction(e) => EventRef::Prediction(e.borrowed()),
            Decoded::Feedback(e) => EventRef::Feedback(e.clone()),
            Decoded::Training(e) => EventRef::Training(e.clone()),
        }
    }
}

/// Decode one message whose topic (and so event kind) is known, as from Kafka.
pub fn decode_event(kind: TopicKind, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    decode(kind, bytes).map(EventRef::into_owned)
}

/// Decode one line of a recorded traffic file, whose `topic` field says
/// which event it is.
pub fn decode_recorded_line(bytes: &[u8], topics: &TopicNames) -> Result<Decoded, DecodeError> {
    decode_recorded(bytes, topics).map(EventRef::into_owned)
}

/// [`decode_event`] without copying the prediction's text.
pub fn decode(kind: TopicKind, bytes: &[u8]) -> Result<EventRef<'_>, DecodeError> {
    parse(bytes, |_| Ok(kind))
}

/// [`decode_recorded_line`] without copying the prediction's text.
pub fn decode_recorded<'a>(
    bytes: &'a [u8],
    topics: &TopicNames,
) -> Result<EventRef<'a>, DecodeError> {
    parse(bytes, |raw| match raw.topic.as_deref() {
        None => Err(DecodeError::Missing("topic")),
        Some(t) => topics
            .kind_of(t)
            .ok_or_else(|| DecodeError::UnknownTopic(t.to_string())),
    })
}

/// Parse `bytes` and check the fields its kind (told by `kind_of`) requires.
fn parse(
    bytes: &[u8],
    kind_of: impl Fn(&AnyEvent<'_>) -> Result<TopicKind, DecodeError>,
) -> Result<EventRef<'_>, DecodeError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(DecodeError::Empty),
        // serde would accept a JSON array as a positional struct: refuse it here.
        Some(b) if *b != b'{' => {
            return Err(match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(v) => DecodeError::NotAnObject(shown(&v)),
                Err(e) => DecodeError::Json(e.to_string()),
            });
        }
        Some(_) => {}
    }
    // One check of the whole message is cheaper than serde_json's check of
    // each string; a message that fails it is parsed as bytes, which says
    // where.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<AnyEvent>(text),
        Err(_) => serde_json::from_slice::<AnyEvent>(bytes),
    };
    match parsed {
        Ok(raw) => {
            let kind = kind_of(&raw)?;
            raw.into_event(kind)
        }
        Err(_) => match quote_bare_tokens(bytes) {
            // Python's json.dumps (and some Java/JS writers) put NaN and
            // Infinity unquoted: read them as marked strings, which the
            // fields that allow non-finite values accept and the others
            // refuse by name.
            Some(quoted) => {
                let raw = serde_json::from_slice::<AnyEvent>(&quoted).map_err(|e| {
                    // A field error names the field; a syntax error is told
                    // on the bytes as they came.
                    if e.is_data() {
                        explain(&quoted)
                    } else {
                        explain(bytes)
                    }
                })?;
                // The quoted copy goes away: the event owns its text.
                let kind = kind_of(&raw)?;
                raw.into_event(kind).map(EventRef::into_static)
            }
            None => Err(explain(bytes)),
        },
    }
}

/// Marks a string that stood for a bare `NaN` / `Infinity` / `-Infinity`
/// token (a control character no real field value starts with).
const BARE: char = '\u{1}';

/// The token a marked string stood for, if it is one.
fn bare_token(s: &str) -> Option<&str> {
    s.strip_prefix(BARE)
}

/// `bytes` with every bare `NaN`, `Infinity` and `-Infinity` token in a
/// value position (after `:`, or in an array) turned into a [`BARE`]-marked
/// JSON string; `None` when there is none (the message is broken in some
/// other way). A token where a key belongs stays as it is: still not JSON.
fn quote_bare_tokens(bytes: &[u8]) -> Option<Vec<u8>> {
    const TOKENS: [&[u8]; 3] = [b"NaN", b"Infinity", b"-Infinity"];
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let (mut in_string, mut escaped, mut found) = (false, false, false);
    // Open containers (`{` / `[`) and the last byte outside strings and
    // whitespace: together they say whether a value may start here.
    let mut open: Vec<u8> = Vec::new();
    let mut prev = 0u8;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            out.push(b);
            i += 1;
            continue;
        }
        let value_position =
            prev == b':' || prev == b'[' || (prev == b',' && open.last() == Some(&b'['));
        if value_position && let Some(t) = TOKENS.iter().find(|t| bytes[i..].starts_with(t)) {
            out.extend_from_slice(b"\"\\u0001");
            out.extend_from_slice(t);
            out.push(b'"');
            i += t.len();
            found = true;
            prev = b'"';
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => open.push(b),
            b'}' | b']' => {
                open.pop();
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            prev = b;
        }
        out.push(b);
        i += 1;
    }
    found.then_some(out)
}

/// The slow path: parse again, tracking the path, to say what went wrong.
fn explain(bytes: &[u8]) -> DecodeError {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let err = match serde_path_to_error::deserialize::<_, AnyEvent>(de) {
        Ok(_) => return DecodeError::Json("inconsistent parse".into()),
        Err(e) => e,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = without_position(&inner);
    match inner.classify() {
        serde_json::error::Category::Data => match message.split_once(": ") {
            // Map visitors report "key: expected ..."; fold the key into the path.
            Some((key, rest)) if !key.contains(' ') && !key.is_empty() => DecodeError::Field {
                path: format!("{path}.{key}"),
                message: rest.to_string(),
            },
            _ => DecodeError::Field { path, message },
        },
        _ => DecodeError::Json(inner.to_string()),
    }
}

/// serde_json appends "at line 1 column 42"; for one-line messages the field
/// path is the useful locator, so drop it.
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Text as decoded: borrowed from the message unless it holds escapes.
type Text<'a> = Cow<'a, str>;

/// Every field of every v1 event, all optional. Unknown fields are ignored.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AnyEvent<'a> {
    #[serde(borrow, deserialize_with = "text")]
    topic: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "text")]
    request_id: Option<Text<'a>>,
    #[serde(deserialize_with = "millis")]
    ts: Option<i64>,
    #[serde(borrow, deserialize_with = "text")]
    model: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "text")]
    model_version: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "text")]
    worker: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "text")]
    device: Option<Text<'a>>,
    #[serde(deserialize_with = "status")]
    status: Option<Status>,
    #[serde(borrow, deserialize_with = "text")]
    error: Option<Text<'a>>,
    #[serde(deserialize_with = "unsigned")]
    batch_size: Option<u64>,
    timings_ms: Option<RawTimings>,
    #[serde(deserialize_with = "number")]
    score: Option<f64>,
    #[serde(borrow, deserialize_with = "features")]
    features: Vec<(Text<'a>, FeatureRef<'a>)>,
    #[serde(borrow, deserialize_with = "string_map")]
    segment: Vec<(Text<'a>, Text<'a>)>,
    #[serde(borrow, deserialize_with = "text")]
    text: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "text")]
    kind: Option<Text<'a>>,
    #[serde(deserialize_with = "label")]
    label: Option<u8>,
    #[serde(borrow, deserialize_with = "text")]
    list_id: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "text")]
    item_id: Option<Text<'a>>,
    #[serde(deserialize_with = "unsigned")]
    position: Option<u64>,
    #[serde(borrow, deserialize_with = "text")]
    run_id: Option<Text<'a>>,
    #[serde(deserialize_with = "unsigned")]
    step: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    loss: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    grad_norm: Option<f64>,
    #[serde(deserialize_with = "number")]
    lr: Option<f64>,
    #[serde(deserialize_with = "lenient_map")]
    layer_grad_norms: BTreeMap<String, f64>,
    #[serde(deserialize_with = "unsigned")]
    nonfinite: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTimings {
    #[serde(deserialize_with = "duration")]
    queue: Option<f64>,
    #[serde(deserialize_with = "duration")]
    preprocess: Option<f64>,
    #[serde(deserialize_with = "duration")]
    inference: Option<f64>,
    #[serde(deserialize_with = "duration")]
    postprocess: Option<f64>,
    #[serde(deserialize_with = "duration")]
    total: Option<f64>,
}

fn required<T>(v: Option<T>, name: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Missing(name))
}

fn owned(v: Option<Text<'_>>) -> Option<String> {
    v.map(Cow::into_owned)
}

/// A prediction's place in a ranked list: `list_id` makes it one, and then
/// `position` (1 = top) is required.
fn ranked_item<'a>(
    list_id: Option<Text<'a>>,
    item_id: Option<Text<'a>>,
    position: Option<u64>,
) -> Result<Option<(Text<'a>, Option<Text<'a>>, u32)>, DecodeError> {
    let Some(list_id) = list_id else {
        return Ok(None);
    };
    let position = position.ok_or_else(|| DecodeError::Field {
        path: "position".into(),
        message: "required when list_id is given (1 = top of the list)".into(),
    })?;
    let position = u32::try_from(position)
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| DecodeError::Field {
            path: "position".into(),
            message: format!("{position} is not a position (1 = top of the list)"),
        })?;
    Ok(Some((list_id, item_id, position)))
}

impl<'a> AnyEvent<'a> {
    fn into_event(self, kind: TopicKind) -> Result<EventRef<'a>, DecodeError> {
        Ok(match kind {
            TopicKind::Requests => EventRef::Request(RequestEvent {
                request_id: required(owned(self.request_id), "request_id")?,
                ts: required(self.ts, "ts")?,
                model: required(owned(self.model), "model")?,
                segment: owned_segment(self.segment),
                features: owned_features(self.features),
                text: owned(self.text),
            }),
            TopicKind::Predictions => {
                let t = required(self.timings_ms, "timings_ms")?;
                let batch_size = match self.batch_size {
                    Some(n) => Some(u32::try_from(n).map_err(|_| DecodeError::Field {
                        path: "batch_size".into(),
                        message: format!("{n} is too large"),
                    })?),
                    None => None,
                };
                EventRef::Prediction(PredictionRef {
                    request_id: required(self.request_id, "request_id")?,
                    ts: required(self.ts, "ts")?,
                    model: required(self.model, "model")?,
                    model_version: required(self.model_version, "model_version")?,
                    worker: self.worker,
                    device: self.device,
                    status: required(self.status, "status")?,
                    error: self.error,
                    batch_size,
                    timings_ms: Timings {
                        queue: t.queue,
                        preprocess: t.preprocess,
                        inference: t.inference,
                        postprocess: t.postprocess,
                        total: required(t.total, "timings_ms.total")?,
                    },
                    score: self.score,
                    features: self.features,
                    segment: self.segment,
                    ranking: ranked_item(self.list_id, self.item_id, self.position)?,
                })
            }
            TopicKind::Feedback => EventRef::Feedback(FeedbackEvent {
                request_id: required(owned(self.request_id), "request_id")?,
                ts: required(self.ts, "ts")?,
                kind: owned(self.kind),
                label: required(self.label, "label")?,
                item_id: owned(self.item_id),
            }),
            TopicKind::Training => EventRef::Training(TrainingEvent {
                run_id: required(owned(self.run_id), "run_id")?,
                model: required(owned(self.model), "model")?,
                ts: required(self.ts, "ts")?,
                step: required(self.step, "step")?,
                loss: self.loss,
                grad_norm: required(self.grad_norm, "grad_norm")?,
                lr: self.lr,
                layer_grad_norms: self.layer_grad_norms,
                nonfinite: self.nonfinite.unwrap_or(0),
            }),
        })
    }
}

// ---------------------------------------------------------------------------
// Field visitors. Each one accepts exactly what the contract allows and words
// its error as "expected X, got Y"; serde_path_to_error adds the field path.
// `null` always means absent, except for the lenient training floats.

/// How a JSON value the visitor did not want is shown in an error.
struct Got<'a>(de::Unexpected<'a>);

impl fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            de::Unexpected::Str(s) => match bare_token(s) {
                Some(t) => write!(f, "a bare {t} token (not JSON)"),
                None => write!(f, "{s:?}"),
            },
            de::Unexpected::Bool(b) => write!(f, "{b}"),
            de::Unexpected::Signed(i) => write!(f, "{i}"),
            de::Unexpected::Unsigned(u) => write!(f, "{u}"),
            de::Unexpected::Float(x) => write!(f, "{x}"),
            de::Unexpected::Map => f.write_str("an object"),
            de::Unexpected::Seq => f.write_str("an array"),
            ref other => write!(f, "{other}"),
        }
    }
}

fn wrong<E: de::Error>(expected: &str, got: de::Unexpected<'_>) -> E {
    E::custom(format_args!("expected {expected}, got {}", Got(got)))
}

/// Generates `visit_*` methods that reject a JSON type with a clear message.
macro_rules! reject {
    ($expected:expr; $($method:ident($ty:ty) => $unexp:expr),* $(,)?) => {
        $(fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            #[allow(clippy::redundant_closure_call)]
            Err(wrong($expected, ($unexp)(v)))
        })*
        fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(wrong($expected, de::Unexpected::Seq))
        }
    };
}

/// A JSON string (or null) as [`Text`]: borrowed when the message holds it
/// without escapes.
struct TextV;
impl<'de> Visitor<'de> for TextV {
    type Value = Option<Text<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        not_bare(v).map(|_| Some(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        not_bare(v).map(|_| Some(Cow::Owned(v.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(wrong("string", de::Unexpected::Map))
    }
    reject!("string";
        visit_bool(bool) => de::Unexpected::Bool,
        visit_i64(i64) => de::Unexpected::Signed,
        visit_u64(u64) => de::Unexpected::Unsigned,
        visit_f64(f64) => de::Unexpected::Float,
    );
}

/// A bare `NaN` / `Infinity` token is not a string.
fn not_bare<E: de::Error>(v: &str) -> Result<(), E> {
    match bare_token(v) {
        Some(_) => Err(wrong("string", de::Unexpected::Str(v))),
        None => Ok(()),
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Text<'de>>, D::Error> {
    d.deserialize_any(TextV)
}

/// A JSON number as f64. `lenient` also takes "NaN"/"Infinity" strings and
/// maps `null` to NaN (training telemetry's way of saying non-finite).
struct NumberV {
    lenient: bool,
}
impl<'de> Visitor<'de> for NumberV {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("number")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(if self.lenient { Some(f64::NAN) } else { None })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let parsed = match bare_token(v).unwrap_or(v) {
            "NaN" | "nan" => Some(f64::NAN),
            "Infinity" | "+Infinity" | "inf" => Some(f64::INFINITY),
            "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        };
        match parsed {
            Some(x) if self.lenient => Ok(Some(x)),
            _ if self.lenient => Err(wrong(
                r#"number, null, "NaN" or "Infinity""#,
                de::Unexpected::Str(v),
            )),
            _ => Err(wrong("number", de::Unexpected::Str(v))),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(wrong("number", de::Unexpected::Map))
    }
    reject!("number"; visit_bool(bool) => de::Unexpected::Bool);
}

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_any(NumberV { lenient: false })
}

fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_any(NumberV { lenient: true })
}

/// A stage timing: a finite, non-negative number of milliseconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match number(d)? {
        Some(v) if v < 0.0 || !v.is_finite() => Err(de::Error::custom(format_args!(
            "expected a non-negative number of milliseconds, got {v}"
        ))),
        v => Ok(v),
    }
}

/// A non-negative integer (`step`, `batch_size`, `nonfinite`).
fn unsigned<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match number(d)? {
        None => Ok(None),
        Some(v) if v >= 0.0 && v.fract() == 0.0 && v < 1.8e19 => Ok(Some(v as u64)),
        Some(v) => Err(de::Error::custom(format_args!(
            "expected a non-negative integer, got {v}"
        ))),
    }
}

/// Event times in milliseconds that are believable at all: 2000-01-01 to
/// 2100-01-01 (what a producer sends in another unit falls outside).
pub const PLAUSIBLE_MS: std::ops::Range<i64> = 946_684_800_000..4_102_444_800_000;

/// The unit an implausible millisecond value `ts` looks like it was sent
/// in (`seconds`, `microseconds`, `nanoseconds`), if any.
pub fn unit_of(ts: f64) -> Option<&'static str> {
    let plausible = (PLAUSIBLE_MS.start as f64)..(PLAUSIBLE_MS.end as f64);
    [
        (1e3, "seconds"),
        (1e-3, "microseconds"),
        (1e-6, "nanoseconds"),
    ]
    .into_iter()
    .find(|(to_ms, _)| plausible.contains(&(ts * to_ms)))
    .map(|(_, unit)| unit)
}

/// Event time: integer milliseconds since the epoch.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match number(d)? {
        None => Ok(None),
        Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(Some(v as i64)),
        Some(v) => Err(de::Error::custom(format_args!(
            "expected integer milliseconds since the Unix epoch, got {v}{}",
            unit_of(v).map_or(String::new(), |u| format!("; it looks like {u}"))
        ))),
    }
}

fn label<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match number(d)? {
        None => Ok(None),
        Some(v) if v == 0.0 || v == 1.0 => Ok(Some(v as u8)),
        Some(v) => Err(de::Error::custom(format_args!("expected 0 or 1, got {v}"))),
    }
}

/// `"ok"` or `"error"`, matched on the borrowed text (no allocation).
fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Status>, D::Error> {
    match text(d)?.as_deref() {
        None => Ok(None),
        Some("ok") => Ok(Some(Status::Ok)),
        Some("error") => Ok(Some(Status::Error)),
        Some(v) => Err(wrong(r#""ok" or "error""#, de::Unexpected::Str(v))),
    }
}

/// One value of a map field, as the map visitors judge it: scalars kept,
/// an object or array skipped (only its kind is told). Cheaper than
/// `serde_json::Value`, which builds what it skips.
enum Scalar<'a> {
    Number(f64),
    Str(Text<'a>),
    Bool(bool),
    Null,
    Object,
    Array,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarV)
    }
}

struct ScalarV;
impl<'de> Visitor<'de> for ScalarV {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Scalar::Object)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
}

/// A map value of the wrong kind, as the reason shows it.
fn shown_scalar(v: &Scalar<'_>) -> String {
    match v {
        Scalar::Object => "an object".into(),
        Scalar::Array => "an array".into(),
        Scalar::Str(s) => format!("{s:?}"),
        Scalar::Number(x) => x.to_string(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Null => "null".into(),
    }
}

/// A map key as [`Text`].
struct Key<'a>(Text<'a>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyV;
        impl<'de> Visitor<'de> for KeyV {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyV)
    }
}

/// An object whose values each go through `value`; `null` means empty.
/// The entries come out sorted by key, one per key, the last one sent
/// winning (a `BTreeMap`'s rule, without its nodes).
struct MapV<F>(F, &'static str);
impl<'de, T, F> Visitor<'de> for MapV<F>
where
    F: Fn(Scalar<'de>) -> Result<Option<T>, String>,
{
    type Value = Vec<(Text<'de>, T)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(Text<'de>, T)> = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(key)) = map.next_key()? {
            let value: Scalar = map.next_value()?;
            match (self.0)(value) {
                Ok(Some(v)) => out.push((key, v)),
                Ok(None) => {}
                Err(msg) => {
                    return Err(de::Error::custom(format_args!(
                        "{key}: expected {}, got {msg}",
                        self.1
                    )));
                }
            }
        }
        // Producers send their keys in one order; most send them sorted.
        if !out.windows(2).all(|w| w[0].0 < w[1].0) {
            out.sort_by(|a, b| a.0.cmp(&b.0)); // stable: equal keys keep their order
            out.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        Ok(out)
    }
    reject!("an object";
        visit_bool(bool) => de::Unexpected::Bool,
        visit_i64(i64) => de::Unexpected::Signed,
        visit_u64(u64) => de::Unexpected::Unsigned,
        visit_f64(f64) => de::Unexpected::Float,
        visit_str(&str) => de::Unexpected::Str,
    );
}

fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(_) => "an object".into(),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn features<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(Text<'de>, FeatureRef<'de>)>, D::Error> {
    d.deserialize_any(MapV(
        |v| match v {
            Scalar::Number(x) => Ok(Some(FeatureRef::Number(x))),
            Scalar::Str(s) if bare_token(&s).is_some() => {
                Err(Got(de::Unexpected::Str(&s)).to_string())
            }
            Scalar::Str(s) => Ok(Some(FeatureRef::Category(s))),
            Scalar::Null => Ok(Some(FeatureRef::Null)),
            other => Err(shown_scalar(&other)),
        },
        "number, string or null",
    ))
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Text<'de>, Text<'de>)>, D::Error> {
    d.deserialize_any(MapV(
        |v| match v {
            Scalar::Str(s) if bare_token(&s).is_some() => {
                Err(Got(de::Unexpected::Str(&s)).to_string())
            }
            Scalar::Str(s) => Ok(Some(s)),
            Scalar::Null => Ok(None),
            other => Err(shown_scalar(&other)),
        },
        "string",
    ))
}

fn lenient_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let entries = d.deserialize_any(MapV(
        |v| match v {
            Scalar::Number(x) => Ok(Some(x)),
            Scalar::Null => Ok(Some(f64::NAN)),
            Scalar::Str(s) => match bare_token(&s).unwrap_or(&s) {
                "NaN" => Ok(Some(f64::NAN)),
                "Infinity" => Ok(Some(f64::INFINITY)),
                "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                _ => Err(format!("{s:?}")),
            },
            other => Err(shown_scalar(&other)),
        },
        "number",
    ))?;
    Ok(entries
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v))
        .collect())
}
