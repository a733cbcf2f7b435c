//! Ranking quality per list: NDCG@k, MRR, HitRate@k and CTR by position.
//!
//! A search or feed request returns a ranked list; what breaks in practice
//! is the order, which pooled AUC and CTR barely see. Each list whose label
//! wait ended and that has at least one label is judged once: its items
//! in the order shown (by `position`), relevance 1 for a positive label and
//! 0 otherwise (an item shown without feedback was not clicked).
//!
//! Formulas (binary relevance, so linear and exponential gain agree), as in
//! Järvelin & Kekäläinen (2002) and scikit-learn's `ndcg_score`:
//! `DCG@k = Σ_{i ≤ k} rel_i / log2(i + 1)`, `NDCG@k = DCG@k / IDCG@k`;
//! reciprocal rank `1 / rank of the first relevant item`; `HitRate@k` is 1
//! when a relevant item is in the top k. A list with no relevant item has
//! no ideal ordering (IDCG = 0): it counts in `lists` and CTR by position,
//! and the per-list means are over `lists_clicked`.

use infermon_schemas::{FieldValue, Point};
use serde::{Deserialize, Serialize};

use crate::engine::SeriesKey;

/// Ranking statistics of one series in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// The cut-offs k, ascending.
    ks: Vec<usize>,
    /// Judged lists (at least one label).
    pub lists: u64,
    /// Judged lists with at least one relevant item.
    pub lists_clicked: u64,
    /// Σ NDCG@k per cut-off.
    ndcg_sum: Vec<f64>,
    /// Σ NDCG@k² of the largest k (for the variance of its mean).
    ndcg_sq_sum: f64,
    /// Lists with a relevant item in the top k, per cut-off.
    hits: Vec<u64>,
    /// Σ reciprocal rank.
    rr_sum: f64,
    /// Items shown at positions 1..=max k, and their positive labels.
    impressions: Vec<u64>,
    clicks: Vec<u64>,
}

impl Ranking {
    /// Empty statistics for the cut-offs `ks` (each ≥ 1).
    pub fn new(ks: &[usize]) -> Self {
        let mut ks = ks.to_vec();
        ks.sort_unstable();
        ks.dedup();
        let max_k = ks.last().copied().unwrap_or(0);
        Self {
            lists: 0,
            lists_clicked: 0,
            ndcg_sum: vec![0.0; ks.len()],
            ndcg_sq_sum: 0.0,
            hits: vec![0; ks.len()],
            rr_sum: 0.0,
            impressions: vec![0; max_k],
            clicks: vec![0; max_k],
            ks,
        }
    }

    /// Judge one list: `items` are (position, label) in any order; items
    /// without a label count as not relevant. A list without any label is
    /// not judged.
    pub fn add_list(&mut self, items: &mut [(u32, Option<u8>)]) {
        if items.iter().all(|i| i.1.is_none()) {
            return;
        }
        items.sort_by_key(|i| i.0);
        self.lists += 1;
        for &(position, label) in items.iter() {
            let at = position as usize;
            if (1..=self.impressions.len()).contains(&at) {
                self.impressions[at - 1] += 1;
                self.clicks[at - 1] += u64::from(label == Some(1));
            }
        }
        let relevant: Vec<bool> = items.iter().map(|i| i.1 == Some(1)).collect();
        let n_relevant = relevant.iter().filter(|r| **r).count();
        let Some(first) = relevant.iter().position(|r| *r) else {
            return;
        };
        self.lists_clicked += 1;
        self.rr_sum += 1.0 / (first + 1) as f64;
        let discount = |i: usize| 1.0 / ((i + 2) as f64).log2();
        let last = self.ks.len() - 1;
        for (j, &k) in self.ks.iter().enumerate() {
            let dcg: f64 = (0..k.min(relevant.len()))
                .filter(|&i| relevant[i])
                .map(discount)
                .sum();
            let idcg: f64 = (0..k.min(n_relevant)).map(discount).sum();
            let ndcg = dcg / idcg;
            self.ndcg_sum[j] += ndcg;
            if j == last {
                self.ndcg_sq_sum += ndcg * ndcg;
            }
            self.hits[j] += u64::from(first < k);
        }
    }

    /// Add the lists judged in `other` (same cut-offs: one config).
    pub fn merge(&mut self, other: &Self) {
        let add = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        self.lists += other.lists;
        self.lists_clicked += other.lists_clicked;
        for (x, y) in self.ndcg_sum.iter_mut().zip(&other.ndcg_sum) {
            *x += y;
        }
        self.ndcg_sq_sum += other.ndcg_sq_sum;
        add(&mut self.hits, &other.hits);
        self.rr_sum += other.rr_sum;
        add(&mut self.impressions, &other.impressions);
        add(&mut self.clicks, &other.clicks);
    }

    /// The largest cut-off with Σ NDCG@k, Σ NDCG@k² and the number of
    /// clicked lists they are over (sums, so windows add up).
    pub fn ndcg_sums(&self) -> Option<(usize, f64, f64, u64)> {
        let (&k, &sum) = self.ks.last().zip(self.ndcg_sum.last())?;
        Some((k, sum, self.ndcg_sq_sum, self.lists_clicked))
    }

    /// Mean NDCG@k for each cut-off, when a list was clicked.
    pub fn ndcg(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        let n = self.lists_clicked as f64;
        self.ks
            .iter()
            .zip(&self.ndcg_sum)
            .filter(move |_| n > 0.0)
            .map(move |(&k, &s)| (k, s / n))
    }

    /// The `ranking` point and one `position_ctr` point per position shown.
    pub fn points(&self, series: &SeriesKey, end_ms: i64) -> Vec<Point> {
        let mut p = series
            .point("ranking", end_ms)
            .field("lists", FieldValue::Int(self.lists as i64))
            .field("lists_clicked", FieldValue::Int(self.lists_clicked as i64));
        let n = self.lists_clicked as f64;
        if n > 0.0 {
            for (k, v) in self.ndcg() {
                p.fields
                    .push((format!("ndcg_at_{k}"), FieldValue::Float(v)));
            }
            for (&k, &h) in self.ks.iter().zip(&self.hits) {
                p.fields
                    .push((format!("hit_rate_at_{k}"), FieldValue::Float(h as f64 / n)));
            }
            p.fields
                .push(("mrr".into(), FieldValue::Float(self.rr_sum / n)));
        }
        let mut out = vec![p];
        for (i, (&shown, &clicked)) in self.impressions.iter().zip(&self.clicks).enumerate() {
            if shown == 0 {
                continue;
            }
            out.push(
                series
                    .point("position_ctr", end_ms)
                    .tag("position", (i + 1).to_string())
                    .field("impressions", FieldValue::Int(shown as i64))
                    .field("clicks", FieldValue::Int(clicked as i64))
                    .field("ctr", FieldValue::Float(clicked as f64 / shown as f64)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_list_by_hand() {
        let mut r = Ranking::new(&[1, 3]);
        // Shown in order 1..4; relevant at positions 2 and 4.
        r.add_list(&mut [(4, Some(1)), (1, Some(0)), (2, Some(1)), (3, None)]);
        let d = |i: f64| 1.0 / (i + 1.0).log2();
        let ndcg: Vec<_> = r.ndcg().collect();
        assert_eq!(ndcg[0], (1, 0.0));
        assert!((ndcg[1].1 - d(2.0) / (d(1.0) + d(2.0))).abs() < 1e-12);
        assert_eq!(r.rr_sum, 0.5);
        assert_eq!(r.hits, vec![0, 1]);
        assert_eq!(
            (r.impressions.clone(), r.clicks.clone()),
            (vec![1, 1, 1], vec![0, 1, 0])
        );
    }

    #[test]
    fn lists_without_labels_are_not_judged_and_without_clicks_not_averaged() {
        let mut r = Ranking::new(&[5]);
        r.add_list(&mut [(1, None), (2, None)]);
        assert_eq!(r.lists, 0);
        r.add_list(&mut [(1, Some(0)), (2, None)]);
        assert_eq!((r.lists, r.lists_clicked), (1, 0));
        assert_eq!(r.ndcg().count(), 0);
        r.add_list(&mut [(1, Some(1))]);
        r.add_list(&mut [(1, Some(0)), (2, Some(1))]);
        let (k, sum, sq, n) = r.ndcg_sums().unwrap();
        let second = 1.0 / 3f64.log2();
        assert_eq!((k, n), (5, 2));
        assert!((sum - (1.0 + second)).abs() < 1e-12);
        assert!((sq - (1.0 + second * second)).abs() < 1e-12);
    }
}
