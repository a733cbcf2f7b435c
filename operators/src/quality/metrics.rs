//! Pointwise quality of one series in one window: AUC, log loss, CTR,
//! calibration, and the confusion counts at the decision threshold.

use infermon_schemas::{FieldValue, Point};
use serde::{Deserialize, Serialize};

use crate::engine::SeriesKey;

/// Quality statistics of one series in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    /// Area under the ROC curve (None unless both labels occur).
    pub auc: Option<f64>,
    /// Mean log loss, scores clipped to [ε, 1 − ε] as scikit-learn does.
    pub logloss: f64,
    /// Share of positive labels.
    pub ctr: f64,
    /// Mean score.
    pub mean_score: f64,
    /// `mean_score / ctr` (None when ctr is 0); 1 is calibrated.
    pub calibration: Option<f64>,
    /// Labelled predictions.
    pub n_labeled: u64,
    /// Positive labels (clicks).
    pub clicks: u64,
    /// Σ score: the clicks the model predicted for the labelled ones.
    pub expected_clicks: f64,
    /// Σ score·(1 − score): the variance of the click count if the scores
    /// are the true probabilities (a Poisson-binomial's).
    pub click_variance: f64,
    /// The decision at [`Confusion::threshold`].
    pub confusion: Confusion,
}

/// Confusion counts at a decision threshold: a score at or above it is a
/// predicted positive (scikit-learn's `y_pred = score >= threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Confusion {
    /// The decision threshold.
    pub threshold: f64,
    /// Predicted positive, labelled positive.
    pub true_positives: u64,
    /// Predicted positive, labelled negative.
    pub false_positives: u64,
    /// Predicted negative, labelled negative.
    pub true_negatives: u64,
    /// Predicted negative, labelled positive.
    pub false_negatives: u64,
}

impl Confusion {
    /// Counts of `(score, label)` pairs at `threshold`.
    pub fn of(pairs: &[(f64, u8)], threshold: f64) -> Self {
        let mut c = Self {
            threshold,
            ..Self::default()
        };
        for &(s, y) in pairs {
            match (s >= threshold, y == 1) {
                (true, true) => c.true_positives += 1,
                (true, false) => c.false_positives += 1,
                (false, false) => c.true_negatives += 1,
                (false, true) => c.false_negatives += 1,
            }
        }
        c
    }

    /// (TP + TN) / all; None when empty.
    pub fn accuracy(&self) -> Option<f64> {
        let all =
            self.true_positives + self.false_positives + self.true_negatives + self.false_negatives;
        ratio(self.true_positives + self.true_negatives, all)
    }

    /// TP / (TP + FP); None when nothing was predicted positive
    /// (scikit-learn's `zero_division` case).
    pub fn precision(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// TP / (TP + FN); None when no label is positive.
    pub fn recall(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Harmonic mean of precision and recall, 2·TP / (2·TP + FP + FN);
    /// None when there is neither a predicted nor a labelled positive.
    pub fn f1(&self) -> Option<f64> {
        ratio(
            2 * self.true_positives,
            2 * self.true_positives + self.false_positives + self.false_negatives,
        )
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl Quality {
    /// Statistics of labelled predictions, deciding at `threshold`; `None`
    /// when empty. Every sum runs over the distinct scores in ascending
    /// order, so the result does not depend on how the predictions were
    /// split into partials.
    pub fn of(labels: &LabelCounts, threshold: f64) -> Option<Self> {
        let (mut n, mut positives) = (0u64, 0u64);
        let (mut score_sum, mut loss_sum, mut variance) = (0.0, 0.0, 0.0);
        let mut confusion = Confusion {
            threshold,
            ..Confusion::default()
        };
        let eps = f64::EPSILON;
        for &(s, neg, pos) in &labels.scores {
            n += neg + pos;
            positives += pos;
            let both = (neg + pos) as f64;
            score_sum += s * both;
            variance += s * (1.0 - s) * both;
            let c = s.clamp(eps, 1.0 - eps);
            loss_sum += pos as f64 * c.ln() + neg as f64 * (1.0 - c).ln();
            if s >= threshold {
                confusion.true_positives += pos;
                confusion.false_positives += neg;
            } else {
                confusion.false_negatives += pos;
                confusion.true_negatives += neg;
            }
        }
        if n == 0 {
            return None;
        }
        let mean_score = score_sum / n as f64;
        let ctr = positives as f64 / n as f64;
        Some(Self {
            auc: labels.auc(),
            logloss: -loss_sum / n as f64,
            ctr,
            mean_score,
            calibration: (ctr > 0.0).then(|| mean_score / ctr),
            n_labeled: n,
            clicks: positives,
            expected_clicks: score_sum,
            click_variance: variance,
            confusion,
        })
    }

    /// The `quality` point.
    pub fn point(&self, series: &SeriesKey, end_ms: i64) -> Point {
        let mut p = series.point("quality", end_ms);
        let mut float = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                p.fields.push((name.into(), FieldValue::Float(v)));
            }
        };
        let c = &self.confusion;
        float("auc", self.auc);
        float("logloss", Some(self.logloss));
        float("ctr", Some(self.ctr));
        float("mean_score", Some(self.mean_score));
        float("calibration", self.calibration);
        float("threshold", Some(c.threshold));
        float("accuracy", c.accuracy());
        float("precision", c.precision());
        float("recall", c.recall());
        float("f1", c.f1());
        let int = |v: u64| FieldValue::Int(v as i64);
        p.field("n_labeled", int(self.n_labeled))
            .field("clicks", int(self.clicks))
            .field("expected_clicks", FieldValue::Float(self.expected_clicks))
            .field("click_variance", FieldValue::Float(self.click_variance))
            .field("true_positives", int(c.true_positives))
            .field("false_positives", int(c.false_positives))
            .field("true_negatives", int(c.true_negatives))
            .field("false_negatives", int(c.false_negatives))
    }
}

/// The labelled predictions of one series in one window as counts per
/// distinct score: exact, and mergeable by adding (what a partial carries
/// instead of the pairs). Its size is the number of distinct scores,
/// bounded by the join's `max_pending`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelCounts {
    /// (score, negatives, positives), ascending by score, scores distinct.
    scores: Vec<(f64, u64, u64)>,
}

impl LabelCounts {
    /// The counts of `(score, label)` pairs (label 1 is positive); sorts
    /// `pairs` by score.
    pub fn of(pairs: &mut [(f64, u8)]) -> Self {
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut scores: Vec<(f64, u64, u64)> = Vec::new();
        for &(s, y) in pairs.iter() {
            match scores.last_mut() {
                Some(last) if last.0.total_cmp(&s).is_eq() => {}
                _ => scores.push((s, 0, 0)),
            }
            let last = scores.last_mut().expect("pushed above");
            if y == 1 {
                last.2 += 1;
            } else {
                last.1 += 1;
            }
        }
        Self { scores }
    }

    /// True when nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Add `other`'s counts (a merge of sorted runs).
    pub fn merge(&mut self, other: &Self) {
        let (a, b) = (std::mem::take(&mut self.scores), &other.scores);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let next = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => match x.0.total_cmp(&y.0) {
                    std::cmp::Ordering::Less => {
                        i += 1;
                        *x
                    }
                    std::cmp::Ordering::Greater => {
                        j += 1;
                        *y
                    }
                    std::cmp::Ordering::Equal => {
                        i += 1;
                        j += 1;
                        (x.0, x.1 + y.1, x.2 + y.2)
                    }
                },
                (Some(x), None) => {
                    i += 1;
                    *x
                }
                (None, Some(y)) => {
                    j += 1;
                    *y
                }
                (None, None) => unreachable!("loop condition"),
            };
            out.push(next);
        }
        self.scores = out;
    }

    /// Exact AUC by the Mann–Whitney U statistic with average ranks for
    /// ties; None unless both labels occur.
    pub fn auc(&self) -> Option<f64> {
        let positives: u64 = self.scores.iter().map(|s| s.2).sum();
        let negatives: u64 = self.scores.iter().map(|s| s.1).sum();
        if positives == 0 || negatives == 0 {
            return None;
        }
        let (positives, negatives) = (positives as f64, negatives as f64);
        let mut rank_sum = 0.0;
        let mut below = 0u64;
        for &(_, neg, pos) in &self.scores {
            // Ranks below+1..=below+n share their average.
            let n = neg + pos;
            let avg_rank = (2 * below + 1 + n) as f64 / 2.0;
            rank_sum += pos as f64 * avg_rank;
            below += n;
        }
        Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
    }
}

/// Exact AUC of `(score, label)` pairs (see [`LabelCounts::auc`]). Sorts
/// `pairs` by score.
pub fn auc(pairs: &mut [(f64, u8)]) -> Option<f64> {
    LabelCounts::of(pairs).auc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half() {
        let mut pairs = vec![(0.1, 0), (0.4, 1), (0.4, 0), (0.8, 1)];
        // Pairs (pos, neg): (0.4,0.1)=1, (0.4,0.4)=0.5, (0.8,0.1)=1, (0.8,0.4)=1.
        assert_eq!(auc(&mut pairs), Some(3.5 / 4.0));
        assert_eq!(auc(&mut [(0.3, 1), (0.5, 1)]), None);
    }

    #[test]
    fn label_counts_merge_to_the_counts_of_all_pairs() {
        let mut all = vec![(0.1, 0), (0.4, 1), (0.4, 0), (0.8, 1), (0.4, 1), (0.9, 0)];
        let whole = LabelCounts::of(&mut all.clone());
        let mut a = LabelCounts::of(&mut all[..3]);
        a.merge(&LabelCounts::of(&mut all[3..]));
        assert_eq!(a, whole);
        let q = Quality::of(&a, 0.5).unwrap();
        assert_eq!((q.n_labeled, q.clicks), (6, 3));
        assert_eq!(q.auc, auc(&mut all));
        assert!((q.mean_score - 3.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn confusion_decides_at_the_threshold_inclusive() {
        let pairs = [(0.9, 1), (0.5, 0), (0.49, 1), (0.1, 0), (0.7, 1)];
        let c = Confusion::of(&pairs, 0.5);
        assert_eq!(
            (
                c.true_positives,
                c.false_positives,
                c.true_negatives,
                c.false_negatives
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(c.precision(), Some(2.0 / 3.0));
        assert_eq!(c.recall(), Some(2.0 / 3.0));
        assert_eq!(c.f1(), Some(2.0 / 3.0));
        assert_eq!(c.accuracy(), Some(3.0 / 5.0));
        let none_predicted = Confusion::of(&[(0.1, 1), (0.2, 0)], 0.5);
        assert_eq!(none_predicted.precision(), None);
        assert_eq!(none_predicted.f1(), Some(0.0));
    }
}
