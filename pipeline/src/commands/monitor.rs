//! `infermon monitor`: the production path.
//!
//! Kafka (consumer group) → decode (bad messages → DLQ) → window engine →
//! closed windows → points → sinks (InfluxDB behind on-disk spools, or a
//! line-protocol file) and the alert stage. Offsets are committed only up
//! to what every sink has acknowledged ([`offsets`]), with the acknowledged
//! watermark in the commit metadata so a restarted or new owner skips the
//! windows already written instead of overwriting them with partial ones.
//!
//! A rebalance rebuilds the window state from the committed offsets: the
//! safe offsets are committed on revoke, and on assign the engine starts
//! fresh from them. That re-reads at most a window plus the label wait per
//! rebalance, and no window is ever written from half its data.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use infermon_operators::partial::labels_by_model;
use infermon_operators::{PartialMessage, ShardProgress, Shards, Topology, WindowWire};
use infermon_schemas::Point;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::alerts::AlertOutputs;
use crate::config::Config;
use crate::decode::kafka::{DecodeSettings, DecodedBatch, Decoder};
use crate::monitor::metrics::MonitorMetrics;
use crate::monitor::watermark_store::WatermarkStore;
use crate::monitor::{MONITOR_RECEIVER, MonitorConfig, Role, references_store, start};
use crate::sinks::Sinks;
use crate::sinks::alerts_file::AlertsFile;
use crate::sinks::partials::PartialsTopic;
use crate::sources::kafka::{self, Assignment, Dlq, MonitorConsumer, RawBatch};
use crate::sources::offsets::{OffsetTracker, TopicPartition};
use crate::telemetry::{self as http, Health, Labels, now_ms};

/// Spool counters of the sinks into `/metrics`.
fn export(sinks: &Sinks, m: &MonitorMetrics) {
    for (name, st) in sinks.spool_stats() {
        let l: Labels = vec![("sink".into(), name.to_string())];
        m.spool_bytes
            .get_or_create(&l)
            .set(st.bytes.load(Ordering::Relaxed) as i64);
        let count = |c: &Family<Labels, Counter>, n: &AtomicU64| {
            http::count_to(&c.get_or_create(&l), n.load(Ordering::Relaxed));
        };
        count(&m.sink_requests, &st.requests);
        count(&m.sink_retries, &st.retries);
        count(&m.sink_rejected_lines, &st.rejected_lines);
        let seconds = m.sink_write_seconds.get_or_create(&l);
        let total = st.write_micros.load(Ordering::Relaxed) as f64 / 1e6;
        seconds.inc_by((total - seconds.get()).max(0.0));
    }
}

/// Window state for the partitions currently assigned.
struct Assigned {
    /// Which rebalance this state belongs to.
    generation: u64,
    engine: Shards,
    inputs: HashMap<TopicPartition, usize>,
    /// Per partition: windows ending at or before this were written by an
    /// earlier owner.
    floors: HashMap<TopicPartition, i64>,
    tracker: OffsetTracker,
    late_seen: u64,
    /// Partial stage: the source partition of each shard, and the progress
    /// last published for it.
    partitions: Vec<(i32, Option<ShardProgress>)>,
}

/// Run until `stop` is set (SIGTERM/SIGINT in the binary).
pub async fn run(config: &Config, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    if config.monitor.role == Role::Merge {
        return super::merge::run(config, stop).await;
    }
    let mc = &config.monitor;
    // The alerts log is also the journal of alert state: a restarted
    // monitor goes on from where its alerts stood.
    let (mut alerts_log, restored, torn) = AlertsFile::open_journal(&mc.alerts_out)
        .with_context(|| format!("alerts_out {}", mc.alerts_out.display()))?;
    if torn > 0 {
        tracing::warn!(path = %mc.alerts_out.display(), lines = torn, "alerts log: skipped lines that do not parse");
    }
    tracing::info!(
        alerts = restored.len(),
        "alert state restored from the alerts log"
    );
    let mut alerts = AlertOutputs::new(
        &config.alerts,
        mc.send_alerts,
        MONITOR_RECEIVER,
        &mut alerts_log,
    )?;
    alerts.resume(&restored);
    let mut m = Monitor::start(config).await?;
    m.topology.restore_alerts(restored);

    let window = &config.window;
    let mut decoder = Decoder::start(DecodeSettings {
        topics: config.topics.clone(),
        segment_keys: window.segment_keys.clone(),
        max_event_bytes: config.kafka.max_event_bytes,
        spec: infermon_operators::window::WindowSpec::new(window)?,
        label_wait_ms: config.quality.label_wait.as_millis() as i64,
        event_time: window.event_time_guard(),
    })?;
    while !stop.load(Ordering::Relaxed) {
        m.health.beat();
        let raw = m.poll()?;
        if let Some(a) = m.assigned.as_ref()
            && !raw.is_empty()
        {
            decoder.send(a.generation, raw)?;
        }
        // Decode runs one batch ahead: take what is ready (wait when two
        // are in flight).
        let now = now_ms();
        while let Some(decoded) = decoder.next(1)? {
            m.apply(decoded, now)?;
        }
        if m.assigned.is_none() {
            continue;
        }
        m.close_windows(&mut alerts, now).await?;
        m.backpressure()?;
        if m.last_commit.elapsed() >= config.kafka.commit_interval {
            m.last_commit = Instant::now();
            m.commit(CommitMode::Async)?;
        }
    }
    m.stop(alerts)
}

/// The monitor's state between turns of its loop.
struct Monitor<'c> {
    config: &'c Config,
    metrics: Arc<MonitorMetrics>,
    health: Arc<Health>,
    topology: Topology,
    sinks: Sinks,
    /// The partial stage's sink (role = "partial"): closed windows go to
    /// the partials topic instead of points to `sinks`.
    partials: Option<PartialsTopic>,
    consumer: MonitorConsumer,
    dlq: Dlq,
    store: WatermarkStore,
    assigned: Option<Assigned>,
    /// Bumped on every rebalance: decoded batches of an older window state
    /// are dropped.
    generation: u64,
    /// Consumption is paused on a full spool.
    paused: bool,
    last_commit: Instant,
    /// Gradient anomalies judged and not yet written.
    anomaly_points: Vec<Point>,
    anomalies_since: Instant,
    /// Anomaly events wait at most the shortest sink linger to be batched.
    anomaly_linger: Duration,
    /// Emptied message buffers, for the next polls.
    spare: Vec<RawBatch>,
}

impl<'c> Monitor<'c> {
    /// Telemetry, topology, sinks, the consumer group and the DLQ.
    async fn start(config: &'c Config) -> anyhow::Result<Self> {
        let mc = &config.monitor;
        let (metrics, health) = start::serve_telemetry(mc)?;
        let topology = config.topology().await?;
        let partials = match mc.role {
            Role::Partial => {
                topology.check_scale_out()?;
                tracing::info!(topic = %config.topics.partials, "partial stage: closed windows go to the partials topic");
                Some(PartialsTopic::new(&config.kafka, &config.topics.partials)?)
            }
            _ => None,
        };
        let sinks = start::open_sinks(&config.influxdb, mc)?;
        let (topics, kc) = (&config.topics, &config.kafka);
        let names = [
            topics.predictions.as_str(),
            topics.feedback.as_str(),
            topics.training.as_str(),
        ];
        let consumer = kafka::consumer(kc, &names, metrics.lag.clone())?;
        let dlq = Dlq::new(kc, &topics.dlq)?;
        tracing::info!(brokers = %kc.brokers, group = %kc.group_id, topics = ?names, "consuming");
        Ok(Self {
            config,
            metrics,
            health,
            topology,
            sinks,
            partials,
            consumer,
            dlq,
            store: WatermarkStore::new(&mc.state_dir, &kc.group_id),
            assigned: None,
            generation: 0,
            paused: false,
            last_commit: Instant::now(),
            anomaly_points: Vec::new(),
            anomalies_since: Instant::now(),
            anomaly_linger: config
                .influxdb
                .iter()
                .map(|c| c.linger)
                .min()
                .unwrap_or(Duration::from_secs(1)),
            spare: Vec::new(),
        })
    }

    /// Poll up to a batch of messages (or until the linger ends), taking up
    /// rebalances as they come.
    fn poll(&mut self) -> anyhow::Result<RawBatch> {
        let kc = &self.config.kafka;
        let mut raw = self.spare.pop().unwrap_or_default();
        let linger_until = Instant::now() + kc.batch_linger;
        let mut wait = kc.batch_linger;
        let mut polled_n = 0u32;
        while raw.len() < kc.batch_size {
            let polled = self.consumer.poll(wait);
            // (Per message: nothing here may cost more than a lock.)
            if rebalanced(
                &self.consumer,
                &mut self.assigned,
                (
                    &self.topology,
                    &self.config.monitor,
                    self.partials.is_some(),
                ),
                &mut self.paused,
                &self.store,
                &mut self.generation,
            )? {
                // What was read for the old window state is re-read.
                raw.clear();
                if self.assigned.is_some() {
                    self.health.ready.store(true, Ordering::Relaxed);
                    self.sinks.new_generation();
                    self.metrics.acked_watermark_seconds.set(f64::NEG_INFINITY);
                }
            }
            let got = match polled {
                None => false,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    false
                }
                Some(Ok(msg)) => {
                    if self.assigned.is_some() {
                        raw.push(&msg);
                    }
                    true
                }
            };
            // While messages keep coming, take the next without waiting and
            // read the clock every 64 (a read per message cost 3 % of the
            // monitor's CPU); when none is ready, wait out the linger.
            polled_n += 1;
            wait = match got && !polled_n.is_multiple_of(64) {
                true => Duration::ZERO,
                false => match linger_until.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => break,
                    left => left,
                },
            };
        }
        Ok(raw)
    }

    /// A decoded batch into the current window state (dropped when it was
    /// read before a rebalance): rejected messages to the DLQ, offsets
    /// pinned until their windows are written, events to the engine
    /// (gradient anomalies out at once).
    fn apply(&mut self, mut decoded: DecodedBatch, now: i64) -> anyhow::Result<()> {
        self.spare.push(std::mem::take(&mut decoded.spent));
        for (topic, n) in &decoded.consumed {
            let l: Labels = vec![("topic".into(), topic.clone())];
            self.metrics.consumed.get_or_create(&l).inc_by(*n);
        }
        let Some(a) = self
            .assigned
            .as_mut()
            .filter(|a| a.generation == decoded.generation)
        else {
            return Ok(()); // read before a rebalance
        };
        for r in &decoded.rejected {
            self.dlq.send(&r.raw, &r.reason)?;
            let l: Labels = vec![
                ("topic".into(), r.raw.topic.clone()),
                ("reason".into(), r.code.to_string()),
            ];
            self.metrics.dlq.get_or_create(&l).inc();
            tracing::debug!(topic = %r.raw.topic, partition = r.raw.partition, offset = r.raw.offset, reason = %r.reason, "to the DLQ");
        }
        let mut feedback = Vec::new();
        for (tp, part) in decoded.partitions {
            let Some(&input) = a.inputs.get(&tp) else {
                continue; // not (or no longer) ours
            };
            let floor = a.floors.get(&tp).copied().unwrap_or(i64::MIN);
            // Wholly written by an earlier owner: nothing to keep it for.
            let (events, reads) = (part.events, part.reads.into_iter());
            a.tracker
                .read_all(&tp, reads.map(|(o, r)| (o, r.filter(|&r| r > floor))));
            if events.predictions.num_rows() > 0 {
                a.engine.push_predictions(input, &events.predictions, now)?;
            }
            feedback.push((input, events.feedback));
            for anomaly in a.engine.push_training(input, &events.training, now) {
                self.anomaly_points.push(anomaly.point());
            }
            if let Some((_, ts)) = events.ts_range {
                a.engine.observe(input, ts, now);
            }
        }
        for (input, events) in feedback {
            a.engine.push_feedback(input, &events);
        }
        Ok(())
    }

    /// Windows the watermark has passed, in order, through the topology to
    /// the sinks and the alert outputs.
    async fn close_windows(
        &mut self,
        alerts: &mut AlertOutputs<'_>,
        now: i64,
    ) -> anyhow::Result<()> {
        let Some(a) = self.assigned.as_mut() else {
            return Ok(());
        };
        references_store::save(&self.config.monitor.state_dir, &a.engine.take_frozen())?;
        // A partition is idle only when it is caught up: one with lag still
        // holds the watermark. While paused the cached lag goes stale:
        // every partition holds.
        let holding: Vec<usize> = if self.paused {
            a.inputs.values().copied().collect()
        } else {
            lagging(&self.consumer, &a.inputs)
        };
        for &input in &holding {
            a.engine.touch_input(input, now);
        }
        if let Some(partials) = self.partials.as_mut() {
            let anomalies = std::mem::take(&mut self.anomaly_points);
            return publish_partials(a, partials, anomalies, now);
        }
        let released = a.engine.fire(now)?;
        let watermark = a.engine.watermark().unwrap_or(i64::MIN);
        if let Some(first) = released.windows.first() {
            tracing::debug!(
                watermark,
                windows = released.windows.len(),
                first_end = first.end,
                holding = holding.len(),
                "windows closed"
            );
        }
        let anomalies_due = !self.anomaly_points.is_empty()
            && self.anomalies_since.elapsed() >= self.anomaly_linger;
        if !released.is_empty() || anomalies_due {
            let loose = std::mem::take(&mut self.anomaly_points);
            self.anomalies_since = Instant::now();
            let emitted = self.topology.emit(loose, released).await?;
            self.metrics.count_emitted(&emitted);
            alerts.deliver(&emitted.evaluations)?;
            self.sinks.push(&emitted.points, watermark)?;
        }
        self.metrics.watermark_seconds.set(http::seconds(watermark));
        Ok(())
    }

    /// A full spool pauses consumption until it drains.
    fn backpressure(&mut self) -> anyhow::Result<()> {
        let full = self.sinks.full();
        if full != self.paused {
            let assignment = self.consumer.assignment()?;
            if full {
                self.consumer.pause(&assignment)?;
                tracing::warn!("a sink spool is full: consumption paused until it drains");
            } else {
                self.consumer.resume(&assignment)?;
                tracing::info!("spool drained below its limit: consumption resumed");
            }
            self.paused = full;
            self.metrics.backpressure.set(i64::from(full));
            self.health.ready.store(!full, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Commit what the sinks acknowledged; export sink and late counters.
    fn commit(&mut self, mode: CommitMode) -> anyhow::Result<()> {
        let Some(a) = self.assigned.as_mut() else {
            return Ok(());
        };
        let m = &self.metrics;
        let acked = match &self.partials {
            Some(p) => p.acked(),
            None => self.sinks.acked(),
        };
        commit_offsets(
            &self.consumer,
            a,
            acked,
            &mut self.dlq,
            m,
            &self.store,
            mode,
        )?;
        export(&self.sinks, m);
        let late: u64 = a.engine.series_stats().iter().map(|(_, s)| s.late).sum();
        if late > a.late_seen {
            let l: Labels = vec![("topic".into(), self.config.topics.predictions.clone())];
            m.late.get_or_create(&l).inc_by(late - a.late_seen);
            a.late_seen = late;
        }
        Ok(())
    }

    /// SIGTERM: complete windows are already out; send what waits, drain
    /// the receivers and sinks, commit.
    fn stop(mut self, alerts: AlertOutputs<'_>) -> anyhow::Result<()> {
        tracing::info!("stopping: draining sinks and committing");
        let mc = &self.config.monitor;
        self.health.ready.store(false, Ordering::Relaxed);
        if let (Some(a), Some(partials)) = (self.assigned.as_mut(), self.partials.as_mut()) {
            // The partial stage's last anomalies go to the merge stage.
            let anomalies = std::mem::take(&mut self.anomaly_points);
            publish_partials(a, partials, anomalies, now_ms())?;
        }
        if let Some(a) = self.assigned.as_mut() {
            let watermark = a.engine.watermark().unwrap_or(i64::MIN);
            if !self.anomaly_points.is_empty() {
                self.sinks.push(&self.anomaly_points, watermark)?;
            }
        }
        let receivers = alerts.finish(mc.shutdown_timeout)?;
        for (name, s) in receivers {
            tracing::info!(receiver = %name, delivered = s.delivered, undelivered = s.undelivered, "alert receiver closed");
        }
        let deadline = Instant::now() + mc.shutdown_timeout;
        while !self.sinks.drained() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.commit(CommitMode::Sync)?;
        self.sinks
            .close(deadline.saturating_duration_since(Instant::now()));
        self.consumer.unsubscribe();
        tracing::info!("stopped");
        Ok(())
    }
}

/// The partial stage's turn: every source partition's closed windows,
/// labels and (changed) progress, and the gradient anomalies judged, to
/// the partials topic. The acknowledged watermark is the lowest shard
/// watermark: offsets are committed behind it.
fn publish_partials(
    a: &mut Assigned,
    partials: &mut PartialsTopic,
    anomalies: Vec<Point>,
    now: i64,
) -> anyhow::Result<()> {
    let mut messages = Vec::new();
    let shard = a.partitions.first().map_or(0, |p| p.0 as usize);
    let mut by_model: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for p in anomalies {
        let model = p.tag_value("model").unwrap_or_default().to_string();
        by_model.entry(model).or_default().push(finite_fields(p));
    }
    for points in by_model.into_values() {
        messages.push(PartialMessage::Points { shard, points });
    }
    let mut watermark: Option<i64> = None;
    for out in a.engine.fire_partials(now) {
        let (partition, last) = &mut a.partitions[out.shard];
        let shard = *partition as usize;
        for w in &out.windows {
            for (model, window) in WindowWire::of(w).by_model() {
                messages.push(PartialMessage::Window {
                    shard,
                    model,
                    window,
                });
            }
        }
        for labelled in out.labelled {
            for (model, window) in labels_by_model(labelled) {
                messages.push(PartialMessage::Labels {
                    shard,
                    model,
                    window,
                });
            }
        }
        if *last != Some(out.progress) {
            messages.push(PartialMessage::progress(shard, out.progress));
            *last = Some(out.progress);
        }
        // A shard without a watermark that is not idle may hold rows of
        // windows not yet published: nothing is acknowledged past it.
        let holds = match out.progress.watermark {
            Some(w) => Some(w),
            None if !out.progress.idle => Some(i64::MIN),
            None => None,
        };
        if let Some(w) = holds {
            watermark = Some(watermark.map_or(w, |m: i64| m.min(w)));
        }
    }
    if !messages.is_empty() {
        partials.publish(&messages, watermark.unwrap_or(i64::MIN))?;
    }
    Ok(())
}

/// A point without non-finite float fields (JSON cannot carry them, and
/// line protocol does not write them).
fn finite_fields(mut p: Point) -> Point {
    p.fields
        .retain(|(_, v)| !matches!(v, infermon_schemas::FieldValue::Float(x) if !x.is_finite()));
    p
}

/// Apply rebalances the consumer queued during the last poll. Returns true
/// when there were any.
fn rebalanced(
    consumer: &MonitorConsumer,
    assigned: &mut Option<Assigned>,
    (topology, mc, partial): (&Topology, &MonitorConfig, bool),
    paused: &mut bool,
    store: &WatermarkStore,
    generation: &mut u64,
) -> anyhow::Result<bool> {
    let events = std::mem::take(&mut *consumer.context().events.lock().expect("events lock"));
    let got = !events.is_empty();
    for e in events {
        match e {
            Assignment::Revoked(_) => {
                // Their safe offsets were committed in the callback; what
                // was read since is re-read by the next owner.
                *assigned = None;
            }
            Assignment::Assigned(parts) => {
                let floors = kafka::committed_floors(consumer, &parts, Duration::from_secs(10))?;
                // Partial stage: one engine per source partition number
                // (predictions, feedback and training of p together).
                let mut numbers: Vec<i32> = parts.iter().map(|tp| tp.1).collect();
                numbers.sort_unstable();
                numbers.dedup();
                let mut engine = match partial {
                    true => topology.partition_shards(numbers.len())?,
                    false => {
                        let references = references_store::load(&mc.state_dir)?;
                        topology.shards(references, mc.threads())?
                    }
                };
                let now = now_ms();
                let mut inputs = HashMap::new();
                let mut kept = HashMap::new();
                for tp in parts {
                    let input = match partial {
                        true => {
                            let shard = numbers.binary_search(&tp.1).expect("listed above");
                            engine.add_input_to(shard, now)
                        }
                        false => engine.add_input(now),
                    };
                    let committed = floors.get(&tp).copied().flatten();
                    if let Some(floor) = committed.max(store.load(&tp)) {
                        engine.set_floor(input, floor);
                        kept.insert(tp.clone(), floor);
                    }
                    inputs.insert(tp, input);
                }
                tracing::info!(floors = ?kept, "window state rebuilt for the new assignment");
                *generation += 1;
                *assigned = Some(Assigned {
                    generation: *generation,
                    engine,
                    inputs,
                    floors: kept,
                    tracker: OffsetTracker::new(),
                    late_seen: 0,
                    partitions: numbers.into_iter().map(|p| (p, None)).collect(),
                });
                *paused = false;
            }
        }
    }
    Ok(got)
}

/// Assigned partitions with messages not yet read, by the consumer lag in
/// librdkafka's latest statistics (at most a second old); a partition
/// whose lag is not known yet (just assigned) counts as lagging.
fn lagging(consumer: &MonitorConsumer, inputs: &HashMap<TopicPartition, usize>) -> Vec<usize> {
    let lag = consumer.context().lag.lock().expect("lag lock");
    inputs
        .iter()
        .filter(|(tp, _)| lag.get(*tp).is_none_or(|&l| l > 0))
        .map(|(_, &input)| input)
        .collect()
}

/// Commit, per partition, the lowest offset still needed by a result no
/// sink has acknowledged; the metadata carries the acknowledged watermark.
fn commit_offsets(
    consumer: &MonitorConsumer,
    a: &mut Assigned,
    acked: i64,
    dlq: &mut Dlq,
    metrics: &MonitorMetrics,
    store: &WatermarkStore,
    mode: CommitMode,
) -> anyhow::Result<()> {
    metrics.acked_watermark_seconds.set(http::seconds(acked));
    a.tracker.release(acked);
    // DLQ'd messages must be in the DLQ before we commit past them.
    let flushed = dlq.flush(Duration::from_secs(10));
    http::count_to(&metrics.dlq_failed, dlq.failed());
    if let Err(e) = flushed {
        tracing::error!(error = %e, "DLQ not acknowledged; commit postponed");
        return Ok(());
    }
    let offsets = a.tracker.committable();
    if offsets.is_empty() {
        return Ok(());
    }
    let with_floor: Vec<_> = offsets
        .into_iter()
        .map(|(tp, o)| {
            let wm = acked.max(a.floors.get(&tp).copied().unwrap_or(i64::MIN));
            (tp, o, wm)
        })
        .collect();
    let tpl: TopicPartitionList = kafka::commit_list(&with_floor)?;
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "offset commit failed; will retry");
        return Ok(());
    }
    let watermarks: Vec<_> = with_floor.into_iter().map(|(tp, _, wm)| (tp, wm)).collect();
    store.save(&watermarks)?;
    *consumer.context().safe.lock().expect("safe lock") = Some(tpl);
    metrics
        .committed_watermark_seconds
        .set(http::seconds(acked));
    Ok(())
}
