//! The `infermon` application: configuration, sources, sinks and the
//! commands that wire them to the operators. `main.rs` is only the CLI.

pub mod alerts;
pub mod bench;
pub mod bench_drift;
pub mod bench_ingest;
pub mod config;
pub mod generate;
pub mod monitor;
pub mod record;
pub mod references;
pub mod replay;
pub mod replay_to_kafka;
pub mod sinks;
pub mod sources;
pub mod worker;
