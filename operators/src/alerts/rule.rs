//! Alert rules: which points a rule watches and when its condition holds.
//!
//! A rule watches one field of one measurement, on the points whose tags
//! match its filter. Its condition compares the value with a fixed
//! threshold, a trailing baseline of the same field (a multiple of it, or
//! an offset from it), or both; a separate resolve condition gives
//! hysteresis. Booleans count as 1 / 0, so `drifted == 1` is a condition.

use std::collections::BTreeMap;
use std::time::Duration;

use infermon_schemas::{FieldValue, Point};
use serde::{Deserialize, Serialize};

use super::horizon::{CountTest, EventRate};

/// How a value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Equal (for booleans and counts).
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    /// `value op bound`.
    pub fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Op::Gt => value > bound,
            Op::Ge => value >= bound,
            Op::Lt => value < bound,
            Op::Le => value <= bound,
            Op::Eq => value == bound,
        }
    }

    /// The opposite comparison, for a default resolve condition.
    pub fn negate(self) -> Op {
        match self {
            Op::Gt => Op::Le,
            Op::Ge => Op::Lt,
            Op::Lt => Op::Ge,
            Op::Le => Op::Gt,
            Op::Eq => Op::Eq,
        }
    }

    /// As written in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
        }
    }
}

/// A trailing baseline of the watched field: the condition compares the
/// value with `factor × median + offset` of the last `over` of values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// How far back the baseline reaches (event time).
    #[serde(with = "humantime_serde")]
    pub over: Duration,
    /// Multiplier of the baseline median.
    #[serde(default = "one")]
    pub factor: f64,
    /// Added to `factor × median`.
    #[serde(default)]
    pub offset: f64,
    /// Tags that key the baseline; the default `["model"]` pools every
    /// version of a model, so a slow new version is compared with the old.
    #[serde(default = "default_baseline_keys")]
    pub by: Vec<String>,
    /// Instead of `by`: key the baseline by every tag of the point but
    /// these, e.g. `["model_version"]`: each segment (`site=mx`) and stage
    /// then has a baseline of its own, pooled over versions.
    #[serde(default)]
    pub except: Option<Vec<String>>,
    /// Values needed before the baseline is trusted.
    #[serde(default = "default_min_values")]
    pub min_values: usize,
}

fn one() -> f64 {
    1.0
}

fn default_baseline_keys() -> Vec<String> {
    vec!["model".into()]
}

fn default_min_values() -> usize {
    5
}

/// What to do for a firing series when a window brings no point for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    /// Stay in the current state (the default).
    #[default]
    Keep,
    /// Treat as recovered.
    Resolve,
    /// Treat as the condition holding.
    Alert,
}

/// One alert rule (`[[alerts.rules]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Alert name (the `alertname` label).
    pub name: String,
    /// Measurement watched.
    pub measurement: String,
    /// Field watched; booleans read as 1 / 0.
    pub field: String,
    /// Tags the point must have, with these values; `""` means the tag
    /// is absent (or empty), `"*"` that it is present.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, String>,
    /// Comparison with the threshold and the baseline.
    pub op: Op,
    /// Fixed bound (both it and the baseline must hold when both are set).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Relative bound.
    #[serde(default)]
    pub baseline: Option<BaselineConfig>,
    /// Another field of the same point that must be at least this large,
    /// e.g. `requests` ≥ 100 before an error rate counts.
    #[serde(default)]
    pub min_field: Option<(String, f64)>,
    /// Hysteresis: firing ends only when `value resolve_op resolve_threshold`
    /// (default: the firing condition no longer holds).
    #[serde(default)]
    pub resolve_threshold: Option<f64>,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    /// How long the alert keeps firing after the condition clears.
    #[serde(default, with = "humantime_serde")]
    pub keep_firing_for: Duration,
    /// Missing data while firing.
    #[serde(default)]
    pub no_data: NoData,
    /// Points are events (anomalies), not per-window values: a window without
    /// one means the condition does not hold.
    #[serde(default)]
    pub events: bool,
    /// Judge counts over a horizon with a test that knows them (a rate
    /// against its normal level, a segment against the rest of its model,
    /// calibration): the judged value is the horizon's, and the condition
    /// also needs the test's p-value below its `max_pvalue`.
    #[serde(default)]
    pub test: Option<CountTest>,
    /// Event rules: the condition holds while at least `min` events came
    /// within `over` (one isolated event does not page).
    #[serde(default)]
    pub rate: Option<EventRate>,
    /// `critical`, `warning`, `info`.
    pub severity: String,
    /// Extra labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// One-line summary; `{tag}`, `{value}`, `{threshold}`, `{baseline}`
    /// and `{segment}` (`site=mx` on a segment series) are replaced.
    pub summary: String,
    /// Longer text, same placeholders.
    #[serde(default)]
    pub description: String,
}

/// A rule's verdict on one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The watched value.
    pub value: f64,
    /// The firing condition holds.
    pub firing: bool,
    /// The resolve condition holds.
    pub resolved: bool,
    /// The baseline bound used, if any.
    pub bound: Option<f64>,
}

impl RuleConfig {
    /// Whether `p` is one of this rule's points.
    pub fn matches(&self, p: &Point) -> bool {
        p.measurement == self.measurement
            && self.filter.iter().all(|(k, v)| {
                let tag = p.tag_value(k).unwrap_or_default();
                match v.as_str() {
                    "*" => !tag.is_empty(),
                    v => tag == v,
                }
            })
    }

    /// The watched value of `p`.
    pub fn value(&self, p: &Point) -> Option<f64> {
        numeric(p.field_value(&self.field)?)
    }

    /// Judge `value` of point `p` against the threshold and the baseline
    /// median (when the rule has a baseline and it is warm).
    pub fn judge(&self, p: &Point, value: f64, baseline_median: Option<f64>) -> Verdict {
        let bound = match (&self.baseline, baseline_median) {
            (Some(b), Some(m)) => Some(b.factor * m + b.offset),
            _ => None,
        };
        let big_enough = self.min_field.as_ref().is_none_or(|(f, min)| {
            p.field_value(f)
                .and_then(numeric)
                .is_some_and(|v| v >= *min)
        });
        let baseline_ok = match (&self.baseline, bound) {
            (None, _) => true,
            (Some(_), Some(b)) => self.op.holds(value, b),
            (Some(_), None) => false, // not warm yet: never fire on nothing
        };
        let threshold_ok = self.threshold.is_none_or(|t| self.op.holds(value, t));
        let firing = big_enough && baseline_ok && threshold_ok;
        let resolved = match self.resolve_threshold {
            Some(r) => self.op.negate().holds(value, r),
            None => !firing,
        };
        Verdict {
            value,
            firing,
            resolved,
            bound,
        }
    }

    /// `{name}` placeholders replaced by labels and numbers.
    pub fn render(&self, template: &str, labels: &BTreeMap<String, String>, v: &Verdict) -> String {
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[open..]);
                return out;
            };
            let key = &after[..close];
            match key {
                "value" => out.push_str(&short(v.value)),
                "threshold" => out.push_str(&self.threshold.map_or("-".into(), short)),
                "baseline" => out.push_str(&v.bound.map_or("-".into(), short)),
                "op" => out.push_str(self.op.as_str()),
                // A segment series names itself: `site=mx`.
                "segment" => match labels.get("dimension") {
                    Some(d) => {
                        let value = labels.get(d).map_or("", String::as_str);
                        out.push_str(&format!("{d}={value}"));
                    }
                    None => out.push_str("all"),
                },
                _ => match labels.get(key) {
                    Some(l) => out.push_str(l),
                    None => {
                        out.push('{');
                        out.push_str(key);
                        out.push('}');
                    }
                },
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

fn numeric(v: &FieldValue) -> Option<f64> {
    match v {
        FieldValue::Float(x) => Some(*x),
        FieldValue::Int(i) => Some(*i as f64),
        FieldValue::Bool(b) => Some(f64::from(u8::from(*b))),
        FieldValue::Str(_) => None,
    }
}

/// A number for humans: 4 significant digits, no trailing noise.
fn short(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> RuleConfig {
        toml::from_str(toml_text).unwrap()
    }

    const LATENCY: &str = r#"
        name = "slow"
        measurement = "latency"
        field = "p99"
        where = { stage = "total" }
        op = ">"
        threshold = 20.0
        baseline = { over = "1h", factor = 2.0 }
        severity = "warning"
        summary = "p99 of {model} v{model_version} is {value} ms ({op} {baseline})"
    "#;

    fn point(stage: &str, p99: f64) -> Point {
        Point::new("latency", 60_000)
            .tag("model", "m")
            .tag("model_version", "2")
            .tag("stage", stage)
            .field("p99", FieldValue::Float(p99))
    }

    #[test]
    fn filter_threshold_and_baseline_all_hold() {
        let r = rule(LATENCY);
        assert!(!r.matches(&point("queue", 50.0)));
        let p = point("total", 50.0);
        assert!(r.matches(&p));
        assert!(r.judge(&p, 50.0, Some(10.0)).firing);
        // Above the baseline but under the floor of 20 ms.
        assert!(!r.judge(&p, 19.0, Some(5.0)).firing);
        // Above the floor but within 2x the baseline.
        assert!(!r.judge(&p, 30.0, Some(20.0)).firing);
        // No baseline yet: never fires.
        assert!(!r.judge(&p, 500.0, None).firing);
    }

    #[test]
    fn min_field_and_hysteresis() {
        let r = rule(
            r#"
            name = "errors"
            measurement = "throughput"
            field = "error_rate"
            op = ">="
            threshold = 0.02
            resolve_threshold = 0.01
            min_field = ["requests", 100]
            severity = "critical"
            summary = "x"
        "#,
        );
        let p = |rate: f64, n: i64| {
            Point::new("throughput", 0)
                .field("error_rate", FieldValue::Float(rate))
                .field("requests", FieldValue::Int(n))
        };
        assert!(r.judge(&p(0.05, 500), 0.05, None).firing);
        assert!(
            !r.judge(&p(0.05, 50), 0.05, None).firing,
            "too few requests"
        );
        // Between the resolve and the firing bound: neither.
        let v = r.judge(&p(0.015, 500), 0.015, None);
        assert!(!v.firing && !v.resolved);
        assert!(r.judge(&p(0.005, 500), 0.005, None).resolved);
    }

    #[test]
    fn templates_name_tags_and_values() {
        let r = rule(LATENCY);
        let labels: BTreeMap<String, String> = [("model", "m"), ("model_version", "2")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let v = r.judge(&point("total", 51.234), 51.234, Some(10.0));
        assert_eq!(
            r.render(&r.summary, &labels, &v),
            "p99 of m v2 is 51.23 ms (> 20.00)"
        );
        assert_eq!(r.render("{nope} {", &labels, &v), "{nope} {");
    }
}
