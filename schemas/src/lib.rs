//! The v1 wire events of infermon (see `CONTRACT.md`): Rust types, JSON
//! decoding that names the bad field, and Arrow schemas for the operators.
//!
//! Data flows one way through this crate: bytes → [`decode`] → typed
//! [`events`] → [`batch`] builders → Arrow `RecordBatch`.

pub mod batch;
pub mod decode;
pub mod events;
pub mod line_protocol;
pub mod point;
pub mod recording;
pub mod topics;

pub use batch::{PredictionBatchBuilder, decode_predictions, prediction_schema};
pub use decode::{DecodeError, Decoded, decode_event, decode_recorded_line};
pub use events::{
    Feature, FeedbackEvent, PredictionEvent, RequestEvent, Status, Timings, TrainingEvent,
};
pub use point::{FieldValue, Point};
pub use topics::{TopicKind, TopicNames};
