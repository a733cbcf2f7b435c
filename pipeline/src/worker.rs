//! `infermon worker`: scoring requests from Kafka with ONNX Runtime.
//!
//! requests (consumer group) → decode (undecodable → DLQ) → per-model queue
//! → dynamic batch (`max_batch` rows or `max_delay` since the oldest
//! queued request) → feature spec → ONNX Runtime → one PredictionEvent per
//! request, keyed by model, with `timings_ms` measured on a monotonic clock
//! (queue, preprocess, inference, postprocess, total). A request the model
//! cannot score (bad features, unknown model, a failed run) becomes a
//! `status: "error"` event naming why — never silence.
//!
//! First version: tabular models (a feature spec), CPU. Offsets are
//! committed after the predictions of everything before them were
//! acknowledged by the broker (at-least-once).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use infermon_inference::{Environment, FeatureSpec, Model, ort_environment};
use infermon_schemas::{
    Decoded, Feature, PredictionEvent, RequestEvent, Status, Timings, TopicKind, decode_event,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::sources::kafka::{DeliveryCounter, Dlq, RawMessage};

/// One model a worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name (the requests' `model`).
    pub name: String,
    /// Directory with `feature_spec.json` and one sub-directory per version
    /// holding `model.onnx`.
    pub dir: PathBuf,
    /// Version to serve (default: the highest numbered one).
    #[serde(default)]
    pub version: Option<String>,
    /// Rows per batch at most.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// A batch runs at the latest this long after its oldest request came.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// ONNX Runtime intra-op threads.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// `cpu` or `cuda:N` (CUDA execution provider; falls back to the CPU
    /// with a warning when the library or the GPU cannot).
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_max_batch() -> usize {
    32
}
fn default_max_delay() -> Duration {
    Duration::from_millis(5)
}
fn default_threads() -> usize {
    1
}

/// `[worker]`: who this worker is and what it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Name in each prediction's `worker` field.
    pub id: String,
    /// Consumer group of the workers (they share the requests).
    pub group_id: String,
    /// Models served.
    pub models: Vec<ModelConfig>,
    /// Offsets are committed this often.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How often model directories are checked for a new version (or a
    /// rollback pin, `SERVE_VERSION`) of models without a `version` in the
    /// config: it is loaded, warmed up and swapped in between two batches,
    /// so no request is dropped or failed.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: "worker-0".into(),
            group_id: "infermon-workers".into(),
            models: Vec::new(),
            commit_interval: Duration::from_secs(2),
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// A model ready to serve.
struct Served {
    spec: FeatureSpec,
    model: Model,
    version: String,
    cfg: ModelConfig,
    queue: Vec<(RequestEvent, Instant)>,
}

/// A file in a model directory naming the version every worker must serve
/// (written by `infermon model rollback`, removed by `infermon model
/// release`); without it the highest version is served.
pub const PIN_FILE: &str = "SERVE_VERSION";

/// The version workers should serve from `dir`: the pinned one, else the
/// highest numbered one.
pub fn wanted_version(dir: &std::path::Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(dir.join(PIN_FILE)) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => highest_version(dir),
    }
}

/// Pin `dir` to the version before the one served now (rollback); returns
/// (from, to).
pub fn rollback(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let current = wanted_version(dir)?;
    let versions = versions(dir)?;
    let now: u64 = current
        .parse()
        .with_context(|| format!("version {current:?}"))?;
    let previous = versions
        .iter()
        .rev()
        .find(|(n, _)| *n < now)
        .map(|(_, v)| v.clone())
        .with_context(|| format!("no version before {current} in {}", dir.display()))?;
    let tmp = dir.join(format!(".{PIN_FILE}.tmp"));
    std::fs::write(&tmp, &previous)?;
    std::fs::rename(&tmp, dir.join(PIN_FILE))?;
    Ok((current, previous))
}

/// The numbered versions with a `model.onnx` under `dir`, oldest first.
fn versions(dir: &std::path::Path) -> anyhow::Result<Vec<(u64, String)>> {
    let mut versions: Vec<(u64, String)> = std::fs::read_dir(dir)
        .with_context(|| format!("model dir {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.onnx").exists())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.parse::<u64>().ok().map(|n| (n, name))
        })
        .collect();
    versions.sort();
    Ok(versions)
}

fn highest_version(dir: &std::path::Path) -> anyhow::Result<String> {
    versions(dir)?
        .pop()
        .map(|(_, v)| v)
        .with_context(|| format!("no <version>/model.onnx under {}", dir.display()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn feature_json(f: &Feature) -> Value {
    match f {
        Feature::Number(x) => Value::from(*x),
        Feature::Category(s) => Value::String(s.clone()),
        Feature::Null => Value::Null,
    }
}

/// Run until `stop` is set.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let wc = &config.worker;
    anyhow::ensure!(
        !wc.models.is_empty(),
        "[[worker.models]]: no model to serve"
    );
    let env = ort_environment(None).map_err(anyhow::Error::msg)?;
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    for m in &wc.models {
        let spec = FeatureSpec::load(&m.dir.join("feature_spec.json"))?;
        let version = match &m.version {
            Some(v) => v.clone(),
            None => wanted_version(&m.dir)?,
        };
        let path = m.dir.join(&version).join("model.onnx");
        let model = Model::load(env, &path, &spec.input, &spec.output, m.threads, &m.device)?;
        tracing::info!(model = %m.name, %version, device = %model.device, "model loaded");
        served.insert(
            m.name.clone(),
            Served {
                spec,
                model,
                version,
                cfg: m.clone(),
                queue: Vec::new(),
            },
        );
    }

    let topics = &config.topics;
    let mut cc = config.kafka.client_config()?;
    cc.set("group.id", &wc.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &config.kafka.properties {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc.create()?;
    consumer.subscribe(&[&topics.requests])?;
    let producer: ThreadedProducer<DeliveryCounter> = config
        .kafka
        .client_config()?
        .set("enable.idempotence", "true")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create_with_context(DeliveryCounter::default())?;
    let mut dlq = Dlq::new(&config.kafka, &topics.dlq)?;
    tracing::info!(group = %wc.group_id, topic = %topics.requests, "serving");

    let mut last_commit = Instant::now();
    let mut last_reload = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_reload.elapsed() >= wc.reload_interval {
            last_reload = Instant::now();
            for s in served.values_mut() {
                if let Err(e) = reload(env, s) {
                    tracing::error!(model = %s.cfg.name, error = %e, "new version not loaded; serving the old one");
                }
            }
        }
        // Wait no longer than the most urgent queued batch allows.
        let wait = served
            .values()
            .filter_map(|s| {
                s.queue
                    .first()
                    .map(|(_, t)| s.cfg.max_delay.saturating_sub(t.elapsed()))
            })
            .min()
            .unwrap_or(Duration::from_millis(100));
        if let Some(msg) = consumer.poll(wait.max(Duration::from_micros(100))) {
            match msg {
                Err(e) => tracing::warn!(error = %e, "consumer error"),
                Ok(msg) => {
                    let arrived = Instant::now();
                    match decode_event(TopicKind::Requests, msg.payload().unwrap_or_default()) {
                        Ok(Decoded::Request(req)) => match served.get_mut(&req.model) {
                            Some(s) => s.queue.push((req, arrived)),
                            None => {
                                let why = format!("unknown model `{}`", req.model);
                                send(
                                    &producer,
                                    &topics.predictions,
                                    &error_event(&req, "unknown", &wc.id, &why, arrived),
                                )?;
                            }
                        },
                        Ok(_) => {}
                        Err(e) => dlq.send(&RawMessage::of(&msg), &e.to_string())?,
                    }
                }
            }
        }
        for s in served.values_mut() {
            let due = s.queue.len() >= s.cfg.max_batch
                || s.queue
                    .first()
                    .is_some_and(|(_, t)| t.elapsed() >= s.cfg.max_delay);
            if due {
                let n = s.queue.len().min(s.cfg.max_batch);
                let batch: Vec<_> = s.queue.drain(..n).collect();
                for event in score_batch(s, batch, &wc.id) {
                    send(&producer, &topics.predictions, &event)?;
                }
            }
        }
        if last_commit.elapsed() >= wc.commit_interval {
            last_commit = Instant::now();
            commit(&consumer, &producer, &mut dlq, &served)?;
        }
    }
    // Score what is queued, then commit.
    for s in served.values_mut() {
        while !s.queue.is_empty() {
            let n = s.queue.len().min(s.cfg.max_batch);
            let batch: Vec<_> = s.queue.drain(..n).collect();
            for event in score_batch(s, batch, &wc.id) {
                send(&producer, &topics.predictions, &event)?;
            }
        }
    }
    commit(&consumer, &producer, &mut dlq, &served)?;
    tracing::info!("stopped");
    Ok(())
}

/// Swap in the newest version of `s` if it changed (models with a pinned
/// version stay). The new session is loaded and warmed up with one row
/// before the old one is dropped; a version that fails to load leaves the
/// old one serving.
fn reload(env: &Environment, s: &mut Served) -> anyhow::Result<()> {
    if s.cfg.version.is_some() {
        return Ok(());
    }
    let newest = wanted_version(&s.cfg.dir)?;
    if newest == s.version {
        return Ok(());
    }
    let spec = FeatureSpec::load(&s.cfg.dir.join("feature_spec.json"))?;
    let path = s.cfg.dir.join(&newest).join("model.onnx");
    let mut model = Model::load(
        env,
        &path,
        &spec.input,
        &spec.output,
        s.cfg.threads,
        &s.cfg.device,
    )?;
    model.score(1, spec.width(), vec![0.0; spec.width()])?;
    tracing::info!(model = %s.cfg.name, from = %s.version, to = %newest, "new model version swapped in");
    s.model = model;
    s.spec = spec;
    s.version = newest;
    Ok(())
}

/// Commit what was read, once every prediction sent so far is acknowledged
/// (nothing queued is uncommitted-and-unscored: the caller scores queues
/// before the final commit; a periodic commit skips while requests wait).
fn commit(
    consumer: &BaseConsumer,
    producer: &ThreadedProducer<DeliveryCounter>,
    dlq: &mut Dlq,
    served: &BTreeMap<String, Served>,
) -> anyhow::Result<()> {
    if served.values().any(|s| !s.queue.is_empty()) {
        return Ok(()); // their offsets must not be committed yet
    }
    producer.flush(Duration::from_secs(10))?;
    dlq.flush(Duration::from_secs(10))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed == 0,
        "{failed} predictions refused by the broker: not committing"
    );
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
        tracing::debug!(error = %e, "nothing to commit");
    }
    Ok(())
}

fn send(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    event: &PredictionEvent,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(event)?;
    let mut record = BaseRecord::to(topic)
        .key(event.model.as_str())
        .payload(&body);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r)) => {
                tracing::debug!(error = %e, "producer queue full; waiting");
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn error_event(
    req: &RequestEvent,
    version: &str,
    worker: &str,
    why: &str,
    arrived: Instant,
) -> PredictionEvent {
    PredictionEvent {
        request_id: req.request_id.clone(),
        ts: req.ts,
        model: req.model.clone(),
        model_version: version.to_string(),
        worker: Some(worker.to_string()),
        device: None,
        status: Status::Error,
        error: Some(why.to_string()),
        batch_size: None,
        timings_ms: Timings {
            total: ms(arrived.elapsed()),
            ..Timings::default()
        },
        score: None,
        features: req.features.clone(),
        segment: req.segment.clone(),
    }
}

/// Encode, run and answer one batch; one event per request, in order.
fn score_batch(
    s: &mut Served,
    batch: Vec<(RequestEvent, Instant)>,
    worker: &str,
) -> Vec<PredictionEvent> {
    let started = Instant::now();
    let width = s.spec.width();
    let mut rows = Vec::with_capacity(batch.len() * width);
    let mut encoded: Vec<Result<(), String>> = Vec::with_capacity(batch.len());
    for (req, _) in &batch {
        let features: serde_json::Map<String, Value> = req
            .features
            .iter()
            .map(|(k, v)| (k.clone(), feature_json(v)))
            .collect();
        encoded.push(
            s.spec
                .encode(&features, &mut rows)
                .map_err(|e| e.to_string()),
        );
    }
    let good = encoded.iter().filter(|r| r.is_ok()).count();
    let preprocessed = Instant::now();
    let scores = if good > 0 {
        s.model.score(good, width, rows).map_err(|e| e.to_string())
    } else {
        Ok(Vec::new())
    };
    let inferred = Instant::now();
    let mut out = Vec::with_capacity(batch.len());
    let mut next = 0;
    for ((req, arrived), enc) in batch.into_iter().zip(encoded) {
        let result = enc.and_then(|()| match &scores {
            Ok(v) => {
                next += 1;
                Ok(f64::from(v[next - 1]))
            }
            Err(e) => Err(e.clone()),
        });
        let mut event = match result {
            Ok(score) => PredictionEvent {
                request_id: req.request_id,
                ts: req.ts,
                model: req.model,
                model_version: s.version.clone(),
                worker: Some(worker.to_string()),
                device: Some(s.model.device.clone()),
                status: Status::Ok,
                error: None,
                batch_size: Some(good as u32),
                timings_ms: Timings::default(),
                score: Some(score),
                features: req.features,
                segment: req.segment,
            },
            Err(why) => {
                let mut e = error_event(&req, &s.version, worker, &why, arrived);
                e.device = Some(s.model.device.clone());
                e
            }
        };
        let done = Instant::now();
        event.timings_ms = Timings {
            queue: Some(ms(started.duration_since(arrived))),
            preprocess: Some(ms(preprocessed - started)),
            inference: Some(ms(inferred - preprocessed)),
            postprocess: Some(ms(done - inferred)),
            total: ms(done.duration_since(arrived)),
        };
        out.push(event);
    }
    out
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
    let cfg = ModelConfig {
        name: spec.model.clone(),
        dir: opts.dir.clone(),
        version: Some(version.clone()),
        max_batch: 1,
        max_delay: Duration::ZERO,
        threads: 1,
        device: "cpu".into(),
    };
    let mut served = Served {
        model: Model::load(env, &path, &spec.input, &spec.output, 1, "cpu")?,
        spec,
        version,
        cfg,
        queue: Vec::new(),
    };
    // Requests like the generator's (cycled), each with its own id.
    let base: Vec<BTreeMap<String, Feature>> = (0..64)
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
            model: served.spec.model.clone(),
            segment: BTreeMap::new(),
            features: base[i % base.len()].clone(),
            text: None,
        })
        .collect();
    let width = served.spec.width();
    let mut encoded = Vec::with_capacity(opts.requests * width);
    for r in &requests {
        let f: serde_json::Map<String, Value> = r
            .features
            .iter()
            .map(|(k, v)| (k.clone(), feature_json(v)))
            .collect();
        served
            .spec
            .encode(&f, &mut encoded)
            .map_err(anyhow::Error::msg)?;
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
                let scores = served
                    .model
                    .score(chunk.len() / width, width, chunk.to_vec())?;
                std::hint::black_box(scores);
                bare_lat.push(ms(t0.elapsed()));
            }
            bare_secs.push(started.elapsed().as_secs_f64());

            let started = Instant::now();
            let mut encode = 0.0;
            for chunk in requests.chunks(b) {
                let t0 = Instant::now();
                let batch: Vec<_> = chunk.iter().map(|r| (r.clone(), t0)).collect();
                for event in score_batch(&mut served, batch, "bench/0") {
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
