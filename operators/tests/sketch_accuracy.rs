//! The latency sketch against exact sorting: every reported quantile is
//! within 1% of the exact order statistic of the same rank, and merging
//! sketches is the same as sketching the concatenated data.

use infermon_operators::latency::QUANTILES;
use infermon_operators::sketch::{LatencySketch, RELATIVE_ACCURACY};
use proptest::prelude::*;

/// numpy `quantile(method="lower")`: the element at rank floor(q (n-1)).
fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

fn sketch_of(values: &[f64]) -> LatencySketch {
    let mut s = LatencySketch::default();
    values.iter().for_each(|v| s.add(*v));
    s
}

/// Latency-like samples: log-uniform body over 6 decades plus a heavy tail.
fn latencies() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![
            9 => (-2.0f64..4.0).prop_map(|e| 10f64.powf(e)),
            1 => 1.0f64..1e5,
        ],
        1..5_000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn quantiles_within_one_percent_of_exact(values in latencies()) {
        let s = sketch_of(&values);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for (name, q) in QUANTILES {
            let want = exact(&sorted, q);
            let got = s.quantile(q).unwrap();
            let err = (got - want).abs() / want;
            prop_assert!(err <= RELATIVE_ACCURACY + 1e-12, "{name}: got {got}, exact {want}, rel err {err}");
        }
        prop_assert_eq!(s.count(), values.len() as u64);
        prop_assert_eq!(s.max(), sorted.last().copied());
    }

    #[test]
    fn merge_is_concatenation(a in latencies(), b in latencies(), c in latencies()) {
        let mut ab_c = sketch_of(&a);
        ab_c.merge(&sketch_of(&b)).unwrap();
        ab_c.merge(&sketch_of(&c)).unwrap();
        let mut c_ba = sketch_of(&c);
        c_ba.merge(&sketch_of(&b)).unwrap();
        c_ba.merge(&sketch_of(&a)).unwrap();
        let all = sketch_of(&[a, b, c].concat());
        for (_, q) in QUANTILES {
            prop_assert_eq!(ab_c.quantile(q), all.quantile(q));
            prop_assert_eq!(c_ba.quantile(q), all.quantile(q));
        }
        prop_assert_eq!(ab_c.count(), all.count());
    }
}

#[test]
fn state_round_trips_through_bytes() {
    let s = sketch_of(&[0.0, 0.5, 3.0, 250.0]);
    let back = LatencySketch::from_bytes(&s.to_bytes()).unwrap();
    for (_, q) in QUANTILES {
        assert_eq!(back.quantile(q), s.quantile(q));
    }
    assert!(LatencySketch::from_bytes(b"not a sketch").is_err());
}
