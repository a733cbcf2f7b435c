//! Pointwise quality of one series in one window: AUC, log loss, CTR,
//! calibration, and the confusion counts at the decision threshold.

use infermon_schemas::{FieldValue, Point};

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
    /// Statistics of `(score, label)` pairs, deciding at `threshold`;
    /// `None` when empty.
    pub fn of(pairs: &mut [(f64, u8)], threshold: f64) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let n = pairs.len() as f64;
        let positives = pairs.iter().filter(|p| p.1 == 1).count() as f64;
        let mean_score = pairs.iter().map(|p| p.0).sum::<f64>() / n;
        let eps = f64::EPSILON;
        let logloss = -pairs
            .iter()
            .map(|&(s, y)| {
                let s = s.clamp(eps, 1.0 - eps);
                if y == 1 { s.ln() } else { (1.0 - s).ln() }
            })
            .sum::<f64>()
            / n;
        let ctr = positives / n;
        let expected_clicks: f64 = pairs.iter().map(|p| p.0).sum();
        let click_variance = pairs.iter().map(|p| p.0 * (1.0 - p.0)).sum();
        let confusion = Confusion::of(pairs, threshold);
        Some(Self {
            auc: auc(pairs),
            logloss,
            ctr,
            mean_score,
            calibration: (ctr > 0.0).then(|| mean_score / ctr),
            n_labeled: pairs.len() as u64,
            clicks: positives as u64,
            expected_clicks,
            click_variance,
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

/// Exact AUC by the Mann–Whitney U statistic with average ranks for ties.
/// Sorts `pairs` by score.
pub fn auc(pairs: &mut [(f64, u8)]) -> Option<f64> {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1 == 1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        // Ranks i+1..=j share their average.
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        let pos = pairs[i..j].iter().filter(|p| p.1 == 1).count() as f64;
        rank_sum += pos * avg_rank;
        i = j;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
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
