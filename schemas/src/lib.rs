//! The contract of infermon (see `CONTRACT.md`): owns the v1 wire events
//! (Rust types, JSON decoding that names the bad field, Arrow schemas for
//! the operators), the points and their line protocol, and the recording
//! file format; never judges an event or talks to a server.
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
pub use decode::{
    DecodeError, Decoded, EventRef, decode, decode_event, decode_recorded, decode_recorded_line,
};
pub use events::{
    Feature, FeatureRef, FeedbackEvent, PredictionEvent, PredictionRef, RankedItem, RequestEvent,
    Status, Timings, TrainingEvent,
};
pub use point::{FieldValue, Point};
pub use topics::{TopicKind, TopicNames};
