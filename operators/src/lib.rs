//! Stream operators of infermon over Arrow record batches: judgements in
//! event time, from events to points and alert notifications. Owns the
//! windows, the statistics and the alert rules; never does I/O (no files,
//! sockets or clocks: the pipeline reads, writes and says what time it is).
//!
//! [`topology::Topology`] is the one path the monitor and the replay share.
//!
//! Flow: prediction batches → [`engine::WindowEngine`] (event-time windows,
//! [`watermark`]s, late-data counting) → per-(window, series) DataFusion
//! accumulators ([`latency`], [`throughput`]) → [`engine::ClosedWindow`]
//! (a partial: mergeable state) → [`merge::Merger`] (the partials of every
//! shard added up, [`shards`]) → points; plus user-defined [`sql`] metrics
//! over each closed window.
//!
//! The analytic operators ride on the same windows: [`drift`] (features and
//! scores against a frozen reference), [`gradients`] (training telemetry
//! anomalies, judged per step), [`quality`] (feedback joined to
//! predictions, emitted once the label wait is over: pointwise and ranking
//! quality) and [`canary`] (a model's versions compared in the same window).

pub mod alerts;
pub mod canary;
pub mod drift;
pub mod engine;
pub mod event_time;
pub mod gradients;
pub mod latency;
pub mod merge;
pub mod partial;
pub mod quality;
pub mod shards;
pub mod sketch;
pub mod sql;
pub mod throughput;
pub mod topology;
pub mod watermark;
pub mod window;

pub use canary::CanaryConfig;
pub use drift::profile::Profile;
pub use drift::{
    DriftConfig, DriftOperator, DriftThresholds, FrozenReference, ProfileCollector,
    read_profile_file,
};
pub use engine::{
    ClosedWindow, EngineError, LabelState, LabelledWindow, SeriesKey, SeriesStats, WindowEngine,
};
pub use event_time::{Check, EventTimeGuard};
pub use gradients::{AnomalyKind, GradientAnomaly, GradientConfig, GradientMonitor};
pub use merge::{Merger, Released, ShardProgress};
pub use partial::{PartialMessage, WindowWire};
pub use quality::{LabelJoin, QualityConfig};
pub use shards::{ShardOutput, Shards};
pub use sql::{SqlMetricConfig, SqlMetricError, SqlMetrics};
pub use topology::{Emitted, Sections, Topology, TopologyError};
pub use window::{WindowConfig, WindowSpec};
