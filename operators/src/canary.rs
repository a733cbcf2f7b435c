//! Canary against stable: when two versions of a model serve in the same
//! windows, compare them there, with a test that knows the counts.
//!
//! The version with the most requests (labelled predictions, for quality)
//! in the window is the baseline (the stable one); every other version is a
//! candidate. Each comparison is a `comparison` point tagged with the
//! candidate as `model_version` (so an alert on it names the version a
//! rollback takes out), the `baseline_version` and the `metric`. Its
//! `baseline` and `candidate` are the window's values; its `pvalue` is
//! one-sided — the chance of a gap at least this bad if the candidate were
//! no worse — over the trailing `horizon` of windows in which both served
//! (a 30 % canary at 20 requests/s cannot show a CTR drop in one minute,
//! ten minutes can); `worse` is true when that p-value is at most
//! `max_pvalue`, both sides have `min_count` over the horizon, *and* the
//! gap is at least the configured effect size.
//!
//! | metric | statistic | test over the horizon |
//! |---|---|---|
//! | `latency_p99` | total p99 | two-proportion z on the requests above each window's pooled p99 (counted in the sketches' bins); effect: the window's p99 ratio |
//! | `error_rate` | errors / requests | two-proportion z (pooled) |
//! | `ctr` | clicks / labelled | two-proportion z (pooled) |
//! | `calibration` | mean score / ctr | z of the candidate's clicks against its Poisson-binomial expectation (two-sided) |
//! | `auc` | AUC | z with Hanley & McNeil's (1982) standard errors, this window only (AUCs do not add) |
//! | `ndcg_at_<k>` | mean per-list NDCG@k (largest k) | Welch's z on the per-list values |

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use infermon_schemas::{FieldValue, Point};
use serde::{Deserialize, Serialize};

use crate::alerts::horizon::{calibration_z, normal_cdf, two_proportion_z};
use crate::quality::{Quality, Ranking};
use crate::sketch::LatencySketch;

/// When a candidate counts as worse (`[canary]` in the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// Write `comparison` points at all.
    pub enabled: bool,
    /// How far back the counts of a test reach (event time, whole windows).
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// The one-sided p-value at or below which a gap is significant.
    pub max_pvalue: f64,
    /// Requests, labelled predictions or clicked lists each version needs
    /// over the horizon before it is judged.
    pub min_count: u64,
    /// Candidate p99 at least this multiple of the baseline's.
    pub latency_ratio: f64,
    /// Candidate error rate at least this much above the baseline's
    /// (absolute, 0.01 = one percentage point).
    pub error_rate_increase: f64,
    /// Candidate CTR at least this share below the baseline's (relative).
    pub ctr_drop: f64,
    /// Candidate AUC at least this much below the baseline's (absolute).
    pub auc_drop: f64,
    /// Candidate mean NDCG at least this share below the baseline's
    /// (relative).
    pub ndcg_drop: f64,
    /// Candidate calibration at least this much further from 1 than the
    /// baseline's (|calibration − 1|, absolute).
    pub calibration_gap: f64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            horizon: Duration::from_secs(600),
            max_pvalue: 1e-4,
            min_count: 100,
            latency_ratio: 1.2,
            error_rate_increase: 0.01,
            ctr_drop: 0.1,
            auc_drop: 0.02,
            ndcg_drop: 0.05,
            calibration_gap: 0.2,
        }
    }
}

/// One version's serving in a window.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The version.
    pub version: &'a str,
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Total latency (ms).
    pub latency: &'a LatencySketch,
}

/// One version's labelled results in a window.
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    /// The version.
    pub version: &'a str,
    /// Pointwise quality, when labelled.
    pub quality: Option<&'a Quality>,
    /// Ranking quality, when it serves ranked lists.
    pub ranking: Option<&'a Ranking>,
}

/// One metric of a candidate against the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// `latency_p99`, `error_rate`, `ctr`, `calibration`, `auc`, `ndcg_at_<k>`.
    pub metric: String,
    /// The baseline's value in the window.
    pub baseline: f64,
    /// The candidate's value in the window.
    pub candidate: f64,
    /// One-sided p-value that the candidate is worse, over the horizon
    /// (None: no test possible, e.g. no variance).
    pub pvalue: Option<f64>,
    /// Counts behind the baseline's side of the test (over the horizon).
    pub n_baseline: u64,
    /// Counts behind the candidate's side.
    pub n_candidate: u64,
    /// Significant, enough counts, and at least the effect size.
    pub worse: bool,
}

impl Comparison {
    /// The `comparison` point of `model`'s `candidate` against `baseline`.
    pub fn point(&self, model: &str, baseline: &str, candidate: &str, end_ms: i64) -> Point {
        let mut p = Point::new("comparison", end_ms)
            .tag("model", model)
            .tag("model_version", candidate)
            .tag("baseline_version", baseline)
            .tag("metric", &self.metric)
            .field("baseline", FieldValue::Float(self.baseline))
            .field("candidate", FieldValue::Float(self.candidate))
            .field(
                "difference",
                FieldValue::Float(self.candidate - self.baseline),
            );
        if let Some(pv) = self.pvalue {
            p = p.field("pvalue", FieldValue::Float(pv));
        }
        p.field("n_baseline", FieldValue::Int(self.n_baseline as i64))
            .field("n_candidate", FieldValue::Int(self.n_candidate as i64))
            .field("worse", FieldValue::Bool(self.worse))
    }
}

/// The upper tail of the standard normal: the one-sided p-value of `z`.
fn upper(z: f64) -> f64 {
    normal_cdf(-z)
}

/// (model, baseline, candidate, metric).
type TrailKey = (String, String, String, String);

/// Count sums of one comparison, per window (what its test adds up).
type Sums = [f64; 6];

/// Compares each model's versions per window, keeping the trailing counts
/// of every comparison for its test. State: a few numbers per comparison
/// and window of the horizon.
#[derive(Debug, Clone)]
pub struct CanaryJudge {
    config: CanaryConfig,
    trails: HashMap<TrailKey, VecDeque<(i64, Sums)>>,
}

/// What one comparison's metric adds to its trail and how it is judged.
struct Observed {
    metric: String,
    baseline: f64,
    candidate: f64,
    sums: Sums,
}

impl CanaryJudge {
    /// A judge with no history.
    pub fn new(config: CanaryConfig) -> Self {
        Self {
            config,
            trails: HashMap::new(),
        }
    }

    /// Latency and errors of every candidate of `model` against the
    /// baseline in the window ending at `end`, as `comparison` points;
    /// none with fewer than two versions.
    pub fn compare_serving(
        &mut self,
        model: &str,
        versions: &[Served<'_>],
        end: i64,
    ) -> Vec<Point> {
        let Some(base) = baseline(versions, |v| v.requests) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for cand in versions.iter().filter(|v| v.version != base.version) {
            let mut observed = Vec::new();
            let (nb, nc) = (base.latency.count(), cand.latency.count());
            if let (Some(pb), Some(pc)) = (base.latency.quantile(0.99), cand.latency.quantile(0.99))
            {
                let mut pooled = base.latency.clone();
                if let Some(t) = pooled
                    .merge(cand.latency)
                    .ok()
                    .and_then(|()| pooled.quantile(0.99))
                {
                    let (xb, xc) = (base.latency.count_above(t), cand.latency.count_above(t));
                    observed.push(Observed {
                        metric: "latency_p99".into(),
                        baseline: pb,
                        candidate: pc,
                        sums: [xb as f64, nb as f64, xc as f64, nc as f64, 0.0, 0.0],
                    });
                }
            }
            if base.requests > 0 && cand.requests > 0 {
                observed.push(Observed {
                    metric: "error_rate".into(),
                    baseline: base.errors as f64 / base.requests as f64,
                    candidate: cand.errors as f64 / cand.requests as f64,
                    sums: [
                        base.errors as f64,
                        base.requests as f64,
                        cand.errors as f64,
                        cand.requests as f64,
                        0.0,
                        0.0,
                    ],
                });
            }
            for j in observed {
                let c = self.judge(model, base.version, cand.version, end, j);
                out.push(c.point(model, base.version, cand.version, end));
            }
        }
        out
    }

    /// Label quality (CTR, calibration, AUC, NDCG) of every candidate of
    /// `model` against the baseline in the window ending at `end`.
    pub fn compare_labels(
        &mut self,
        model: &str,
        versions: &[Labelled<'_>],
        end: i64,
    ) -> Vec<Point> {
        let labelled = |v: &Labelled<'_>| v.quality.map_or(0, |q| q.n_labeled);
        let Some(base) = baseline(versions, labelled) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for cand in versions.iter().filter(|v| v.version != base.version) {
            let mut observed = Vec::new();
            if let (Some(b), Some(c)) = (base.quality, cand.quality) {
                observed.push(Observed {
                    metric: "ctr".into(),
                    baseline: b.ctr,
                    candidate: c.ctr,
                    sums: [
                        b.clicks as f64,
                        b.n_labeled as f64,
                        c.clicks as f64,
                        c.n_labeled as f64,
                        0.0,
                        0.0,
                    ],
                });
                if let (Some(cb), Some(cc)) = (b.calibration, c.calibration) {
                    observed.push(Observed {
                        metric: "calibration".into(),
                        baseline: cb,
                        candidate: cc,
                        sums: [
                            b.clicks as f64,
                            b.expected_clicks,
                            c.clicks as f64,
                            c.expected_clicks,
                            c.click_variance,
                            0.0,
                        ],
                    });
                }
                if let (Some(ab), Some(ac)) = (b.auc, c.auc) {
                    let var = |q: &Quality, a: f64| {
                        hanley_mcneil_variance(a, q.clicks as f64, (q.n_labeled - q.clicks) as f64)
                    };
                    observed.push(Observed {
                        metric: "auc".into(),
                        baseline: ab,
                        candidate: ac,
                        sums: [
                            var(b, ab),
                            b.n_labeled as f64,
                            var(c, ac),
                            c.n_labeled as f64,
                            0.0,
                            0.0,
                        ],
                    });
                }
            }
            if let (Some(rb), Some(rc)) = (base.ranking, cand.ranking)
                && let (Some((k, sb, qb, nb)), Some((_, sc, qc, nc))) =
                    (rb.ndcg_sums(), rc.ndcg_sums())
                && nb > 0
                && nc > 0
            {
                observed.push(Observed {
                    metric: format!("ndcg_at_{k}"),
                    baseline: sb / nb as f64,
                    candidate: sc / nc as f64,
                    sums: [sb, qb, nb as f64, sc, qc, nc as f64],
                });
            }
            for j in observed {
                let c = self.judge(model, base.version, cand.version, end, j);
                out.push(c.point(model, base.version, cand.version, end));
            }
        }
        out
    }

    /// Add the window's sums to the comparison's trail and test the trail.
    fn judge(&mut self, model: &str, base: &str, cand: &str, end: i64, j: Observed) -> Comparison {
        let config = &self.config;
        let key = (
            model.to_string(),
            base.to_string(),
            cand.to_string(),
            j.metric.clone(),
        );
        let trail = self.trails.entry(key).or_default();
        trail.push_back((end, j.sums));
        let from = end - config.horizon.as_millis() as i64;
        while trail.front().is_some_and(|(t, _)| *t <= from) {
            trail.pop_front();
        }
        let mut s = [0.0; 6];
        for (_, w) in trail.iter() {
            for (acc, v) in s.iter_mut().zip(w) {
                *acc += v;
            }
        }
        let significant = |p: Option<f64>| p.is_some_and(|p| p <= config.max_pvalue);
        let min = config.min_count as f64;
        let (pvalue, nb, nc, effect) = match j.metric.as_str() {
            // [bad_b, n_b, bad_c, n_c]: the candidate has more bad ones.
            "latency_p99" | "error_rate" => {
                let p = two_proportion_z(s[2], s[3], s[0], s[1]).map(upper);
                let effect = if j.metric == "latency_p99" {
                    j.candidate >= config.latency_ratio * j.baseline
                } else {
                    s[2] / s[3] >= s[0] / s[1] + config.error_rate_increase
                };
                (p, s[1], s[3], effect)
            }
            // [clicks_b, n_b, clicks_c, n_c]: the baseline has more clicks.
            "ctr" => {
                let p = two_proportion_z(s[0], s[1], s[2], s[3]).map(upper);
                (
                    p,
                    s[1],
                    s[3],
                    s[2] / s[3] <= (s[0] / s[1]) * (1.0 - config.ctr_drop),
                )
            }
            // [clicks_b, expected_b, clicks_c, expected_c, variance_c].
            "calibration" => {
                let p = calibration_z(s[2], s[3], s[4]).map(|z| 2.0 * upper(z.abs()));
                let (cb, cc) = (s[1] / s[0], s[3] / s[2]);
                let effect = (cc - 1.0).abs() >= (cb - 1.0).abs() + config.calibration_gap;
                (p, s[0], s[2], effect)
            }
            // This window's [var_b, n_b, var_c, n_c] only.
            "auc" => {
                let w = j.sums;
                let se = (w[0] + w[2]).sqrt();
                let p = (se > 0.0).then(|| upper((j.baseline - j.candidate) / se));
                (p, w[1], w[3], j.baseline - j.candidate >= config.auc_drop)
            }
            // [sum_b, sq_b, n_b, sum_c, sq_c, n_c] of per-list NDCG.
            _ => {
                let moments = |sum: f64, sq: f64, n: f64| {
                    let mean = sum / n;
                    (mean, ((sq - n * mean * mean) / (n - 1.0)).max(0.0))
                };
                let (mb, vb) = moments(s[0], s[1], s[2]);
                let (mc, vc) = moments(s[3], s[4], s[5]);
                let se = (vb / s[2] + vc / s[5]).sqrt();
                let p = (s[2] >= 2.0 && s[5] >= 2.0 && se > 0.0).then(|| upper((mb - mc) / se));
                (p, s[2], s[5], mc <= mb * (1.0 - config.ndcg_drop))
            }
        };
        Comparison {
            metric: j.metric,
            baseline: j.baseline,
            candidate: j.candidate,
            pvalue,
            n_baseline: nb as u64,
            n_candidate: nc as u64,
            worse: nb >= min && nc >= min && significant(pvalue) && effect,
        }
    }
}

/// The version with the largest `size` (ties: the first), when there is
/// a second version.
fn baseline<T>(versions: &[T], size: impl Fn(&T) -> u64) -> Option<&T> {
    if versions.len() < 2 {
        return None;
    }
    versions.iter().rev().max_by_key(|v| size(v))
}

/// Variance of an AUC estimate with `pos` positives and `neg` negatives
/// (Hanley & McNeil 1982, eq. 2).
fn hanley_mcneil_variance(auc: f64, pos: f64, neg: f64) -> f64 {
    if pos < 1.0 || neg < 1.0 {
        return 0.0;
    }
    let q1 = auc / (2.0 - auc);
    let q2 = 2.0 * auc * auc / (1.0 + auc);
    (auc * (1.0 - auc) + (pos - 1.0) * (q1 - auc * auc) + (neg - 1.0) * (q2 - auc * auc))
        / (pos * neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(values: impl Iterator<Item = f64>) -> LatencySketch {
        let mut s = LatencySketch::default();
        values.for_each(|v| s.add(v));
        s
    }

    fn worse(points: &[Point], metric: &str) -> bool {
        let p = points
            .iter()
            .find(|p| p.tag_value("metric") == Some(metric))
            .unwrap();
        p.field_value("worse") == Some(&FieldValue::Bool(true))
    }

    #[test]
    fn a_slower_canary_is_worse_and_an_equal_one_is_not() {
        let fast = sketch((0..5000).map(|i| 5.0 + (i % 100) as f64 * 0.1));
        let same = sketch((0..1000).map(|i| 5.0 + (i % 100) as f64 * 0.1));
        let slow = sketch((0..1000).map(|i| 8.0 + (i % 100) as f64 * 0.2));
        let served = |version, latency: &'static LatencySketch| Served {
            version,
            requests: latency.count(),
            errors: 0,
            latency,
        };
        let (fast, same, slow) = (
            Box::leak(Box::new(fast)),
            Box::leak(Box::new(same)),
            Box::leak(Box::new(slow)),
        );
        let mut judge = CanaryJudge::new(CanaryConfig::default());
        let points = judge.compare_serving("m", &[served("1", fast), served("2", slow)], 60_000);
        assert_eq!(points[0].tag_value("model_version"), Some("2"));
        assert_eq!(points[0].tag_value("baseline_version"), Some("1"));
        assert!(worse(&points, "latency_p99"));
        assert!(!worse(&points, "error_rate"));
        let mut judge = CanaryJudge::new(CanaryConfig::default());
        let points = judge.compare_serving("m", &[served("1", fast), served("2", same)], 60_000);
        assert!(!worse(&points, "latency_p99"));
    }

    #[test]
    fn one_version_is_not_compared() {
        let s = sketch([1.0].into_iter());
        let one = Served {
            version: "1",
            requests: 1,
            errors: 0,
            latency: &s,
        };
        let mut judge = CanaryJudge::new(CanaryConfig::default());
        assert!(judge.compare_serving("m", &[one], 60_000).is_empty());
    }
}
