//! End-to-end tests of the `infermon` binary against real servers.
//!
//! One test binary (see `pipeline/Cargo.toml`). Services are started by
//! `.ci/run` (`.ci/services.sh`), which exports their addresses; a test
//! whose service is missing fails with a message saying so, never skips.

mod alerts_offline;
mod drift_reference;
mod email_delivery;
mod faults;
mod grafana_dashboards;
mod incidents_analytics;
mod influxdb_line_protocol;
mod kafka_monitor;
mod kafka_replay;
mod latency_reference;
mod live_recording;
mod one_topology;
mod ranking_quality;
mod replay_offline;
mod report_browser;
mod support;
mod threads;
mod trustworthy_alerts;
mod webhook_delivery;
mod worker;
