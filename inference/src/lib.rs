//! Inference workers: scoring requests with ONNX Runtime. So far the model
//! side: feature specs that turn request features into input tensors
//! ([`spec`]) and ONNX Runtime sessions loaded from the library the
//! `onnxruntime` wheel ships ([`runtime`]). The Kafka worker comes next.

pub mod runtime;
pub mod spec;

pub use ort::environment::Environment;
pub use runtime::{Model, RuntimeError, ort_environment};
pub use spec::{EncodeError, FeatureSpec};
