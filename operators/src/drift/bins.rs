//! Table-driven bin lookup: the fine bin of a value among a reference's
//! sorted edges, `numpy.searchsorted(edges, x, side="right")`, without a
//! 7-step binary search per value.
//!
//! A uniform grid of `16 × edges` cells over `[first edge, last edge]`
//! records, per cell, how many edges lie at or below its start. A value's
//! cell (one multiply) gives a first guess of its bin, which a short scan
//! corrects in either direction — usually zero or one step, however skewed
//! the quantile edges are (a dense region only means a few more steps).
//! The scan compares with the edges themselves, so rounding in the cell
//! arithmetic can only cost a step, never the exact answer:
//! the result is always `partition_point`'s.

/// Grid cells per edge.
const CELLS_PER_EDGE: usize = 16;

/// Sorted edges with their lookup grid.
#[derive(Debug, Clone, PartialEq)]
pub struct BinLookup {
    edges: Vec<f64>,
    lo: f64,
    hi: f64,
    /// Cells per unit of value; 0 when the grid is not usable (fewer than
    /// two distinct finite edges).
    scale: f64,
    /// `starts[c]`: edges ≤ the start of cell `c`, for `c` in `0..=cells`.
    starts: Vec<u32>,
}

impl BinLookup {
    /// The lookup for ascending `edges`.
    pub fn new(edges: Vec<f64>) -> Self {
        let (lo, hi) = match (edges.first(), edges.last()) {
            (Some(&lo), Some(&hi)) if lo.is_finite() && hi.is_finite() && hi > lo => (lo, hi),
            _ => {
                return Self {
                    edges,
                    lo: 0.0,
                    hi: 0.0,
                    scale: 0.0,
                    starts: Vec::new(),
                };
            }
        };
        let cells = CELLS_PER_EDGE * edges.len();
        let scale = cells as f64 / (hi - lo);
        let starts = (0..=cells)
            .map(|c| edges.partition_point(|&e| e <= lo + c as f64 / scale) as u32)
            .collect();
        Self {
            edges,
            lo,
            hi,
            scale,
            starts,
        }
    }

    /// The edges.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// The number of edges at or below `x` (0 for NaN), i.e. its bin among
    /// `edges.len() + 1`.
    #[inline]
    pub fn bin(&self, x: f64) -> usize {
        if self.scale == 0.0 {
            return self.edges.partition_point(|&e| e <= x);
        }
        if x < self.lo || x.is_nan() {
            return 0; // below the first edge, or NaN
        }
        if x >= self.hi {
            return self.edges.len();
        }
        let cells = self.starts.len() - 1;
        let cell = (((x - self.lo) * self.scale) as usize).min(cells - 1);
        let mut b = self.starts[cell] as usize;
        // Edges are sorted: move up past edges ≤ x, down past edges > x.
        while b < self.edges.len() && self.edges[b] <= x {
            b += 1;
        }
        while b > 0 && self.edges[b - 1] > x {
            b -= 1;
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edges: Vec<f64>, values: impl Iterator<Item = f64>) {
        let lookup = BinLookup::new(edges.clone());
        for x in values {
            assert_eq!(
                lookup.bin(x),
                edges.partition_point(|&e| e <= x),
                "x = {x} over {edges:?}"
            );
        }
    }

    #[test]
    fn equals_the_binary_search_everywhere() {
        // Skewed (lognormal-like) quantile edges, ties, exact hits.
        let skewed: Vec<f64> = (1..100).map(|i| (i as f64 / 20.0).exp() - 1.0).collect();
        let probes: Vec<f64> = skewed
            .iter()
            .flat_map(|&e| [e, e - 1e-12, e + 1e-12, e.next_up(), e.next_down()])
            .chain((0..10_000).map(|i| i as f64 * 0.015 - 5.0))
            .chain([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0])
            .collect();
        check(skewed, probes.iter().copied());
        check(vec![1.0, 1.0, 1.0, 2.0, 2.0, 3.0], probes.iter().copied());
        check(vec![5.0], probes.iter().copied());
        check(Vec::new(), probes.iter().copied());
        check(vec![0.0, 1e300], probes.iter().copied());
    }
}
