//! Alert notifications (the alerts log, or `alerts` points) paired into
//! firing spans: what the report's timeline and summary show.
//!
//! Pure: the caller reads the lines; this only pairs them.

use std::collections::{BTreeMap, HashMap};

use infermon_operators::alerts::policy::parse_ms;
use infermon_schemas::{FieldValue, Point};

/// One alert series from its first firing notification to its resolve
/// (`end_ms` is `None` while it still fires at the end of the data).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSpan {
    /// The rule.
    pub alertname: String,
    /// `warning`, `critical`, ...
    pub severity: String,
    /// The model it is about.
    pub model: String,
    /// `model_version` label, when the notification carries it.
    pub version: Option<String>,
    /// `feature` label (drift rules), when the notification carries it.
    pub feature: Option<String>,
    /// Event time it started firing.
    pub start_ms: i64,
    /// Event time it resolved.
    pub end_ms: Option<i64>,
    /// The firing notification's summary annotation (empty from points).
    pub summary: String,
    /// Every label, for the tooltip.
    pub labels: BTreeMap<String, String>,
}

impl AlertSpan {
    /// Its end, or `end_of_data` when it never resolved.
    pub fn end_or(&self, end_of_data: i64) -> i64 {
        self.end_ms.unwrap_or(end_of_data).max(self.start_ms)
    }

    /// `alertname` plus the labels that tell two series of a model apart.
    pub fn series_label(&self) -> String {
        let mut s = self.alertname.clone();
        for (k, v) in &self.labels {
            if !["alertname", "severity", "model"].contains(&k.as_str()) {
                s.push_str(&format!(" {k}={v}"));
            }
        }
        s
    }
}

/// Pairs notifications by series identity (the fingerprint).
#[derive(Default)]
struct Pairing {
    open: HashMap<String, usize>,
    spans: Vec<AlertSpan>,
}

impl Pairing {
    fn firing(&mut self, key: String, span: AlertSpan) {
        // Re-sends and flapping updates of a firing series extend nothing.
        if !self.open.contains_key(&key) {
            self.open.insert(key, self.spans.len());
            self.spans.push(span);
        }
    }

    fn resolved(&mut self, key: &str, span: AlertSpan, end_ms: i64) {
        match self.open.remove(key) {
            Some(i) => self.spans[i].end_ms = Some(end_ms),
            // A resolve whose firing came before the log began.
            None => self.spans.push(AlertSpan {
                end_ms: Some(end_ms),
                ..span
            }),
        }
    }
}

/// Spans from the alerts log (`--alerts-out`: one Alertmanager alert
/// object plus `receiver` per line). Lines that are not such an object are
/// counted in the second value and skipped (a torn last line).
pub fn spans_from_notifications<'a>(lines: impl Iterator<Item = &'a str>) -> (Vec<AlertSpan>, u64) {
    let mut pairing = Pairing::default();
    let mut bad = 0;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            bad += 1;
            continue;
        };
        let labels: BTreeMap<String, String> = v["labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let (Some(status), Some(start_ms), Some(alertname)) = (
            v["status"].as_str(),
            v["startsAt"].as_str().and_then(parse_ms),
            labels.get("alertname"),
        ) else {
            bad += 1;
            continue;
        };
        let key = v["fingerprint"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{labels:?}"));
        let span = AlertSpan {
            alertname: alertname.clone(),
            severity: labels.get("severity").cloned().unwrap_or_default(),
            model: labels.get("model").cloned().unwrap_or_default(),
            version: labels.get("model_version").cloned(),
            feature: labels.get("feature").cloned(),
            start_ms,
            end_ms: None,
            summary: v["annotations"]["summary"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            labels,
        };
        if status == "resolved" {
            let end = v["endsAt"].as_str().and_then(parse_ms).unwrap_or(start_ms);
            pairing.resolved(&key, span, end);
        } else {
            pairing.firing(key, span);
        }
    }
    (pairing.spans, bad)
}

/// Spans from `alerts` points (line protocol without the alerts log):
/// no version, feature or summary, which only the log carries.
pub fn spans_from_points<'a>(points: impl Iterator<Item = &'a Point>) -> Vec<AlertSpan> {
    let mut pairing = Pairing::default();
    for p in points.filter(|p| p.measurement == "alerts") {
        let tag = |k: &str| p.tag_value(k).unwrap_or_default().to_string();
        let labels: BTreeMap<String, String> = p.tags.iter().cloned().collect();
        let key = p
            .tag_value("fingerprint")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{labels:?}"));
        let t = p.timestamp_ns / 1_000_000;
        let span = AlertSpan {
            alertname: tag("alertname"),
            severity: tag("severity"),
            model: tag("model"),
            version: None,
            feature: None,
            start_ms: t,
            end_ms: None,
            summary: String::new(),
            labels: labels
                .into_iter()
                .filter(|(k, _)| k != "fingerprint")
                .collect(),
        };
        match p.field_value("state") {
            Some(FieldValue::Str(s)) if s == "resolved" => pairing.resolved(&key, span, t),
            _ => pairing.firing(key, span),
        }
    }
    pairing.spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(status: &str, fp: &str, starts: &str, ends: &str, feature: &str) -> String {
        format!(
            r#"{{"status":"{status}","fingerprint":"{fp}","startsAt":"{starts}","endsAt":"{ends}","labels":{{"alertname":"feature_drift","severity":"warning","model":"ads-ctr","model_version":"12","feature":"{feature}"}},"annotations":{{"summary":"drifted"}},"receiver":"alerts-file"}}"#
        )
    }

    #[test]
    fn a_firing_and_its_resolve_make_one_span_resends_do_not_restart_it() {
        let zero = "0001-01-01T00:00:00Z";
        let lines = [
            line("firing", "a", "2025-11-20T15:37:00Z", zero, "price"),
            line("firing", "b", "2025-11-20T15:38:00Z", zero, "category"),
            line("firing", "a", "2025-11-20T15:37:00Z", zero, "price"),
            "{torn".to_string(),
            line(
                "resolved",
                "a",
                "2025-11-20T15:37:00Z",
                "2025-11-20T16:02:00Z",
                "price",
            ),
        ];
        let (spans, bad) = spans_from_notifications(lines.iter().map(String::as_str));
        assert_eq!(bad, 1);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].feature.as_deref(), Some("price"));
        assert_eq!(spans[0].start_ms, 1_763_653_020_000);
        assert_eq!(spans[0].end_ms, Some(1_763_654_520_000));
        assert_eq!(spans[1].end_ms, None, "category still fires");
        assert_eq!(spans[1].end_or(1_763_660_000_000), 1_763_660_000_000);
        assert_eq!(spans[0].summary, "drifted");
        assert_eq!(
            spans[0].series_label(),
            "feature_drift feature=price model_version=12"
        );
    }

    #[test]
    fn alert_points_pair_by_fingerprint() {
        let p = |state: &str, t: i64| {
            Point::new("alerts", t)
                .tag("alertname", "error_rate_high")
                .tag("severity", "critical")
                .tag("model", "recsys-ranker")
                .tag("fingerprint", "f1")
                .field("state", FieldValue::Str(state.into()))
        };
        let points = [p("firing", 1000), p("firing", 2000), p("resolved", 5000)];
        let spans = spans_from_points(points.iter());
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].start_ms, spans[0].end_ms), (1000, Some(5000)));
        assert_eq!(spans[0].model, "recsys-ranker");
        assert!(!spans[0].labels.contains_key("fingerprint"));
    }
}
