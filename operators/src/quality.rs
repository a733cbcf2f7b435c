//! Label quality: feedback joined to predictions by `request_id`.
//!
//! Predictions wait in a bounded store for `label_wait` past their window's
//! end; feedback sets their label (a click after an impression wins). Once a
//! window's wait is over, its labelled predictions become the `quality`
//! measurement (AUC, log loss, CTR, calibration) and leave the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use infermon_schemas::{FieldValue, Point};
use serde::{Deserialize, Serialize};

use crate::engine::SeriesKey;

/// Join settings (`[quality]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// How long after a window's end its labels are awaited.
    #[serde(with = "humantime_serde")]
    pub label_wait: Duration,
    /// Predictions kept waiting for labels; beyond this the oldest are
    /// evicted (and counted).
    pub max_pending: usize,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            label_wait: Duration::from_secs(600),
            max_pending: 500_000,
        }
    }
}

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
}

impl Quality {
    /// Statistics of `(score, label)` pairs; `None` when empty.
    pub fn of(pairs: &mut [(f64, u8)]) -> Option<Self> {
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
        })
    }

    /// The `quality` point.
    pub fn point(&self, series: &SeriesKey, end_ms: i64) -> Point {
        let mut p = series.point("quality", end_ms);
        if let Some(a) = self.auc {
            p = p.field("auc", FieldValue::Float(a));
        }
        p = p
            .field("logloss", FieldValue::Float(self.logloss))
            .field("ctr", FieldValue::Float(self.ctr))
            .field("mean_score", FieldValue::Float(self.mean_score));
        if let Some(c) = self.calibration {
            p = p.field("calibration", FieldValue::Float(c));
        }
        p.field("n_labeled", FieldValue::Int(self.n_labeled as i64))
            .field("clicks", FieldValue::Int(self.clicks as i64))
            .field("expected_clicks", FieldValue::Float(self.expected_clicks))
            .field("click_variance", FieldValue::Float(self.click_variance))
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

/// A request id as a 64-bit hash: the store keeps no strings (two boxed
/// copies per waiting prediction cost ~300 B of its ~380). With 500,000
/// waiting predictions the chance that any two collide is ~10⁻⁸; a
/// collision would pair one label with the wrong prediction.
fn key(request_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    request_id.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
struct Pending {
    key: u64,
    series: u32,
    score: f64,
    label: Option<u8>,
    /// End of the last window the prediction belongs to.
    last_end: i64,
}

/// Counters of the join.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Feedback matched to a waiting prediction.
    pub matched: u64,
    /// Feedback with no waiting prediction (unknown, expired or evicted).
    pub unmatched: u64,
    /// Predictions evicted because the store was full.
    pub evicted: u64,
}

/// The bounded prediction store and per-window label lists.
#[derive(Debug)]
pub struct LabelJoin {
    config: QualityConfig,
    /// Predictions in arrival order; `base` is the sequence number of the first.
    pending: VecDeque<Pending>,
    base: u64,
    by_request: HashMap<u64, u64>,
    /// Sequence numbers per window end.
    windows: BTreeMap<i64, Vec<u64>>,
    /// Labels that came before their prediction (a consumer catching up
    /// reads topics in any interleaving): label and event time.
    early: HashMap<u64, (u8, i64)>,
    /// `early` in arrival order, for expiry and eviction.
    early_order: VecDeque<(i64, u64)>,
    stats: JoinStats,
}

impl LabelJoin {
    /// An empty join.
    pub fn new(config: QualityConfig) -> Self {
        Self {
            config,
            pending: VecDeque::new(),
            base: 0,
            by_request: HashMap::new(),
            windows: BTreeMap::new(),
            early: HashMap::new(),
            early_order: VecDeque::new(),
            stats: JoinStats::default(),
        }
    }

    /// How long after a window's end its labels are awaited, ms.
    pub fn wait_ms(&self) -> i64 {
        self.config.label_wait.as_millis() as i64
    }

    /// Counters so far.
    pub fn stats(&self) -> JoinStats {
        self.stats
    }

    /// Predictions waiting for labels.
    pub fn len(&self) -> usize {
        self.by_request.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_request.is_empty()
    }

    /// A scored prediction of `series` in the windows ending at `ends`.
    pub fn add_prediction(&mut self, request_id: &str, series: u32, score: f64, ends: &[i64]) {
        let Some(&last_end) = ends.iter().max() else {
            return;
        };
        while self.by_request.len() >= self.config.max_pending.max(1) {
            if !self.evict_front() {
                break;
            }
            self.stats.evicted += 1;
        }
        let seq = self.base + self.pending.len() as u64;
        self.pending.push_back(Pending {
            key: key(request_id),
            series,
            score,
            label: None,
            last_end,
        });
        // A retried request replaces the older prediction.
        let k = key(request_id);
        self.by_request.insert(k, seq);
        if let Some((label, _)) = self.early.remove(&k) {
            self.pending.back_mut().expect("pushed above").label = Some(label);
            self.stats.matched += 1;
        }
        for &end in ends {
            self.windows.entry(end).or_default().push(seq);
        }
    }

    fn evict_front(&mut self) -> bool {
        let Some(p) = self.pending.pop_front() else {
            return false;
        };
        let seq = self.base;
        self.base += 1;
        if self.by_request.get(&p.key) == Some(&seq) {
            self.by_request.remove(&p.key);
        }
        true
    }

    /// A label for `request_id` at event time `ts`; the highest label seen
    /// wins. A label whose prediction has not arrived yet waits for it (up
    /// to the label wait past `ts`), so the result does not depend on the
    /// order the two topics are read in.
    pub fn add_label(&mut self, request_id: &str, label: u8, ts: i64) {
        let k = key(request_id);
        if let Some(&seq) = self.by_request.get(&k) {
            let p = &mut self.pending[(seq - self.base) as usize];
            p.label = Some(p.label.map_or(label, |l| l.max(label)));
            self.stats.matched += 1;
            return;
        }
        if let Some((l, _)) = self.early.get_mut(&k) {
            *l = (*l).max(label);
            return;
        }
        while self.early.len() >= self.config.max_pending.max(1) {
            let Some((_, id)) = self.early_order.pop_front() else {
                break;
            };
            if self.early.remove(&id).is_some() {
                self.stats.unmatched += 1;
            }
        }
        self.early.insert(k, (label, ts));
        self.early_order.push_back((ts, k));
    }

    /// Quality of every window whose label wait ended by `watermark` (all
    /// windows when `None`), oldest first, as (window end, series, stats).
    pub fn emit(&mut self, watermark: Option<i64>) -> Vec<(i64, u32, Quality)> {
        let wait = self.config.label_wait.as_millis() as i64;
        let mut out = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let end = *entry.key();
            if watermark.is_some_and(|w| end + wait > w) {
                break;
            }
            let seqs = entry.remove();
            let mut by_series: BTreeMap<u32, Vec<(f64, u8)>> = BTreeMap::new();
            for seq in seqs {
                let Some(p) = seq
                    .checked_sub(self.base)
                    .and_then(|i| self.pending.get(i as usize))
                else {
                    continue; // evicted
                };
                if let Some(label) = p.label {
                    by_series
                        .entry(p.series)
                        .or_default()
                        .push((p.score, label));
                }
            }
            for (series, mut pairs) in by_series {
                if let Some(q) = Quality::of(&mut pairs) {
                    out.push((end, series, q));
                }
            }
        }
        // Labels that waited in vain for their prediction.
        while let Some((ts, _)) = self.early_order.front()
            && watermark.is_none_or(|w| ts + wait <= w)
        {
            let (_, id) = self.early_order.pop_front().expect("checked");
            if self.early.remove(&id).is_some() {
                self.stats.unmatched += 1;
            }
        }
        // Predictions whose every window has been emitted leave the store.
        while self
            .pending
            .front()
            .is_some_and(|p| watermark.is_none_or(|w| p.last_end + wait <= w))
        {
            self.evict_front();
        }
        out
    }
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
    fn labels_join_and_windows_emit_after_the_wait() {
        let mut j = LabelJoin::new(QualityConfig {
            label_wait: Duration::from_secs(10),
            max_pending: 100,
        });
        j.add_prediction("a", 0, 0.9, &[60_000]);
        j.add_prediction("b", 0, 0.2, &[60_000]);
        j.add_prediction("c", 0, 0.5, &[120_000]);
        j.add_label("a", 0, 1_000);
        j.add_label("a", 1, 2_000); // a click after the impression
        j.add_label("b", 0, 1_000);
        j.add_label("zzz", 1, 1_000);
        assert!(j.emit(Some(69_999)).is_empty(), "wait not over");
        let out = j.emit(Some(70_000));
        assert_eq!(out.len(), 1);
        let (end, _, q) = &out[0];
        assert_eq!(*end, 60_000);
        assert_eq!(q.n_labeled, 2);
        assert_eq!(q.auc, Some(1.0));
        assert_eq!(q.ctr, 0.5);
        assert_eq!(j.len(), 1, "a and b left the store");
        assert_eq!(j.stats().unmatched, 1);
        // c never got a label: its window emits nothing.
        assert!(j.emit(None).is_empty());
    }

    #[test]
    fn a_label_before_its_prediction_still_joins() {
        let mut j = LabelJoin::new(QualityConfig {
            label_wait: Duration::from_secs(10),
            max_pending: 100,
        });
        j.add_label("a", 1, 30_000);
        j.add_label("late", 1, 30_000);
        j.add_prediction("a", 0, 0.9, &[60_000]);
        j.add_prediction("b", 0, 0.1, &[60_000]);
        j.add_label("b", 0, 40_000);
        assert_eq!(j.stats().matched, 2);
        let out = j.emit(Some(70_000));
        assert_eq!(out[0].2.n_labeled, 2);
        assert_eq!(j.stats().unmatched, 1, "late's prediction never came");
    }

    #[test]
    fn a_full_store_evicts_the_oldest_and_counts_it() {
        let mut j = LabelJoin::new(QualityConfig {
            label_wait: Duration::from_secs(10),
            max_pending: 2,
        });
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            j.add_prediction(id, 0, 0.5, &[60_000 * (i as i64 + 1)]);
        }
        assert_eq!(j.stats().evicted, 1);
        j.add_label("a", 1, 1_000);
        j.add_label("b", 1, 1_000);
        assert_eq!(j.stats().matched, 1);
        j.emit(Some(11_000));
        assert_eq!(
            j.stats().unmatched,
            1,
            "a was evicted: its label waited in vain"
        );
    }
}
