//! Stream operators of infermon over Arrow record batches.
//!
//! Flow: prediction batches → [`engine::WindowEngine`] (event-time windows,
//! [`watermark`]s, late-data counting) → per-(window, series) DataFusion
//! accumulators ([`latency`], [`throughput`]) → [`engine::ClosedWindow`]
//! → points; plus user-defined [`sql`] metrics over each closed window.

pub mod engine;
pub mod latency;
pub mod sketch;
pub mod sql;
pub mod throughput;
pub mod watermark;
pub mod window;

pub use engine::{ClosedWindow, EngineError, SeriesKey, SeriesStats, WindowEngine};
pub use sql::{SqlMetricConfig, SqlMetricError, SqlMetrics};
pub use window::{WindowConfig, WindowSpec};
