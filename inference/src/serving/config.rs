//! `[[worker.models]]`: one model a worker serves and how (batching,
//! threads, device, canary, automatic rollback).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SessionOptions;

/// One model a worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name (the requests' `model`).
    pub name: String,
    /// Directory with `feature_spec.json` and one sub-directory per version
    /// holding `model.onnx` (and, for a text model, its tokenizer).
    pub dir: PathBuf,
    /// Version to serve, fixed (default: the highest numbered one, or the
    /// one pinned in `SERVE_VERSION`, followed as they change).
    #[serde(default)]
    pub version: Option<String>,
    /// Rows per batch at most.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// A batch runs at the latest this long after its oldest request came.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// A request that waited longer than this in the worker before its
    /// batch ran is answered with a `timed out` error event instead of a
    /// late score (the caller has given up on it).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// ONNX Runtime intra-op threads (threads one operator may use).
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// ONNX Runtime inter-op threads; above 1 independent graph branches
    /// run in parallel.
    #[serde(default = "default_threads")]
    pub inter_threads: usize,
    /// `cpu` or `cuda:N` (CUDA execution provider; falls back to the CPU
    /// with a warning when the library or the GPU cannot).
    #[serde(default = "default_device")]
    pub device: String,
    /// Fraction of predictions (0..=1) that carry the request's features,
    /// chosen by a hash of `request_id` (so it is stable across workers).
    #[serde(default = "default_feature_sample")]
    pub feature_sample: f64,
    /// Percent of requests (by a hash of `request_id`) a newly found
    /// version serves while it is a canary; 0 swaps new versions in for
    /// all requests at once.
    #[serde(default)]
    pub canary_percent: f64,
    /// A canary that was not rolled back in this time serves everything.
    #[serde(default = "default_canary_duration", with = "humantime_serde")]
    pub canary_duration: Duration,
    /// Alert names that roll back the newest version of this model when
    /// they fire for it (delivered to the worker's `/alerts` hook).
    #[serde(default)]
    pub rollback_on: Vec<String>,
}

impl ModelConfig {
    /// ONNX Runtime session settings.
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            intra_threads: self.threads,
            inter_threads: self.inter_threads,
            device: self.device.clone(),
        }
    }

    /// A model served with the defaults (benchmarks, tests).
    pub fn new(name: &str, dir: PathBuf) -> Self {
        Self {
            name: name.into(),
            dir,
            version: None,
            max_batch: default_max_batch(),
            max_delay: default_max_delay(),
            timeout: default_timeout(),
            threads: default_threads(),
            inter_threads: default_threads(),
            device: default_device(),
            feature_sample: default_feature_sample(),
            canary_percent: 0.0,
            canary_duration: default_canary_duration(),
            rollback_on: Vec::new(),
        }
    }
}

fn default_device() -> String {
    "cpu".into()
}
fn default_max_batch() -> usize {
    32
}
fn default_max_delay() -> Duration {
    Duration::from_millis(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_threads() -> usize {
    1
}
fn default_feature_sample() -> f64 {
    1.0
}
fn default_canary_duration() -> Duration {
    Duration::from_secs(600)
}
