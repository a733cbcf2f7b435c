//! The report's data model: the contract's points regrouped per model into
//! the series the charts draw, plus the alert spans.
//!
//! Pure: built from [`Point`]s and [`AlertSpan`]s the caller read.
//! Segment series (points with a `dimension` tag) are left out: the report
//! is per model version; Grafana has the segment views.

use std::collections::BTreeMap;

use infermon_schemas::{FieldValue, Point};

use super::alerts::AlertSpan;

/// One `latency` window of one (version, stage).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyPoint {
    /// Window end, ms.
    pub t: i64,
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
}

/// One `throughput` window of one version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputPoint {
    /// Window end, ms.
    pub t: i64,
    /// Requests per second.
    pub rps: f64,
    /// Errors / requests.
    pub error_rate: f64,
}

/// One `drift` window of one feature (versions pooled: the highest PSI of
/// the window wins).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftCell {
    /// Window end, ms.
    pub t: i64,
    /// Population stability index; `None` when the window was not judged.
    pub psi: Option<f64>,
    /// `drifted`; `None` when the window was too small to judge.
    pub drifted: Option<bool>,
    /// Share of nulls.
    pub null_rate: f64,
}

/// One `quality` window of one version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityPoint {
    /// Window end, ms.
    pub t: i64,
    /// ROC AUC.
    pub auc: Option<f64>,
    /// Log loss.
    pub logloss: Option<f64>,
    /// Click-through rate.
    pub ctr: Option<f64>,
    /// mean score / CTR.
    pub calibration: Option<f64>,
}

/// One `gradients` window of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientPoint {
    /// Window end, ms.
    pub t: i64,
    /// Largest grad norm of the window.
    pub grad_norm_max: Option<f64>,
    /// Last loss of the window.
    pub loss_last: Option<f64>,
}

/// One `gradient_anomalies` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// The step's event time, ms.
    pub t: i64,
    /// `spike`, `explosion`, `nonfinite`, ...
    pub kind: String,
    /// Training run.
    pub run_id: String,
    /// Training step.
    pub step: Option<i64>,
    /// Grad norm of the step (absent when non-finite).
    pub grad_norm: Option<f64>,
}

/// Everything of one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelData {
    /// (version, stage) → windows.
    pub latency: BTreeMap<(String, String), Vec<LatencyPoint>>,
    /// version → windows.
    pub throughput: BTreeMap<String, Vec<ThroughputPoint>>,
    /// feature → windows.
    pub drift: BTreeMap<String, Vec<DriftCell>>,
    /// version → windows.
    pub quality: BTreeMap<String, Vec<QualityPoint>>,
    /// run → windows.
    pub gradients: BTreeMap<String, Vec<GradientPoint>>,
    /// Gradient anomalies in time order.
    pub anomalies: Vec<Anomaly>,
    /// (first window end, version) of each version after the first seen:
    /// the deploy markers.
    pub deploys: Vec<(i64, String)>,
}

impl ModelData {
    /// Features most drifted first: those judged drifted in some window
    /// ahead of the rest, each group by its highest PSI. This is the order
    /// of the heat map's rows and of drift alerts that start together.
    pub fn features_by_drift(&self) -> Vec<String> {
        let mut v: Vec<(bool, f64, &String)> = self
            .drift
            .iter()
            .map(|(f, cells)| {
                let drifted = cells.iter().any(|c| c.drifted == Some(true));
                let max = cells.iter().filter_map(|c| c.psi).fold(0.0_f64, f64::max);
                (drifted, max, f)
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(b.2)));
        v.into_iter().map(|(_, _, f)| f.clone()).collect()
    }

    /// Whether any chart of this model has data.
    pub fn is_empty(&self) -> bool {
        self.latency.is_empty()
            && self.throughput.is_empty()
            && self.drift.is_empty()
            && self.quality.is_empty()
            && self.gradients.is_empty()
            && self.anomalies.is_empty()
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportData {
    /// Earliest timestamp, ms.
    pub start_ms: i64,
    /// Latest timestamp, ms.
    pub end_ms: i64,
    /// Per model.
    pub models: BTreeMap<String, ModelData>,
    /// Alert spans in summary order: start time, then critical first, then
    /// the more drifted feature first.
    pub alerts: Vec<AlertSpan>,
    /// Points read.
    pub points: usize,
}

fn num(p: &Point, k: &str) -> Option<f64> {
    match p.field_value(k)? {
        FieldValue::Float(x) => Some(*x),
        FieldValue::Int(i) => Some(*i as f64),
        FieldValue::Bool(b) => Some(f64::from(u8::from(*b))),
        FieldValue::Str(_) => None,
    }
}

impl ReportData {
    /// Regroup `points` per model and order `alerts` for the summary.
    pub fn build(points: &[Point], mut alerts: Vec<AlertSpan>) -> Self {
        let mut models: BTreeMap<String, ModelData> = BTreeMap::new();
        let (mut start_ms, mut end_ms) = (i64::MAX, i64::MIN);
        let mut first_seen: BTreeMap<(String, String), i64> = BTreeMap::new();
        for p in points {
            let t = p.timestamp_ns / 1_000_000;
            start_ms = start_ms.min(t);
            end_ms = end_ms.max(t);
            if p.tag_value("dimension").is_some() {
                continue;
            }
            let Some(model) = p.tag_value("model") else {
                continue;
            };
            let tag = |k: &str| p.tag_value(k).unwrap_or_default().to_string();
            let version = tag("model_version");
            if !version.is_empty() {
                let e = first_seen
                    .entry((model.to_string(), version.clone()))
                    .or_insert(t);
                *e = (*e).min(t);
            }
            let m = models.entry(model.to_string()).or_default();
            match p.measurement.as_str() {
                "latency" => {
                    if let (Some(p50), Some(p99)) = (num(p, "p50"), num(p, "p99")) {
                        m.latency
                            .entry((version, tag("stage")))
                            .or_default()
                            .push(LatencyPoint { t, p50, p99 });
                    }
                }
                "throughput" => {
                    if let (Some(rps), Some(error_rate)) = (num(p, "rps"), num(p, "error_rate")) {
                        m.throughput
                            .entry(version)
                            .or_default()
                            .push(ThroughputPoint { t, rps, error_rate });
                    }
                }
                "drift" => {
                    let judged = !matches!(p.field_value("judged"), Some(FieldValue::Bool(false)));
                    let cell = DriftCell {
                        t,
                        psi: num(p, "psi").filter(|_| judged),
                        drifted: match p.field_value("drifted") {
                            Some(FieldValue::Bool(b)) if judged => Some(*b),
                            _ => None,
                        },
                        null_rate: num(p, "null_rate").unwrap_or(0.0),
                    };
                    let cells = m.drift.entry(tag("feature")).or_default();
                    match cells.last_mut() {
                        // Two versions in one window: keep the worse.
                        Some(last) if last.t == t => {
                            if cell.psi.unwrap_or(-1.0) > last.psi.unwrap_or(-1.0) {
                                *last = cell;
                            }
                        }
                        _ => cells.push(cell),
                    }
                }
                "quality" => m.quality.entry(version).or_default().push(QualityPoint {
                    t,
                    auc: num(p, "auc"),
                    logloss: num(p, "logloss"),
                    ctr: num(p, "ctr"),
                    calibration: num(p, "calibration"),
                }),
                "gradients" => m
                    .gradients
                    .entry(tag("run_id"))
                    .or_default()
                    .push(GradientPoint {
                        t,
                        grad_norm_max: num(p, "grad_norm_max"),
                        loss_last: num(p, "loss_last"),
                    }),
                "gradient_anomalies" => m.anomalies.push(Anomaly {
                    t,
                    kind: tag("kind"),
                    run_id: tag("run_id"),
                    step: num(p, "step").map(|s| s as i64),
                    grad_norm: num(p, "grad_norm"),
                }),
                _ => {}
            }
        }
        for m in models.values_mut() {
            for v in m.latency.values_mut() {
                v.sort_by_key(|p| p.t);
            }
            for v in m.throughput.values_mut() {
                v.sort_by_key(|p| p.t);
            }
            for v in m.drift.values_mut() {
                v.sort_by_key(|p| p.t);
            }
            for v in m.quality.values_mut() {
                v.sort_by_key(|p| p.t);
            }
            for v in m.gradients.values_mut() {
                v.sort_by_key(|p| p.t);
            }
            m.anomalies.sort_by_key(|a| a.t);
        }
        let mut by_model: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
        for ((model, version), t) in &first_seen {
            by_model.entry(model).or_default().push((*t, version));
        }
        for (model, mut versions) in by_model {
            versions.sort();
            if let Some(m) = models.get_mut(model) {
                m.deploys = versions
                    .into_iter()
                    .skip(1)
                    .map(|(t, v)| (t, v.to_string()))
                    .collect();
            }
        }
        models.retain(|_, m| !m.is_empty());
        if start_ms > end_ms {
            (start_ms, end_ms) = (0, 0);
        }
        for a in &alerts {
            start_ms = start_ms.min(a.start_ms);
            end_ms = end_ms.max(a.end_ms.unwrap_or(a.start_ms));
        }
        let rank = |a: &AlertSpan| -> usize {
            let (Some(m), Some(f)) = (models.get(&a.model), &a.feature) else {
                return usize::MAX;
            };
            m.features_by_drift()
                .iter()
                .position(|x| x == f)
                .unwrap_or(usize::MAX)
        };
        alerts.sort_by_cached_key(|a| (a.start_ms, a.severity != "critical", rank(a)));
        Self {
            start_ms,
            end_ms,
            models,
            alerts,
            points: points.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift(feature: &str, t: i64, psi: f64, drifted: bool) -> Point {
        Point::new("drift", t)
            .tag("model", "ads-ctr")
            .tag("model_version", "12")
            .tag("feature", feature)
            .field("psi", FieldValue::Float(psi))
            .field("null_rate", FieldValue::Float(0.0))
            .field("drifted", FieldValue::Bool(drifted))
    }

    fn span(feature: &str, start_ms: i64) -> AlertSpan {
        AlertSpan {
            alertname: "feature_drift".into(),
            severity: "warning".into(),
            model: "ads-ctr".into(),
            version: Some("12".into()),
            feature: Some(feature.into()),
            start_ms,
            end_ms: None,
            summary: String::new(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn the_most_drifted_feature_comes_first_among_alerts_that_start_together() {
        let points = [
            drift("category", 60_000, 0.7, true),
            drift("price", 60_000, 1.3, true),
            drift("score", 60_000, 2.0, false),
            drift("user_ctr_7d", 60_000, 0.01, false),
        ];
        let data = ReportData::build(
            &points,
            vec![
                span("score", 60_000),
                span("category", 60_000),
                span("price", 60_000),
            ],
        );
        let m = &data.models["ads-ctr"];
        assert_eq!(
            m.features_by_drift(),
            ["price", "category", "score", "user_ctr_7d"],
            "drifted features ahead of a larger PSI that never drifted"
        );
        let order: Vec<_> = data
            .alerts
            .iter()
            .map(|a| a.feature.clone().unwrap())
            .collect();
        assert_eq!(order, ["price", "category", "score"]);
    }

    #[test]
    fn versions_give_deploy_markers_and_segments_are_left_out() {
        let lat = |v: &str, t: i64, p99: f64| {
            Point::new("latency", t)
                .tag("model", "ctr-ranker")
                .tag("model_version", v)
                .tag("stage", "total")
                .field("p50", FieldValue::Float(1.0))
                .field("p99", FieldValue::Float(p99))
        };
        let segment = lat("3", 60_000, 99.0)
            .tag("dimension", "site")
            .tag("site", "cn");
        let points = [
            lat("3", 120_000, 5.0),
            lat("3", 60_000, 4.0),
            lat("4", 180_000, 20.0),
            segment,
        ];
        let data = ReportData::build(&points, Vec::new());
        let m = &data.models["ctr-ranker"];
        assert_eq!(m.deploys, [(180_000, "4".to_string())]);
        let v3 = &m.latency[&("3".to_string(), "total".to_string())];
        assert_eq!(
            v3.iter().map(|p| p.p99).collect::<Vec<_>>(),
            [4.0, 5.0],
            "sorted, no segment"
        );
        assert_eq!((data.start_ms, data.end_ms), (60_000, 180_000));
    }

    #[test]
    fn unjudged_drift_windows_have_no_verdict_and_two_versions_keep_the_worse() {
        let small = Point::new("drift", 60_000)
            .tag("model", "ads-ctr")
            .tag("model_version", "12")
            .tag("feature", "x")
            .field("null_rate", FieldValue::Float(0.0))
            .field("judged", FieldValue::Bool(false));
        let mut v13 = drift("x", 120_000, 0.5, true);
        v13.tags[1].1 = "13".into();
        let points = [small, drift("x", 120_000, 0.1, false), v13];
        let data = ReportData::build(&points, Vec::new());
        let cells = &data.models["ads-ctr"].drift["x"];
        assert_eq!(cells.len(), 2);
        assert_eq!((cells[0].drifted, cells[0].psi), (None, None));
        assert_eq!((cells[1].drifted, cells[1].psi), (Some(true), Some(0.5)));
    }
}
