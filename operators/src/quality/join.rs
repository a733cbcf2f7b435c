//! The feedback join: predictions wait in a bounded store for
//! `label_wait` past their window's end; feedback sets their label (a
//! click after an impression wins). Once a window's wait is over, its
//! labelled predictions become [`LabelCounts`] and its ranked lists
//! [`Ranking`] (both mergeable across partials), and they leave the store.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::HashMap;
use foldhash::fast::FixedState;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::Quality;
use super::{LabelCounts, Ranking};

/// Join settings (`[quality]` in the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// How long after a window's end its labels are awaited.
    #[serde(with = "humantime_serde")]
    pub label_wait: Duration,
    /// Predictions kept waiting for labels; beyond this the oldest are
    /// evicted (and counted). Ranked lists are their items, so this also
    /// bounds the lists awaiting labels.
    pub max_pending: usize,
    /// Decision threshold of precision, recall, F1 and accuracy: a score at
    /// or above it is a predicted positive.
    pub threshold: f64,
    /// Per-model decision thresholds (model name → threshold) overriding
    /// `threshold`.
    pub thresholds: BTreeMap<String, f64>,
    /// Cut-offs k of NDCG@k and HitRate@k; CTR by position is written for
    /// positions 1 to the largest.
    pub ranking_k: Vec<usize>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            label_wait: Duration::from_secs(600),
            max_pending: 500_000,
            threshold: 0.5,
            thresholds: BTreeMap::new(),
            ranking_k: vec![5, 10],
        }
    }
}

/// Settings that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QualityConfigError {
    /// A threshold that is not a finite number (names the model, or
    /// `threshold` for the default).
    #[error("[quality] {0}: the decision threshold must be a finite number")]
    Threshold(String),
    /// No cut-off, or one outside 1..=100.
    #[error("[quality] ranking_k: give cut-offs between 1 and 100, e.g. [5, 10] (got {0:?})")]
    RankingK(Vec<usize>),
}

impl QualityConfig {
    /// Check the thresholds and cut-offs.
    ///
    /// # Errors
    /// The first setting that cannot be used.
    pub fn validate(&self) -> Result<(), QualityConfigError> {
        if !self.threshold.is_finite() {
            return Err(QualityConfigError::Threshold("threshold".into()));
        }
        if let Some((model, _)) = self.thresholds.iter().find(|t| !t.1.is_finite()) {
            return Err(QualityConfigError::Threshold(format!("thresholds.{model}")));
        }
        if self.ranking_k.is_empty() || self.ranking_k.iter().any(|k| !(1..=100).contains(k)) {
            return Err(QualityConfigError::RankingK(self.ranking_k.clone()));
        }
        Ok(())
    }

    /// The decision threshold of `model`.
    pub fn threshold_of(&self, model: &str) -> f64 {
        self.thresholds
            .get(model)
            .copied()
            .unwrap_or(self.threshold)
    }
}

/// A scored prediction entering the join.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    /// Its request.
    pub request_id: &'a str,
    /// The item, for a ranked prediction: feedback naming the same
    /// `request_id` and `item_id` labels it.
    pub item_id: Option<&'a str>,
    /// The ranked list it was shown in and its position (1 = top).
    pub list: Option<(&'a str, u32)>,
    /// The model's score.
    pub score: f64,
}

/// What the join emits for one series of one window once its label wait
/// ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// End of the window, ms.
    pub end: i64,
    /// The engine's series id.
    pub series: u32,
    /// The labelled predictions (None: none labelled).
    pub labels: Option<LabelCounts>,
    /// Ranking quality of its lists (None: no ranked prediction).
    pub ranking: Option<Ranking>,
}

/// The hasher of request and list ids: fixed, so a key is the same in every
/// run (foldhash: a fraction of SipHash's cost on short strings).
const FIXED: FixedState = FixedState::with_seed(0x5eed_1abe_1301_2026);

/// A request id (with the item, for a ranked prediction) as a 64-bit hash:
/// the store keeps no strings (two boxed copies per waiting prediction cost
/// ~300 B of its ~380). With 500,000 waiting predictions the chance that any
/// two collide is ~10⁻⁸; a collision would pair one label with the wrong
/// prediction.
fn key(request_id: &str, item_id: Option<&str>) -> u64 {
    let mut h = FIXED.build_hasher();
    request_id.hash(&mut h);
    if let Some(item) = item_id {
        item.hash(&mut h);
    }
    h.finish()
}

/// A list id as a hash (never 0: 0 marks an unranked prediction).
fn list_key(list_id: &str) -> u64 {
    FIXED.hash_one(list_id).max(1)
}

#[derive(Debug)]
struct Pending {
    key: u64,
    series: u32,
    score: f64,
    label: Option<u8>,
    /// End of the last window the prediction belongs to.
    last_end: i64,
    /// Its ranked list ([`list_key`]; 0: not ranked) and position.
    list: u64,
    position: u32,
}

/// An item of a ranked list: its position and label, if any.
type ShownItem = (u32, Option<u8>);

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
            by_request: HashMap::default(),
            windows: BTreeMap::new(),
            early: HashMap::default(),
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
    pub fn add_prediction(&mut self, p: Scored<'_>, series: u32, ends: &[i64]) {
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
        let k = key(p.request_id, p.item_id);
        self.pending.push_back(Pending {
            key: k,
            series,
            score: p.score,
            label: None,
            last_end,
            list: p.list.map_or(0, |(id, _)| list_key(id)),
            position: p.list.map_or(0, |(_, at)| at),
        });
        // A retried request replaces the older prediction.
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

    /// A label for `request_id` (and `item_id`, for an item of a ranked
    /// list) at event time `ts`; the highest label seen wins. A label whose
    /// prediction has not arrived yet waits for it (up to the label wait
    /// past `ts`), so the result does not depend on the order the two
    /// topics are read in.
    pub fn add_label(&mut self, request_id: &str, item_id: Option<&str>, label: u8, ts: i64) {
        let k = key(request_id, item_id);
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

    /// The labelled predictions and lists of every window whose label wait
    /// ended by `watermark` (all windows when `None`), oldest first, by
    /// series.
    pub fn emit(&mut self, watermark: Option<i64>) -> Vec<Judged> {
        let wait = self.config.label_wait.as_millis() as i64;
        let mut out = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let end = *entry.key();
            if watermark.is_some_and(|w| end + wait > w) {
                break;
            }
            let seqs = entry.remove();
            let mut by_series: BTreeMap<u32, Vec<(f64, u8)>> = BTreeMap::new();
            // (series, list) → its items as (position, label).
            let mut lists: BTreeMap<(u32, u64), Vec<ShownItem>> = BTreeMap::new();
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
                if p.list != 0 {
                    lists
                        .entry((p.series, p.list))
                        .or_default()
                        .push((p.position, p.label));
                }
            }
            let mut rankings: BTreeMap<u32, Ranking> = BTreeMap::new();
            for ((series, _), mut items) in lists {
                rankings
                    .entry(series)
                    .or_insert_with(|| Ranking::new(&self.config.ranking_k))
                    .add_list(&mut items);
            }
            let mut series: Vec<u32> = by_series.keys().chain(rankings.keys()).copied().collect();
            series.sort_unstable();
            series.dedup();
            for id in series {
                let labels = by_series
                    .get_mut(&id)
                    .map(|pairs| LabelCounts::of(pairs))
                    .filter(|l| !l.is_empty());
                let ranking = rankings.remove(&id).filter(|r| r.lists > 0);
                if labels.is_some() || ranking.is_some() {
                    out.push(Judged {
                        end,
                        series: id,
                        labels,
                        ranking,
                    });
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

    fn config(label_wait_s: u64, max_pending: usize) -> QualityConfig {
        QualityConfig {
            label_wait: Duration::from_secs(label_wait_s),
            max_pending,
            ..QualityConfig::default()
        }
    }

    fn scored(request_id: &str, score: f64) -> Scored<'_> {
        Scored {
            request_id,
            item_id: None,
            list: None,
            score,
        }
    }

    #[test]
    fn labels_join_and_windows_emit_after_the_wait() {
        let mut j = LabelJoin::new(config(10, 100));
        j.add_prediction(scored("a", 0.9), 0, &[60_000]);
        j.add_prediction(scored("b", 0.2), 0, &[60_000]);
        j.add_prediction(scored("c", 0.5), 0, &[120_000]);
        j.add_label("a", None, 0, 1_000);
        j.add_label("a", None, 1, 2_000); // a click after the impression
        j.add_label("b", None, 0, 1_000);
        j.add_label("zzz", None, 1, 1_000);
        assert!(j.emit(Some(69_999)).is_empty(), "wait not over");
        let out = j.emit(Some(70_000));
        assert_eq!(out.len(), 1);
        let q = Quality::of(out[0].labels.as_ref().unwrap(), 0.5).unwrap();
        assert_eq!(out[0].end, 60_000);
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
        let mut j = LabelJoin::new(config(10, 100));
        j.add_label("a", None, 1, 30_000);
        j.add_label("late", None, 1, 30_000);
        j.add_prediction(scored("a", 0.9), 0, &[60_000]);
        j.add_prediction(scored("b", 0.1), 0, &[60_000]);
        j.add_label("b", None, 0, 40_000);
        assert_eq!(j.stats().matched, 2);
        let out = j.emit(Some(70_000));
        let q = Quality::of(out[0].labels.as_ref().unwrap(), 0.5).unwrap();
        assert_eq!(q.n_labeled, 2);
        assert_eq!(j.stats().unmatched, 1, "late's prediction never came");
    }

    #[test]
    fn a_full_store_evicts_the_oldest_and_counts_it() {
        let mut j = LabelJoin::new(config(10, 2));
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            j.add_prediction(scored(id, 0.5), 0, &[60_000 * (i as i64 + 1)]);
        }
        assert_eq!(j.stats().evicted, 1);
        j.add_label("a", None, 1, 1_000);
        j.add_label("b", None, 1, 1_000);
        assert_eq!(j.stats().matched, 1);
        j.emit(Some(11_000));
        assert_eq!(
            j.stats().unmatched,
            1,
            "a was evicted: its label waited in vain"
        );
    }
}
