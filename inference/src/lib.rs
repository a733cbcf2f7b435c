//! Inference workers' model side: feature specs that turn request features
//! into input tensors ([`spec`]), text encoders that tokenise and pool
//! ([`text`]), ONNX Runtime sessions loaded from the library the
//! `onnxruntime` wheel ships ([`runtime`]), one scorer over both kinds
//! split into the stages a worker times ([`scorer`]), and the answer to a
//! batch: timed stages and one prediction per request ([`answer`]). The Kafka loop is
//! `infermon worker` (pipeline crate).

pub mod answer;
pub mod runtime;
pub mod scorer;
pub mod spec;
pub mod text;

pub use ort::environment::Environment;
pub use runtime::{Model, RuntimeError, SessionOptions, ort_environment};
pub use scorer::{LoadError, Prepared, Raw, Scorer};
pub use spec::{EncodeError, FeatureSpec, SpecError};
pub use text::{TextEncoder, TextSpec};
