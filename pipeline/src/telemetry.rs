//! A process's own health, for the monitor and the workers alike:
//! Prometheus `/metrics`, `/healthz` (the loop is alive), `/readyz`
//! (partitions assigned and consuming) and, in a worker, `POST /alerts`
//! (the rollback hook), served by one small blocking HTTP server on its own
//! thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
    pub dlq_failed: Counter,
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
    pub sink_requests: Family<Labels, Counter>,
    /// Seconds spent in successful writes, per sink (with the request count,
    /// the mean write latency).
    pub sink_write_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    /// Failed writes that were retried, per sink.
    pub sink_retries: Family<Labels, Counter>,
    /// Lines a sink's server refused for good.
    pub sink_rejected_lines: Family<Labels, Counter>,
    /// Current watermark, seconds since the epoch.
    pub watermark_seconds: Gauge<f64, AtomicU64>,
    /// Highest watermark every sink has acknowledged, seconds since the
    /// epoch (-Inf while none is).
    pub acked_watermark_seconds: Gauge<f64, AtomicU64>,
    /// Watermark of the last offset commit requested (everything before it
    /// is written and its offsets handed to the broker), seconds.
    pub committed_watermark_seconds: Gauge<f64, AtomicU64>,
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
            "sink_write_seconds",
            "Seconds spent in completed writes",
            m.sink_write_seconds.clone(),
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
            "watermark_seconds",
            "Current event-time watermark, seconds since the epoch",
            m.watermark_seconds.clone(),
        );
        r.register(
            "acked_watermark_seconds",
            "Watermark every sink has acknowledged, seconds since the epoch",
            m.acked_watermark_seconds.clone(),
        );
        r.register(
            "committed_watermark_seconds",
            "Watermark of the last offset commit, seconds since the epoch",
            m.committed_watermark_seconds.clone(),
        );
        r.register(
            "dlq_failed_messages",
            "DLQ messages the broker refused",
            m.dlq_failed.clone(),
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

/// Seconds since the epoch of a watermark in ms (`i64::MIN`, none yet, is
/// -Inf).
pub fn seconds(ms: i64) -> f64 {
    if ms == i64::MIN {
        f64::NEG_INFINITY
    } else {
        ms as f64 / 1000.0
    }
}

/// Raise a counter to `total`, a cumulative count kept elsewhere (counters
/// only go up; a smaller total, after a restart of its source, adds nothing).
pub fn count_to(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// `/metrics` in the format the scraper asks for: OpenMetrics when its
/// `Accept` names it (Prometheus does), else the classic text format 0.0.4
/// (curl, `promtool check metrics`).
///
/// prometheus-client writes OpenMetrics only; the classic format differs in
/// three things, rewritten here: counter families are named with their
/// `_total` suffix in `# HELP` / `# TYPE`, and there are no `# UNIT` and
/// `# EOF` lines.
pub fn exposition(
    registry: &Registry,
    req: &tiny_http::Request,
) -> Result<(String, &'static str), std::fmt::Error> {
    let mut text = String::new();
    encode(&mut text, registry)?;
    let wants_openmetrics = req.headers().iter().any(|h| {
        h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text")
    });
    if wants_openmetrics {
        return Ok((
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ));
    }
    Ok((
        classic_text(&text),
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

/// OpenMetrics text as the classic Prometheus text format.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
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

/// The largest `POST /alerts` body read: an Alertmanager group of a few
/// hundred alerts is well under it.
pub const MAX_ALERTS_BODY: u64 = 1 << 20;

/// Handles a `POST /alerts` request and its body (at most
/// [`MAX_ALERTS_BODY`] bytes): the response's status code and body.
pub type AlertsHook = Box<dyn Fn(&tiny_http::Request, &[u8]) -> (u16, String) + Send>;

/// What the telemetry server answers.
pub struct Telemetry {
    /// `GET /metrics`.
    pub registry: Registry,
    /// `GET /healthz` and `GET /readyz`.
    pub health: Arc<Health>,
    /// `/healthz` fails once the loop's heartbeat is older than this
    /// (`None`: it never does).
    pub stall_after: Option<Duration>,
    /// `POST /alerts`, where the process takes alert notifications.
    pub alerts: Option<AlertsHook>,
}

/// Serve `/metrics`, `/healthz`, `/readyz` and (with a hook) `POST
/// /alerts` on `addr` from a thread. Returns the bound address (`addr` may
/// name port 0).
///
/// # Errors
/// `addr` cannot be bound.
pub fn serve(addr: &str, t: Telemetry) -> anyhow::Result<std::net::SocketAddr> {
    let (server, bound) = listen(addr)?;
    std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(move || {
            for mut req in server.incoming_requests() {
                let (code, body, content_type) = respond(&t, &mut req);
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

fn respond(t: &Telemetry, req: &mut tiny_http::Request) -> (u16, String, &'static str) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let health = &t.health;
    match (req.method(), req.url()) {
        (tiny_http::Method::Get, "/metrics") => match exposition(&t.registry, req) {
            Ok((text, content_type)) => (200, text, content_type),
            Err(e) => (500, format!("encode: {e}\n"), TEXT),
        },
        (tiny_http::Method::Get, "/healthz") => {
            let age = now_ms() - health.heartbeat_ms.load(Ordering::Relaxed);
            match t.stall_after {
                Some(stall) if age > stall.as_millis() as i64 => {
                    (503, format!("main loop stalled for {age} ms\n"), TEXT)
                }
                _ => (200, "ok\n".into(), TEXT),
            }
        }
        (tiny_http::Method::Get, "/readyz") => {
            if health.ready.load(Ordering::Relaxed) {
                (200, "ready\n".into(), TEXT)
            } else {
                let why = "not consuming (no partitions yet, or paused on a full spool)\n";
                (503, why.into(), TEXT)
            }
        }
        (tiny_http::Method::Post, "/alerts") if t.alerts.is_some() => {
            let hook = t.alerts.as_ref().expect("matched on is_some");
            let (code, body) = match read_body(req) {
                Err(refusal) => refusal,
                Ok(bytes) => hook(req, &bytes),
            };
            (code, body, TEXT)
        }
        _ => (404, "not found\n".into(), TEXT),
    }
}

/// A request body of at most [`MAX_ALERTS_BODY`] bytes, or the response
/// refusing it (413 when larger, whatever `Content-Length` claims).
fn read_body(req: &mut tiny_http::Request) -> Result<Vec<u8>, (u16, String)> {
    let too_large = || {
        (
            413,
            format!("body larger than {MAX_ALERTS_BODY} bytes: refused\n"),
        )
    };
    if req
        .body_length()
        .is_some_and(|n| n as u64 > MAX_ALERTS_BODY)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(req.as_reader(), MAX_ALERTS_BODY + 1),
        &mut bytes,
    )
    .map_err(|e| (400, format!("reading the body: {e}\n")))?;
    if bytes.len() as u64 > MAX_ALERTS_BODY {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_the_classic_text_format() {
        let m = Arc::new(MonitorMetrics::default());
        let topic: Labels = vec![("topic".into(), "inference.predictions".into())];
        m.consumed.get_or_create(&topic).inc_by(3);
        m.watermark_seconds.set(1_763_649_360.5);
        let mut text = String::new();
        encode(&mut text, &m.registry()).unwrap();
        assert!(
            text.contains("# TYPE infermon_consumed_messages counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");

        let classic = classic_text(&text);
        assert!(
            classic.contains("# HELP infermon_consumed_messages_total Kafka messages consumed"),
            "{classic}"
        );
        assert!(classic.contains("# TYPE infermon_consumed_messages_total counter\n"));
        assert!(
            classic
                .contains("infermon_consumed_messages_total{topic=\"inference.predictions\"} 3\n")
        );
        // Gauges keep their names; nothing OpenMetrics-only is left.
        assert!(classic.contains("# TYPE infermon_watermark_seconds gauge\n"));
        assert!(classic.contains("infermon_watermark_seconds 1763649360.5\n"));
        assert!(
            !classic.contains("# EOF") && !classic.contains("# UNIT"),
            "{classic}"
        );
    }

    #[test]
    fn counters_follow_a_total_kept_elsewhere() {
        let c = Counter::default();
        count_to(&c, 5);
        count_to(&c, 7);
        assert_eq!(c.get(), 7);
        count_to(&c, 2); // the source restarted: counters never go down
        assert_eq!(c.get(), 7);
        assert_eq!(seconds(i64::MIN), f64::NEG_INFINITY);
        assert_eq!(seconds(1_500), 1.5);
    }
}
