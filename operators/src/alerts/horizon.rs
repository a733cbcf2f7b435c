//! Rules that judge counts over a horizon instead of one window's value:
//! a rate against its normal level with a binomial test, a segment against
//! the rest of its model with a two-proportion test, clicks against the
//! clicks a model predicted (calibration), and a count of anomaly events.
//! The tests know how many events there were, so a low-traffic model is
//! judged as soon as its counts say something, and a noisy window alone
//! never pages.
//!
//! Formulas: the binomial upper tail `P(X ≥ k)`, `X ~ Bin(n, p0)`; the
//! pooled two-proportion z statistic (Agresti, *Categorical Data
//! Analysis*, §2.2); for calibration, clicks are a sum of independent
//! Bernoulli(pᵢ) (a Poisson-binomial), tested with its normal
//! approximation `z = (O − Σpᵢ) / √Σpᵢ(1 − pᵢ)` (Lyapunov CLT).

use std::collections::VecDeque;
use std::time::Duration;

use infermon_schemas::{FieldValue, Point};
use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal};

/// A test over the counts of the last `over` of windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CountTest {
    /// `successes / trials` above a normal rate `p0`: one-sided binomial.
    /// The judged value is the horizon's rate.
    Binomial {
        /// Count field of events (e.g. `errors`).
        successes: String,
        /// Count field of trials (e.g. `requests`).
        trials: String,
        /// The normal rate.
        p0: f64,
        /// Horizon (event time).
        #[serde(with = "humantime_serde")]
        over: Duration,
        /// The test's p-value must be below this.
        max_pvalue: f64,
    },
    /// A segment's rate above the rest of its model's: one-sided pooled
    /// two-proportion z test. The judged value is the segment's rate.
    TwoProportion {
        /// The segment's event count field.
        successes: String,
        /// The segment's trial count field.
        trials: String,
        /// The rest of the model's event count field.
        rest_successes: String,
        /// The rest of the model's trial count field.
        rest_trials: String,
        /// Horizon (event time).
        #[serde(with = "humantime_serde")]
        over: Duration,
        /// The test's p-value must be below this.
        max_pvalue: f64,
    },
    /// Observed clicks against the sum of predicted click probabilities:
    /// two-sided z test of a Poisson-binomial. The judged value is the
    /// calibration ratio expected / observed (the `quality` measurement's
    /// `calibration`: 1 is calibrated, 2 predicts twice the clicks).
    Calibration {
        /// Observed positive labels (e.g. `clicks`).
        observed: String,
        /// Σ predicted probability of the labelled predictions.
        expected: String,
        /// Σ p(1 − p) of the labelled predictions.
        variance: String,
        /// Horizon (event time).
        #[serde(with = "humantime_serde")]
        over: Duration,
        /// The test's p-value must be below this.
        max_pvalue: f64,
    },
}

impl CountTest {
    fn over(&self) -> Duration {
        match self {
            CountTest::Binomial { over, .. }
            | CountTest::TwoProportion { over, .. }
            | CountTest::Calibration { over, .. } => *over,
        }
    }

    /// The p-value a verdict needs to stay under.
    pub fn max_pvalue(&self) -> f64 {
        match self {
            CountTest::Binomial { max_pvalue, .. }
            | CountTest::TwoProportion { max_pvalue, .. }
            | CountTest::Calibration { max_pvalue, .. } => *max_pvalue,
        }
    }

    fn fields(&self) -> [&str; 4] {
        match self {
            CountTest::Binomial {
                successes, trials, ..
            } => [successes, trials, "", ""],
            CountTest::TwoProportion {
                successes,
                trials,
                rest_successes,
                rest_trials,
                ..
            } => [successes, trials, rest_successes, rest_trials],
            CountTest::Calibration {
                observed,
                expected,
                variance,
                ..
            } => [observed, expected, variance, ""],
        }
    }

    /// The judged value and the test's p-value over `sums` (the fields'
    /// sums over the horizon, in [`CountTest::fields`] order); `None`
    /// while there is nothing to judge (no trials, no labels).
    pub fn judge(&self, sums: [f64; 4]) -> Option<(f64, f64)> {
        match self {
            CountTest::Binomial { p0, .. } => {
                let (k, n) = (sums[0], sums[1]);
                (n >= 1.0).then(|| (k / n, binomial_upper_tail(k as u64, n as u64, *p0)))
            }
            CountTest::TwoProportion { .. } => {
                let (k1, n1, k2, n2) = (sums[0], sums[1], sums[2], sums[3]);
                let z = two_proportion_z(k1, n1, k2, n2)?;
                // The upper tail as Φ(−z): no cancellation for large z.
                Some((k1 / n1, normal_cdf(-z)))
            }
            CountTest::Calibration { .. } => {
                let (o, e, v) = (sums[0], sums[1], sums[2]);
                let z = calibration_z(o, e, v)?;
                let ratio = if o > 0.0 { e / o } else { f64::INFINITY };
                Some((ratio, 2.0 * normal_cdf(-z.abs())))
            }
        }
    }
}

/// `P(X ≥ k)` for `X ~ Binomial(n, p)`.
pub fn binomial_upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    match Binomial::new(p.clamp(0.0, 1.0), n) {
        Ok(b) => b.sf(k - 1),
        Err(_) => f64::NAN,
    }
}

/// Pooled two-proportion z statistic of `k1/n1` against `k2/n2`; `None`
/// when a side has no trials or the pooled rate is 0 or 1.
pub fn two_proportion_z(k1: f64, n1: f64, k2: f64, n2: f64) -> Option<f64> {
    if n1 <= 0.0 || n2 <= 0.0 {
        return None;
    }
    let pooled = (k1 + k2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    (se > 0.0).then(|| (k1 / n1 - k2 / n2) / se)
}

/// `(observed − expected) / √variance` of a sum of Bernoulli trials.
pub fn calibration_z(observed: f64, expected: f64, variance: f64) -> Option<f64> {
    (variance > 0.0 && expected > 0.0).then(|| (observed - expected) / variance.sqrt())
}

/// The standard normal CDF.
pub fn normal_cdf(z: f64) -> f64 {
    Normal::standard().cdf(z)
}

/// One series' count fields over the trailing horizon.
#[derive(Debug, Default)]
pub(crate) struct Horizon {
    values: VecDeque<(i64, [f64; 4])>,
}

impl Horizon {
    /// Add `p`'s counts (at event time `now`) and judge the horizon;
    /// `None` when `p` lacks a count field or there is nothing to judge.
    pub(crate) fn judge(&mut self, test: &CountTest, p: &Point, now: i64) -> Option<(f64, f64)> {
        let mut counts = [0.0; 4];
        for (c, f) in counts.iter_mut().zip(test.fields()) {
            if !f.is_empty() {
                *c = number(p.field_value(f)?)?;
            }
        }
        self.values.push_back((now, counts));
        let from = now - test.over().as_millis() as i64;
        while self.values.front().is_some_and(|(t, _)| *t <= from) {
            self.values.pop_front();
        }
        let mut sums = [0.0; 4];
        for (_, c) in &self.values {
            for (s, x) in sums.iter_mut().zip(c) {
                *s += x;
            }
        }
        test.judge(sums)
    }
}

/// Event times of one series' recent events, for rules on how many came.
#[derive(Debug, Default)]
pub(crate) struct EventCount {
    times: VecDeque<i64>,
}

impl EventCount {
    /// An event at `now`; how many fell within the last `over`.
    pub(crate) fn add(&mut self, now: i64, over: Duration) -> usize {
        self.times.push_back(now);
        let from = now - over.as_millis() as i64;
        while self.times.front().is_some_and(|t| *t <= from) {
            self.times.pop_front();
        }
        self.times.len()
    }
}

/// Event rules that fire on a rate of events rather than on each one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRate {
    /// At least this many events...
    pub min: usize,
    /// ...within this span (event time).
    #[serde(with = "humantime_serde")]
    pub over: Duration,
}

fn number(v: &FieldValue) -> Option<f64> {
    match v {
        FieldValue::Float(x) => Some(*x),
        FieldValue::Int(i) => Some(*i as f64),
        FieldValue::Bool(b) => Some(f64::from(u8::from(*b))),
        FieldValue::Str(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tail_matches_the_closed_form() {
        // P(X >= 1) = 1 - (1 - p)^n.
        let exact = 1.0 - 0.99f64.powi(60);
        assert!((binomial_upper_tail(1, 60, 0.01) - exact).abs() < 1e-12);
        assert_eq!(binomial_upper_tail(0, 10, 0.5), 1.0);
        // All n of n: p^n.
        assert!((binomial_upper_tail(5, 5, 0.5) - 0.5f64.powi(5)).abs() < 1e-12);
    }

    #[test]
    fn a_horizon_sums_what_is_inside_it() {
        let test = CountTest::Binomial {
            successes: "errors".into(),
            trials: "requests".into(),
            p0: 0.01,
            over: Duration::from_secs(120),
            max_pvalue: 1e-6,
        };
        let mut h = Horizon::default();
        let point = |t: i64, e: i64, r: i64| {
            Point::new("throughput", t)
                .field("errors", FieldValue::Int(e))
                .field("requests", FieldValue::Int(r))
        };
        let (rate, _) = h.judge(&test, &point(60_000, 1, 10), 60_000).unwrap();
        assert_eq!(rate, 0.1);
        let (rate, _) = h.judge(&test, &point(120_000, 3, 10), 120_000).unwrap();
        assert_eq!(rate, 0.2);
        // The first window falls out of the 2-minute horizon.
        let (rate, _) = h.judge(&test, &point(180_000, 0, 10), 180_000).unwrap();
        assert_eq!(rate, 0.15);
        assert!(
            h.judge(&test, &Point::new("throughput", 240_000), 240_000)
                .is_none()
        );
    }
}
