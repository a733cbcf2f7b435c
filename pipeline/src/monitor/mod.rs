//! The streaming monitor's parts: its settings (`[monitor]`) and the state
//! it keeps on disk between runs
//! (frozen drift references, acknowledged watermarks). The loop that wires
//! them is `commands::monitor`.

pub mod metrics;
pub mod references_store;
pub mod start;
pub mod watermark_store;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Receiver name on the monitor's alerts-log lines.
pub const MONITOR_RECEIVER: &str = "monitor";

/// The monitor process: where it listens, keeps state and writes files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// `/metrics`, `/healthz`, `/readyz` (port 0 picks one; it is logged).
    pub listen: String,
    /// Spools live here (and anything else the monitor must keep).
    pub state_dir: PathBuf,
    /// Line protocol goes to this file when no `[[influxdb]]` is configured.
    pub metrics_out: PathBuf,
    /// Every alert notification, one JSON line each.
    pub alerts_out: PathBuf,
    /// Points an InfluxDB server refused, with its message.
    pub rejects_out: PathBuf,
    /// On SIGTERM, wait at most this long for sinks and receivers.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Deliver notifications to the configured webhooks and mail.
    pub send_alerts: bool,
    /// What this process does in the topology: the whole of it
    /// (`single`), the partial stage of the scale-out (`partial`: window
    /// state per source partition to the partials topic) or its merge stage
    /// (`merge`: partials added up, points to the sinks, alert rules).
    pub role: Role,
    /// Threads the window shards run on (0: one per core). The output does
    /// not depend on it: the stream is split into a fixed number of shards
    /// whatever the number of threads. The offline replay honours it too.
    pub threads: usize,
}

/// A monitor's part in the topology.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in one process (threads over shards).
    #[default]
    Single,
    /// Scale-out partial stage: one window engine per source partition;
    /// closed windows go to the partials topic.
    Partial,
    /// Scale-out merge stage: reads the partials topic, merges, writes.
    Merge,
}

impl MonitorConfig {
    /// [`MonitorConfig::threads`], 0 resolved to the core count.
    pub fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9898".into(),
            state_dir: "infermon-state".into(),
            metrics_out: "infermon-metrics.lp".into(),
            alerts_out: "infermon-alerts.jsonl".into(),
            rejects_out: "infermon-influx-rejects.jsonl".into(),
            shutdown_timeout: Duration::from_secs(10),
            send_alerts: true,
            role: Role::Single,
            threads: 0,
        }
    }
}
