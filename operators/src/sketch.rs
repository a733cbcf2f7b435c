//! The latency sketch: DDSketch with a 1% relative-accuracy guarantee.
//!
//! Why DDSketch: it merges exactly (bin counts add), its error bound is
//! relative (1% of 3 ms and 1% of 3 s alike), and its state is O(log range)
//! bins — a window holds a few hundred counters, never the raw timings.

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy: every reported quantile is within 1% of the exact
/// order statistic of the same rank.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Bins cap; 1 µs .. 1e6 s needs ~1040 bins at 1%, so this never collapses.
const MAX_BINS: u32 = 2048;
/// Values below 1 µs (in ms) are counted as zero.
const MIN_VALUE_MS: f64 = 1e-3;

/// Why sketch state from outside cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SketchError {
    /// The bytes are not a serialized sketch.
    #[error("latency sketch state does not parse: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The bins do not add up (counts, key range and bin vector disagree):
    /// merging it would read outside its bins.
    #[error("latency sketch state is inconsistent: {0}")]
    Inconsistent(String),
    /// A sketch of another configuration (accuracy, bin cap or minimum):
    /// its bins do not line up with ours.
    #[error(
        "latency sketch state has another configuration than this build's (1 % accuracy, {MAX_BINS} bins, minimum {MIN_VALUE_MS} ms): cannot merge it"
    )]
    Incompatible,
}

/// A mergeable latency distribution summary (milliseconds).
///
/// Quantiles use the "lower" rank convention: `q` → the element at rank
/// `floor(q * (n - 1))` of the sorted values (numpy `method="lower"`).
#[derive(Clone)]
pub struct LatencySketch {
    sketch: DDSketch,
}

impl Default for LatencySketch {
    fn default() -> Self {
        Self {
            sketch: DDSketch::new(Config::new(RELATIVE_ACCURACY, MAX_BINS, MIN_VALUE_MS)),
        }
    }
}

impl std::fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySketch")
            .field("count", &self.count())
            .finish()
    }
}

impl LatencySketch {
    /// Record one value (ms). Non-finite values are ignored: they are not
    /// latencies, and the decoder already rejects them.
    pub fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.sketch.add(v);
        }
    }

    /// Fold another sketch into this one (exact: bin counts add). Sketches
    /// made here always merge; one deserialized from elsewhere with another
    /// configuration is an error, and this one is left unchanged.
    pub fn merge(&mut self, other: &LatencySketch) -> Result<(), SketchError> {
        self.sketch
            .merge(&other.sketch)
            .map_err(|_| SketchError::Incompatible)
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.sketch.count() as u64
    }

    /// Sum of the values (exact).
    pub fn sum(&self) -> f64 {
        self.sketch.sum().unwrap_or(0.0)
    }

    /// Largest value (exact).
    pub fn max(&self) -> Option<f64> {
        self.sketch.max()
    }

    /// The `q` quantile within 1% relative error, `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.quantile(q).ok().flatten()
    }

    /// How many recorded values are above `x` (ms), at the sketch's bin
    /// resolution: values in the bin that holds `x` count as at or below
    /// it whichever side of `x` they were. Two sketches split at the same
    /// `x` are split at the same bin boundary, so their counts compare.
    pub fn count_above(&self, x: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        // The number of values at or below `x`: the largest rank whose
        // value is ≤ x, plus one (ranks are 0-based, "lower" convention).
        let at = |rank: u64| {
            let q = if n == 1 {
                0.0
            } else {
                rank as f64 / (n - 1) as f64
            };
            self.quantile(q).unwrap_or(f64::INFINITY)
        };
        if at(0) > x {
            return n;
        }
        let (mut lo, mut hi) = (0, n - 1);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if at(mid) <= x {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        n - (lo + 1)
    }

    /// Serialized form, for DataFusion accumulator state and checkpoints.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.sketch).expect("DDSketch serializes")
    }

    /// Inverse of [`LatencySketch::to_bytes`]. State from outside is checked
    /// before anything reads it: each store's bins must cover its key range
    /// and add up to its count.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        Self::from_value(serde_json::from_slice(bytes)?)
    }

    fn from_value(value: serde_json::Value) -> Result<Self, SketchError> {
        for name in ["store", "negative_store"] {
            check_store(name, &value[name]).map_err(SketchError::Inconsistent)?;
        }
        Ok(Self {
            sketch: serde_json::from_value(value)?,
        })
    }
}

/// The DDSketch's own serde form (what [`LatencySketch::to_bytes`] writes);
/// deserializing checks it as [`LatencySketch::from_bytes`] does. Empty
/// sketches are not serialized: their min and max are infinite, which JSON
/// cannot hold.
impl Serialize for LatencySketch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.sketch.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LatencySketch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

/// A serialized DDSketch store (`bins`, `count`, `min_key`, `max_key`,
/// `offset`) whose merge cannot index outside its bins.
fn check_store(name: &str, store: &serde_json::Value) -> Result<(), String> {
    let int = |field: &str| {
        store[field]
            .as_i64()
            .ok_or_else(|| format!("{name}.{field} is not an integer"))
    };
    let bins: Vec<u64> = store["bins"]
        .as_array()
        .ok_or_else(|| format!("{name}.bins is not an array"))?
        .iter()
        .map(|b| {
            b.as_u64()
                .ok_or_else(|| format!("{name}.bins holds a non-count"))
        })
        .collect::<Result<_, _>>()?;
    let (count, min_key, max_key, offset) = (
        int("count")?,
        int("min_key")?,
        int("max_key")?,
        int("offset")?,
    );
    let sum: u64 = bins.iter().sum();
    if u64::try_from(count).ok() != Some(sum) {
        return Err(format!(
            "{name}.count is {count} but its bins add up to {sum}"
        ));
    }
    let covered = count == 0
        || (offset <= min_key && min_key <= max_key && max_key - offset < bins.len() as i64);
    if !covered {
        return Err(format!(
            "{name}: keys {min_key}..={max_key} from offset {offset} do not fit its {} bins",
            bins.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_above_is_exact_away_from_the_bin_of_x() {
        let mut s = LatencySketch::default();
        for v in 1..=1000 {
            s.add(v as f64);
        }
        assert_eq!(s.count_above(0.5), 1000);
        assert_eq!(s.count_above(2000.0), 0);
        // 1 % bins: the bin of 500 holds at most 500 ± 10.
        let above = s.count_above(500.0);
        assert!((490..=510).contains(&above), "{above}");
    }

    #[test]
    fn foreign_state_is_an_error_not_a_panic() {
        let mut ours = LatencySketch::default();
        ours.add(3.0);
        let mut foreign = DDSketch::new(Config::new(0.05, 512, 1e-6));
        foreign.add(4.0);
        let bytes = serde_json::to_vec(&foreign).unwrap();
        let theirs = LatencySketch::from_bytes(&bytes).unwrap();
        let err = ours.merge(&theirs).unwrap_err();
        assert!(matches!(err, SketchError::Incompatible), "{err}");
        assert_eq!(ours.count(), 1, "left unchanged");
        assert!(matches!(
            LatencySketch::from_bytes(b"{\"not\": 1}"),
            Err(SketchError::Inconsistent(_) | SketchError::Corrupt(_))
        ));
        // Our configuration, but bins that do not cover the key range.
        let mut v: serde_json::Value = serde_json::from_slice(&ours.to_bytes()).unwrap();
        v["store"]["bins"] = serde_json::json!([]);
        v["store"]["min_key"] = serde_json::json!(10);
        v["store"]["max_key"] = serde_json::json!(20);
        let err = LatencySketch::from_bytes(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, SketchError::Inconsistent(_)), "{err}");
        // Round trip of a real one still works and merges.
        let copy = LatencySketch::from_bytes(&ours.to_bytes()).unwrap();
        ours.merge(&copy).unwrap();
        assert_eq!(ours.count(), 2);
    }
}
