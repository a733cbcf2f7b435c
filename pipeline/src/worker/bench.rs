//! `infermon bench-worker`: the worker's scoring path side by side with a
//! bare ONNX Runtime loop on the same model and batches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use infermon_inference::{FeatureSpec, Model, Scorer, SessionOptions, ort_environment};
use infermon_schemas::{Feature, RequestEvent};
use rdkafka::producer::{Producer, ThreadedProducer};

use super::send;
use super::served::score;
use super::versions::highest_version;
use crate::sources::kafka::DeliveryCounter;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

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
}

/// Side by side per batch size: a bare ONNX Runtime loop over pre-encoded
/// rows, and the worker's path (encode, run, timings, one PredictionEvent
/// per request, JSON, publish). Returns a markdown table.
pub fn bench(opts: &WorkerBenchOptions) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let env = ort_environment(None).map_err(anyhow::Error::msg)?;
    let spec = FeatureSpec::load(&opts.dir.join("feature_spec.json"))?;
    let version = highest_version(&opts.dir)?;
    let path = opts.dir.join(&version).join("model.onnx");
    let opts_1 = SessionOptions::default();
    let mut bare = Model::load(env, &path, &opts_1)?;
    let mut scorer = Scorer::load(env, &opts.dir, &version, &opts_1)?;
    // Requests like the generator's (cycled), each with its own id.
    let base: Vec<BTreeMap<String, Feature>> = (0..64u32)
        .map(|i| {
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
            BTreeMap::from([
                (
                    "price".to_string(),
                    Feature::Number(5.0 + f64::from(i) * 7.3),
                ),
                (
                    "user_ctr_7d".to_string(),
                    if i % 5 == 0 {
                        Feature::Null
                    } else {
                        Feature::Number(0.01 + f64::from(i % 9) * 0.01)
                    },
                ),
                (
                    "item_popularity".to_string(),
                    Feature::Number(f64::from(i * 37 % 2000)),
                ),
                (
                    "category".to_string(),
                    Feature::Category(cats[i as usize % cats.len()].into()),
                ),
                (
                    "device".to_string(),
                    Feature::Category(devices[i as usize % devices.len()].into()),
                ),
            ])
        })
        .collect();
    let requests: Vec<RequestEvent> = (0..opts.requests)
        .map(|i| RequestEvent {
            request_id: format!("bench-{i}"),
            ts: 1_763_800_000_000 + i as i64,
            model: spec.model.clone(),
            segment: BTreeMap::new(),
            features: base[i % base.len()].clone(),
            text: None,
        })
        .collect();
    let width = spec.width();
    let mut encoded = Vec::with_capacity(opts.requests * width);
    for r in &requests {
        spec.encode_features(&r.features, &mut encoded)?;
    }
    let producer: Option<(ThreadedProducer<DeliveryCounter>, String)> = match &opts.kafka {
        Some((brokers, topic)) => Some((
            rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("compression.type", "zstd")
                .set("linger.ms", "5")
                .create_with_context(DeliveryCounter::default())?,
            topic.clone(),
        )),
        None => None,
    };

    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * 0.99).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    };
    let mut t = String::new();
    writeln!(
        t,
        "| batch | bare ort req/s | worker path req/s | × bare | bare p99 batch ms | worker p99 batch ms | overhead µs/request (of which encode) |"
    )?;
    writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|")?;
    for &b in &opts.batch_sizes {
        let (mut bare_secs, mut worker_secs, mut encode_secs) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut bare_lat, mut worker_lat) = (Vec::new(), Vec::new());
        for _ in 0..opts.rounds.max(1) {
            bare_lat.clear();
            worker_lat.clear();
            let started = Instant::now();
            for chunk in encoded.chunks(b * width) {
                let t0 = Instant::now();
                let scores = bare.run_f32(
                    &spec.input,
                    chunk.len() / width,
                    width,
                    chunk.to_vec(),
                    &spec.output,
                )?;
                std::hint::black_box(scores);
                bare_lat.push(ms(t0.elapsed()));
            }
            bare_secs.push(started.elapsed().as_secs_f64());

            let started = Instant::now();
            let mut encode = 0.0;
            for chunk in requests.chunks(b) {
                let t0 = Instant::now();
                let batch: Vec<_> = chunk.iter().map(|r| (r.clone(), t0)).collect();
                let mut events = Vec::with_capacity(batch.len());
                score(&mut scorer, batch, "bench/0", 1.0, &mut events);
                for event in events {
                    encode += event.timings_ms.preprocess.unwrap_or(0.0) / chunk.len() as f64;
                    match &producer {
                        Some((p, topic)) => send(p, topic, &event)?,
                        None => {
                            std::hint::black_box(serde_json::to_vec(&event)?);
                        }
                    }
                }
                worker_lat.push(ms(t0.elapsed()));
            }
            worker_secs.push(started.elapsed().as_secs_f64());
            encode_secs.push(encode / 1000.0);
        }
        if let Some((p, _)) = &producer {
            p.flush(Duration::from_secs(60))?;
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (bs, ws, es) = (
            med(&mut bare_secs),
            med(&mut worker_secs),
            med(&mut encode_secs),
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
            es / n * 1e6,
        )?;
    }
    if let Some((p, _)) = &producer {
        let failed = p.context().failed.load(Ordering::Relaxed);
        anyhow::ensure!(failed == 0, "{failed} predictions not delivered");
    }
    Ok(t)
}
