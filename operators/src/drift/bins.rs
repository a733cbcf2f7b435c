//! Table-driven bin lookup: the fine bin of a value among a reference's
//! sorted edges, `numpy.searchsorted(edges, x, side="right")`, without a
//! 7-step binary search per value and without a data-dependent branch.
//!
//! A uniform grid over `[first edge, last edge]` records, per cell, how
//! many edges fall in earlier cells. A value's cell (one multiply) gives
//! that count, and a fixed number of compares — the most edges any one
//! cell holds, usually 1 or 2 — adds the edges of its own cell at or below
//! it. Edges are placed in cells by the same arithmetic as values, and
//! the cell of a value never decreases as the value grows, so an edge in
//! an earlier cell is below the value and one in a later cell above it:
//! the result is always `partition_point`'s, whatever the rounding.
//!
//! The grid starts at 16 cells per edge and doubles while one cell holds
//! more than two edges, up to 256 per edge (skewed quantile edges crowd
//! where the data is dense; ties make point bins one ulp wide, which no
//! grid separates).

/// Grid cells per edge, first and last tried.
const CELLS_PER_EDGE: (usize, usize) = (16, 256);

/// Sorted edges with their lookup grid.
#[derive(Debug, Clone)]
pub struct BinLookup {
    /// The edges, then `probes` NaNs (no value is at or above a NaN) so
    /// every probe is in bounds.
    padded: Vec<f64>,
    edges: usize,
    lo: f64,
    /// Cells per unit of value; 0 when the grid is not usable (fewer than
    /// two distinct finite edges).
    scale: f64,
    /// `starts[c]`: edges in cells before `c`, for `c` in `0..=cells`.
    starts: Vec<u32>,
    /// The most edges in one cell: compares per lookup.
    probes: usize,
}

impl BinLookup {
    /// The lookup for ascending `edges`.
    pub fn new(edges: Vec<f64>) -> Self {
        let n = edges.len();
        let mut lookup = Self {
            padded: edges,
            edges: n,
            lo: 0.0,
            scale: 0.0,
            starts: Vec::new(),
            probes: 0,
        };
        if let (Some(&lo), Some(&hi)) = (lookup.padded.first(), lookup.padded.last())
            && lo.is_finite()
            && hi.is_finite()
            && hi > lo
        {
            lookup.lo = lo;
            let mut per_edge = CELLS_PER_EDGE.0;
            loop {
                let cells = per_edge * n;
                lookup.scale = cells as f64 / (hi - lo);
                lookup.starts = vec![0; cells + 1];
                let mut in_cell = vec![0usize; cells + 1];
                for &e in &lookup.padded {
                    in_cell[lookup.cell(e)] += 1;
                }
                let mut before = 0;
                for (start, &k) in lookup.starts.iter_mut().zip(&in_cell) {
                    *start = before as u32;
                    before += k;
                }
                lookup.probes = in_cell.iter().copied().max().unwrap_or(0);
                if lookup.probes <= 2 || per_edge >= CELLS_PER_EDGE.1 {
                    break;
                }
                per_edge *= 2;
            }
            lookup.padded.resize(n + lookup.probes, f64::NAN);
        }
        lookup
    }

    /// The cell of `x`: 0 below the grid and for NaN, the last cell at
    /// and above the last edge (float-to-int casts saturate).
    #[inline]
    fn cell(&self, x: f64) -> usize {
        (((x - self.lo) * self.scale) as usize).min(self.starts.len() - 1)
    }

    /// The edges.
    pub fn edges(&self) -> &[f64] {
        &self.padded[..self.edges]
    }

    /// The number of edges at or below `x` (0 for NaN), i.e. its bin among
    /// `edges.len() + 1`.
    #[inline]
    pub fn bin(&self, x: f64) -> usize {
        if self.scale == 0.0 {
            return self.edges().partition_point(|&e| e <= x);
        }
        let b = self.starts[self.cell(x)] as usize;
        let probes = &self.padded[b..b + self.probes];
        b + probes.iter().map(|&e| usize::from(e <= x)).sum::<usize>()
    }

    /// `f(bin, x)` for each `x` of `xs`, with [`Self::bin`]'s compares
    /// unrolled for the usual grids (one or two edges per cell at most).
    #[inline]
    pub fn bin_each(&self, xs: impl Iterator<Item = f64>, mut f: impl FnMut(usize, f64)) {
        match (self.scale != 0.0, self.probes) {
            (true, 1) => xs.for_each(|x| f(self.bin_probed::<1>(x), x)),
            (true, 2) => xs.for_each(|x| f(self.bin_probed::<2>(x), x)),
            _ => xs.for_each(|x| f(self.bin(x), x)),
        }
    }

    /// [`Self::bin`] on a usable grid whose cells hold at most `P` edges.
    #[inline]
    fn bin_probed<const P: usize>(&self, x: f64) -> usize {
        let b = self.starts[self.cell(x)] as usize;
        let probes: &[f64; P] = (self.padded[b..b + P].try_into()).expect("P edges padded");
        b + probes.iter().map(|&e| usize::from(e <= x)).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edges: Vec<f64>, values: impl Iterator<Item = f64> + Clone) {
        let lookup = BinLookup::new(edges.clone());
        for x in values.clone() {
            assert_eq!(
                lookup.bin(x),
                edges.partition_point(|&e| e <= x),
                "x = {x} over {edges:?}"
            );
        }
        lookup.bin_each(values, |bin, x| {
            assert_eq!(bin, lookup.bin(x), "bin_each, x = {x} over {edges:?}")
        });
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
        // Crowded edges: a Pareto-like tail, and point bins one ulp wide
        // (more edges in one cell than the finest grid separates).
        let crowded: Vec<f64> = (1..100)
            .map(|i| (1.0 - i as f64 / 100.0).powi(-4))
            .flat_map(|e| [e, e.next_up()])
            .collect();
        let probes: Vec<f64> = crowded
            .iter()
            .flat_map(|&e| [e, e.next_up(), e.next_down()])
            .chain((0..20_000).map(|i| i as f64 * 0.01))
            .collect();
        check(crowded, probes.iter().copied());
    }
}
