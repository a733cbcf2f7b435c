//! What an SRE scrapes from a monitor (`GET /metrics` on `[monitor]
//! listen`): consumption, lag, DLQ, windows and points, sink writes and
//! spools, watermarks, backpressure and alerts.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use infermon_operators::Emitted;

use crate::telemetry::Labels;

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
    /// Count what one [`Emitted`] holds: windows, points, and the
    /// notifications that passed, by alert name and status.
    pub fn count_emitted(&self, emitted: &Emitted) {
        self.windows.inc_by(emitted.windows as u64);
        self.points.inc_by(emitted.points.len() as u64);
        for n in emitted.passed() {
            let l: Labels = vec![
                ("alertname".into(), n.labels["alertname"].clone()),
                ("status".into(), n.status.as_str().to_string()),
            ];
            self.alerts.get_or_create(&l).inc();
        }
    }

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

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::telemetry::classic_text;

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
}
