//! `infermon bench-worker`: the worker's scoring path side by side with a
//! bare ONNX Runtime loop on the same model and batches.
//!
//! Bare: `session.run` on inputs prepared in advance (encoded rows or
//! padded token ids). Worker: what `infermon worker` does per batch —
//! preprocess (feature spec or tokenizer), run, postprocess (pooling for a
//! text model), stage timings, one PredictionEvent per request, JSON, and
//! publishing to Kafka when brokers are given. Both run the same batches in
//! interleaved rounds, so the ratio is measured side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use infermon_inference::{Scorer, SessionOptions, ort_environment};
use infermon_schemas::{Feature, PredictionEvent, RequestEvent};
use rdkafka::producer::{Producer, ThreadedProducer};

use crate::sources::kafka::{DeliveryCounter, KafkaConfig};
use crate::worker::send;
use infermon_inference::answer::{Queued, score};
use infermon_inference::serving::highest_version;
use infermon_schemas::topics::PredictionKey;

/// What `infermon bench-worker` measures.
#[derive(Debug, Clone)]
pub struct WorkerBenchOptions {
    /// Model directory (feature spec + versions).
    pub dir: PathBuf,
    /// Requests per run.
    pub requests: usize,
    /// Batch sizes to compare.
    pub batch_sizes: Vec<usize>,
    /// Publish the predictions to this topic on these brokers (else they
    /// are serialised and dropped).
    pub kafka: Option<(String, String)>,
    /// Interleaved rounds (median reported).
    pub rounds: usize,
    /// ONNX Runtime intra-op threads (both sides).
    pub threads: usize,
    /// `cpu` or `cuda:N` (both sides).
    pub device: String,
}

/// Queries for a text model (the reference fixture's, cycled).
const QUERIES: [&str; 9] = [
    "running shoes",
    "trail running sneakers",
    "wireless earbuds",
    "red summer dress",
    "cheap 4k gaming monitor 144hz",
    "Kinderwagen",
    "Café au lait mug",
    "iPhone 15 Pro Max case!!",
    "北京 烤鸭",
];

/// `n` requests for `model` like the generator's, each with its own id:
/// features for a tabular model, a query for a text one.
fn requests(model: &str, text: bool, n: usize) -> Vec<RequestEvent> {
    let cats = [
        "electronics",
        "fashion",
        "home",
        "beauty",
        "sports",
        "books",
        "toys",
    ];
    let devices = ["app", "mobile", "desktop"];
    (0..n)
        .map(|i| {
            let k = (i % 64) as u32;
            let features = if text {
                BTreeMap::new()
            } else {
                BTreeMap::from([
                    ("price".into(), Feature::Number(5.0 + f64::from(k) * 7.3)),
                    (
                        "user_ctr_7d".into(),
                        if k.is_multiple_of(5) {
                            Feature::Null
                        } else {
                            Feature::Number(0.01 + f64::from(k % 9) * 0.01)
                        },
                    ),
                    (
                        "item_popularity".into(),
                        Feature::Number(f64::from(k * 37 % 2000)),
                    ),
                    (
                        "category".into(),
                        Feature::Category(cats[k as usize % cats.len()].into()),
                    ),
                    (
                        "device".into(),
                        Feature::Category(devices[k as usize % devices.len()].into()),
                    ),
                ])
            };
            RequestEvent {
                request_id: format!("bench-{i}"),
                ts: 1_763_800_000_000 + i as i64,
                model: model.to_string(),
                segment: BTreeMap::from([("site".into(), "us".into())]),
                features,
                text: text.then(|| QUERIES[i % QUERIES.len()].to_string()),
            }
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Side by side per batch size; returns a markdown table.
pub fn bench(opts: &WorkerBenchOptions) -> anyhow::Result<String> {
    let env = ort_environment(None).map_err(anyhow::Error::msg)?;
    let version = highest_version(&opts.dir)?;
    let session = SessionOptions {
        intra_threads: opts.threads,
        device: opts.device.clone(),
        ..SessionOptions::default()
    };
    let mut scorer = Scorer::load(env, &opts.dir, &version, &session)?;
    eprintln!(
        "bench-worker: {} v{version} on {}",
        opts.dir.display(),
        scorer.device()
    );
    let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        opts.dir.join("feature_spec.json"),
    )?)?;
    let text = spec["kind"] == "text";
    let model = scorer.model_name().to_string();
    let requests = requests(&model, text, opts.requests);
    let producer: Option<(ThreadedProducer<DeliveryCounter>, String)> = match &opts.kafka {
        Some((brokers, topic)) => Some((
            KafkaConfig {
                brokers: brokers.clone(),
                ..KafkaConfig::default()
            }
            .idempotent_producer_config(&[])?
            .create_with_context(DeliveryCounter::default())?,
            topic.clone(),
        )),
        None => None,
    };

    let mut t = String::new();
    writeln!(
        t,
        "| batch | bare ort req/s | worker path req/s | × bare | bare p99 batch ms | worker p99 batch ms | overhead µs/request (of which preprocess) |"
    )?;
    writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut events: Vec<PredictionEvent> = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    for &b in &opts.batch_sizes {
        // Bare inputs, prepared once, untimed.
        let prepared: Vec<_> = requests
            .chunks(b)
            .map(|c| scorer.prepare(c.iter()))
            .collect();
        let (mut bare_secs, mut worker_secs, mut pre_secs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bare_lat, mut worker_lat) = (Vec::new(), Vec::new());
        for _ in 0..opts.rounds.max(1) {
            bare_lat.clear();
            worker_lat.clear();
            let started = Instant::now();
            for p in &prepared {
                let t0 = Instant::now();
                std::hint::black_box(scorer.infer(p)?);
                bare_lat.push(ms(t0.elapsed()));
            }
            bare_secs.push(started.elapsed().as_secs_f64());

            // The worker owns its requests: hand it copies made untimed.
            let batches: Vec<Vec<RequestEvent>> = requests.chunks(b).map(<[_]>::to_vec).collect();
            let started = Instant::now();
            let mut pre = 0.0;
            for batch in batches {
                // Queued as the worker queues them: stamped on arrival.
                let t0 = Instant::now();
                let batch: Vec<Queued> = batch.into_iter().map(|r| (r, t0)).collect();
                let n = batch.len() as f64;
                score(&mut scorer, batch, "bench/0", 1.0, &mut events);
                for event in events.drain(..) {
                    pre += event.timings_ms.preprocess.unwrap_or(0.0) / n;
                    match &producer {
                        Some((p, topic)) => {
                            send(p, (topic, PredictionKey::Model), &event, &mut buf)?
                        }
                        None => {
                            buf.clear();
                            event.write_json(&mut buf)?;
                            std::hint::black_box(&buf);
                        }
                    }
                }
                worker_lat.push(ms(t0.elapsed()));
            }
            worker_secs.push(started.elapsed().as_secs_f64());
            pre_secs.push(pre / 1000.0);
        }
        if let Some((p, _)) = &producer {
            p.flush(Duration::from_secs(60))?;
        }
        let (bs, ws, ps) = (
            median(&mut bare_secs),
            median(&mut worker_secs),
            median(&mut pre_secs),
        );
        let n = opts.requests as f64;
        writeln!(
            t,
            "| {b} | {:.0} | {:.0} | {:.2} | {:.3} | {:.3} | {:.1} ({:.1}) |",
            n / bs,
            n / ws,
            bs / ws,
            p99(&mut bare_lat),
            p99(&mut worker_lat),
            (ws - bs) / n * 1e6,
            ps / n * 1e6,
        )?;
    }
    if let Some((p, _)) = &producer {
        let failed = p.context().failed.load(Ordering::Relaxed);
        anyhow::ensure!(failed == 0, "{failed} predictions not delivered");
    }
    Ok(t)
}
