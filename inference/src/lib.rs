//! The model side of infermon's inference workers: owns everything about a
//! model (its files, versions, ONNX Runtime sessions, how requests become
//! tensors and scores); never touches Kafka or a socket (the worker's Kafka
//! loop is `pipeline/src/worker/`).
//!
//! Feature specs that turn request features into input tensors ([`spec`]),
//! text encoders that tokenise and pool ([`text`]), ONNX Runtime sessions
//! loaded from the library the `onnxruntime` wheel ships ([`runtime`]), one
//! scorer over both kinds split into the stages a worker times
//! ([`scorer`]), the answer to a batch: timed stages and one prediction per
//! request ([`answer`]), and serving: dynamic batching, versions, canary,
//! hot swap and rollback ([`serving`]).

pub mod answer;
pub mod runtime;
pub mod scorer;
pub mod serving;
pub mod spec;
pub mod text;

pub use ort::environment::Environment;
pub use runtime::{Model, RuntimeError, SessionOptions, ort_environment};
pub use scorer::{LoadError, Prepared, Raw, Scorer};
pub use spec::{EncodeError, FeatureSpec, SpecError};
pub use text::{TextEncoder, TextSpec};
