//! `infermon worker`: scoring requests from Kafka with ONNX Runtime.
//!
//! requests (consumer group) → decode (undecodable → DLQ) → per-model queue
//! → dynamic batch (`max_batch` rows or `max_delay` since the oldest
//! queued request) → stable version or canary (by a hash of `request_id`)
//! → preprocess (feature spec or tokenizer) → ONNX Runtime → postprocess →
//! one PredictionEvent per request, keyed by `[topics] prediction_key`, with `timings_ms`
//! measured on a monotonic clock (queue, preprocess, inference,
//! postprocess, total). A request the model cannot score (bad features or
//! text, unknown model, a failed run, a timeout) becomes a `status:
//! "error"` event naming why — never silence.
//!
//! Offsets are committed after the predictions of everything before them
//! were acknowledged by the broker (at-least-once). Version changes (a new
//! version, a canary, a rollback from the control topic or the alert hook)
//! happen between two batches.

pub mod config;
pub mod control;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use infermon_inference::{Environment, ort_environment};
use infermon_schemas::topics::PredictionKey;
use infermon_schemas::{Decoded, PredictionEvent, TopicKind, TopicNames, decode_event};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

pub use config::WorkerConfig;
pub use infermon_inference::serving::{
    Change, ControlCommand, ModelConfig, PIN_FILE, ServedModel, rollback, wanted_version,
};

use crate::sources::kafka::{DeliveryCounter, Dlq, KafkaConfig, RawMessage};
use infermon_inference::answer::error_event;
use metrics::{WorkerMetrics, labels};

/// Run until `stop` is set.
pub fn run(
    wc: &WorkerConfig,
    kafka: &KafkaConfig,
    topics: &TopicNames,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !wc.models.is_empty(),
        "[[worker.models]]: no model to serve"
    );
    let env = ort_environment(None).map_err(anyhow::Error::msg)?;
    let mut served: BTreeMap<String, ServedModel> = BTreeMap::new();
    for m in &wc.models {
        let s = ServedModel::load(env, m)?;
        tracing::info!(model = %m.name, version = %s.version(), device = %s.device(), "model loaded");
        served.insert(m.name.clone(), s);
    }

    let consumer: BaseConsumer = kafka
        .consumer_config(
            &wc.group_id,
            &[
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
            ],
        )?
        .create()?;
    consumer.subscribe(&[&topics.requests])?;
    let producer: ThreadedProducer<DeliveryCounter> = kafka
        .idempotent_producer_config(&[])?
        .create_with_context(DeliveryCounter::default())?;
    let mut dlq = Dlq::new(kafka, &topics.dlq)?;
    // Its own producer: a refused command must not count as a lost prediction.
    let command_producer: ThreadedProducer<DeliveryCounter> = kafka
        .producer_config()?
        .create_with_context(DeliveryCounter::default())?;
    let control = control::ControlConsumer::new(
        kafka,
        &topics.control,
        &format!("{}.control.{}", wc.group_id, wc.id),
    )?;
    let metrics = Arc::new(WorkerMetrics::default());
    publish_versions(&metrics, &served);
    // Counter handles of the served models, so counting a request allocates nothing.
    let request_counters: BTreeMap<String, prometheus_client::metrics::counter::Counter> = served
        .keys()
        .map(|m| {
            let c = metrics
                .requests
                .get_or_create(&labels(&[("model", m)]))
                .clone();
            (m.clone(), c)
        })
        .collect();
    let (hook_tx, hook_rx) = mpsc::channel();
    if let Some(addr) = &wc.listen {
        serve_telemetry(addr, wc, &metrics, hook_tx)?;
    }
    tracing::info!(group = %wc.group_id, topic = %topics.requests, "serving");

    let mut out: Vec<PredictionEvent> = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    let mut last_commit = Instant::now();
    let mut last_reload = Instant::now();
    let mut last_control = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_control.elapsed() >= Duration::from_millis(50) {
            last_control = Instant::now();
            // Alerts become commands on the control topic, which every
            // worker (this one included) reads and acts on.
            for mut c in hook_rx.try_iter() {
                if c.from_version.is_none() {
                    c.from_version = served.get(&c.model).map(|s| s.newest_version().to_string());
                }
                if let Err(e) = publish_command(&command_producer, &topics.control, &c) {
                    tracing::error!(error = %e, "rollback not distributed; rolling back here only");
                    apply(env, &mut served, &c, &metrics);
                }
            }
            for c in control.poll() {
                apply(env, &mut served, &c, &metrics);
            }
        }
        // While a new version loads in the background, look every 50 ms
        // whether it is ready to swap in.
        let loading = served.values().any(ServedModel::is_loading);
        if last_reload.elapsed() >= wc.reload_interval
            || (loading && last_reload.elapsed() >= Duration::from_millis(50))
        {
            last_reload = Instant::now();
            reload(env, &mut served, &metrics);
        }
        // Wait no longer than the most urgent queued batch allows.
        let wait = served
            .values()
            .filter_map(ServedModel::deadline)
            .min()
            .unwrap_or(Duration::from_millis(50));
        if let Some(msg) = consumer.poll(wait.max(Duration::from_micros(100))) {
            match msg {
                Err(e) => tracing::warn!(error = %e, "consumer error"),
                Ok(msg) => {
                    let request = Request {
                        wc,
                        metrics: &metrics,
                        counters: &request_counters,
                    };
                    request.take(&msg, &mut served, &mut out, &mut dlq)?;
                }
            }
        }
        for s in served.values_mut() {
            if s.due() {
                s.answer_batch(&wc.id, &mut out);
                metrics
                    .batches
                    .get_or_create(&labels(&[("model", &s.cfg.name)]))
                    .inc();
            }
        }
        count_predictions(&metrics, &out, &served);
        for event in out.drain(..) {
            send(
                &producer,
                (&topics.predictions, topics.prediction_key),
                &event,
                &mut buf,
            )?;
        }
        if last_commit.elapsed() >= wc.commit_interval {
            crate::telemetry::count_to(
                &metrics.delivery_failures,
                producer.context().failed.load(Ordering::Relaxed),
            );
            for s in served.values() {
                metrics
                    .queued
                    .get_or_create(&labels(&[("model", &s.cfg.name)]))
                    .set(s.queue.len() as i64);
            }
            last_commit = Instant::now();
            commit(&consumer, &producer, &mut dlq, &served)?;
        }
    }
    // Answer what is queued, then commit.
    for s in served.values_mut() {
        s.drain(&wc.id, &mut out);
    }
    count_predictions(&metrics, &out, &served);
    for event in out.drain(..) {
        send(
            &producer,
            (&topics.predictions, topics.prediction_key),
            &event,
            &mut buf,
        )?;
    }
    commit(&consumer, &producer, &mut dlq, &served)?;
    tracing::info!("stopped");
    Ok(())
}

/// Serve `/metrics`, `/healthz` and the `POST /alerts` rollback hook.
fn serve_telemetry(
    addr: &str,
    wc: &WorkerConfig,
    metrics: &Arc<WorkerMetrics>,
    hook_tx: mpsc::Sender<ControlCommand>,
) -> anyhow::Result<()> {
    let rules = wc
        .models
        .iter()
        .map(|m| (m.name.clone(), m.rollback_on.clone()))
        .collect();
    let env = |key: &str, var: &Option<String>| -> anyhow::Result<Option<String>> {
        var.as_ref()
            .map(|var| match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(v),
                _ => Err(anyhow::anyhow!(
                    "[worker] {key}: ${var} is not set (or empty)"
                )),
            })
            .transpose()
    };
    let auth = control::HookAuth {
        secret: env("alert_secret_env", &wc.alert_secret_env)?.map(String::into_bytes),
        bearer_token: env("alert_bearer_token_env", &wc.alert_bearer_token_env)?,
    };
    let health = Arc::new(crate::telemetry::Health::default());
    health.ready.store(true, Ordering::Relaxed);
    let telemetry = crate::telemetry::Telemetry {
        registry: metrics.registry(),
        health,
        stall_after: None,
        alerts: Some(control::alerts_hook(rules, auth, hook_tx)),
    };
    let bound = crate::telemetry::serve(addr, telemetry)?;
    tracing::info!(%bound, "listening: GET /metrics, GET /healthz, POST /alerts");
    Ok(())
}

/// Look in the model directories for new versions (or finish loading one).
fn reload(
    env: &'static Environment,
    served: &mut BTreeMap<String, ServedModel>,
    metrics: &WorkerMetrics,
) {
    let mut changed = false;
    for s in served.values_mut() {
        match s.refresh(env) {
            Ok(Some(change)) => {
                log_change(&s.cfg.name, &change, "model directory", metrics);
                changed = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(model = %s.cfg.name, error = %e, "new version not loaded; serving the old one")
            }
        }
    }
    if changed {
        publish_versions(metrics, served);
    }
}

/// What taking one request message needs.
struct Request<'a> {
    wc: &'a WorkerConfig,
    metrics: &'a WorkerMetrics,
    /// Counter handles of the served models.
    counters: &'a BTreeMap<String, prometheus_client::metrics::counter::Counter>,
}

impl Request<'_> {
    /// Decode a request: queue it for its model, answer an unknown model
    /// with an error event, send what does not decode to the DLQ.
    fn take(
        &self,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        served: &mut BTreeMap<String, ServedModel>,
        out: &mut Vec<PredictionEvent>,
        dlq: &mut Dlq,
    ) -> anyhow::Result<()> {
        let arrived = Instant::now();
        match decode_event(TopicKind::Requests, msg.payload().unwrap_or_default()) {
            Ok(Decoded::Request(req)) => {
                match self.counters.get(&req.model) {
                    Some(c) => c.inc(),
                    // A name from outside never becomes a label (unbounded
                    // series, characters a scrape cannot parse).
                    None => self
                        .metrics
                        .requests
                        .get_or_create(&labels(&[("model", UNKNOWN_MODEL)]))
                        .inc(),
                };
                match served.get_mut(&req.model) {
                    Some(s) => s.queue.push((req, arrived)),
                    None => {
                        let why = format!("unknown model `{}`", req.model);
                        out.push(error_event(&req, "unknown", &self.wc.id, &why, arrived));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.metrics.dlq.inc();
                dlq.send(&RawMessage::of(msg), &e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Count predictions by model, version and status; one counter lookup per
/// run of equal labels (a batch's events mostly share them).
/// The `model` label of requests and predictions for models this worker
/// does not serve.
pub const UNKNOWN_MODEL: &str = "(unknown)";

fn count_predictions(
    metrics: &WorkerMetrics,
    events: &[PredictionEvent],
    served: &BTreeMap<String, ServedModel>,
) {
    let status = |e: &PredictionEvent| match e.status {
        infermon_schemas::Status::Ok => "ok",
        infermon_schemas::Status::Error => "error",
    };
    for run in events.chunk_by(|a, b| {
        a.model == b.model && a.model_version == b.model_version && a.status == b.status
    }) {
        let e = &run[0];
        let (model, version) = if served.contains_key(&e.model) {
            (e.model.as_str(), e.model_version.as_str())
        } else {
            (UNKNOWN_MODEL, UNKNOWN_MODEL)
        };
        metrics
            .predictions
            .get_or_create(&labels(&[
                ("model", model),
                ("version", version),
                ("status", status(e)),
            ]))
            .inc_by(run.len() as u64);
    }
}

/// Export which versions serve, as `serving{model,version,role} 1`.
fn publish_versions(metrics: &WorkerMetrics, served: &BTreeMap<String, ServedModel>) {
    metrics.serving.clear();
    for (name, s) in served {
        metrics
            .serving
            .get_or_create(&labels(&[
                ("model", name),
                ("version", s.version()),
                ("role", "stable"),
            ]))
            .set(1);
        if let Some(v) = s.canary_version() {
            metrics
                .serving
                .get_or_create(&labels(&[
                    ("model", name),
                    ("version", v),
                    ("role", "canary"),
                ]))
                .set(1);
        }
    }
}

/// Act on one control command.
fn apply(
    env: &Environment,
    served: &mut BTreeMap<String, ServedModel>,
    c: &ControlCommand,
    metrics: &WorkerMetrics,
) {
    let Some(s) = served.get_mut(&c.model) else {
        return;
    };
    if c.command != "rollback" {
        tracing::warn!(command = %c.command, "unknown control command ignored");
        return;
    }
    match s.rollback(env, c.from_version.as_deref()) {
        Ok(Some(change)) => {
            log_change(&c.model, &change, &c.reason, metrics);
            publish_versions(metrics, served);
        }
        Ok(None) => {
            tracing::debug!(model = %c.model, from = ?c.from_version, "rollback: version not served here")
        }
        Err(e) => {
            tracing::error!(model = %c.model, error = %e, "rollback failed; serving as before")
        }
    }
}

fn log_change(model: &str, change: &Change, cause: &str, metrics: &WorkerMetrics) {
    let kind = match change {
        Change::Swapped { .. } => "swapped",
        Change::CanaryStarted { .. } => "canary_started",
        Change::Promoted { .. } => "promoted",
        Change::RolledBack { .. } => "rolled_back",
    };
    metrics
        .version_changes
        .get_or_create(&labels(&[("model", model), ("kind", kind)]))
        .inc();
    match change {
        Change::Swapped { from, to } => {
            tracing::info!(%model, %from, %to, %cause, "new model version swapped in")
        }
        Change::CanaryStarted { version, percent } => {
            tracing::info!(%model, %version, %percent, %cause, "canary started")
        }
        Change::Promoted { version } => {
            tracing::info!(%model, %version, "canary promoted: serves all requests")
        }
        Change::RolledBack { from, to } => {
            tracing::warn!(%model, %from, %to, %cause, "model version rolled back")
        }
    }
}

/// Put a command on the control topic (keyed by model) and wait for the
/// broker's acknowledgement: a lost rollback must not go unnoticed (the
/// error says so; the worker loop logs it and goes on).
pub fn publish_command(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    c: &ControlCommand,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(c)?;
    let failed_before = producer.context().failed.load(Ordering::Relaxed);
    let record = BaseRecord::to(topic)
        .key(c.model.as_bytes())
        .payload(body.as_slice());
    crate::sources::kafka::produce(producer, record)
        .map_err(|e| anyhow::anyhow!("control topic {topic}: {e}"))?;
    producer.flush(Duration::from_secs(10))?;
    anyhow::ensure!(
        producer.context().failed.load(Ordering::Relaxed) == failed_before,
        "control topic {topic}: the broker refused the {} command for {}",
        c.command,
        c.model
    );
    Ok(())
}

/// Commit what was read, once every prediction sent so far is acknowledged
/// (nothing queued is uncommitted-and-unscored: the caller scores queues
/// before the final commit; a periodic commit skips while requests wait).
fn commit(
    consumer: &BaseConsumer,
    producer: &ThreadedProducer<DeliveryCounter>,
    dlq: &mut Dlq,
    served: &BTreeMap<String, ServedModel>,
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

/// Publish one prediction, keyed by `key` (`[topics] prediction_key`),
/// waiting while the producer's queue is full (never dropping). `buf` is
/// reused between calls.
pub fn send(
    producer: &ThreadedProducer<DeliveryCounter>,
    (topic, key): (&str, PredictionKey),
    event: &PredictionEvent,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    buf.clear();
    event.write_json(buf)?;
    let key = match key {
        PredictionKey::Model => event.model.as_bytes(),
        PredictionKey::RequestId => event.request_id.as_bytes(),
    };
    let record = BaseRecord::to(topic).key(key).payload(buf.as_slice());
    crate::sources::kafka::produce(producer, record)
        .map_err(|e| anyhow::anyhow!("predictions topic {topic}: {e}"))
}
