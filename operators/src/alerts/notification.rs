//! What the alert engine says: one firing or resolved notification, in the
//! Alertmanager webhook format of the contract (§3) and as an `alerts` point.

use std::collections::BTreeMap;
use std::hash::Hasher as _;
use std::time::{Duration, UNIX_EPOCH};

use infermon_schemas::{FieldValue, Point};
use serde_json::{Value, json};

/// Firing or resolved, as Alertmanager spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    /// The condition holds (or held within `keep_firing_for`).
    Firing,
    /// It stopped holding.
    Resolved,
}

impl AlertStatus {
    /// `firing` / `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One state change of one alert series.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Always `alertname`, `severity`, `model`, then the series' tags and
    /// the rule's labels.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description` (and `flapping` when it is).
    pub annotations: BTreeMap<String, String>,
    /// When the condition started holding (event time, ms).
    pub starts_at_ms: i64,
    /// When it was resolved (event time, ms).
    pub ends_at_ms: Option<i64>,
    /// The watched value that caused this notification.
    pub value: f64,
    /// Event time of the evaluation that produced it (window end, or the
    /// anomaly's step time): with the fingerprint and status, an
    /// idempotency key for re-processed windows.
    pub at_ms: i64,
}

impl Notification {
    /// Alertmanager's fingerprint of the labels (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.labels)
    }

    /// The alert object of an Alertmanager v4 webhook body.
    pub fn alertmanager_alert(&self) -> Value {
        json!({
            "status": self.status.as_str(),
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": rfc3339(self.starts_at_ms),
            "endsAt": self.ends_at_ms.map_or("0001-01-01T00:00:00Z".to_string(), rfc3339),
            "generatorURL": "",
            "fingerprint": self.fingerprint(),
        })
    }

    /// `fingerprint:status:time`: the same for a notification made again
    /// from a re-processed window, so receivers and the log can dedup.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.fingerprint(),
            self.status.as_str(),
            self.at_ms
        )
    }

    /// The line written to `--alerts-out`: the alert object plus `receiver`
    /// and `idempotencyKey`.
    pub fn alerts_log_line(&self, receiver: &str) -> Value {
        let mut v = self.alertmanager_alert();
        v["receiver"] = json!(receiver);
        v["idempotencyKey"] = json!(self.idempotency_key());
        v
    }

    /// The `alerts` point (extra `fingerprint` tag, so two series of one
    /// rule and model at one instant do not overwrite each other).
    pub fn point(&self) -> Point {
        let label = |k: &str| self.labels.get(k).map_or("", String::as_str);
        Point::new("alerts", self.at_ms)
            .tag("alertname", label("alertname"))
            .tag("severity", label("severity"))
            .tag("model", label("model"))
            .tag("fingerprint", self.fingerprint())
            .field("state", FieldValue::Str(self.status.as_str().into()))
            .field("value", FieldValue::Float(self.value))
    }
}

/// Alertmanager's fingerprint: FNV-1a 64 over the sorted label pairs, each
/// name and value followed by 0xff, as 16 hex digits.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = fnv::FnvHasher::default();
    for (k, v) in labels {
        for part in [k.as_bytes(), &[0xff], v.as_bytes(), &[0xff]] {
            h.write(part);
        }
    }
    format!("{:016x}", h.finish())
}

/// Event time as RFC 3339 with milliseconds (UTC).
pub fn rfc3339(ms: i64) -> String {
    let t = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing() -> Notification {
        Notification {
            status: AlertStatus::Firing,
            labels: [("alertname", "x"), ("model", "m"), ("severity", "warning")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            annotations: BTreeMap::new(),
            starts_at_ms: 1_763_644_560_000,
            ends_at_ms: None,
            value: 3.5,
            at_ms: 1_763_644_620_000,
        }
    }

    #[test]
    fn alertmanager_shape() {
        let v = firing().alertmanager_alert();
        assert_eq!(v["status"], "firing");
        assert_eq!(v["startsAt"], "2025-11-20T13:16:00.000Z");
        assert_eq!(v["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(v["labels"]["alertname"], "x");
        assert_eq!(v["fingerprint"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn fingerprint_depends_on_labels_only() {
        let a = firing();
        let mut b = firing();
        b.value = 99.0;
        b.status = AlertStatus::Resolved;
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.labels.insert("model".into(), "other".into());
        assert_ne!(a.fingerprint(), b.fingerprint());
        // FNV-1a of nothing is its offset basis.
        let mut empty = firing();
        empty.labels.clear();
        assert_eq!(empty.fingerprint(), "cbf29ce484222325");
    }
}
