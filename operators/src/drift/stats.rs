//! Two-sample statistics, as pure functions of samples or of binned counts.
//!
//! Each function follows the definition scipy uses, so results can be checked
//! against `scipy.stats` / `scipy.spatial` on the same inputs
//! (`tests/reference/drift_reference.py`).

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Proportions below this are raised to it before PSI takes logarithms, so an
/// empty bin contributes a large but finite term (the usual convention).
pub const PSI_FLOOR: f64 = 1e-4;

/// Population stability index of `current` against `reference` (counts per
/// bin): `Σ (q − p) · ln(q / p)` over proportions floored at [`PSI_FLOOR`].
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    let (rs, cs) = (reference.iter().sum::<f64>(), current.iter().sum::<f64>());
    if rs <= 0.0 || cs <= 0.0 {
        return f64::NAN;
    }
    reference
        .iter()
        .zip(current)
        .map(|(r, c)| {
            let p = (r / rs).max(PSI_FLOOR);
            let q = (c / cs).max(PSI_FLOOR);
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// Jensen–Shannon distance with base-2 logarithms, so it lies in [0, 1]:
/// `scipy.spatial.distance.jensenshannon(p, q, base=2)` (inputs are
/// normalised first, as scipy does).
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let (ps, qs) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if ps <= 0.0 || qs <= 0.0 {
        return f64::NAN;
    }
    let rel = |x: f64, m: f64| if x > 0.0 { x * (x / m).ln() } else { 0.0 };
    let mut sum = 0.0;
    for (a, b) in p.iter().zip(q) {
        let (a, b) = (a / ps, b / qs);
        let m = (a + b) / 2.0;
        sum += rel(a, m) + rel(b, m);
    }
    (sum / 2.0 / std::f64::consts::LN_2).max(0.0).sqrt()
}

/// Two-sample Kolmogorov–Smirnov statistic of two **sorted** samples: the
/// largest gap between their empirical CDFs (`scipy.stats.ks_2samp`'s
/// `statistic`).
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

/// p-value of a two-sided two-sample KS statistic `d` for sample sizes `n`
/// and `m`, from the asymptotic Kolmogorov distribution with Stephens'
/// small-sample correction: `Q(λ)`, `λ = (√nₑ + 0.12 + 0.11/√nₑ)·d`,
/// `nₑ = nm/(n+m)`.
///
/// scipy's `ks_2samp` (method `auto`) uses the exact distribution when both
/// samples have ≤ 10 000 values and `kstwo.sf(d, round(nₑ))` otherwise; the
/// drift operator's statistic comes from binned counts, so the exact lattice
/// computation would be false precision. The test compares this p-value with
/// scipy's on the same statistic and documents the gap.
pub fn ks_pvalue(d: f64, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 || d.is_nan() {
        return f64::NAN;
    }
    let ne = (n as f64 * m as f64) / (n as f64 + m as f64);
    let sq = ne.sqrt();
    kolmogorov_sf((sq + 0.12 + 0.11 / sq) * d)
}

/// Survival function of the Kolmogorov distribution,
/// `Q(λ) = 2 Σ_{k≥1} (−1)^{k−1} e^{−2k²λ²}`.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda < 0.2 {
        // The series converges slowly here and Q is 1 to double precision.
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let k = k as f64;
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += sign * term;
        if term < 1e-17 * sum.abs() {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// First Wasserstein distance between two **sorted** samples, the area
/// between their empirical CDFs (`scipy.stats.wasserstein_distance`).
pub fn wasserstein(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (mut i, mut j) = (0, 0);
    let mut x = a[0].min(b[0]);
    let mut area = 0.0;
    while i < a.len() || j < b.len() {
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        let next = match (a.get(i), b.get(j)) {
            (Some(&p), Some(&q)) => p.min(q),
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => break,
        };
        area += (i as f64 / n - j as f64 / m).abs() * (next - x);
        x = next;
    }
    area
}

/// A piecewise-linear CDF: knots `(x, F(x))` with `x` and `F` non-decreasing,
/// `F = 0` before the first knot and `1` after the last.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearCdf(pub Vec<(f64, f64)>);

impl LinearCdf {
    /// The CDF of binned counts, mass spread evenly inside each bin. Bin `i`
    /// spans `[edges[i-1], edges[i])`; the first bin starts at `min` and the
    /// last ends at `max` (the sample's extremes).
    pub fn from_bins(edges: &[f64], counts: &[f64], min: f64, max: f64) -> Self {
        debug_assert_eq!(counts.len(), edges.len() + 1);
        let total: f64 = counts.iter().sum();
        let mut knots = Vec::with_capacity(counts.len() + 1);
        if total <= 0.0 {
            return Self(knots);
        }
        let lo = edges.first().map_or(min, |&e| min.min(e));
        knots.push((lo, 0.0));
        let mut cum = 0.0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let x = match edges.get(i) {
                Some(&e) => e,
                None => edges.last().map_or(max, |&e| max.max(e)),
            };
            knots.push((x, (cum / total).min(1.0)));
        }
        Self(knots)
    }

    /// F(x), interpolated between knots (right-continuous at a jump).
    pub fn at(&self, x: f64) -> f64 {
        self.interpolate(x, self.0.partition_point(|&(kx, _)| kx <= x))
    }

    fn interpolate(&self, x: f64, i: usize) -> f64 {
        let k = &self.0;
        if i == 0 {
            return 0.0;
        }
        if i == k.len() {
            return 1.0;
        }
        let ((x0, f0), (x1, f1)) = (k[i - 1], k[i]);
        if x1 > x0 {
            f0 + (f1 - f0) * (x - x0) / (x1 - x0)
        } else {
            f1
        }
    }

    /// `∫ |F − G| dx`, exact for the two piecewise-linear CDFs: the binned
    /// first Wasserstein distance.
    pub fn l1_distance(&self, other: &LinearCdf) -> f64 {
        let mut xs: Vec<f64> = self.0.iter().chain(&other.0).map(|k| k.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        // The knots' positions in each CDF only move forward along `xs`:
        // cursors instead of a binary search per point.
        let (mut a, mut b) = (Cursor::new(self), Cursor::new(other));
        let mut area = 0.0;
        for w in xs.windows(2) {
            let (x0, x1) = (w[0], w[1]);
            // Both CDFs are linear on (x0, x1); so is their difference.
            let d0 = a.at(x0) - b.at(x0);
            let d1 = a.at_left(x1) - b.at_left(x1);
            let width = x1 - x0;
            area += if d0 * d1 >= 0.0 {
                (d0.abs() + d1.abs()) / 2.0 * width
            } else {
                (d0 * d0 + d1 * d1) / (2.0 * (d0.abs() + d1.abs())) * width
            };
        }
        area
    }
}

/// [`LinearCdf::at`] and [`LinearCdf::at_left`] at ascending points.
struct Cursor<'a> {
    cdf: &'a LinearCdf,
    /// Knots at or below the last point.
    le: usize,
    /// Knots below the last point.
    lt: usize,
}

impl<'a> Cursor<'a> {
    fn new(cdf: &'a LinearCdf) -> Self {
        Self { cdf, le: 0, lt: 0 }
    }

    /// `cdf.at(x)`, for `x` not below the last point asked.
    fn at(&mut self, x: f64) -> f64 {
        let k = &self.cdf.0;
        while self.le < k.len() && k[self.le].0 <= x {
            self.le += 1;
        }
        self.cdf.interpolate(x, self.le)
    }

    /// The limit of F from the left at `x`, for `x` not below the last
    /// point asked.
    fn at_left(&mut self, x: f64) -> f64 {
        let k = &self.cdf.0;
        while self.lt < k.len() && k[self.lt].0 < x {
            self.lt += 1;
        }
        self.cdf.interpolate(x, self.lt)
    }
}

/// Result of a chi-square test of homogeneity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    /// The statistic (with Yates' correction when there is one degree of
    /// freedom, as `scipy.stats.chi2_contingency` does by default).
    pub statistic: f64,
    /// Degrees of freedom.
    pub dof: u64,
    /// Upper-tail probability of the statistic.
    pub pvalue: f64,
}

/// Chi-square test that two rows of category counts come from one
/// distribution: `scipy.stats.chi2_contingency([reference, current])`.
/// Categories empty in both rows are left out (scipy rejects them).
pub fn chi2_homogeneity(reference: &[f64], current: &[f64]) -> Option<ChiSquare> {
    let cols: Vec<(f64, f64)> = reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| (r, c))
        .filter(|(r, c)| r + c > 0.0)
        .collect();
    let (rs, cs) = cols
        .iter()
        .fold((0.0, 0.0), |(a, b), (r, c)| (a + r, b + c));
    if cols.len() < 2 || rs <= 0.0 || cs <= 0.0 {
        return None;
    }
    let total = rs + cs;
    let dof = cols.len() as u64 - 1;
    let mut statistic = 0.0;
    for &(r, c) in &cols {
        for (observed, row_sum) in [(r, rs), (c, cs)] {
            let expected = row_sum * (r + c) / total;
            let mut o = observed;
            if dof == 1 {
                let diff = expected - o;
                o += diff.signum() * diff.abs().min(0.5);
            }
            statistic += (o - expected).powi(2) / expected;
        }
    }
    let pvalue = ChiSquared::new(dof as f64).ok()?.sf(statistic);
    Some(ChiSquare {
        statistic,
        dof,
        pvalue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_equals_the_binary_search() {
        // Knots with a jump (two at one x) and empty bins.
        let cdf = LinearCdf::from_bins(&[1.0, 2.0, 2.0, 5.0], &[3.0, 0.0, 4.0, 1.0, 2.0], 0.0, 9.0);
        let mut cursor = Cursor::new(&cdf);
        for i in -4..=40 {
            let x = i as f64 * 0.25;
            let left = cdf.interpolate(x, cdf.0.partition_point(|&(kx, _)| kx < x));
            assert_eq!(cursor.at_left(x), left, "at_left({x})");
            assert_eq!(cursor.at(x), cdf.at(x), "at({x})");
        }
    }

    #[test]
    fn identical_inputs_are_not_drift() {
        let c = [10.0, 20.0, 30.0];
        assert_eq!(psi(&c, &c), 0.0);
        assert_eq!(js_distance(&c, &c), 0.0);
        let s = [1.0, 2.0, 3.0];
        assert_eq!(ks_statistic(&s, &s), 0.0);
        assert_eq!(wasserstein(&s, &s), 0.0);
    }

    #[test]
    fn disjoint_supports_are_maximal() {
        assert!((js_distance(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
        assert_eq!(ks_statistic(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(wasserstein(&[0.0], &[5.0]), 5.0);
    }

    #[test]
    fn kolmogorov_sf_known_values() {
        // Q(1.36) ≈ 0.049 and Q(1.63) ≈ 0.0098: the classic 5% and 1% points.
        assert!((kolmogorov_sf(1.3581) - 0.05).abs() < 1e-4);
        assert!((kolmogorov_sf(1.6276) - 0.01).abs() < 1e-4);
        assert_eq!(kolmogorov_sf(0.0), 1.0);
    }

    #[test]
    fn binned_cdf_distance_is_the_area() {
        // Uniform on [0, 1] against uniform on [1, 2]: area 1.
        let a = LinearCdf::from_bins(&[], &[1.0], 0.0, 1.0);
        let b = LinearCdf::from_bins(&[], &[1.0], 1.0, 2.0);
        assert!((a.l1_distance(&b) - 1.0).abs() < 1e-9);
        // Same distribution, different binning: area 0.
        let c = LinearCdf::from_bins(&[0.5], &[1.0, 1.0], 0.0, 1.0);
        assert!(a.l1_distance(&c) < 1e-9);
    }

    #[test]
    fn chi2_with_one_dof_uses_yates() {
        let r = chi2_homogeneity(&[10.0, 20.0], &[20.0, 10.0]).unwrap();
        assert_eq!(r.dof, 1);
        // scipy.stats.chi2_contingency([[10, 20], [20, 10]]) → 5.4, p 0.02014
        assert!((r.statistic - 5.4).abs() < 1e-12, "{}", r.statistic);
        assert!((r.pvalue - 0.020136751550346).abs() < 1e-9, "{}", r.pvalue);
    }
}
