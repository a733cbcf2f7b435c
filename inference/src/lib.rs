//! Inference workers (`infermon worker`): consume `inference.requests`,
//! batch dynamically, run ONNX models with ONNX Runtime, and publish
//! `PredictionEvent`s with per-stage timings to `inference.predictions`.
//!
//! Not built yet: this crate only fixes the workspace layout. The event
//! types it will produce live in `infermon-schemas`.
