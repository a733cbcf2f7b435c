//! Scoring requests for real workers: the same traffic as the generated
//! predictions (diurnal Poisson arrivals, the tabular feature
//! distributions), but as `RequestEvent`s for the models `infermon worker`
//! really serves — `ctr-ranker` (the committed ONNX MLP) and
//! `query-encoder` (MiniLM on query texts). Replayed into Kafka through
//! real workers and captured with `infermon record`, they make recordings
//! whose scores come from the real models and whose timings were measured
//! (`replay-data/record-live.sh`).

use std::collections::BTreeMap;
use std::io::{self, Write};

use infermon_schemas::{Feature, RequestEvent, TopicNames};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

use crate::generate::{GenerateOptions, diurnal, line, pick, tabular};
use crate::scenario::Scenario;

/// Words of the generated search queries: "<adjective> <product>", some
/// with a brand or a size. The mix never changes: the query encoder is the
/// quiet model.
const ADJECTIVES: [&str; 12] = [
    "running",
    "wireless",
    "red",
    "cheap",
    "leather",
    "kids",
    "organic",
    "gaming",
    "waterproof",
    "summer",
    "vintage",
    "4k",
];
const PRODUCTS: [&str; 12] = [
    "shoes",
    "earbuds",
    "dress",
    "monitor",
    "mug",
    "backpack",
    "jacket",
    "phone case",
    "lamp",
    "watch",
    "sneakers",
    "headphones",
];
const EXTRAS: [&str; 6] = [
    "for men",
    "for women",
    "size 42",
    "nike",
    "under 50",
    "sale",
];

/// Counts of what was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Requests for the CTR model.
    pub ctr: u64,
    /// Requests for the query encoder.
    pub text: u64,
}

/// Write the requests of `opts`' time span as JSON lines (with a `topic`
/// field), in event-time order. The `input-shift` scenario shifts the CTR
/// model's inputs (prices × 2.5, category mix towards electronics) from 60 %
/// of the span on; `feature-null` nulls `user_ctr_7d` for 40 % of its
/// requests from 60 % to 75 %; other scenarios carry no incident.
pub fn generate_requests(opts: &GenerateOptions, out: &mut dyn Write) -> io::Result<RequestStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let topic = TopicNames::default().requests;
    let at = |f: f64| opts.start_ms + (f * opts.duration_s as f64 * 1000.0) as i64;
    let (shift_from, nulls) = match opts.scenario {
        Scenario::InputShift => (Some(at(0.6)), None),
        Scenario::FeatureNull => (None, Some((at(0.6), at(0.75)))),
        _ => (None, None),
    };
    let mut stats = RequestStats::default();
    let mut seq: u64 = 0;
    for sec in 0..opts.duration_s as i64 {
        let second_ms = opts.start_ms + sec * 1000;
        let mut batch: Vec<RequestEvent> = Vec::new();
        for (model, base_rps) in [("ctr-ranker", 10.0), ("query-encoder", 3.0)] {
            let rate = base_rps * opts.rate_scale * diurnal(second_ms);
            let n = Poisson::new(rate)
                .map(|p| p.sample(&mut rng) as u64)
                .unwrap_or(0);
            for _ in 0..n {
                seq += 1;
                let ts = second_ms + rng.random_range(0..1000);
                let site = pick(&mut rng, &[("cn", 0.5), ("us", 0.3), ("de", 0.2)]);
                let surface = "search";
                let mut req = RequestEvent {
                    request_id: format!("q-{seq:09x}"),
                    ts,
                    model: model.into(),
                    segment: BTreeMap::from([
                        ("site".to_string(), site.to_string()),
                        ("surface".to_string(), surface.to_string()),
                    ]),
                    features: BTreeMap::new(),
                    text: None,
                };
                if model == "ctr-ranker" {
                    let shifted = shift_from.is_some_and(|t| ts >= t);
                    let null_window = nulls.is_some_and(|(a, b)| ts >= a && ts < b);
                    let (features, _synthetic_score) = tabular(&mut rng, shifted, null_window);
                    req.features = features;
                    stats.ctr += 1;
                } else {
                    let mut q = format!(
                        "{} {}",
                        ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
                        PRODUCTS[rng.random_range(0..PRODUCTS.len())]
                    );
                    if rng.random::<f64>() < 0.3 {
                        q.push(' ');
                        q.push_str(EXTRAS[rng.random_range(0..EXTRAS.len())]);
                    }
                    req.features = BTreeMap::from([(
                        "query_words".to_string(),
                        Feature::Number(q.split(' ').count() as f64),
                    )]);
                    req.text = Some(q);
                    stats.text += 1;
                }
                batch.push(req);
            }
        }
        batch.sort_by_key(|r| r.ts);
        for r in &batch {
            out.write_all(line(&topic, r).as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    Ok(stats)
}
