//! The `infermon` application: all the I/O and the wiring. Owns the
//! configuration, the sources (Kafka, recorded files), the sinks (files,
//! InfluxDB), alert delivery, telemetry and the inference worker's Kafka
//! loop; never judges an event itself (that is `infermon_operators`) nor
//! runs a model (that is `infermon_inference`).
//!
//! `commands` has one module per subcommand; `main.rs` is only the CLI.

pub mod alerts;
#[cfg(feature = "bench")]
pub mod bench;
pub mod commands;
pub mod config;
pub mod decode;
pub mod generate;
pub mod monitor;
pub mod record;
pub mod references;
pub mod replay;
pub mod replay_to_kafka;
pub mod report;
pub mod retry;
pub mod sinks;
pub mod sources;
pub mod telemetry;
pub mod worker;
