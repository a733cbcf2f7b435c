//! The HTML page: a summary of what fired, then per model its charts.
//! One self-contained file: inline CSS and SVG, no script, nothing fetched.

use std::collections::BTreeMap;
use std::fmt::Write;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use super::alerts::AlertSpan;
use super::charts::{self, ChartError, HeatRow, Line, TimeChart};
use super::data::{ModelData, ReportData};
use super::time::utc;

const STYLE: &str = "body{font-family:sans-serif;margin:16px auto;max-width:960px;color:#222}\
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:32px}\
h3{font-size:15px}table{border-collapse:collapse;font-size:13px;margin:8px 0}\
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}th{background:#f4f4f4}\
figure{margin:8px 0}.note{color:#666;font-size:13px}.critical{color:#d62728;font-weight:bold}\
.warning{color:#e07000}";

/// Which chart an alert belongs on, by its rule name.
pub fn chart_of(alertname: &str) -> &'static str {
    if alertname.starts_with("latency") {
        "latency"
    } else if alertname.contains("error_rate") {
        "errors"
    } else if alertname == "feature_drift"
        || alertname.starts_with("null_rate")
        || alertname.contains("drift")
    {
        "drift"
    } else if alertname.starts_with("calibration") {
        "quality"
    } else if alertname.starts_with("gradient") || alertname.starts_with("loss") {
        "gradients"
    } else {
        "alerts"
    }
}

/// A DOM id part from a model name.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn figure(out: &mut String, model: &str, kind: &str, svg: &str) {
    let _ = write!(
        out,
        "<figure class=\"chart\" id=\"chart-{}-{}\" data-model=\"{}\" data-chart=\"{}\">{svg}</figure>",
        slug(model),
        kind,
        attr(model),
        kind
    );
}

fn fmt_opt(v: Option<&str>) -> String {
    v.map_or_else(|| "—".to_string(), |s| text(s).to_string())
}

fn summary(out: &mut String, data: &ReportData) {
    out.push_str("<section id=\"summary\"><h2>What fired</h2>");
    if data.alerts.is_empty() {
        out.push_str("<p id=\"nothing-fired\">No alert fired.</p>");
    } else {
        out.push_str(
            "<table id=\"summary-table\"><tr><th>from</th><th>to</th><th>alert</th>\
             <th>model</th><th>version</th><th>feature</th><th>severity</th><th>summary</th></tr>",
        );
        for a in &data.alerts {
            let _ = write!(
                out,
                "<tr class=\"fired\" data-alertname=\"{}\" data-model=\"{}\" data-version=\"{}\" \
                 data-feature=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                attr(&a.alertname),
                attr(&a.model),
                attr(a.version.as_deref().unwrap_or("")),
                attr(a.feature.as_deref().unwrap_or("")),
                utc(a.start_ms),
                a.end_ms.map_or("still firing".into(), utc),
                text(&a.alertname),
                text(&a.model),
                fmt_opt(a.version.as_deref()),
                fmt_opt(a.feature.as_deref()),
                attr(&a.severity),
                text(&a.severity),
                text(&a.summary),
            );
        }
        out.push_str("</table>");
    }
    let drifted: Vec<String> = data
        .models
        .iter()
        .filter_map(|(name, m)| {
            let features: Vec<String> = m
                .features_by_drift()
                .into_iter()
                .filter(|f| m.drift[f].iter().any(|c| c.drifted == Some(true)))
                .collect();
            (!features.is_empty()).then(|| {
                format!(
                    "<li data-model=\"{}\">{}: {}</li>",
                    attr(name),
                    text(name),
                    text(&features.join(", "))
                )
            })
        })
        .collect();
    if !drifted.is_empty() {
        let _ = write!(
            out,
            "<p>Drifted features, most drifted first:</p><ul id=\"drifted-features\">{}</ul>",
            drifted.concat()
        );
    }
    out.push_str("</section>");
}

fn model_section(
    out: &mut String,
    name: &str,
    m: &ModelData,
    data: &ReportData,
) -> Result<(), ChartError> {
    let range = (data.start_ms, data.end_ms);
    let all: Vec<&AlertSpan> = data.alerts.iter().filter(|a| a.model == name).collect();
    let spans_for = |chart: &str| -> Vec<&AlertSpan> {
        all.iter()
            .copied()
            .filter(|a| chart_of(&a.alertname) == chart)
            .collect()
    };
    let _ = write!(
        out,
        "<section class=\"model\" id=\"model-{}\" data-model=\"{}\"><h2>{}</h2>",
        slug(name),
        attr(name),
        text(name)
    );
    if !all.is_empty() {
        figure(
            out,
            name,
            "alerts",
            &charts::alert_timeline("Alerts (firing spans)", &all, range)?,
        );
    }
    let versions: Vec<&String> = {
        let mut v: Vec<&String> = m
            .latency
            .keys()
            .map(|k| &k.0)
            .chain(m.throughput.keys())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let color = |v: &str| versions.iter().position(|x| *x == v).unwrap_or(0);
    if !m.latency.is_empty() {
        let mut lines = Vec::new();
        for ((v, stage), points) in &m.latency {
            if stage == "total" {
                lines.push(Line {
                    label: format!("v{v} p99"),
                    points: points.iter().map(|p| (p.t, p.p99)).collect(),
                    dashed: false,
                    color: color(v),
                });
                lines.push(Line {
                    label: format!("v{v} p50"),
                    points: points.iter().map(|p| (p.t, p.p50)).collect(),
                    dashed: true,
                    color: color(v),
                });
            }
        }
        let spans = spans_for("latency");
        figure(
            out,
            name,
            "latency",
            &charts::time_chart(&TimeChart {
                title: "Latency, total: p99 (solid) and p50 (dashed) by version".into(),
                y_desc: "ms".into(),
                lines,
                markers: &m.deploys,
                dots: Vec::new(),
                spans: &spans,
                range,
            })?,
        );
        let stages: Vec<Line> = m
            .latency
            .iter()
            .filter(|((_, stage), _)| stage != "total")
            .enumerate()
            .map(|(i, ((v, stage), points))| Line {
                label: format!("v{v} {stage}"),
                points: points.iter().map(|p| (p.t, p.p99)).collect(),
                dashed: color(v) % 2 == 1,
                color: i,
            })
            .collect();
        if !stages.is_empty() {
            figure(
                out,
                name,
                "stages",
                &charts::time_chart(&TimeChart {
                    title: "Latency p99 by stage and version".into(),
                    y_desc: "ms".into(),
                    lines: stages,
                    markers: &m.deploys,
                    dots: Vec::new(),
                    spans: &[],
                    range,
                })?,
            );
        }
    }
    if !m.throughput.is_empty() {
        let line = |f: fn(&super::data::ThroughputPoint) -> f64| -> Vec<Line> {
            m.throughput
                .iter()
                .map(|(v, points)| Line {
                    label: format!("v{v}"),
                    points: points.iter().map(|p| (p.t, f(p))).collect(),
                    dashed: false,
                    color: color(v),
                })
                .collect()
        };
        figure(
            out,
            name,
            "throughput",
            &charts::time_chart(&TimeChart {
                title: "Throughput by version".into(),
                y_desc: "requests/s".into(),
                lines: line(|p| p.rps),
                markers: &m.deploys,
                dots: Vec::new(),
                spans: &[],
                range,
            })?,
        );
        let spans = spans_for("errors");
        figure(
            out,
            name,
            "errors",
            &charts::time_chart(&TimeChart {
                title: "Error rate by version".into(),
                y_desc: "errors / requests".into(),
                lines: line(|p| p.error_rate),
                markers: &m.deploys,
                dots: Vec::new(),
                spans: &spans,
                range,
            })?,
        );
    }
    if !m.drift.is_empty() {
        let order = m.features_by_drift();
        let rows: Vec<HeatRow> = order
            .iter()
            .map(|f| HeatRow {
                label: f.clone(),
                cells: m.drift[f]
                    .iter()
                    .map(|c| (c.t, c.psi.unwrap_or(0.0), c.drifted == Some(true)))
                    .collect(),
            })
            .collect();
        let spans = spans_for("drift");
        figure(
            out,
            name,
            "drift",
            &charts::heat_map(
                "Drift: PSI per feature and window (white 0, red ≥ 1; outlined: drifted)",
                &rows,
                &spans,
                range,
            )?,
        );
        let nulls: Vec<Line> = order
            .iter()
            .enumerate()
            .filter(|(_, f)| m.drift[*f].iter().any(|c| c.null_rate > 0.0))
            .map(|(i, f)| Line {
                label: f.clone(),
                points: m.drift[f].iter().map(|c| (c.t, c.null_rate)).collect(),
                dashed: false,
                color: i,
            })
            .collect();
        if !nulls.is_empty() {
            figure(
                out,
                name,
                "nulls",
                &charts::time_chart(&TimeChart {
                    title: "Null rate by feature".into(),
                    y_desc: "share null".into(),
                    lines: nulls,
                    markers: &[],
                    dots: Vec::new(),
                    spans: &spans,
                    range,
                })?,
            );
        }
        drifted_windows(out, m, &order);
    }
    if !m.quality.is_empty() {
        let mut lines = Vec::new();
        for (i, (field, f)) in [
            (
                "AUC",
                (|p: &super::data::QualityPoint| p.auc) as fn(&_) -> _,
            ),
            ("log loss", |p| p.logloss),
            ("CTR", |p| p.ctr),
            ("calibration", |p| p.calibration),
        ]
        .into_iter()
        .enumerate()
        {
            for (v, points) in &m.quality {
                lines.push(Line {
                    label: format!("v{v} {field}"),
                    points: points.iter().filter_map(|p| Some((p.t, f(p)?))).collect(),
                    dashed: color(v) % 2 == 1,
                    color: i,
                });
            }
        }
        let spans = spans_for("quality");
        figure(
            out,
            name,
            "quality",
            &charts::time_chart(&TimeChart {
                title: "Label quality by version (calibration = mean score / CTR)".into(),
                y_desc: "".into(),
                lines,
                markers: &m.deploys,
                dots: Vec::new(),
                spans: &spans,
                range,
            })?,
        );
    }
    if !m.gradients.is_empty() || !m.anomalies.is_empty() {
        let mut lines = Vec::new();
        for (i, (run, points)) in m.gradients.iter().enumerate() {
            lines.push(Line {
                label: format!("{run} grad norm max"),
                points: points
                    .iter()
                    .filter_map(|p| Some((p.t, p.grad_norm_max?)))
                    .collect(),
                dashed: false,
                color: 2 * i,
            });
            lines.push(Line {
                label: format!("{run} loss"),
                points: points
                    .iter()
                    .filter_map(|p| Some((p.t, p.loss_last?)))
                    .collect(),
                dashed: true,
                color: 2 * i + 1,
            });
        }
        let dots = m
            .anomalies
            .iter()
            .filter_map(|a| Some((a.t, a.grad_norm.filter(|g| g.is_finite())?, a.kind.clone())))
            .collect();
        let spans = spans_for("gradients");
        figure(
            out,
            name,
            "gradients",
            &charts::time_chart(&TimeChart {
                title: "Training: grad norm (per window max) and loss, anomalies as dots".into(),
                y_desc: "".into(),
                lines,
                markers: &[],
                dots,
                spans: &spans,
                range,
            })?,
        );
        anomalies(out, m);
    }
    out.push_str("</section>");
    Ok(())
}

fn drifted_windows(out: &mut String, m: &ModelData, order: &[String]) {
    let rows: Vec<String> = order
        .iter()
        .filter_map(|f| {
            let drifted: Vec<_> = m.drift[f].iter().filter(|c| c.drifted == Some(true)).collect();
            let first = drifted.first()?;
            let last = drifted.last()?;
            let max = drifted.iter().filter_map(|c| c.psi).fold(0.0_f64, f64::max);
            Some(format!(
                "<tr data-feature=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{max:.3}</td></tr>",
                attr(f),
                text(f),
                drifted.len(),
                utc(first.t),
                utc(last.t),
            ))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<h3>Drifted windows</h3><table class=\"drifted\"><tr><th>feature</th><th>windows</th>\
         <th>first (window end)</th><th>last</th><th>max PSI</th></tr>{}</table>\
         <p class=\"note\">Reference and current distributions are not shown: <code>drift</code> \
         points carry the statistics (PSI, KS, JS, W₁, null rate), not the bin counts.</p>",
        rows.concat()
    );
}

fn anomalies(out: &mut String, m: &ModelData) {
    if m.anomalies.is_empty() {
        return;
    }
    let mut by_kind: BTreeMap<&str, (usize, i64, i64)> = BTreeMap::new();
    for a in &m.anomalies {
        let e = by_kind.entry(&a.kind).or_insert((0, a.t, a.t));
        e.0 += 1;
        e.1 = e.1.min(a.t);
        e.2 = e.2.max(a.t);
    }
    out.push_str(
        "<h3>Gradient anomalies</h3><table class=\"anomalies\"><tr><th>kind</th><th>steps</th>\
         <th>first</th><th>last</th></tr>",
    );
    for (kind, (n, first, last)) in by_kind {
        let _ = write!(
            out,
            "<tr data-kind=\"{}\"><td>{}</td><td>{n}</td><td>{}</td><td>{}</td></tr>",
            attr(kind),
            text(kind),
            utc(first),
            utc(last)
        );
    }
    out.push_str("</table>");
}

/// The whole page for `data`; `source` says what it was made from.
///
/// # Errors
/// A chart could not be drawn.
pub fn render(data: &ReportData, source: &str) -> Result<String, ChartError> {
    let mut out = String::with_capacity(256 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>infermon report</title><style>{STYLE}</style></head><body>\
         <h1>infermon report</h1><p class=\"note\" id=\"source\">{} — {} to {}, {} points, \
         {} alerts. Times are event time (UTC).</p>",
        text(source),
        utc(data.start_ms),
        utc(data.end_ms),
        data.points,
        data.alerts.len()
    );
    summary(&mut out, data);
    for (name, m) in &data.models {
        model_section(&mut out, name, m, data)?;
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use infermon_schemas::{FieldValue, Point};

    use super::*;

    #[test]
    fn alerts_go_on_the_chart_of_what_they_watch() {
        assert_eq!(chart_of("latency_p99_regression"), "latency");
        assert_eq!(chart_of("error_rate_high"), "errors");
        assert_eq!(chart_of("segment_error_rate"), "errors");
        assert_eq!(chart_of("feature_drift"), "drift");
        assert_eq!(chart_of("null_rate_jump"), "drift");
        assert_eq!(chart_of("gradient_nonfinite"), "gradients");
        assert_eq!(chart_of("loss_divergence"), "gradients");
        assert_eq!(chart_of("calibration_over_predicts"), "quality");
        assert_eq!(chart_of("my_rule"), "alerts");
    }

    #[test]
    fn a_page_has_the_summary_and_a_section_per_model_and_escapes_names() {
        let p = Point::new("throughput", 60_000)
            .tag("model", "a<b")
            .tag("model_version", "1")
            .field("rps", FieldValue::Float(2.0))
            .field("error_rate", FieldValue::Float(0.0));
        let html = render(&ReportData::build(&[p], Vec::new()), "x & y").unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("id=\"nothing-fired\""));
        assert!(html.contains("x &amp; y"));
        assert!(html.contains("data-model=\"a&lt;b\""));
        assert!(html.contains("id=\"chart-a-b-errors\""));
        assert!(!html.contains("<script"), "nothing to run, nothing fetched");
        assert!(!html.contains(" src=") && !html.contains("<link") && !html.contains("href="));
    }
}
