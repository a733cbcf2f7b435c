//! Realistic e-commerce traffic for judging the alert rules themselves:
//! days with the daily cycle (night five times quieter than the peak, the
//! category mix and prices moving a little with the hour), an announced
//! promotion hour, segments (site × surface), feedback labels arriving
//! minutes later, a model at about one request a second, and a training
//! run with an isolated gradient spike. `realistic-day` adds one incident
//! of each kind the built-in rules must catch; `quiet-days` is three days
//! of the same traffic with none.
//!
//! Models (mean rates over a day; the cycle goes 0.33x..1.67x):
//! - `search-ranker` v21, 10 req/s, sites us/de/mx (50/30/20 %), surfaces
//!   search/browse/email (email is 6 %);
//! - `home-feed` v5 (v6 from noon in `realistic-day`), 4 req/s, surface feed;
//! - `catalog-ranker` v3, 3 req/s, surface browse;
//! - `size-advisor` v2, 1 req/s, surface pdp: the low-traffic model;
//! - training run `online-ft-home-feed`, one step every 10 s.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::io::{self, Write};

use infermon_schemas::{
    Feature, FeedbackEvent, PredictionEvent, Status, Timings, TopicNames, TrainingEvent,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Exp, LogNormal, Normal, Pareto, Poisson};

use crate::generate::{
    GenerateOptions, GenerateStats, Outbox, click_probability, line, pick, round,
};
use crate::scenario::IncidentKind;

const HOUR: i64 = 3_600_000;

struct Model {
    name: &'static str,
    version: &'static str,
    rps: f64,
    inference_ms: f64,
    surfaces: &'static [(&'static str, f64)],
    labelled: bool,
}

const SEARCH: Model = Model {
    name: "search-ranker",
    version: "21",
    rps: 10.0,
    inference_ms: 3.0,
    surfaces: &[("search", 0.70), ("browse", 0.24), ("email", 0.06)],
    labelled: true,
};
const FEED: Model = Model {
    name: "home-feed",
    version: "5",
    rps: 4.0,
    inference_ms: 4.0,
    surfaces: &[("feed", 1.0)],
    labelled: true,
};
const CATALOG: Model = Model {
    name: "catalog-ranker",
    version: "3",
    rps: 3.0,
    inference_ms: 12.0,
    surfaces: &[("browse", 1.0)],
    labelled: false,
};
const SIZE: Model = Model {
    name: "size-advisor",
    version: "2",
    rps: 1.0,
    inference_ms: 2.0,
    surfaces: &[("pdp", 1.0)],
    labelled: false,
};
const MODELS: [&Model; 4] = [&SEARCH, &FEED, &CATALOG, &SIZE];
const SITES: [(&str, f64); 3] = [("us", 0.50), ("de", 0.30), ("mx", 0.20)];
const RUN: &str = "online-ft-home-feed";

/// Incident times of `realistic-day`, as (kind, start hour, end hour) of
/// its day; the incidents [`GenerateOptions::incidents`] documents.
pub(crate) const INCIDENTS: [(IncidentKind, f64, f64); 6] = [
    (IncidentKind::SegmentLatency, 10.0, 11.0),
    (IncidentKind::Miscalibration, 12.0, 24.0),
    (IncidentKind::LatencyCreep, 13.0, 24.0),
    (IncidentKind::SegmentErrors, 15.0, 16.0),
    (IncidentKind::LowTrafficErrors, 19.0, 19.0 + 20.0 / 60.0),
    (IncidentKind::GradientSpikes, 21.0, 21.0 + 4.0 / 60.0),
];

/// The announced promotion: twice the search and feed traffic, a little
/// more fashion. Normal traffic, not an incident.
const PROMOTION: (f64, f64) = (18.0, 19.0);

/// The daily cycle: 1/3 of the mean at 04:00 UTC, 5/3 at 16:00.
fn cycle(hour: f64) -> f64 {
    1.0 - (2.0 / 3.0) * (2.0 * PI * (hour - 4.0) / 24.0).cos()
}

/// Category weights at `hour`: electronics peaks in the evening, books in
/// the morning (each ±15 % of its share), fashion gains 3 points during a
/// promotion.
fn categories(hour: f64, promotion: bool) -> [(&'static str, f64); 7] {
    let evening = (2.0 * PI * (hour - 20.0) / 24.0).cos();
    let fashion = if promotion { 0.25 } else { 0.22 };
    [
        ("electronics", 0.18 * (1.0 + 0.15 * evening)),
        ("fashion", fashion),
        ("home", 0.17),
        ("beauty", 0.13),
        ("sports", 0.10),
        ("books", 0.10 * (1.0 - 0.15 * evening)),
        ("toys", 0.10),
    ]
}

/// When each incident of the day is on (all `None` for quiet days).
struct Incidents {
    day_ms: Option<i64>,
}

impl Incidents {
    fn on(&self, kind: IncidentKind, ts: i64) -> Option<f64> {
        let day = self.day_ms?;
        let (_, from, to) = INCIDENTS.iter().find(|(k, _, _)| *k == kind)?;
        let h = (ts - day) as f64 / HOUR as f64;
        (h >= *from && h < *to).then_some((h - from) / (to - from))
    }
}

/// Write `opts`' recording (`realistic-day` or `quiet-days`) to `out`.
pub(crate) fn generate(
    opts: &GenerateOptions,
    with_incidents: bool,
    out: &mut dyn Write,
) -> io::Result<GenerateStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let topics = TopicNames::default();
    let incidents = Incidents {
        day_ms: with_incidents.then_some(opts.start_ms),
    };
    let mut outbox = Outbox::default();
    let mut stats = GenerateStats::default();
    let mut seq: u64 = 0;
    let mut trainer = Trainer::default();
    let delivery = Exp::new(1.0 / 150.0).expect("valid rate");
    for sec in 0..opts.duration_s as i64 {
        let second_ms = opts.start_ms + sec * 1000;
        let hour = (second_ms.rem_euclid(24 * HOUR)) as f64 / HOUR as f64;
        let promotion = (PROMOTION.0..PROMOTION.1).contains(&hour);
        for model in MODELS {
            let boost = if promotion && model.labelled {
                2.0
            } else {
                1.0
            };
            let rate = model.rps * opts.rate_scale * cycle(hour) * boost;
            let n = Poisson::new(rate).map_or(0, |p| p.sample(&mut rng) as u64);
            for _ in 0..n {
                seq += 1;
                let ts = second_ms + rng.random_range(0..1000);
                let mix = categories(hour, promotion);
                let p = predict(&mut rng, model, &incidents, &mix, ts, seq);
                if model.labelled && p.status == Status::Ok && rng.random::<f64>() < 0.3 {
                    let fb = feedback(&mut rng, &p, &incidents);
                    outbox.push(
                        fb.ts + delivery.sample(&mut rng) as i64,
                        line(&topics.feedback, &fb),
                    );
                    stats.feedback += 1;
                }
                outbox.push(
                    ts + delivery.sample(&mut rng) as i64,
                    line(&topics.predictions, &p),
                );
                stats.predictions += 1;
            }
        }
        if sec % 10 == 0 {
            let step = trainer.step(&mut rng, second_ms + 500, &incidents, opts.start_ms);
            outbox.push(second_ms + 550, line(&topics.training, &step));
            stats.training += 1;
        }
        stats.lines += outbox.drain_until(out, second_ms)?;
    }
    stats.lines += outbox.drain_until(out, i64::MAX)?;
    Ok(stats)
}

fn predict(
    rng: &mut ChaCha8Rng,
    model: &Model,
    incidents: &Incidents,
    mix: &[(&str, f64)],
    ts: i64,
    seq: u64,
) -> PredictionEvent {
    let site = pick(rng, &SITES);
    let surface = pick(rng, model.surfaces);
    let version =
        if model.name == FEED.name && incidents.on(IncidentKind::Miscalibration, ts).is_some() {
            "6"
        } else {
            model.version
        };
    // Latency: the creep doubles catalog-ranker over five hours and stays;
    // Mexico's search traffic is four times slower for an hour.
    let mut slow = 1.0;
    if model.name == CATALOG.name
        && let Some(f) = incidents.on(IncidentKind::LatencyCreep, ts)
    {
        let h = f * 11.0; // hours since the creep began
        slow = 1.0 + (h / 5.0).min(1.0);
    }
    if model.name == SEARCH.name
        && site == "mx"
        && incidents.on(IncidentKind::SegmentLatency, ts).is_some()
    {
        slow = 4.0;
    }
    let lognormal = |median: f64, sigma: f64| LogNormal::new(median.ln(), sigma).expect("valid");
    let queue = lognormal(0.4, 0.8).sample(rng).min(200.0) * slow;
    let preprocess = lognormal(0.15, 0.35).sample(rng) * slow;
    let mut inference = lognormal(model.inference_ms, 0.25).sample(rng) * slow;
    if rng.random::<f64>() < 0.003 {
        inference += Pareto::new(model.inference_ms * 2.0, 1.6)
            .expect("valid")
            .sample(rng)
            .min(1_000.0);
    }
    let postprocess = lognormal(0.05, 0.3).sample(rng);

    let mut error_rate = 0.001;
    if model.name == SEARCH.name
        && surface == "email"
        && incidents.on(IncidentKind::SegmentErrors, ts).is_some()
    {
        error_rate = 0.10;
    }
    if model.name == SIZE.name && incidents.on(IncidentKind::LowTrafficErrors, ts).is_some() {
        error_rate = 0.30;
    }
    let failed = rng.random::<f64>() < error_rate;
    let (features, score) = features(rng, mix, ts);
    let r = |x: f64| round(x, 3);
    PredictionEvent {
        ranking: None,
        request_id: format!("q-{seq:09x}"),
        ts,
        model: model.name.into(),
        model_version: version.into(),
        worker: Some(format!("node-{}", rng.random_range(1..5))),
        device: Some("cpu".into()),
        status: if failed { Status::Error } else { Status::Ok },
        error: failed.then(|| "upstream feature service: 503".into()),
        batch_size: Some(rng.random_range(1..9)),
        // A failing upstream answers at once: failures are fast.
        timings_ms: if failed {
            Timings {
                queue: Some(r(queue)),
                preprocess: Some(r(preprocess)),
                total: r(queue + preprocess),
                ..Default::default()
            }
        } else {
            Timings {
                queue: Some(r(queue)),
                preprocess: Some(r(preprocess)),
                inference: Some(r(inference)),
                postprocess: Some(r(postprocess)),
                total: r(queue + preprocess + inference + postprocess),
            }
        },
        score: (!failed).then(|| round(score, 5)),
        features,
        segment: BTreeMap::from([
            ("site".to_string(), site.to_string()),
            ("surface".to_string(), surface.to_string()),
        ]),
    }
}

/// Features and the click probability of a calibrated logistic model;
/// prices move ±5 % with the hour.
fn features(
    rng: &mut ChaCha8Rng,
    mix: &[(&str, f64)],
    ts: i64,
) -> (BTreeMap<String, Feature>, f64) {
    let hour = (ts.rem_euclid(24 * HOUR)) as f64 / HOUR as f64;
    let price_median = 40.0 * (1.0 + 0.05 * (2.0 * PI * (hour - 20.0) / 24.0).cos());
    let price = LogNormal::new(price_median.ln(), 0.9)
        .expect("valid")
        .sample(rng);
    let user_ctr = Beta::new(2.0, 60.0).expect("valid").sample(rng);
    let popularity = LogNormal::new(200f64.ln(), 1.2).expect("valid").sample(rng);
    let category = pick(rng, mix);
    let device = pick(rng, &[("app", 0.55), ("mobile", 0.35), ("desktop", 0.10)]);
    let score = click_probability(rng, price, user_ctr, popularity, category);
    let features = BTreeMap::from([
        ("price".into(), Feature::Number(round(price, 2))),
        ("user_ctr_7d".into(), Feature::Number(round(user_ctr, 4))),
        (
            "item_popularity".into(),
            Feature::Number(popularity.round()),
        ),
        ("category".into(), Feature::Category(category.into())),
        ("device".into(), Feature::Category(device.into())),
    ]);
    (features, score)
}

/// A label minutes after the impression (median 2 min, at most 8): a
/// click with the score's probability, half of it for home-feed v6 (the
/// broken calibration; its scores look the same).
fn feedback(rng: &mut ChaCha8Rng, p: &PredictionEvent, incidents: &Incidents) -> FeedbackEvent {
    let delay: f64 = Exp::new(1.0 / 120_000.0).expect("valid").sample(rng);
    let mut probability = p.score.unwrap_or(0.0);
    if p.model == FEED.name && incidents.on(IncidentKind::Miscalibration, p.ts).is_some() {
        probability /= 2.0;
    }
    let clicked = rng.random::<f64>() < probability;
    FeedbackEvent {
        item_id: None,
        request_id: p.request_id.clone(),
        ts: p.ts + delay.min(480_000.0) as i64,
        kind: Some(if clicked { "click" } else { "impression" }.into()),
        label: clicked as u8,
    }
}

/// An online fine-tuning run: steady gradients, one isolated spike at
/// 06:00 each day (written, never paged), and in `realistic-day` a burst
/// of spikes at 21:00.
#[derive(Default)]
struct Trainer {
    step: u64,
    loss: f64,
}

impl Trainer {
    fn step(
        &mut self,
        rng: &mut ChaCha8Rng,
        ts: i64,
        incidents: &Incidents,
        start: i64,
    ) -> TrainingEvent {
        self.step += 1;
        if self.loss == 0.0 {
            self.loss = 0.5;
        }
        self.loss =
            (self.loss * 0.9999 + Normal::new(0.0, 0.002).expect("valid").sample(rng)).max(0.2);
        let mut grad_norm = LogNormal::new(1.5f64.ln(), 0.1).expect("valid").sample(rng);
        let since_day = (ts - start).rem_euclid(24 * HOUR);
        // The isolated spike: one step at 06:00:00.
        if (6 * HOUR..6 * HOUR + 10_000).contains(&since_day) {
            grad_norm *= 5.0;
        }
        // The burst: every third step for four minutes.
        if incidents.on(IncidentKind::GradientSpikes, ts).is_some() && self.step.is_multiple_of(3) {
            grad_norm *= 5.0;
        }
        TrainingEvent {
            run_id: RUN.into(),
            model: FEED.name.into(),
            ts,
            step: self.step,
            loss: Some(round(self.loss, 5)),
            grad_norm: round(grad_norm, 4),
            lr: Some(5e-4),
            layer_grad_norms: BTreeMap::new(),
            nonfinite: 0,
        }
    }
}
