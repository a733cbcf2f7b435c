//! What every monitor role opens first: the telemetry endpoint and the
//! sinks (the single monitor and the merge stage write points; a partial
//! monitor opens them too, for the file it is pointed at).

use std::sync::Arc;
use std::time::Duration;

use crate::monitor::MonitorConfig;
use crate::monitor::metrics::MonitorMetrics;
use crate::sinks::influxdb::InfluxDbConfig;
use crate::sinks::{SinkSettings, Sinks};
use crate::telemetry::{self as http, Health};

/// `/metrics`, `/healthz` and `/readyz` on `[monitor] listen`.
///
/// # Errors
/// The address cannot be bound.
pub fn serve_telemetry(mc: &MonitorConfig) -> anyhow::Result<(Arc<MonitorMetrics>, Arc<Health>)> {
    let metrics = Arc::new(MonitorMetrics::default());
    let health = Arc::new(Health::default());
    health.beat();
    let telemetry = http::Telemetry {
        registry: metrics.registry(),
        health: health.clone(),
        stall_after: Some(Duration::from_secs(30)),
        alerts: None,
    };
    let addr = http::serve(&mc.listen, telemetry)?;
    tracing::info!(%addr, role = ?mc.role, "serving /metrics /healthz /readyz");
    Ok((metrics, health))
}

/// The `[[influxdb]]` sinks behind their spools (or the metrics file).
///
/// # Errors
/// A spool or file that cannot be opened.
pub fn open_sinks(influxdb: &[InfluxDbConfig], mc: &MonitorConfig) -> anyhow::Result<Sinks> {
    Sinks::open(&SinkSettings {
        influxdb,
        metrics_out: mc.metrics_out.clone(),
        state_dir: &mc.state_dir,
        rejects_out: &mc.rejects_out,
    })
}
