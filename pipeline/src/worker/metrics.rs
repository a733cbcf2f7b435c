//! What an SRE scrapes from a worker (`GET /metrics` on `[worker] listen`):
//! requests and predictions per model, version and status, batches, queue
//! depth, DLQ, rollbacks, refused deliveries, and which versions serve.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::Labels;

/// Every metric the worker exports (under `infermon_worker_`; counters get
/// `_total`).
#[derive(Default)]
pub struct WorkerMetrics {
    /// Requests read, by model (unknown models included).
    pub requests: Family<Labels, Counter>,
    /// Predictions published, by model, version and status.
    pub predictions: Family<Labels, Counter>,
    /// Batches run, by model (mean batch size = predictions / batches).
    pub batches: Family<Labels, Counter>,
    /// Requests waiting for a batch, by model.
    pub queued: Family<Labels, Gauge>,
    /// Undecodable requests sent to the DLQ.
    pub dlq: Counter,
    /// Version changes, by model and kind (swapped, canary_started,
    /// promoted, rolled_back).
    pub version_changes: Family<Labels, Counter>,
    /// 1 per version serving, by model, version and role (stable, canary).
    pub serving: Family<Labels, Gauge>,
    /// Predictions the broker refused after librdkafka's retries.
    pub delivery_failures: Counter,
}

/// Label pairs from string slices.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl WorkerMetrics {
    /// A registry exporting these metrics under `infermon_worker`.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("infermon_worker");
        let m = self.as_ref();
        r.register("requests", "Requests read", m.requests.clone());
        r.register(
            "predictions",
            "Predictions published",
            m.predictions.clone(),
        );
        r.register("batches", "Batches run", m.batches.clone());
        r.register(
            "queued_requests",
            "Requests waiting for a batch",
            m.queued.clone(),
        );
        r.register("dlq_messages", "Requests sent to the DLQ", m.dlq.clone());
        r.register(
            "version_changes",
            "Model version changes",
            m.version_changes.clone(),
        );
        r.register(
            "serving",
            "Versions serving (1), by role",
            m.serving.clone(),
        );
        r.register(
            "delivery_failures",
            "Predictions refused by the broker",
            m.delivery_failures.clone(),
        );
        r
    }
}
