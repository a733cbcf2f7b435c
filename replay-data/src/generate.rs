//! How traffic is drawn: diurnal Poisson arrivals, heavy-tailed stage
//! timings, realistic features and scores, delayed feedback, a training
//! run's gradient telemetry, and out-of-order delivery.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::f64::consts::PI;
use std::io::{self, Write};

use infermon_schemas::{
    Feature, FeedbackEvent, PredictionEvent, Status, Timings, TopicNames, TrainingEvent,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Exp, LogNormal, Normal, Pareto, Poisson};
use serde::Serialize;

use crate::scenario::{Incident, IncidentKind, Scenario};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Which incidents to inject (and which models carry traffic).
    pub scenario: Scenario,
    /// RNG seed; same options and seed give byte-identical output.
    pub seed: u64,
    /// Event time of the first second, ms since the epoch (UTC).
    pub start_ms: i64,
    /// Length of the recording, seconds.
    pub duration_s: u64,
    /// Multiplies every model's request rate (1.0 = the bundled recordings).
    pub rate_scale: f64,
}

/// 2025-11-20T00:00:00Z, the day the bundled recordings are set on.
pub const BUNDLED_DAY_MS: i64 = 1_763_596_800_000;

impl GenerateOptions {
    /// The settings of the committed recording of `scenario`: one hour
    /// each, back to back through the afternoon so all files can be replayed
    /// together. Each incident starts 36 minutes in, after the default
    /// 30-minute drift reference (rounded up to whole windows) and a few
    /// clean compared windows.
    pub fn bundled(scenario: Scenario) -> Self {
        let hour = match scenario {
            Scenario::LatencyRegression => 13,
            Scenario::ErrorBurst => 14,
            Scenario::InputShift => 15,
            Scenario::FeatureNull => 16,
            Scenario::GradientExplosion => 17,
            Scenario::Day | Scenario::RealisticDay | Scenario::QuietDays => 0,
            Scenario::RankedSearch | Scenario::BrokenOrder | Scenario::RankedCanary => 18,
        };
        Self {
            scenario,
            seed: 20261120 + hour as u64,
            start_ms: BUNDLED_DAY_MS + hour * 3_600_000,
            duration_s: match scenario {
                Scenario::Day | Scenario::RealisticDay => 86_400,
                Scenario::QuietDays => 3 * 86_400,
                _ => 3_600,
            },
            rate_scale: 1.0,
        }
    }

    /// The incidents this recording contains, with event times.
    pub fn incidents(&self) -> Vec<Incident> {
        let at = |f: f64| self.start_ms + (f * self.duration_s as f64 * 1000.0) as i64;
        self.scenario
            .windows()
            .into_iter()
            .map(|(kind, from, to)| {
                let end = if kind == IncidentKind::Explosion {
                    at(to) + 17_000 // 12 exploding + 5 non-finite steps, one per second
                } else {
                    at(to)
                };
                kind.describe(at(from), end)
            })
            .collect()
    }
}

/// Counts of what was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateStats {
    /// Lines (events) written.
    pub lines: u64,
    /// Prediction events.
    pub predictions: u64,
    /// Feedback events.
    pub feedback: u64,
    /// Training steps.
    pub training: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum ModelKind {
    Tabular,
    Text,
}

struct Model {
    name: &'static str,
    version: &'static str,
    base_rps: f64,
    inference_ms: f64,
    kind: ModelKind,
    device: &'static str,
    surface: &'static str,
}

const CTR: Model = Model {
    name: "ctr-ranker",
    version: "3",
    base_rps: 10.0,
    inference_ms: 2.4,
    kind: ModelKind::Tabular,
    device: "cuda:0",
    surface: "search",
};
const RECSYS: Model = Model {
    name: "recsys-ranker",
    version: "7",
    base_rps: 8.0,
    inference_ms: 4.0,
    kind: ModelKind::Tabular,
    device: "cuda:0",
    surface: "recommend",
};
const ADS: Model = Model {
    name: "ads-ctr",
    version: "12",
    base_rps: 8.0,
    inference_ms: 0.9,
    kind: ModelKind::Tabular,
    device: "cpu",
    surface: "ads",
};
/// The quiet model: present in every recording, must never alert.
const QUIET: Model = Model {
    name: "query-encoder",
    version: "2",
    base_rps: 3.0,
    inference_ms: 6.5,
    kind: ModelKind::Text,
    device: "cpu",
    surface: "search",
};

const CATEGORIES: [(&str, f64); 7] = [
    ("electronics", 0.18),
    ("fashion", 0.22),
    ("home", 0.17),
    ("beauty", 0.13),
    ("sports", 0.10),
    ("books", 0.10),
    ("toys", 0.10),
];

/// Traffic follows the day: trough around 04:00 UTC, peak around 20:00.
pub(crate) fn diurnal(ts_ms: i64) -> f64 {
    let hour = (ts_ms.rem_euclid(86_400_000)) as f64 / 3_600_000.0;
    0.6 + 0.4 * (2.0 * PI * (hour - 14.0) / 24.0).sin()
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

pub(crate) fn pick<'a, R: Rng>(rng: &mut R, weights: &[(&'a str, f64)]) -> &'a str {
    let total: f64 = weights.iter().map(|w| w.1).sum();
    let mut x = rng.random::<f64>() * total;
    for (name, w) in weights {
        if x < *w {
            return name;
        }
        x -= w;
    }
    weights[weights.len() - 1].0
}

/// Lines waiting for their (out-of-order) delivery time.
#[derive(Default)]
pub(crate) struct Outbox {
    heap: BinaryHeap<Reverse<(i64, u64, String)>>,
    seq: u64,
}

impl Outbox {
    pub(crate) fn push(&mut self, arrival_ms: i64, line: String) {
        self.seq += 1;
        self.heap.push(Reverse((arrival_ms, self.seq, line)));
    }

    pub(crate) fn drain_until(&mut self, out: &mut dyn Write, until_ms: i64) -> io::Result<u64> {
        let mut n = 0;
        while let Some(Reverse((arrival, _, _))) = self.heap.peek() {
            if *arrival >= until_ms {
                break;
            }
            let Reverse((_, _, line)) = self.heap.pop().expect("peeked");
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            n += 1;
        }
        Ok(n)
    }
}

struct Active {
    slow_deploy: Option<i64>,
    errors: Option<(i64, i64)>,
    shift: Option<i64>,
    nulls: Option<(i64, i64)>,
    explosion: Option<i64>,
}

impl Active {
    fn new(opts: &GenerateOptions) -> Self {
        let at = |f: f64| opts.start_ms + (f * opts.duration_s as f64 * 1000.0) as i64;
        let mut a = Active {
            slow_deploy: None,
            errors: None,
            shift: None,
            nulls: None,
            explosion: None,
        };
        for (kind, from, to) in opts.scenario.windows() {
            match kind {
                IncidentKind::SlowDeploy => a.slow_deploy = Some(at(from)),
                IncidentKind::Errors => a.errors = Some((at(from), at(to))),
                IncidentKind::Shift => a.shift = Some(at(from)),
                IncidentKind::Nulls => a.nulls = Some((at(from), at(to))),
                IncidentKind::Explosion => a.explosion = Some(at(from)),
                // Drawn by `realistic::generate`.
                _ => {}
            }
        }
        a
    }
}

/// Write the recording as JSON lines (topic field first) to `out`.
pub fn generate(opts: &GenerateOptions, out: &mut dyn Write) -> io::Result<GenerateStats> {
    match opts.scenario {
        Scenario::RealisticDay => return crate::realistic::generate(opts, true, out),
        Scenario::QuietDays => return crate::realistic::generate(opts, false, out),
        Scenario::RankedSearch | Scenario::BrokenOrder | Scenario::RankedCanary => {
            use crate::ranked::Breakage;
            let from = opts.incidents().first().map_or(i64::MAX, |i| i.start_ms);
            let breakage = match opts.scenario {
                Scenario::BrokenOrder => Breakage::Order(from),
                Scenario::RankedCanary => Breakage::Canary(from),
                _ => Breakage::None,
            };
            return crate::ranked::generate(opts, breakage, out);
        }
        _ => {}
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let topics = TopicNames::default();
    let models: Vec<&Model> = match opts.scenario {
        Scenario::LatencyRegression => vec![&CTR, &QUIET],
        Scenario::ErrorBurst => vec![&RECSYS, &QUIET],
        Scenario::InputShift | Scenario::FeatureNull => vec![&ADS, &QUIET],
        Scenario::GradientExplosion => vec![&QUIET],
        Scenario::Day => vec![&CTR, &RECSYS, &ADS, &QUIET],
        Scenario::RealisticDay
        | Scenario::QuietDays
        | Scenario::RankedSearch
        | Scenario::BrokenOrder
        | Scenario::RankedCanary => unreachable!("generated above"),
    };
    let training = matches!(opts.scenario, Scenario::GradientExplosion | Scenario::Day);
    let active = Active::new(opts);
    let mut outbox = Outbox::default();
    let mut stats = GenerateStats::default();
    let mut request_seq: u64 = 0;
    let mut trainer = Trainer::new();

    let delivery = Exp::new(1.0 / 150.0).expect("valid rate");
    for sec in 0..opts.duration_s as i64 {
        let second_ms = opts.start_ms + sec * 1000;
        for model in &models {
            let rate = model.base_rps * opts.rate_scale * diurnal(second_ms);
            let n = Poisson::new(rate)
                .map(|p| p.sample(&mut rng) as u64)
                .unwrap_or(0);
            for _ in 0..n {
                request_seq += 1;
                let ts = second_ms + rng.random_range(0..1000);
                let p = predict(&mut rng, model, &active, ts, rate, request_seq);
                // Most events arrive within milliseconds; a few straggle past
                // the allowed lateness, as they do behind a slow producer.
                let delay = if rng.random::<f64>() < 0.0005 {
                    rng.random_range(20_000..90_000)
                } else {
                    delivery.sample(&mut rng) as i64
                };
                if model.kind == ModelKind::Tabular
                    && p.status == Status::Ok
                    && rng.random::<f64>() < 0.3
                {
                    let fb = feedback(&mut rng, &p);
                    let arrival = fb.ts + delivery.sample(&mut rng) as i64;
                    outbox.push(arrival, line(&topics.feedback, &fb));
                    stats.feedback += 1;
                }
                outbox.push(ts + delay, line(&topics.predictions, &p));
                stats.predictions += 1;
            }
        }
        if training {
            for (ts, step) in trainer.tick(&mut rng, second_ms, active.explosion) {
                outbox.push(ts + 50, step);
                stats.training += 1;
            }
        }
        stats.lines += outbox.drain_until(out, second_ms)?;
    }
    stats.lines += outbox.drain_until(out, i64::MAX)?;
    Ok(stats)
}

pub(crate) fn line<T: Serialize>(topic: &str, event: &T) -> String {
    infermon_schemas::recording::line(topic, event)
}

fn predict(
    rng: &mut ChaCha8Rng,
    model: &Model,
    active: &Active,
    ts: i64,
    rate: f64,
    seq: u64,
) -> PredictionEvent {
    let in_window = |w: Option<(i64, i64)>| w.is_some_and(|(a, b)| ts >= a && ts < b);
    let slow = model.name == CTR.name && active.slow_deploy.is_some_and(|t| ts >= t);
    let version = if slow { "4" } else { model.version };
    let shifted = model.name == ADS.name && active.shift.is_some_and(|t| ts >= t);
    let nulls = model.name == ADS.name && in_window(active.nulls);
    let error_rate = if model.name == RECSYS.name && in_window(active.errors) {
        0.08
    } else {
        0.001
    };

    let lognormal = |median: f64, sigma: f64| LogNormal::new(median.ln(), sigma).expect("valid");
    let batch_size = (1 + Poisson::new(1.0 + rate * 0.4)
        .map(|p| p.sample(rng) as u32)
        .unwrap_or(0))
    .min(32);
    let mut queue = lognormal(0.35, 0.9).sample(rng).min(250.0);
    if rng.random::<f64>() < 0.01 {
        queue *= 8.0;
    }
    let pre_median = if model.kind == ModelKind::Text {
        0.6
    } else {
        0.12
    };
    let preprocess = lognormal(pre_median, 0.35).sample(rng);
    let base = model.inference_ms * if slow { 5.0 } else { 1.0 };
    let mut inference = lognormal(base * (1.0 + batch_size as f64 / 16.0), 0.25).sample(rng);
    if rng.random::<f64>() < 0.004 {
        // GC pauses, noisy neighbours: a Pareto tail.
        inference += Pareto::new(base * 2.0, 1.6)
            .expect("valid")
            .sample(rng)
            .min(2_000.0);
    }
    let postprocess = lognormal(0.04, 0.3).sample(rng);
    let overhead = lognormal(0.03, 0.5).sample(rng);

    let site = pick(rng, &[("cn", 0.5), ("us", 0.3), ("de", 0.2)]);
    let segment = BTreeMap::from([
        ("site".to_string(), site.to_string()),
        ("surface".to_string(), model.surface.to_string()),
    ]);
    let worker = format!(
        "{}-{}/{}",
        if model.device == "cpu" {
            "cpu-node"
        } else {
            "gpu-node"
        },
        rng.random_range(1..5),
        rng.random_range(0..2)
    );
    let failed = rng.random::<f64>() < error_rate;
    let (features, score) = match model.kind {
        ModelKind::Tabular => tabular(rng, shifted, nulls),
        ModelKind::Text => {
            let len = rng.random_range(1..9) as f64;
            let cos: f64 = Normal::new(0.62, 0.08).expect("valid").sample(rng);
            let cos = cos.clamp(0.0, 1.0);
            (
                BTreeMap::from([("query_len".into(), Feature::Number(len))]),
                cos,
            )
        }
    };
    let r = |x: f64| round(x, 3);
    let timings = if failed {
        Timings {
            queue: Some(r(queue)),
            total: r(queue + 50.0 * rng.random::<f64>()),
            ..Default::default()
        }
    } else {
        Timings {
            queue: Some(r(queue)),
            preprocess: Some(r(preprocess)),
            inference: Some(r(inference)),
            postprocess: Some(r(postprocess)),
            total: r(queue + preprocess + inference + postprocess + overhead),
        }
    };
    PredictionEvent {
        ranking: None,
        request_id: format!("r-{seq:09x}"),
        ts,
        model: model.name.into(),
        model_version: version.into(),
        worker: Some(worker),
        device: Some(model.device.into()),
        status: if failed { Status::Error } else { Status::Ok },
        error: failed.then(|| {
            if rng.random::<bool>() {
                "CUDA out of memory".into()
            } else {
                "inference timeout after 50 ms".into()
            }
        }),
        batch_size: Some(batch_size),
        timings_ms: timings,
        score: (!failed).then(|| round(score, 5)),
        features,
        segment,
    }
}

/// Features of the tabular e-commerce models and the click probability a
/// logistic model assigns them.
pub(crate) fn tabular(
    rng: &mut ChaCha8Rng,
    shifted: bool,
    nulls: bool,
) -> (BTreeMap<String, Feature>, f64) {
    let price_median = if shifted { 100.0 } else { 40.0 };
    let price = LogNormal::new(f64::ln(price_median), 0.9)
        .expect("valid")
        .sample(rng);
    let user_ctr = Beta::new(2.0, 60.0).expect("valid").sample(rng);
    let popularity = LogNormal::new(f64::ln(200.0), 1.2)
        .expect("valid")
        .sample(rng);
    let shifted_mix: Vec<(&str, f64)> = CATEGORIES
        .iter()
        .map(|&(c, w)| (c, if c == "electronics" { 0.6 } else { w / 2.0 }))
        .collect();
    let category = pick(rng, if shifted { &shifted_mix } else { &CATEGORIES });
    let device = pick(rng, &[("app", 0.55), ("mobile", 0.35), ("desktop", 0.10)]);
    let score = click_probability(rng, price, user_ctr, popularity, category);
    let null_ctr = rng.random::<f64>() < if nulls { 0.4 } else { 0.005 };
    let features = BTreeMap::from([
        ("price".into(), Feature::Number(round(price, 2))),
        (
            "user_ctr_7d".into(),
            if null_ctr {
                Feature::Null
            } else {
                Feature::Number(round(user_ctr, 4))
            },
        ),
        (
            "item_popularity".into(),
            Feature::Number(popularity.round()),
        ),
        ("category".into(), Feature::Category(category.into())),
        ("device".into(), Feature::Category(device.into())),
    ]);
    (features, score)
}

/// The click probability the tabular models' calibrated logistic model
/// gives these features (its noise term drawn from `rng`).
pub(crate) fn click_probability(
    rng: &mut ChaCha8Rng,
    price: f64,
    user_ctr: f64,
    popularity: f64,
    category: &str,
) -> f64 {
    let effect = match category {
        "electronics" => 0.25,
        "fashion" => 0.1,
        "books" => -0.2,
        _ => 0.0,
    };
    let z = -3.2 - 0.3 * (price / 40.0).ln()
        + 9.0 * (user_ctr - 0.032)
        + 0.12 * (popularity / 200.0).ln()
        + effect
        + Normal::new(0.0, 0.3).expect("valid").sample(rng);
    1.0 / (1.0 + (-z).exp())
}

/// Clicks arrive seconds to minutes after the impression; the model is
/// calibrated, so the click probability is the score.
fn feedback(rng: &mut ChaCha8Rng, p: &PredictionEvent) -> FeedbackEvent {
    let delay: f64 = Exp::new(1.0 / 20_000.0).expect("valid").sample(rng);
    let delay = delay.min(600_000.0);
    let clicked = rng.random::<f64>() < p.score.unwrap_or(0.0);
    FeedbackEvent {
        item_id: None,
        request_id: p.request_id.clone(),
        ts: p.ts + delay as i64,
        kind: Some(if clicked { "click" } else { "impression" }.into()),
        label: clicked as u8,
    }
}

/// A training run emitting one optimiser step per second.
struct Trainer {
    step: u64,
    loss: f64,
    lr: f64,
    paused_until: i64,
    exploded: bool,
    explosion_step: u32,
}

impl Trainer {
    fn new() -> Self {
        Self {
            step: 1_000,
            loss: 0.45,
            lr: 1e-3,
            paused_until: i64::MIN,
            exploded: false,
            explosion_step: 0,
        }
    }

    fn tick(
        &mut self,
        rng: &mut ChaCha8Rng,
        second_ms: i64,
        explosion: Option<i64>,
    ) -> Vec<(i64, String)> {
        if second_ms < self.paused_until {
            return Vec::new();
        }
        let ts = second_ms + 500;
        self.step += 1;
        let mut grad_norm = LogNormal::new(f64::ln(1.8), 0.15)
            .expect("valid")
            .sample(rng);
        self.loss =
            (self.loss * 0.9995 + Normal::new(0.0, 0.004).expect("valid").sample(rng)).max(0.2);
        let mut loss = self.loss;
        let mut nonfinite = 0;
        let mut raw_null = false;
        if !self.exploded && explosion.is_some_and(|t| ts >= t) {
            let k = self.explosion_step;
            self.explosion_step += 1;
            if k < 12 {
                grad_norm *= 1.65f64.powi(k as i32);
                loss *= 1.0 + 0.2 * k as f64;
            } else {
                nonfinite = rng.random_range(100..5_000);
                grad_norm = [f64::NAN, f64::INFINITY, f64::NAN][k as usize % 3];
                raw_null = k.is_multiple_of(2);
                loss = f64::NAN;
                if k == 16 {
                    // The job dies, restarts from a checkpoint with half the lr.
                    self.exploded = true;
                    self.paused_until = second_ms + 60_000;
                    self.step -= 17;
                    self.lr /= 2.0;
                }
            }
        }
        let layers = BTreeMap::from([
            ("dense1".to_string(), round(grad_norm * 0.45, 4)),
            ("dense2".to_string(), round(grad_norm * 0.6, 4)),
            ("embed".to_string(), round(grad_norm * 0.65, 4)),
        ]);
        let event = TrainingEvent {
            run_id: "online-ft-ctr-ranker".into(),
            model: "ctr-ranker".into(),
            ts,
            step: self.step,
            loss: Some(if loss.is_finite() {
                round(loss, 5)
            } else {
                loss
            }),
            grad_norm: if grad_norm.is_finite() {
                round(grad_norm, 4)
            } else {
                grad_norm
            },
            lr: Some(self.lr),
            layer_grad_norms: if nonfinite > 0 {
                BTreeMap::new()
            } else {
                layers
            },
            nonfinite,
        };
        let mut text = line("training.telemetry", &event);
        if raw_null {
            // The other spelling the contract allows for non-finite values.
            let mut v: serde_json::Value = serde_json::from_str(&text).expect("own json");
            v["grad_norm"] = serde_json::Value::Null;
            v["loss"] = serde_json::Value::Null;
            text = v.to_string();
        }
        vec![(ts, text)]
    }
}
