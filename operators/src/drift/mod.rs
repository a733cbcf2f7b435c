//! Distribution drift of inputs and scores against a frozen reference.
//!
//! Per (model, version) the first `reference_window` of traffic becomes the
//! reference (or a profile file does). Each window then counts values into
//! the reference's bins ([`DriftWindow`], O(bins) per feature) and, when it
//! closes, is compared with it: PSI, KS, JS, Wasserstein, chi-square and the
//! null rate, written as the `drift` measurement. A version with no reference
//! yet is compared with the previous version's, so a bad deploy shows up.

pub mod bins;
pub mod profile;
mod slots;
pub mod stats;

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, Float64Array, MapArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};
use infermon_schemas::batch::{CATEGORICAL_FEATURES, NUMERIC_FEATURES};
use infermon_schemas::{FieldValue, Point};
use serde::{Deserialize, Serialize};

use self::bins::BinLookup;
use self::profile::{Binning, FeatureProfile, Profile, ProfileBuilder, SCORE};
use self::slots::{MAX_POSITIONS, RowLayout, Slots};
use self::stats::{LinearCdf, chi2_homogeneity, js_distance, ks_pvalue, psi};
use crate::engine::SeriesKey;

/// When a feature counts as drifted. The distribution rule needs both an
/// effect size (PSI, Wasserstein or JS) and statistical significance (KS or
/// chi-square p-value), because effect sizes are noisy on small windows and
/// p-values flag everything on large ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftThresholds {
    /// PSI at or above this is a large shift.
    pub psi: f64,
    /// Wasserstein-1 over the reference standard deviation.
    pub wasserstein: f64,
    /// Jensen–Shannon distance (base 2).
    pub js: f64,
    /// KS (numeric) or chi-square (categorical) p-value must be below this.
    /// A model is tested once per feature per window, ~10⁴ times a day, so
    /// the default is 1e-4, not 0.01: at 0.01 the bundled day of quiet
    /// traffic flagged ~10 windows per model by chance; real incidents have
    /// p-values far below 1e-10.
    pub max_pvalue: f64,
    /// Null rate above the reference's by at least this (absolute).
    pub null_rate_increase: f64,
    /// Share of values of the wrong type (a string such as `"N/A"` for a
    /// numeric feature, a number for a categorical one) above the
    /// reference's by at least this (absolute).
    pub invalid_rate_increase: f64,
}

impl Default for DriftThresholds {
    fn default() -> Self {
        Self {
            psi: 0.2,
            wasserstein: 0.1,
            js: 0.1,
            max_pvalue: 1e-4,
            null_rate_increase: 0.05,
            invalid_rate_increase: 0.05,
        }
    }
}

/// Drift settings (`[drift]` in the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Compute drift at all.
    pub enabled: bool,
    /// How much of a version's first traffic becomes its reference (rounded
    /// up to whole windows).
    #[serde(with = "humantime_serde")]
    pub reference_window: Duration,
    /// Reference profiles per model (from `infermon profile`), used instead
    /// of the first traffic of each version.
    pub reference_files: BTreeMap<String, PathBuf>,
    /// Features to monitor; empty means every feature seen. `score` is
    /// always monitored.
    pub features: Vec<String>,
    /// Fine quantile bins (KS and Wasserstein).
    pub bins: usize,
    /// Coarse quantile bins for PSI and JS; must divide `bins`.
    pub psi_bins: usize,
    /// Categories tracked per categorical feature (the rest is "other").
    pub max_categories: usize,
    /// Reference values sampled per numeric feature to place bin edges.
    pub reference_sample: usize,
    /// Windows with fewer rows are reported but not judged.
    pub min_samples: u64,
    /// Default drift rule.
    pub thresholds: DriftThresholds,
    /// Per-feature overrides of the rule.
    pub feature_thresholds: BTreeMap<String, DriftThresholds>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        let b = Binning::default();
        Self {
            enabled: true,
            reference_window: Duration::from_secs(30 * 60),
            reference_files: BTreeMap::new(),
            features: Vec::new(),
            bins: b.bins,
            psi_bins: b.psi_bins,
            max_categories: b.max_categories,
            reference_sample: b.reference_sample,
            min_samples: 200,
            thresholds: DriftThresholds::default(),
            feature_thresholds: BTreeMap::new(),
        }
    }
}

/// Problems with drift settings or reference files.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// Bad numbers in `[drift]`.
    #[error("drift config: {0}")]
    Config(String),
    /// A reference file could not be read or parsed.
    #[error("reference profile {path}: {message}")]
    Reference {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl DriftConfig {
    fn binning(&self) -> Result<Binning, DriftError> {
        if self.bins < 2 || self.psi_bins < 2 || !self.bins.is_multiple_of(self.psi_bins) {
            return Err(DriftError::Config(format!(
                "bins ({}) and psi_bins ({}) must be ≥ 2 and psi_bins must divide bins",
                self.bins, self.psi_bins
            )));
        }
        if self.reference_sample < self.bins {
            return Err(DriftError::Config(format!(
                "reference_sample ({}) must be at least bins ({})",
                self.reference_sample, self.bins
            )));
        }
        Ok(Binning {
            bins: self.bins,
            psi_bins: self.psi_bins,
            max_categories: self.max_categories.max(1),
            reference_sample: self.reference_sample,
        })
    }

    fn monitors(&self, feature: &str) -> bool {
        self.features.is_empty() || feature == SCORE || self.features.iter().any(|f| f == feature)
    }

    fn thresholds(&self, feature: &str) -> DriftThresholds {
        self.feature_thresholds
            .get(feature)
            .copied()
            .unwrap_or(self.thresholds)
    }
}

/// Per-window counts of one feature, in its reference's bins.
#[derive(Debug, Clone)]
enum FeatureCounts {
    Numeric {
        /// The reference's fine edges with their lookup grid.
        edges: Arc<BinLookup>,
        counts: Vec<u64>,
        min: f64,
        max: f64,
        /// Sums of the values in the first and in the last bin.
        tail_sums: (f64, f64),
    },
    Categorical {
        /// Tracked category → slot; anything else is the last slot, "other".
        slots: Arc<HashMap<String, usize>>,
        counts: Vec<u64>,
    },
    /// No reference for this feature: only presence is counted.
    Unbinned,
}

#[derive(Debug, Clone)]
struct FeatureWindow {
    /// Values of the reference's type.
    present: u64,
    /// Values of the other type: counted, never binned.
    invalid: u64,
    counts: FeatureCounts,
}

impl FeatureWindow {
    fn new(reference: Option<(&FeatureProfile, &FeatureBins)>) -> Self {
        let counts = match reference {
            Some((FeatureProfile::Numeric(p), FeatureBins::Numeric(edges))) => {
                FeatureCounts::Numeric {
                    edges: edges.clone(),
                    counts: vec![0; p.counts.len()],
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                    tail_sums: (0.0, 0.0),
                }
            }
            Some((FeatureProfile::Categorical(p), FeatureBins::Categorical(slots))) => {
                FeatureCounts::Categorical {
                    slots: slots.clone(),
                    counts: vec![0; p.counts.len()],
                }
            }
            _ => FeatureCounts::Unbinned,
        };
        Self {
            present: 0,
            invalid: 0,
            counts,
        }
    }

    /// Count numeric values: binned when the reference has this feature as
    /// numeric; else only counted (as invalid when it is categorical).
    fn add_numbers(&mut self, xs: impl Iterator<Item = f64>) {
        let FeatureCounts::Numeric {
            edges,
            counts,
            min,
            max,
            tail_sums,
        } = &mut self.counts
        else {
            let n = xs.count() as u64;
            match self.counts {
                FeatureCounts::Categorical { .. } => self.invalid += n,
                _ => self.present += n,
            }
            return;
        };
        let last = edges.edges().len();
        let (mut n, mut lo, mut hi, mut low_sum, mut high_sum) =
            (0, *min, *max, tail_sums.0, tail_sums.1);
        // Branch-free: adding 0.0 leaves a sum as it was.
        edges.bin_each(xs, |bin, x| {
            counts[bin] += 1;
            low_sum += if bin == 0 { x } else { 0.0 };
            high_sum += if bin == last { x } else { 0.0 };
            lo = lo.min(x);
            hi = hi.max(x);
            n += 1;
        });
        self.present += n;
        (*min, *max, *tail_sums) = (lo, hi, (low_sum, high_sum));
    }
}

/// A reference profile with what counting against it needs, prepared
/// once: every window compared with it shares its bin lookups and
/// category slots (a window per series and minute, and per shard, would
/// otherwise build its own: a catch-up reads thousands a second).
#[derive(Debug)]
pub(crate) struct Reference {
    profile: Profile,
    bins: HashMap<String, FeatureBins>,
}

/// One feature's share of a [`Reference`].
#[derive(Debug)]
enum FeatureBins {
    Numeric(Arc<BinLookup>),
    Categorical(Arc<HashMap<String, usize>>),
}

impl Reference {
    fn new(profile: Profile) -> Arc<Self> {
        let bins = (profile.features.iter())
            .map(|(name, f)| {
                let bins = match f {
                    FeatureProfile::Numeric(p) => {
                        FeatureBins::Numeric(Arc::new(BinLookup::new(p.edges.clone())))
                    }
                    FeatureProfile::Categorical(p) => FeatureBins::Categorical(Arc::new(
                        (p.categories.iter().enumerate())
                            .map(|(i, c)| (c.clone(), i))
                            .collect(),
                    )),
                };
                (name.clone(), bins)
            })
            .collect();
        Arc::new(Self { profile, bins })
    }

    /// The profile and prepared bins of `feature`, if the reference has it.
    fn feature(&self, feature: &str) -> Option<(&FeatureProfile, &FeatureBins)> {
        Some((self.profile.features.get(feature)?, self.bins.get(feature)?))
    }
}

/// One series' drift state in one window: counters only, O(features × bins)
/// whatever the number of events.
#[derive(Debug, Clone, Default)]
pub struct DriftWindow {
    reference: Option<Arc<Reference>>,
    feature_rows: u64,
    score_rows: u64,
    features: Slots<FeatureWindow>,
    /// Scratch: one batch's numeric values outside the feature map (the
    /// score) per feature slot, binned per slot once the batch is read.
    pending: Vec<Vec<f64>>,
    /// The key layout of the last numeric feature map seen and the slot of
    /// each of its entries: rows of one model repeat it, so one compare of
    /// the row's key bytes replaces a lookup per value.
    layout: RowLayout,
    /// Scratch: the first map entry of each row of the batch with that
    /// layout, not yet counted.
    layout_rows: Vec<usize>,
    /// Scratch: a chunk of those rows' values, feature-major.
    scratch: Vec<f64>,
}

/// A [`DriftWindow`]'s counters without its reference: what a partial
/// carries. The receiver attaches the same reference (one config, one
/// owner of references) with [`DriftOperator::new_window`] and adds these
/// with [`DriftWindow::add_counts`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftCounts {
    feature_rows: u64,
    score_rows: u64,
    features: Vec<FeatureCountsWire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FeatureCountsWire {
    name: String,
    present: u64,
    invalid: u64,
    /// Per reference bin or category (empty: unbinned).
    counts: Vec<u64>,
    /// Numeric: (min, max) seen, and the sums of the values in the first
    /// and the last bin.
    range: Option<(f64, f64)>,
    tail_sums: (f64, f64),
}

impl DriftWindow {
    /// The counters, in first-seen feature order.
    pub fn counts(&self) -> DriftCounts {
        let features = self
            .features
            .iter()
            .map(|(name, f)| {
                let (counts, range, tail_sums) = match &f.counts {
                    FeatureCounts::Numeric {
                        counts,
                        min,
                        max,
                        tail_sums,
                        ..
                    } => (
                        counts.clone(),
                        (min.is_finite() && max.is_finite()).then_some((*min, *max)),
                        *tail_sums,
                    ),
                    FeatureCounts::Categorical { counts, .. } => (counts.clone(), None, (0.0, 0.0)),
                    FeatureCounts::Unbinned => (Vec::new(), None, (0.0, 0.0)),
                };
                FeatureCountsWire {
                    name: name.clone(),
                    present: f.present,
                    invalid: f.invalid,
                    counts,
                    range,
                    tail_sums,
                }
            })
            .collect();
        DriftCounts {
            feature_rows: self.feature_rows,
            score_rows: self.score_rows,
            features,
        }
    }

    /// Add counters of the same series and window (made against the same
    /// reference). Bins beyond this window's reference are ignored: a
    /// partial made against another reference is a configuration error
    /// the merge stage names at start-up, not here.
    pub fn add_counts(&mut self, other: &DriftCounts) {
        self.feature_rows += other.feature_rows;
        self.score_rows += other.score_rows;
        for w in &other.features {
            let i = self.slot(usize::MAX, &w.name);
            let f = self.features.at(i);
            f.present += w.present;
            f.invalid += w.invalid;
            match &mut f.counts {
                FeatureCounts::Numeric {
                    counts,
                    min,
                    max,
                    tail_sums,
                    ..
                } => {
                    counts.iter_mut().zip(&w.counts).for_each(|(a, b)| *a += b);
                    if let Some((lo, hi)) = w.range {
                        *min = min.min(lo);
                        *max = max.max(hi);
                    }
                    tail_sums.0 += w.tail_sums.0;
                    tail_sums.1 += w.tail_sums.1;
                }
                FeatureCounts::Categorical { counts, .. } => {
                    counts.iter_mut().zip(&w.counts).for_each(|(a, b)| *a += b);
                }
                FeatureCounts::Unbinned => {}
            }
        }
    }

    /// Fold in another window state of the same series and window.
    pub fn merge(&mut self, other: &DriftWindow) {
        self.add_counts(&other.counts());
    }
}

/// Rows of one layout counted together: 20 features' values of 128 rows
/// are 20 KiB.
const LAYOUT_CHUNK_ROWS: usize = 128;

impl DriftWindow {
    /// The slot of feature `name`, seen at position `pos` of its row.
    fn slot(&mut self, pos: usize, name: &str) -> usize {
        let reference = &self.reference;
        self.features.slot(pos, name, || {
            FeatureWindow::new(reference.as_ref().and_then(|r| r.feature(name)))
        })
    }

    /// A row's numeric features, held (as the row's first entry) until
    /// the layout changes or [`Self::count_pending`]: rows of one layout
    /// are counted feature by feature ([`Self::count_layout_rows`]).
    fn add_numeric_row(&mut self, row: &NumericEntries<'_>, config: &DriftConfig) {
        if !self.layout.matches(row.keys, row.range.clone()) {
            self.count_layout_rows(row.values);
            self.layout = RowLayout::of(row.keys, row.range.clone(), |pos, name| {
                config.monitors(name).then(|| self.slot(pos, name))
            });
        }
        self.layout_rows.push(row.range.start);
    }

    /// Count the rows held by [`Self::add_numeric_row`] (all of the
    /// current layout), whose entries are in `values`.
    fn count_layout_rows(&mut self, values: &Float64Array) {
        if self.layout_rows.is_empty() {
            return;
        }
        let data = values.values();
        let width = self.layout.slots.len();
        let nulls = values.null_count() > 0;
        // Rows in chunks, each read once in memory order into a
        // feature-major scratch that stays in the L1 cache (reading each
        // feature with a stride from main memory cost 20 passes over it).
        for rows in self.layout_rows.chunks(LAYOUT_CHUNK_ROWS) {
            let n = rows.len();
            self.scratch.clear();
            self.scratch.resize(width * n, 0.0);
            for (k, &start) in rows.iter().enumerate() {
                for (j, &x) in data[start..start + width].iter().enumerate() {
                    self.scratch[j * n + k] = x;
                }
            }
            for (j, slot) in self.layout.slots.iter().enumerate() {
                let Some(slot) = *slot else { continue };
                let xs = self.scratch[j * n..(j + 1) * n].iter().copied();
                let f = self.features.at(slot);
                if nulls {
                    let valid = rows.iter().map(|&start| values.is_valid(start + j));
                    f.add_numbers(xs.zip(valid).filter(|(_, v)| *v).map(|(x, _)| x));
                } else {
                    f.add_numbers(xs);
                }
            }
        }
        self.layout_rows.clear();
    }

    /// A numeric value of feature `name` at row position `pos`: held until
    /// [`Self::count_pending`].
    fn add_number(&mut self, pos: usize, name: &str, x: f64) {
        let i = self.slot(pos, name);
        if self.pending.len() <= i {
            self.pending.resize_with(i + 1, Vec::new);
        }
        self.pending[i].push(x);
    }

    /// Count the held numeric values, feature by feature: one match per
    /// feature and batch, then a loop that only bins. `values` are the
    /// entries of the batch's numeric feature map.
    fn count_pending(&mut self, values: Option<&Float64Array>) {
        for (f, xs) in self.features.values_mut().zip(&mut self.pending) {
            if !xs.is_empty() {
                f.add_numbers(xs.drain(..));
            }
        }
        if let Some(values) = values {
            self.count_layout_rows(values);
        }
    }

    fn add_category(&mut self, pos: usize, name: &str, value: &str) {
        let i = self.slot(pos, name);
        let f = self.features.at(i);
        match &mut f.counts {
            FeatureCounts::Numeric { .. } => f.invalid += 1,
            FeatureCounts::Unbinned => f.present += 1,
            FeatureCounts::Categorical { slots, counts } => {
                f.present += 1;
                let other = counts.len() - 1;
                counts[slots.get(value).copied().unwrap_or(other)] += 1;
            }
        }
    }
}

/// The statistics of one feature in one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureDrift {
    /// Population stability index over the coarse bins or categories.
    pub psi: Option<f64>,
    /// KS statistic at the fine bin edges (numeric).
    pub ks: Option<f64>,
    /// p-value of `ks`.
    pub ks_pvalue: Option<f64>,
    /// Jensen–Shannon distance, base 2.
    pub js: Option<f64>,
    /// Binned Wasserstein-1 over the reference standard deviation (numeric).
    pub wasserstein: Option<f64>,
    /// Chi-square test p-value (categorical).
    pub chi2_pvalue: Option<f64>,
    /// Share of rows without a value.
    pub null_rate: f64,
    /// Share of rows whose value had the wrong type for the feature.
    pub invalid_rate: f64,
    /// Reference values.
    pub n_ref: u64,
    /// Window values.
    pub n_cur: u64,
    /// `None` when not judged (no reference, or fewer than `min_samples`).
    pub drifted: Option<bool>,
    /// The KS or chi-square p-value adjusted for the number of features
    /// judged in the window (Benjamini–Hochberg); `drifted` needs it below
    /// `max_pvalue`.
    pub pvalue_adjusted: Option<f64>,
    /// The effect size passed its threshold (PSI, Wasserstein or JS).
    pub effect: bool,
    /// The null or invalid rate jumped (drifted whatever the p-value).
    pub rate_jump: bool,
}

impl FeatureDrift {
    /// The test's p-value, KS (numeric) or chi-square (categorical).
    pub fn pvalue(&self) -> Option<f64> {
        self.ks_pvalue.or(self.chi2_pvalue)
    }
}

/// Benjamini–Hochberg adjusted p-values (the step-up q-values of
/// Benjamini & Hochberg 1995): `q₍ᵢ₎ = min_{j≥i} p₍ⱼ₎·m/j`, capped at 1,
/// in the order of `pvalues`.
pub fn benjamini_hochberg(pvalues: &[f64]) -> Vec<f64> {
    let m = pvalues.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| pvalues[a].total_cmp(&pvalues[b]));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(pvalues[i] * m as f64 / (rank + 1) as f64);
        q[i] = running.min(1.0);
    }
    q
}

impl FeatureDrift {
    /// As fields of a `drift` point.
    pub fn fields(&self) -> Vec<(String, FieldValue)> {
        let mut out = Vec::new();
        let mut float = |k: &str, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                out.push((k.to_string(), FieldValue::Float(v)));
            }
        };
        float("psi", self.psi);
        float("ks", self.ks);
        float("ks_pvalue", self.ks_pvalue);
        float("js", self.js);
        float("wasserstein", self.wasserstein);
        float("chi2_pvalue", self.chi2_pvalue);
        float("pvalue_adjusted", self.pvalue_adjusted);
        float("null_rate", Some(self.null_rate));
        float("invalid_rate", Some(self.invalid_rate));
        out.push(("n_ref".into(), FieldValue::Int(self.n_ref as i64)));
        out.push(("n_cur".into(), FieldValue::Int(self.n_cur as i64)));
        match self.drifted {
            Some(d) => out.push(("drifted".into(), FieldValue::Bool(d))),
            None => out.push(("judged".into(), FieldValue::Bool(false))),
        }
        out
    }
}

/// Compare one feature's window counts with its reference: the statistics,
/// whether the effect size is large, and whether a rate jumped. The
/// verdict on the distribution needs the window's other features (their
/// p-values are adjusted together), so `drifted` holds only the rate jump.
fn compare(
    reference: Option<&FeatureProfile>,
    window: &FeatureWindow,
    rows: u64,
    min_samples: u64,
    t: &DriftThresholds,
) -> FeatureDrift {
    let share = |n: u64| {
        if rows == 0 {
            0.0
        } else {
            (n as f64 / rows as f64).min(1.0)
        }
    };
    let mut d = FeatureDrift {
        null_rate: 1.0 - share(window.present + window.invalid),
        invalid_rate: share(window.invalid),
        n_cur: window.present,
        ..FeatureDrift::default()
    };
    let Some(reference) = reference else {
        return d;
    };
    d.n_ref = reference.present();
    match (reference, &window.counts) {
        (
            FeatureProfile::Numeric(p),
            FeatureCounts::Numeric {
                counts,
                min,
                max,
                tail_sums,
                ..
            },
        ) if window.present > 0 && d.n_ref > 0 => {
            let r: Vec<f64> = p.counts.iter().map(|&c| c as f64).collect();
            let c: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
            let coarse = p.coarse_index();
            let mut rc = vec![0.0; p.coarse_edges.len() + 1];
            let mut cc = rc.clone();
            for (i, &k) in coarse.iter().enumerate() {
                rc[k] += r[i];
                cc[k] += c[i];
            }
            d.psi = Some(psi(&rc, &cc));
            d.js = Some(js_distance(&rc, &cc));
            // KS at the bin edges: both empirical CDFs are exact there.
            let (rn, cn) = (d.n_ref as f64, window.present as f64);
            let (mut rcum, mut ccum, mut ks) = (0.0, 0.0, 0.0f64);
            for (a, b) in r.iter().zip(&c).take(r.len() - 1) {
                rcum += a;
                ccum += b;
                ks = ks.max((rcum / rn - ccum / cn).abs());
            }
            d.ks = Some(ks);
            d.ks_pvalue = Some(ks_pvalue(ks, d.n_ref, window.present));
            if p.std > 0.0 {
                let (rlo, rhi) = match p.tail_means {
                    Some((low, high)) => tail_span(&p.edges, low, high, p.min, p.max),
                    None => (p.min, p.max),
                };
                let (clo, chi) = match (c.first(), c.last()) {
                    (Some(&c0), Some(&cl)) if c0 > 0.0 && cl > 0.0 => {
                        tail_span(&p.edges, tail_sums.0 / c0, tail_sums.1 / cl, *min, *max)
                    }
                    _ => (*min, *max),
                };
                let rcdf = LinearCdf::from_bins(&p.edges, &r, rlo, rhi);
                let ccdf = LinearCdf::from_bins(&p.edges, &c, clo, chi);
                d.wasserstein = Some(rcdf.l1_distance(&ccdf) / p.std);
            }
            d.effect = d.psi.is_some_and(|v| v >= t.psi)
                || d.wasserstein.is_some_and(|v| v >= t.wasserstein)
                || d.js.is_some_and(|v| v >= t.js);
        }
        (FeatureProfile::Categorical(p), FeatureCounts::Categorical { counts, .. })
            if window.present > 0 && d.n_ref > 0 =>
        {
            let r: Vec<f64> = p.counts.iter().map(|&c| c as f64).collect();
            let c: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
            d.psi = Some(psi(&r, &c));
            d.js = Some(js_distance(&r, &c));
            d.chi2_pvalue = chi2_homogeneity(&r, &c).map(|x| x.pvalue);
            d.effect = d.js.is_some_and(|v| v >= t.js);
        }
        _ => {}
    }
    if rows >= min_samples {
        let null_jump = d.null_rate - reference.null_rate() >= t.null_rate_increase;
        let invalid_jump = d.invalid_rate - reference.invalid_rate() >= t.invalid_rate_increase;
        d.rate_jump = null_jump || invalid_jump;
        // Judged; whether the distribution moved waits for the p-values
        // of every feature of the window (see `DriftOperator::points`).
        d.drifted = Some(d.rate_jump);
    }
    d
}

/// Where the open-ended first and last bins start and end for the binned
/// Wasserstein distance: a uniform spread with the bin's mean (reflected
/// about its edge), kept within the observed extremes. Spreading tail mass
/// evenly out to the extremes overstates the distance several-fold when a
/// window leaves the reference's range.
fn tail_span(edges: &[f64], low_mean: f64, high_mean: f64, min: f64, max: f64) -> (f64, f64) {
    match (edges.first(), edges.last()) {
        (Some(&first), Some(&last)) => (
            (2.0 * low_mean - first).max(min).min(first),
            (2.0 * high_mean - last).min(max).max(last),
        ),
        _ => (min, max),
    }
}

/// A version's reference as frozen from its first traffic: what a monitor
/// keeps on disk so a restart compares with the same reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrozenReference {
    /// Event time at which the reference period ended.
    pub ends_at: i64,
    /// The reference (model and version inside).
    pub profile: Profile,
}

#[derive(Debug)]
struct VersionReference {
    /// Event time at which the reference period ends (a window boundary).
    ends_at: i64,
    builder: Option<ProfileBuilder>,
    frozen: Option<Arc<Reference>>,
}

/// Keeps references per model version and fills per-window counters.
#[derive(Debug)]
pub struct DriftOperator {
    config: DriftConfig,
    binning: Binning,
    window_ms: i64,
    files: HashMap<String, Arc<Reference>>,
    versions: HashMap<(String, String), VersionReference>,
    /// The most recently frozen reference per model, for new versions.
    latest: HashMap<String, (i64, Arc<Reference>)>,
    /// Frozen since [`DriftOperator::take_frozen`] was last called.
    newly_frozen: Vec<FrozenReference>,
}

impl DriftOperator {
    /// An operator for windows of `window_ms`. `references` are fixed
    /// profiles per model (from `[drift.reference_files]`, loaded by the
    /// caller); every other model takes the first traffic of each version.
    pub fn new(
        config: &DriftConfig,
        window_ms: i64,
        references: BTreeMap<String, Profile>,
    ) -> Result<Self, DriftError> {
        let binning = config.binning()?;
        let files = references
            .into_iter()
            .map(|(model, p)| (model, Reference::new(p)))
            .collect();
        Ok(Self {
            config: config.clone(),
            binning,
            window_ms,
            files,
            versions: HashMap::default(),
            latest: HashMap::default(),
            newly_frozen: Vec::new(),
        })
    }

    /// Feed rows of one model version to its reference while the reference
    /// period lasts, freezing it at the first row past the period.
    pub fn feed_reference(
        &mut self,
        model: &str,
        version: &str,
        batch: &RecordBatch,
        rows: &[u32],
    ) {
        if self.files.contains_key(model) {
            return;
        }
        let ts = batch
            .column_by_name("ts")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>());
        let Some(ts) = ts else { return };
        let key = (model.to_string(), version.to_string());
        let reference_ms = self.config.reference_window.as_millis() as i64;
        let window_ms = self.window_ms;
        let first = rows.iter().map(|&r| ts.value(r as usize)).min();
        let Some(first) = first else { return };
        let entry = self
            .versions
            .entry(key)
            .or_insert_with(|| VersionReference {
                // Whole windows, so each window is either reference or compared.
                ends_at: {
                    let end = first + reference_ms;
                    end + (window_ms - end.rem_euclid(window_ms)) % window_ms
                },
                builder: Some(ProfileBuilder::new(self.binning)),
                frozen: None,
            });
        let Some(builder) = entry.builder.as_mut() else {
            return;
        };
        let cols = Columns::of(batch);
        let mut past_end = false;
        for &r in rows {
            let r = r as usize;
            if ts.value(r) >= entry.ends_at {
                past_end = true;
                continue;
            }
            cols.for_each_value(r, &self.config, |v| match v {
                Value::FeatureRow => builder.count_feature_row(),
                Value::ScoreRow => builder.count_score_row(),
                Value::Number(_, name, x) => builder.add_number(name, x),
                Value::Numbers(row) => {
                    builder.add_numeric_entries(row.keys, row.values, row.range, |name| {
                        self.config.monitors(name)
                    })
                }
                Value::Category(_, name, c) => builder.add_category(name, c),
            });
        }
        if past_end {
            let builder = entry.builder.take().expect("checked above");
            let profile = builder.build(model, version);
            tracing::info!(
                model,
                version,
                features = profile.features.len(),
                "drift reference frozen"
            );
            self.newly_frozen.push(FrozenReference {
                ends_at: entry.ends_at,
                profile: profile.clone(),
            });
            let reference = Reference::new(profile);
            entry.frozen = Some(reference.clone());
            self.latest
                .insert(model.to_string(), (entry.ends_at, reference));
        }
    }

    /// Feed every row of a batch to its version's reference
    /// ([`DriftOperator::feed_reference`]), versions in name order.
    pub fn feed_batch(&mut self, batch: &RecordBatch) {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let (Some(model), Some(version)) = (column("model"), column("model_version")) else {
            return;
        };
        let mut rows: BTreeMap<(&str, &str), Vec<u32>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            rows.entry((model.value(row), version.value(row)))
                .or_default()
                .push(row as u32);
        }
        for ((model, version), rows) in rows {
            self.feed_reference(model, version, batch, &rows);
        }
    }

    /// References frozen since the last call, to keep.
    pub fn take_frozen(&mut self) -> Vec<FrozenReference> {
        std::mem::take(&mut self.newly_frozen)
    }

    /// Use a reference frozen by an earlier run (its version's first traffic
    /// is not read again).
    pub fn restore(&mut self, r: FrozenReference) {
        let model = r.profile.model.clone();
        let key = (model.clone(), r.profile.model_version.clone());
        let profile = Reference::new(r.profile);
        if self
            .latest
            .get(&model)
            .is_none_or(|(at, _)| *at <= r.ends_at)
        {
            self.latest.insert(model, (r.ends_at, profile.clone()));
        }
        self.versions.insert(
            key,
            VersionReference {
                ends_at: r.ends_at,
                builder: None,
                frozen: Some(profile),
            },
        );
    }

    /// The reference a window of this version starting at `start` is
    /// compared with: its own once frozen, for windows after the reference
    /// period; else the model's latest other version's. Decided by the
    /// window's place in event time, not by when its first row came, so the
    /// result does not depend on how input was batched.
    fn reference_for(&self, model: &str, version: &str, start: i64) -> Option<Arc<Reference>> {
        if let Some(p) = self.files.get(model) {
            return Some(p.clone());
        }
        let own = self
            .versions
            .get(&(model.to_string(), version.to_string()))
            .filter(|v| start >= v.ends_at)
            .and_then(|v| v.frozen.clone());
        own.or_else(|| {
            self.latest
                .get(model)
                .map(|(_, p)| p)
                .filter(|r| r.profile.model_version != version)
                .cloned()
        })
    }

    /// A fresh state for the window of `series` starting at `start`.
    pub fn new_window(&self, series: &SeriesKey, start: i64) -> DriftWindow {
        DriftWindow {
            reference: self.reference_for(&series.model, &series.model_version, start),
            ..DriftWindow::default()
        }
    }

    /// Count rows of a window's series.
    pub fn update(&self, window: &mut DriftWindow, batch: &RecordBatch, rows: &[u32]) {
        let cols = Columns::of(batch);
        for &r in rows {
            cols.for_each_value(r as usize, &self.config, |v| match v {
                Value::FeatureRow => window.feature_rows += 1,
                Value::ScoreRow => window.score_rows += 1,
                Value::Number(pos, name, x) => window.add_number(pos, name, x),
                Value::Numbers(row) => window.add_numeric_row(&row, &self.config),
                Value::Category(pos, name, c) => window.add_category(pos, name, c),
            });
        }
        window.count_pending(cols.numeric_values());
    }

    /// The window's `drift` points, one per feature, sorted by feature.
    pub fn points(&self, series: &SeriesKey, window: &DriftWindow, end_ms: i64) -> Vec<Point> {
        // Reference features missing from the window entirely are reported
        // too: a feature that went null everywhere is the loudest drift.
        let mut names: Vec<&String> = window.features.iter().map(|(n, _)| n).collect();
        if let Some(r) = &window.reference {
            names.extend(
                r.profile
                    .features
                    .keys()
                    .filter(|n| self.config.monitors(n)),
            );
        }
        names.sort();
        names.dedup();
        let absent = FeatureWindow::new(None);
        let mut judged: Vec<(&String, FeatureDrift)> = names
            .into_iter()
            .map(|name| {
                let f = window.features.get(name).unwrap_or(&absent);
                let rows = if name == SCORE {
                    window.score_rows
                } else {
                    window.feature_rows
                };
                let reference = window
                    .reference
                    .as_ref()
                    .and_then(|r| r.profile.features.get(name));
                let d = compare(
                    reference,
                    f,
                    rows,
                    self.config.min_samples,
                    &self.config.thresholds(name),
                );
                (name, d)
            })
            .collect();
        // A window tests every feature at once: the p-values are adjusted
        // for how many (Benjamini–Hochberg), so chance alone does not flag
        // one feature of twenty.
        // drifted = (effect and adjusted p below the threshold) or a rate jump.
        let tested: Vec<usize> = (0..judged.len())
            .filter(|&i| judged[i].1.drifted.is_some() && judged[i].1.pvalue().is_some())
            .collect();
        let raw: Vec<f64> = tested
            .iter()
            .map(|&i| judged[i].1.pvalue().unwrap_or(1.0))
            .collect();
        for (&i, q) in tested.iter().zip(benjamini_hochberg(&raw)) {
            let (name, d) = &mut judged[i];
            let t = self.config.thresholds(name);
            d.pvalue_adjusted = Some(q);
            d.drifted = Some((d.effect && q < t.max_pvalue) || d.rate_jump);
        }
        judged
            .into_iter()
            .map(|(name, d)| {
                let mut p = series.point("drift", end_ms).tag("feature", name);
                p.fields = d.fields();
                p
            })
            .collect()
    }
}

/// Builds one reference profile per model from prediction batches: what
/// `infermon profile` writes, and how a recorded file given as a reference
/// becomes one. Memory is bounded by the profile builder's sample.
#[derive(Debug)]
pub struct ProfileCollector {
    config: DriftConfig,
    binning: Binning,
    /// Per model: the newest version seen and the builder.
    models: BTreeMap<String, (String, ProfileBuilder)>,
}

impl ProfileCollector {
    /// An empty collector binning as `config` says.
    pub fn new(config: &DriftConfig) -> Result<Self, DriftError> {
        Ok(Self {
            config: config.clone(),
            binning: config.binning()?,
            models: BTreeMap::new(),
        })
    }

    /// Add every row of a prediction batch (all versions of a model count).
    pub fn add_batch(&mut self, batch: &RecordBatch) {
        let Some(model) = batch
            .column_by_name("model")
            .and_then(|c| c.as_string_opt::<i32>())
        else {
            return;
        };
        let version = batch
            .column_by_name("model_version")
            .and_then(|c| c.as_string_opt::<i32>());
        let cols = Columns::of(batch);
        for row in 0..batch.num_rows() {
            let name = model.value(row);
            if !self.models.contains_key(name) {
                let fresh = (String::new(), ProfileBuilder::new(self.binning));
                self.models.insert(name.to_string(), fresh);
            }
            let (latest, builder) = self.models.get_mut(name).expect("inserted above");
            if let Some(v) = version.map(|v| v.value(row))
                && v != latest
            {
                latest.clear();
                latest.push_str(v);
            }
            cols.for_each_value(row, &self.config, |v| match v {
                Value::FeatureRow => builder.count_feature_row(),
                Value::ScoreRow => builder.count_score_row(),
                Value::Number(_, name, x) => builder.add_number(name, x),
                Value::Numbers(row) => {
                    builder.add_numeric_entries(row.keys, row.values, row.range, |name| {
                        self.config.monitors(name)
                    })
                }
                Value::Category(_, name, c) => builder.add_category(name, c),
            });
        }
    }

    /// The profiles, keyed by model (the file format of `infermon profile`).
    pub fn finish(self) -> BTreeMap<String, Profile> {
        self.models
            .into_iter()
            .map(|(model, (version, b))| {
                let p = b.build(&model, &version);
                (model, p)
            })
            .collect()
    }
}

/// Read `model`'s profile from a profile file: the JSON object keyed by model
/// that `infermon profile` writes, or a single profile.
pub fn read_profile_file(path: &Path, model: &str) -> Result<Profile, DriftError> {
    let err = |message: String| DriftError::Reference {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    if let Ok(single) = serde_json::from_str::<Profile>(&text) {
        return Ok(single);
    }
    let mut all: BTreeMap<String, Profile> =
        serde_json::from_str(&text).map_err(|e| err(format!("not a profile file: {e}")))?;
    all.remove(model).ok_or_else(|| {
        err(format!(
            "no profile for model {model:?} (it has: {})",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

/// One value handed out by [`Columns::for_each_value`].
enum Value<'a> {
    /// The row carries features (the denominator of feature null rates).
    FeatureRow,
    /// The row is an ok prediction (the denominator of the score null rate).
    ScoreRow,
    /// A numeric value of a feature (or the score) at a row position.
    Number(usize, &'a str, f64),
    /// The numeric feature map of a row.
    Numbers(NumericEntries<'a>),
    /// A categorical value at a row position.
    Category(usize, &'a str, &'a str),
}

/// One row's numeric features: entries `range` of the map's keys and
/// values.
struct NumericEntries<'a> {
    keys: &'a StringArray,
    values: &'a Float64Array,
    range: std::ops::Range<usize>,
}

/// The prediction columns drift reads.
struct Columns<'a> {
    status: Option<&'a StringArray>,
    score: Option<&'a Float64Array>,
    numeric: Option<&'a MapArray>,
    categorical: Option<&'a MapArray>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Self {
        Self {
            status: batch
                .column_by_name("status")
                .and_then(|c| c.as_string_opt::<i32>()),
            score: batch
                .column_by_name(SCORE)
                .and_then(|c| c.as_primitive_opt::<Float64Type>()),
            numeric: batch
                .column_by_name(NUMERIC_FEATURES)
                .and_then(|c| c.as_map_opt()),
            categorical: batch
                .column_by_name(CATEGORICAL_FEATURES)
                .and_then(|c| c.as_map_opt()),
        }
    }

    /// The entries of the numeric feature map.
    fn numeric_values(&self) -> Option<&'a Float64Array> {
        self.numeric
            .map(|m| m.values().as_primitive::<Float64Type>())
    }

    fn for_each_value(&self, row: usize, config: &DriftConfig, mut f: impl FnMut(Value<'a>)) {
        if self.status.is_some_and(|s| s.value(row) == "ok") {
            f(Value::ScoreRow);
            if let Some(s) = self.score.filter(|s| s.is_valid(row)) {
                f(Value::Number(0, SCORE, s.value(row)));
            }
        }
        let entries = |m: Option<&'a MapArray>| {
            m.map(|m| {
                let offsets = m.value_offsets();
                (offsets[row] as usize..offsets[row + 1] as usize, m)
            })
        };
        let num = entries(self.numeric);
        let cat = entries(self.categorical);
        if num.iter().chain(&cat).all(|(range, _)| range.is_empty()) {
            return;
        }
        f(Value::FeatureRow);
        if let Some((range, m)) = num
            && !range.is_empty()
        {
            f(Value::Numbers(NumericEntries {
                keys: m.keys().as_string::<i32>(),
                values: self.numeric_values().expect("the numeric map"),
                range,
            }));
        }
        if let Some((range, m)) = cat {
            let keys = m.keys().as_string::<i32>();
            let values = m.values().as_string::<i32>();
            let start = range.start;
            for i in range {
                let name = keys.value(i);
                if values.is_valid(i) && config.monitors(name) {
                    // Positions after the numeric ones, so caches do not clash.
                    f(Value::Category(
                        1 + MAX_POSITIONS / 2 + i - start,
                        name,
                        values.value(i),
                    ));
                }
            }
        }
    }
}
