//! A process's own health, for the monitor and the workers alike:
//! Prometheus `/metrics`, `/healthz` (the loop is alive), `/readyz`
//! (partitions assigned and consuming) and, in a worker, `POST /alerts`
//! (the rollback hook), served by one small blocking HTTP server on its own
//! thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Label pairs of a metric.
pub type Labels = Vec<(String, String)>;

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
