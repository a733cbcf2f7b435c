//! Ranked lists with position bias: a search ranker answering queries with
//! ten results each. `ranked-search` is healthy traffic; `broken-order`
//! adds the incident ranking metrics exist for: from 60 % of the recording
//! a feature bug scrambles which item gets which score, so the scores (and
//! their distribution) stay the same while the order no longer follows
//! relevance. `ranked-canary` has that bug in a canary: from 50 % of the
//! recording version 6 serves 30 % of the queries, with the broken order,
//! beside a healthy version 5.
//!
//! Click model (a position-based model, as in Craswell et al. 2008):
//! each item has a relevance `r ~ Beta(0.5, 3)`; the model's estimate is
//! `r · exp(N(0, 0.3))`, results are shown in the order of the estimates,
//! and an item at position `p` is clicked with probability
//! `r · p^-0.15`. The score written is the predicted click probability,
//! `estimate · p^-0.15`, so the healthy model is calibrated. Every shown item
//! gets feedback (`impression` with label 0 or `click` with label 1)
//! naming its `item_id`, 2–60 s later.

use std::io::{self, Write};

use infermon_schemas::{FeedbackEvent, PredictionEvent, RankedItem, Status, Timings, TopicNames};
use rand::seq::{SliceRandom, index};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Exp, LogNormal, Normal, Poisson};

use crate::generate::{GenerateOptions, GenerateStats, Outbox, line, round};

/// The ranker's name and version.
pub const MODEL: (&str, &str) = ("search-ltr", "5");
/// Results per query.
pub const LIST_LEN: u32 = 10;
/// Queries per second at `rate_scale = 1`.
const QUERIES_PER_S: f64 = 3.0;
/// Items to draw from.
const CATALOG: usize = 200_000;
/// Examination falls with position as `p^-ETA`.
const ETA: f64 = 0.15;

/// The canary version of `ranked-canary` and its share of the queries.
pub const CANARY: (&str, f64) = ("6", 0.3);

/// What goes wrong, from when.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Breakage {
    /// Nothing.
    None,
    /// Every list's order breaks.
    Order(i64),
    /// A canary with the broken order takes [`CANARY`]'s share of queries.
    Canary(i64),
}

/// Write the recording.
pub(crate) fn generate(
    opts: &GenerateOptions,
    breakage: Breakage,
    out: &mut dyn Write,
) -> io::Result<GenerateStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let topics = TopicNames::default();
    let relevance = Beta::new(0.5_f64, 3.0).expect("valid beta");
    let noise = Normal::new(0.0_f64, 0.3).expect("valid normal");
    let latency = LogNormal::new(2.0_f64.ln(), 0.35).expect("valid lognormal");
    let feedback_delay = Exp::new(1.0 / 15_000.0).expect("valid rate");
    let queries = Poisson::new(QUERIES_PER_S * opts.rate_scale).expect("positive rate");
    let mut outbox = Outbox::default();
    let mut stats = GenerateStats::default();
    let mut seq: u64 = 0;
    for sec in 0..opts.duration_s as i64 {
        let second_ms = opts.start_ms + sec * 1000;
        for _ in 0..queries.sample(&mut rng) as u64 {
            seq += 1;
            let (version, broken) = match breakage {
                Breakage::None => (MODEL.1, false),
                Breakage::Order(t) => (MODEL.1, second_ms >= t),
                Breakage::Canary(t) if second_ms >= t && rng.random::<f64>() < CANARY.1 => {
                    (CANARY.0, true)
                }
                Breakage::Canary(_) => (MODEL.1, false),
            };
            let ts = second_ms + rng.random_range(0..1000);
            let request_id = format!("q-{seq:08}");
            // Distinct items: a list never shows one twice.
            let items: Vec<(usize, f64)> = index::sample(&mut rng, CATALOG, LIST_LEN as usize)
                .into_iter()
                .map(|sku| (sku, relevance.sample(&mut rng)))
                .collect();
            let mut estimates: Vec<f64> = items
                .iter()
                .map(|(_, r)| (r * noise.sample(&mut rng).exp()).min(1.0))
                .collect();
            if broken {
                // The same scores, handed to the wrong items.
                estimates.shuffle(&mut rng);
            }
            let mut order: Vec<usize> = (0..items.len()).collect();
            order.sort_by(|&a, &b| estimates[b].total_cmp(&estimates[a]));
            let total = latency.sample(&mut rng);
            for (rank, &i) in order.iter().enumerate() {
                let position = rank as u32 + 1;
                let examined = f64::from(position).powf(-ETA);
                let (sku, r) = items[i];
                let item_id = format!("sku-{sku}");
                let p = PredictionEvent {
                    request_id: request_id.clone(),
                    ts,
                    model: MODEL.0.into(),
                    model_version: version.into(),
                    worker: Some("ltr-0/0".into()),
                    device: Some("cpu".into()),
                    status: Status::Ok,
                    error: None,
                    batch_size: Some(LIST_LEN),
                    timings_ms: Timings {
                        total: round(total, 3),
                        ..Timings::default()
                    },
                    score: Some(round(estimates[i] * examined, 6)),
                    features: Default::default(),
                    segment: Default::default(),
                    ranking: Some(Box::new(RankedItem {
                        list_id: request_id.clone(),
                        item_id: Some(item_id.clone()),
                        position,
                    })),
                };
                outbox.push(ts + rng.random_range(5..400), line(&topics.predictions, &p));
                stats.predictions += 1;
                let clicked = rng.random::<f64>() < r * examined;
                let fb_ts = ts + 2_000 + (feedback_delay.sample(&mut rng) as i64).min(58_000);
                let fb = FeedbackEvent {
                    request_id: request_id.clone(),
                    ts: fb_ts,
                    kind: Some(if clicked { "click" } else { "impression" }.into()),
                    label: u8::from(clicked),
                    item_id: Some(item_id),
                };
                outbox.push(
                    fb_ts + rng.random_range(5..400),
                    line(&topics.feedback, &fb),
                );
                stats.feedback += 1;
            }
        }
        stats.lines += outbox.drain_until(out, second_ms)?;
    }
    stats.lines += outbox.drain_until(out, i64::MAX)?;
    Ok(stats)
}
