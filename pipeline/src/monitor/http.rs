//! The monitor's own health: Prometheus `/metrics`, `/healthz` (the loop is
//! alive) and `/readyz` (partitions assigned and consuming), served by a
//! small blocking HTTP server on its own thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label pairs of a metric.
pub type Labels = Vec<(String, String)>;

/// Every metric the monitor exports. Counter names get `_total` appended
/// when exported.
#[derive(Default)]
pub struct MonitorMetrics {
    /// Messages consumed, by topic.
    pub consumed: Family<Labels, Counter>,
    /// Messages sent to the DLQ, by topic and reason.
    pub dlq: Family<Labels, Counter>,
    /// DLQ messages the broker refused (each logged as an error).
    pub dlq_failed: Gauge,
    /// Events that arrived after their window closed, by topic.
    pub late: Family<Labels, Counter>,
    /// Windows closed and emitted.
    pub windows: Counter,
    /// Points handed to the sinks.
    pub points: Counter,
    /// Consumer lag per partition, from librdkafka statistics.
    pub lag: Family<Labels, Gauge>,
    /// Bytes waiting in each sink's spool.
    pub spool_bytes: Family<Labels, Gauge>,
    /// Write requests each sink completed.
    pub sink_requests: Family<Labels, Gauge>,
    /// Seconds spent in successful writes, per sink (with the request count,
    /// the mean write latency), in microseconds.
    pub sink_write_micros: Family<Labels, Gauge>,
    /// Failed writes that were retried, per sink.
    pub sink_retries: Family<Labels, Gauge>,
    /// Lines a sink's server refused for good.
    pub sink_rejected_lines: Family<Labels, Gauge>,
    /// Current watermark, ms since the epoch.
    pub watermark_ms: Gauge,
    /// Highest watermark every sink has acknowledged, ms.
    pub acked_watermark_ms: Gauge,
    /// 1 while consumption is paused because a spool is full.
    pub backpressure: Gauge,
    /// Alert notifications made (firing and resolved), by alert name.
    pub alerts: Family<Labels, Counter>,
}

impl MonitorMetrics {
    /// A registry exporting these metrics under `infermon_`.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("infermon");
        let m = self.as_ref();
        r.register(
            "consumed_messages",
            "Kafka messages consumed",
            m.consumed.clone(),
        );
        r.register("dlq_messages", "Messages sent to the DLQ", m.dlq.clone());
        r.register(
            "late_events",
            "Events after their window closed",
            m.late.clone(),
        );
        r.register(
            "windows_emitted",
            "Windows closed and emitted",
            m.windows.clone(),
        );
        r.register("points", "Points handed to the sinks", m.points.clone());
        r.register(
            "consumer_lag_messages",
            "Consumer lag per partition",
            m.lag.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes waiting in a sink's spool",
            m.spool_bytes.clone(),
        );
        r.register(
            "sink_requests",
            "Write requests completed",
            m.sink_requests.clone(),
        );
        r.register(
            "sink_write_micros",
            "Microseconds spent in completed writes",
            m.sink_write_micros.clone(),
        );
        r.register(
            "sink_retries",
            "Failed writes retried",
            m.sink_retries.clone(),
        );
        r.register(
            "sink_rejected_lines",
            "Lines refused by the server",
            m.sink_rejected_lines.clone(),
        );
        r.register(
            "watermark_ms",
            "Current event-time watermark",
            m.watermark_ms.clone(),
        );
        r.register(
            "acked_watermark_ms",
            "Watermark every sink has acknowledged",
            m.acked_watermark_ms.clone(),
        );
        r.register(
            "backpressure",
            "1 while paused on a full spool",
            m.backpressure.clone(),
        );
        r.register(
            "alert_notifications",
            "Alert notifications",
            m.alerts.clone(),
        );
        r
    }
}

/// Liveness and readiness flags the loop updates.
#[derive(Debug, Default)]
pub struct Health {
    /// Wall time of the loop's last turn, ms.
    pub heartbeat_ms: AtomicI64,
    /// Partitions are assigned and the consumer is not paused.
    pub ready: AtomicBool,
}

impl Health {
    /// The loop is turning.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Wall-clock now, ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A blocking HTTP server on `addr` (which may name port 0) and the
/// address it bound.
pub fn listen(addr: &str) -> anyhow::Result<(tiny_http::Server, std::net::SocketAddr)> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("{addr} is not an IP address"))?;
    Ok((server, bound))
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` from a thread.
/// Returns the bound address (`addr` may name port 0).
pub fn serve(
    addr: &str,
    registry: Registry,
    health: Arc<Health>,
    stall_after: Duration,
) -> anyhow::Result<std::net::SocketAddr> {
    let (server, bound) = listen(addr)?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (code, body, content_type) = match req.url() {
                    "/metrics" => {
                        let mut text = String::new();
                        match encode(&mut text, &registry) {
                            Ok(()) => (
                                200,
                                text,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                            Err(e) => (500, format!("encode: {e}\n"), "text/plain"),
                        }
                    }
                    "/healthz" => {
                        let age = now_ms() - health.heartbeat_ms.load(Ordering::Relaxed);
                        if age <= stall_after.as_millis() as i64 {
                            (200, "ok\n".into(), "text/plain")
                        } else {
                            (
                                503,
                                format!("main loop stalled for {age} ms\n"),
                                "text/plain",
                            )
                        }
                    }
                    "/readyz" => {
                        if health.ready.load(Ordering::Relaxed) {
                            (200, "ready\n".into(), "text/plain")
                        } else {
                            (
                                503,
                                "not consuming (no partitions yet, or paused on a full spool)\n"
                                    .into(),
                                "text/plain",
                            )
                        }
                    }
                    _ => (404, "not found\n".into(), "text/plain"),
                };
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type)
                    .expect("static header");
                let resp = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header);
                let _ = req.respond(resp);
            }
        })?;
    Ok(bound)
}
