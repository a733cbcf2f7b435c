//! Reference profiles: what "normal" looks like for a model version, kept as
//! fixed bin edges plus counts so comparing a window costs O(bins).
//!
//! A profile is built from the first `reference_window` of a version (or from
//! a recorded file by `infermon profile`) and then frozen. Numeric features
//! keep quantile bin edges of a bounded uniform sample of the reference
//! (exact when the reference has at most `reference_sample` values);
//! categorical features keep the most frequent categories plus "other".

use std::collections::BTreeMap;
use std::ops::Range;

use arrow::array::{Array, Float64Array, StringArray};
use foldhash::HashMap;

use super::slots::{RowLayout, Slots};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The name under which the prediction score is profiled and reported.
pub const SCORE: &str = "score";
/// The category every unseen or untracked value falls into.
pub const OTHER: &str = "__other__";

/// How profiles are binned and bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Binning {
    /// Fine quantile bins (KS, Wasserstein).
    pub bins: usize,
    /// Coarse quantile bins (PSI, JS); a divisor of `bins`.
    pub psi_bins: usize,
    /// Categories tracked per categorical feature; the rest is "other".
    pub max_categories: usize,
    /// Values sampled per numeric feature to place the bin edges.
    pub reference_sample: usize,
}

impl Default for Binning {
    fn default() -> Self {
        Self {
            bins: 100,
            psi_bins: 10,
            max_categories: 50,
            reference_sample: 100_000,
        }
    }
}

/// The frozen reference of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Model name.
    pub model: String,
    /// Model version the reference was taken from.
    pub model_version: String,
    /// Per feature (and [`SCORE`]).
    pub features: BTreeMap<String, FeatureProfile>,
}

/// The reference distribution of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeatureProfile {
    /// A numeric feature.
    Numeric(NumericProfile),
    /// A string-valued feature.
    Categorical(CategoricalProfile),
}

impl FeatureProfile {
    /// Rows of the reference where the feature was null or absent.
    pub fn nulls(&self) -> u64 {
        match self {
            FeatureProfile::Numeric(p) => p.nulls,
            FeatureProfile::Categorical(p) => p.nulls,
        }
    }

    /// Rows whose value had the other type (a string for a numeric
    /// feature, a number for a categorical one).
    pub fn invalid(&self) -> u64 {
        match self {
            FeatureProfile::Numeric(p) => p.invalid,
            FeatureProfile::Categorical(p) => p.invalid,
        }
    }

    /// Share of reference rows with a value of the wrong type.
    pub fn invalid_rate(&self) -> f64 {
        let total = self.nulls() + self.present() + self.invalid();
        if total == 0 {
            0.0
        } else {
            self.invalid() as f64 / total as f64
        }
    }

    /// Rows with a value of the feature's type.
    pub fn present(&self) -> u64 {
        match self {
            FeatureProfile::Numeric(p) => p.counts.iter().sum(),
            FeatureProfile::Categorical(p) => p.counts.iter().sum(),
        }
    }

    /// Share of reference rows without a value.
    pub fn null_rate(&self) -> f64 {
        let total = self.nulls() + self.present() + self.invalid();
        if total == 0 {
            0.0
        } else {
            self.nulls() as f64 / total as f64
        }
    }
}

/// Quantile bins of a numeric reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    /// Interior fine edges, strictly increasing; bin `i` is
    /// `[edges[i-1], edges[i])`, so there are `edges.len() + 1` bins.
    pub edges: Vec<f64>,
    /// Interior coarse edges (a subset of `edges`) for PSI and JS.
    pub coarse_edges: Vec<f64>,
    /// Reference values per fine bin.
    pub counts: Vec<u64>,
    /// Rows without a value.
    pub nulls: u64,
    /// Rows with a string value (the wrong type), e.g. `"N/A"`.
    #[serde(default)]
    pub invalid: u64,
    /// Mean of the reference values.
    pub mean: f64,
    /// Standard deviation (population) of the reference values, which
    /// normalises the Wasserstein distance.
    pub std: f64,
    /// Smallest reference value.
    pub min: f64,
    /// Largest reference value.
    pub max: f64,
    /// Mean of the values in the first and in the last fine bin: the tails
    /// are open-ended, so the binned Wasserstein distance places their mass
    /// by its mean rather than spreading it to the extremes.
    #[serde(default)]
    pub tail_means: Option<(f64, f64)>,
}

impl NumericProfile {
    /// Fine bin of `x` (`numpy.searchsorted(edges, x, side="right")`).
    pub fn bin(&self, x: f64) -> usize {
        self.edges.partition_point(|&e| e <= x)
    }

    /// For each fine bin, its coarse bin.
    pub fn coarse_index(&self) -> Vec<usize> {
        (0..self.counts.len())
            .map(|i| match i {
                0 => 0,
                i => self
                    .coarse_edges
                    .partition_point(|&c| c <= self.edges[i - 1]),
            })
            .collect()
    }
}

/// Category frequencies of a categorical reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalProfile {
    /// Tracked categories, most frequent first.
    pub categories: Vec<String>,
    /// Reference counts per tracked category, then one for "other".
    pub counts: Vec<u64>,
    /// Rows without a value.
    pub nulls: u64,
    /// Rows with a numeric value (the wrong type).
    #[serde(default)]
    pub invalid: u64,
}

impl CategoricalProfile {
    /// Index of `value` in `counts` (the last slot is "other").
    pub fn slot(&self, value: &str) -> usize {
        self.categories
            .iter()
            .position(|c| c == value)
            .unwrap_or(self.categories.len())
    }
}

/// Accumulates one feature's numeric reference values.
#[derive(Debug, Clone)]
struct NumericBuilder {
    sample: Vec<f64>,
    seen: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

impl Default for NumericBuilder {
    fn default() -> Self {
        Self {
            sample: Vec::new(),
            seen: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

/// Accumulates one feature's string reference values.
#[derive(Debug, Clone, Default)]
struct CategoricalBuilder {
    counts: HashMap<String, u64>,
    overflow: u64,
}

impl CategoricalBuilder {
    fn seen(&self) -> u64 {
        self.overflow + self.counts.values().sum::<u64>()
    }
}

/// One feature's reference values of both types: the type most values have
/// is the feature's, the others are counted as invalid.
#[derive(Debug, Clone, Default)]
struct FeatureBuilder {
    numeric: NumericBuilder,
    categorical: CategoricalBuilder,
}

/// Builds a [`Profile`] from a stream of values, in bounded memory.
#[derive(Debug, Clone)]
pub struct ProfileBuilder {
    binning: Binning,
    rng: ChaCha8Rng,
    /// Rows that could carry features (those with a non-empty feature map).
    feature_rows: u64,
    /// Rows that could carry a score (status ok).
    score_rows: u64,
    features: Slots<FeatureBuilder>,
    /// The last numeric feature map's keys and their slots.
    layout: RowLayout,
}

impl ProfileBuilder {
    /// An empty builder; sampling is seeded, so profiles are reproducible.
    pub fn new(binning: Binning) -> Self {
        Self {
            binning,
            rng: ChaCha8Rng::seed_from_u64(0x1f2e3d4c),
            feature_rows: 0,
            score_rows: 0,
            features: Slots::default(),
            layout: RowLayout::default(),
        }
    }

    /// Values seen so far (all features).
    pub fn is_empty(&self) -> bool {
        self.feature_rows == 0 && self.score_rows == 0
    }

    /// One more row that carries features.
    pub fn count_feature_row(&mut self) {
        self.feature_rows += 1;
    }

    /// One more row that carries a score.
    pub fn count_score_row(&mut self) {
        self.score_rows += 1;
    }

    fn feature(&mut self, name: &str) -> &mut FeatureBuilder {
        let i = self
            .features
            .slot(usize::MAX, name, FeatureBuilder::default);
        self.features.at(i)
    }

    /// A numeric value of `name` (non-finite values are ignored).
    pub fn add_number(&mut self, name: &str, x: f64) {
        if !x.is_finite() {
            return;
        }
        let i = self
            .features
            .slot(usize::MAX, name, FeatureBuilder::default);
        self.add_to_slot(i, x);
    }

    /// A row's numeric feature map: entries `range` of `keys` and
    /// `values`, those whose name `monitors` (non-finite values are
    /// ignored). Rows repeating the last row's keys skip the name lookups.
    pub(crate) fn add_numeric_entries(
        &mut self,
        keys: &StringArray,
        values: &Float64Array,
        range: Range<usize>,
        monitors: impl Fn(&str) -> bool,
    ) {
        if !self.layout.matches(keys, range.clone()) {
            let features = &mut self.features;
            self.layout = RowLayout::of(keys, range.clone(), |pos, name| {
                monitors(name).then(|| features.slot(pos, name, FeatureBuilder::default))
            });
        }
        for (k, i) in range.enumerate() {
            if let Some(slot) = self.layout.slots[k]
                && values.is_valid(i)
                && values.value(i).is_finite()
            {
                self.add_to_slot(slot, values.value(i));
            }
        }
    }

    /// A finite value of the numeric feature in slot `i`.
    fn add_to_slot(&mut self, i: usize, x: f64) {
        let cap = self.binning.reference_sample;
        let b = &mut self.features.at(i).numeric;
        // Reservoir sampling (algorithm R): a uniform sample of `cap`.
        let slot = if (b.seen as usize) < cap {
            None
        } else {
            Some(self.rng.random_range(0..=b.seen))
        };
        b.seen += 1;
        b.sum += x;
        b.sum_sq += x * x;
        b.min = b.min.min(x);
        b.max = b.max.max(x);
        match slot {
            None => b.sample.push(x),
            Some(j) if (j as usize) < cap => b.sample[j as usize] = x,
            Some(_) => {}
        }
    }

    /// A string value of `name`.
    pub fn add_category(&mut self, name: &str, value: &str) {
        // Count up to 4× the tracked categories exactly; beyond that, new
        // values are "other" (the top ones have long been seen by then).
        let limit = 4 * self.binning.max_categories;
        let b = &mut self.feature(name).categorical;
        if let Some(n) = b.counts.get_mut(value) {
            *n += 1;
        } else if b.counts.len() < limit {
            b.counts.insert(value.to_string(), 1);
        } else {
            b.overflow += 1;
        }
    }

    /// Freeze into a profile.
    pub fn build(&self, model: &str, model_version: &str) -> Profile {
        let mut features = BTreeMap::new();
        for (name, b) in self.features.iter() {
            let rows = if name == SCORE {
                self.score_rows
            } else {
                self.feature_rows
            };
            let (numeric, strings) = (b.numeric.seen, b.categorical.seen());
            let profile = if numeric >= strings {
                self.numeric_profile(&b.numeric, rows, strings)
            } else {
                self.categorical_profile(&b.categorical, rows, numeric)
            };
            features.insert(name.clone(), profile);
        }
        Profile {
            model: model.to_string(),
            model_version: model_version.to_string(),
            features,
        }
    }

    fn numeric_profile(&self, b: &NumericBuilder, rows: u64, invalid: u64) -> FeatureProfile {
        let mut sorted = b.sample.clone();
        sort_total(&mut sorted);
        let edges = bin_edges(&sorted, self.binning.bins);
        let coarse_edges = bin_edges(&sorted, self.binning.psi_bins);
        // Counts per bin: from the sample, scaled to the values seen (exact
        // while the reference fits in the sample).
        let mut counts = vec![0u64; edges.len() + 1];
        let lookup = super::bins::BinLookup::new(edges.clone());
        lookup.bin_each(sorted.iter().copied(), |bin, _| counts[bin] += 1);
        if b.seen as usize > sorted.len() {
            let scale = b.seen as f64 / sorted.len() as f64;
            counts
                .iter_mut()
                .for_each(|c| *c = (*c as f64 * scale).round() as u64);
        }
        let n = b.seen as f64;
        let mean = if b.seen == 0 { 0.0 } else { b.sum / n };
        let std = if b.seen == 0 {
            0.0
        } else {
            (b.sum_sq / n - mean * mean).max(0.0).sqrt()
        };
        FeatureProfile::Numeric(NumericProfile {
            tail_means: tail_means(&sorted, &edges),
            edges,
            coarse_edges,
            counts,
            nulls: rows.saturating_sub(b.seen + invalid),
            invalid,
            mean,
            std,
            min: b.min,
            max: b.max,
        })
    }

    fn categorical_profile(
        &self,
        b: &CategoricalBuilder,
        rows: u64,
        invalid: u64,
    ) -> FeatureProfile {
        let mut ranked: Vec<(&String, &u64)> = b.counts.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let keep = ranked.len().min(self.binning.max_categories);
        let other: u64 = b.overflow + ranked[keep..].iter().map(|(_, n)| **n).sum::<u64>();
        let mut counts: Vec<u64> = ranked[..keep].iter().map(|(_, n)| **n).collect();
        counts.push(other);
        FeatureProfile::Categorical(CategoricalProfile {
            categories: ranked[..keep].iter().map(|(k, _)| (*k).clone()).collect(),
            counts,
            nulls: rows.saturating_sub(b.seen() + invalid),
            invalid,
        })
    }
}

/// Means of the values below the first edge and at or above the last one.
fn tail_means(sorted: &[f64], edges: &[f64]) -> Option<(f64, f64)> {
    let (first, last) = (*edges.first()?, *edges.last()?);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let low = &sorted[..sorted.partition_point(|&x| x < first)];
    let high = &sorted[sorted.partition_point(|&x| x < last)..];
    (!low.is_empty() && !high.is_empty()).then(|| (mean(low), mean(high)))
}

/// Sort ascending in IEEE 754 totalOrder (`f64::total_cmp`'s order), as
/// integers: the same order with a cheaper compare, which is most of
/// building a profile (20 features × 100k sampled values).
fn sort_total(xs: &mut [f64]) {
    // total_cmp's key: negative values get their magnitude bits flipped.
    // The map is its own inverse.
    let key = |bits: i64| bits ^ (((bits >> 63) as u64) >> 1) as i64;
    let mut keys: Vec<i64> = xs.iter().map(|x| key(x.to_bits() as i64)).collect();
    keys.sort_unstable();
    for (x, k) in xs.iter_mut().zip(keys) {
        *x = f64::from_bits(key(k) as u64);
    }
}

/// Interior edges at the `k/bins` quantiles of a sorted sample (the "lower"
/// order statistic, index `k·(n−1)/bins` in integers), duplicates removed.
/// Because the index is exact integer arithmetic, the coarse edges are a
/// subset of the fine ones whenever `psi_bins` divides `bins`.
///
/// Quantile edges alone cannot separate tied values (a constant feature has
/// one edge, a rare 0/1 flag none), so see [`bin_edges`] for what profiles use.
pub fn quantile_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    if sorted.is_empty() || bins < 2 {
        return Vec::new();
    }
    let n = sorted.len();
    let mut edges: Vec<f64> = (1..bins).map(|k| sorted[k * (n - 1) / bins]).collect();
    edges.dedup();
    // An edge at the minimum would leave the first bin empty for ever.
    if edges.first() == Some(&sorted[0]) {
        edges.remove(0);
    }
    edges
}

/// Interior bin edges of a sorted reference sample for `bins` quantile bins,
/// with every tied value in a bin of its own.
///
/// - A sample with at most `bins / 2` distinct values (a flag, a small
///   enum, a constant) is binned by value, as a categorical: each distinct
///   value `v` gets the bin `[v, next_up(v))`, and the gaps between and
///   beyond them get bins of their own (empty in the reference), so a value
///   the reference never had is told apart from its neighbours. This is
///   what Evidently and NannyML do with low-cardinality numeric columns.
/// - Otherwise the edges are [`quantile_edges`], plus the point bin
///   `[v, next_up(v))` of every value holding at least `1/bins` of the sample
///   (where quantile edges would collide: a spike at 0 in an otherwise
///   continuous feature).
///
/// The edges for `psi_bins` are a subset of those for `bins` when `psi_bins`
/// divides `bins` (a value heavy at `1/psi_bins` is heavy at `1/bins`).
pub fn bin_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    if bins < 2 {
        return Vec::new();
    }
    // One pass over the runs of equal values: the first `bins / 2`
    // distinct values, how many there are, and the heavy ones.
    let heavy = sorted.len().div_ceil(bins).max(2);
    let (mut distinct, mut few, mut points) = (0, Vec::new(), Vec::new());
    for run in sorted.chunk_by(|a, b| a == b) {
        distinct += 1;
        if distinct <= bins / 2 {
            few.push(run[0]);
        }
        if run.len() >= heavy {
            points.extend([run[0], run[0].next_up()]);
        }
    }
    if distinct <= bins / 2 {
        return few.iter().flat_map(|&v| [v, v.next_up()]).collect();
    }
    let mut edges = quantile_edges(sorted, bins);
    edges.extend(points);
    edges.sort_by(f64::total_cmp);
    edges.dedup();
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_total_is_total_cmp_order() {
        let mut xs = vec![
            3.5,
            -0.0,
            0.0,
            -1e300,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            1e-310,
            -2.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
            7.0,
            -2.5,
        ];
        let mut expected = xs.clone();
        expected.sort_by(f64::total_cmp);
        sort_total(&mut xs);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&xs), bits(&expected));
    }

    #[test]
    fn edges_are_quantiles_and_coarse_is_a_subset() {
        let sorted: Vec<f64> = (0..1001).map(f64::from).collect();
        let fine = quantile_edges(&sorted, 100);
        let coarse = quantile_edges(&sorted, 10);
        assert_eq!(fine.len(), 99);
        assert_eq!(
            coarse,
            vec![
                100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0
            ]
        );
        assert!(coarse.iter().all(|c| fine.contains(c)));
    }

    #[test]
    fn tied_values_get_bins_of_their_own() {
        // A constant and a rare flag: every value alone, gaps beside it.
        assert_eq!(bin_edges(&[0.0; 500], 100), vec![0.0, 0.0f64.next_up()]);
        let mut flag = vec![0.0; 994];
        flag.extend([1.0; 6]);
        let edges = bin_edges(&flag, 10);
        assert_eq!(edges, vec![0.0, 0.0f64.next_up(), 1.0, 1.0f64.next_up()]);
        let p = NumericProfile {
            edges: edges.clone(),
            coarse_edges: edges,
            counts: vec![0; 5],
            nulls: 0,
            invalid: 0,
            mean: 0.0,
            std: 0.0,
            min: 0.0,
            max: 1.0,
            tail_means: None,
        };
        let bins: Vec<usize> = [-1.0, 0.0, 0.5, 1.0, 7.0].map(|x| p.bin(x)).to_vec();
        assert_eq!(bins, vec![0, 1, 2, 3, 4], "below, 0, between, 1, above");

        // A spike at 0 in a continuous feature: 0 gets its point bin at both
        // resolutions, and the coarse edges stay a subset of the fine ones.
        let mut spiky: Vec<f64> = vec![0.0; 600];
        spiky.extend((1..=400).map(|i| f64::from(i) / 40.0));
        let fine = bin_edges(&spiky, 100);
        let coarse = bin_edges(&spiky, 10);
        for e in [0.0, 0.0f64.next_up()] {
            assert!(fine.contains(&e) && coarse.contains(&e), "{e}");
        }
        assert!(coarse.iter().all(|c| fine.contains(c)), "{coarse:?}");
        assert!(fine.windows(2).all(|w| w[0] < w[1]), "strictly increasing");

        // No ties, many values: plain quantile edges.
        let smooth: Vec<f64> = (0..1001).map(f64::from).collect();
        assert_eq!(bin_edges(&smooth, 100), quantile_edges(&smooth, 100));
    }

    #[test]
    fn wrong_typed_values_are_counted_not_binned() {
        let mut b = ProfileBuilder::new(Binning::default());
        for i in 0..100 {
            b.count_feature_row();
            match i % 10 {
                0 => b.add_category("price", "N/A"),
                1 => {}
                _ => b.add_number("price", f64::from(i)),
            }
            b.add_category("site", if i % 20 == 0 { "x" } else { "cn" });
            if i % 25 == 0 {
                b.add_number("site", 7.0);
            }
        }
        let p = b.build("m", "1");
        let price = &p.features["price"];
        assert!(matches!(price, FeatureProfile::Numeric(_)));
        assert_eq!(
            (price.present(), price.invalid(), price.nulls()),
            (80, 10, 10)
        );
        assert_eq!(price.invalid_rate(), 0.1);
        let site = &p.features["site"];
        assert!(matches!(site, FeatureProfile::Categorical(_)));
        assert_eq!((site.present(), site.invalid(), site.nulls()), (100, 4, 0));
    }

    #[test]
    fn profile_counts_nulls_and_categories() {
        let mut b = ProfileBuilder::new(Binning {
            max_categories: 2,
            ..Binning::default()
        });
        for i in 0..100 {
            b.count_feature_row();
            if i % 10 != 0 {
                b.add_number("x", i as f64);
            }
            b.add_category("c", ["a", "a", "b", "z"][i % 4]);
        }
        let p = b.build("m", "1");
        let FeatureProfile::Numeric(x) = &p.features["x"] else {
            panic!("x is numeric")
        };
        assert_eq!(x.nulls, 10);
        assert_eq!(x.counts.iter().sum::<u64>(), 90);
        let FeatureProfile::Categorical(c) = &p.features["c"] else {
            panic!("c is categorical")
        };
        assert_eq!(c.categories, vec!["a", "b"]);
        assert_eq!(c.counts, vec![50, 25, 25]);
        assert_eq!(c.slot("never-seen"), 2);
    }

    #[test]
    fn large_references_are_sampled_but_keep_their_size() {
        let mut b = ProfileBuilder::new(Binning {
            reference_sample: 1000,
            ..Binning::default()
        });
        for i in 0..50_000 {
            b.count_feature_row();
            b.add_number("x", (i % 1000) as f64);
        }
        let FeatureProfile::Numeric(x) = &b.build("m", "1").features["x"] else {
            panic!("numeric")
        };
        let total: u64 = x.counts.iter().sum();
        assert!((49_900..=50_100).contains(&total), "{total}");
        // The median edge of a uniform 0..999 sample is near 500.
        assert!(
            (x.coarse_edges[4] - 500.0).abs() < 60.0,
            "{:?}",
            x.coarse_edges
        );
    }
}
