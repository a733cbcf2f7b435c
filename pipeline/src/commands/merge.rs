//! `infermon monitor` with `[monitor] role = "merge"`: the scale-out's
//! merge stage.
//!
//! Partials topic (consumer group) → [`PartialMessage`]s → [`Merger`]
//! (each window added up once every source partition's watermark passed
//! it) → [`Topology::emit`] (statistics, drift tests, canary, alert rules)
//! → sinks and alert outputs: the only writer. Offsets of the partials
//! topic are committed behind acknowledged sink writes, with the
//! acknowledged watermark in the commit metadata: a restarted merge stage
//! re-reads the partials of every window not yet written (a window's
//! partials all lie after the committed offset) and drops those of windows
//! written before.
//!
//! The number of source partitions is the predictions topic's partition
//! count: a window is complete only when every one of them has reported a
//! watermark past it, or is idle. Merge stages in one group split the
//! partials topic's partitions (windows are keyed by model); each source
//! partition's progress comes on every partials partition after the
//! windows it covers there, so the merger tracks it per (source, partials
//! partition).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use infermon_operators::{Merger, PartialMessage, ShardProgress, Topology};
use infermon_schemas::Point;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};

use crate::alerts::AlertOutputs;
use crate::config::Config;
use crate::monitor::metrics::MonitorMetrics;
use crate::monitor::watermark_store::WatermarkStore;
use crate::monitor::{MONITOR_RECEIVER, start};
use crate::sinks::Sinks;
use crate::sinks::alerts_file::AlertsFile;

use crate::sources::kafka::{self, Assignment, MonitorConsumer};
use crate::sources::offsets::OffsetTracker;
use crate::telemetry::{self as http, Labels};

/// The merge state of the current assignment of the partials topic.
struct Assigned {
    /// One merge shard per (source partition, assigned partials partition):
    /// each partials partition carries every source partition's progress
    /// after the windows it covers on that partition, and partitions are
    /// not ordered with each other.
    merger: Merger,
    /// The assigned partitions of the partials topic, sorted.
    partitions: Vec<i32>,
    /// Partitions of the predictions topic.
    sources: usize,
    tracker: OffsetTracker,
    floor: i64,
    /// The merged watermark of the last release: every window ending at or
    /// before it has been handed to the sinks (or had nothing to write).
    released_to: i64,
}

/// Run the merge stage until `stop` is set.
pub async fn run(config: &Config, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mc = &config.monitor;
    let (mut alerts_log, restored, _) = AlertsFile::open_journal(&mc.alerts_out)
        .with_context(|| format!("alerts_out {}", mc.alerts_out.display()))?;
    let mut alerts = AlertOutputs::new(
        &config.alerts,
        mc.send_alerts,
        MONITOR_RECEIVER,
        &mut alerts_log,
    )?;
    alerts.resume(&restored);
    let (metrics, health) = start::serve_telemetry(mc)?;
    let mut topology = config.topology().await?;
    topology.check_scale_out()?;
    topology.restore_alerts(restored);
    let mut sinks = start::open_sinks(&config.influxdb, mc)?;
    let (kc, topics) = (&config.kafka, &config.topics);
    let consumer = kafka::consumer(kc, &[topics.partials.as_str()], metrics.lag.clone())?;
    let shards = consumer
        .fetch_metadata(Some(&topics.predictions), Duration::from_secs(10))
        .context("reading the predictions topic's partition count")?
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(
        shards > 0,
        "topic {} has no partitions: the merge stage needs its partition count",
        topics.predictions
    );
    tracing::info!(topic = %topics.partials, source_partitions = shards, "merge stage: consuming partials");

    // The acknowledged watermark is also kept in the state directory, for
    // brokers that drop commit metadata (as the monitor does).
    let store = WatermarkStore::new(&mc.state_dir, &kc.group_id);
    let mut assigned: Option<Assigned> = None;
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        health.beat();
        let linger_until = Instant::now() + kc.batch_linger;
        let mut loose: Vec<Point> = Vec::new();
        let mut read = 0;
        while read < kc.batch_size {
            let left = linger_until.saturating_duration_since(Instant::now());
            let polled = consumer.poll(left.max(Duration::from_millis(1)));
            rebalanced(&consumer, &mut assigned, (&topology, &store), shards)?;
            if assigned.is_some() {
                health.ready.store(true, Ordering::Relaxed);
            }
            match (polled, assigned.as_mut()) {
                (Some(Ok(msg)), Some(a)) => {
                    read += 1;
                    let tp = (msg.topic().to_string(), msg.partition());
                    let l: Labels = vec![("topic".into(), tp.0.clone())];
                    metrics.consumed.get_or_create(&l).inc();
                    let bytes = msg.payload().unwrap_or_default();
                    let release_at = take(a, &topology, (tp.1, bytes), &mut loose);
                    a.tracker.read(&tp, msg.offset(), release_at);
                }
                (Some(Err(e)), _) => tracing::warn!(error = %e, "consumer error"),
                _ => {}
            }
            if left.is_zero() {
                break;
            }
        }
        if let Some(a) = assigned.as_mut() {
            let released = a.merger.release()?;
            let watermark = a.merger.watermark().unwrap_or(i64::MIN).max(a.floor);
            if !released.is_empty() || !loose.is_empty() {
                let emitted = topology.emit(loose, released).await?;
                metrics.count_emitted(&emitted);
                alerts.deliver(&emitted.evaluations)?;
                sinks.push(&emitted.points, watermark)?;
            }
            a.released_to = watermark;
            metrics.watermark_seconds.set(http::seconds(watermark));
        }
        if last_commit.elapsed() >= kc.commit_interval {
            last_commit = Instant::now();
            commit(
                &consumer,
                assigned.as_mut(),
                (&sinks, &metrics, &store),
                CommitMode::Async,
            );
        }
    }
    let late = assigned.as_ref().map_or(0, |a| a.merger.late_partials());
    tracing::info!(
        late_partials = late,
        "stopping: draining sinks and committing"
    );
    health.ready.store(false, Ordering::Relaxed);
    alerts.finish(mc.shutdown_timeout)?;
    let deadline = Instant::now() + mc.shutdown_timeout;
    while !sinks.drained() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    commit(
        &consumer,
        assigned.as_mut(),
        (&sinks, &metrics, &store),
        CommitMode::Sync,
    );
    sinks.close(deadline.saturating_duration_since(Instant::now()));
    consumer.unsubscribe();
    Ok(())
}

/// One partials message into the merger; returns until which watermark
/// its offset must stay uncommitted. A message that does not decode is
/// logged and skipped (its producer is infermon: a bug or another
/// version, not data to keep).
fn take(
    a: &mut Assigned,
    topology: &Topology,
    (partition, bytes): (i32, &[u8]),
    loose: &mut Vec<Point>,
) -> Option<i64> {
    let message: PartialMessage = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "a partials message does not decode: skipped");
            return None;
        }
    };
    let Ok(local) = a.partitions.binary_search(&partition) else {
        return None; // not (or no longer) ours
    };
    if message.shard() >= a.sources {
        tracing::error!(
            shard = message.shard(),
            sources = a.sources,
            "a partial from a partition the predictions topic does not have: skipped"
        );
        return None;
    }
    // The merger's shard: this source partition as seen on this partials
    // partition.
    let shard = message.shard() * a.partitions.len() + local;
    match message {
        PartialMessage::Window { model, window, .. } => {
            let window = window.into_window(topology);
            let end = window.end;
            a.merger.add_window_part(shard, &model, window);
            Some(end)
        }
        PartialMessage::Labels { model, window, .. } => {
            let end = window.end + topology.label_wait_ms();
            a.merger.add_labelled_part(shard, &model, window);
            Some(end)
        }
        PartialMessage::Points { points, .. } => {
            loose.extend(points);
            // Written with this turn's release.
            Some(a.released_to.saturating_add(1))
        }
        PartialMessage::Progress {
            watermark, idle, ..
        } => {
            a.merger
                .set_progress(shard, ShardProgress { watermark, idle });
            None
        }
    }
}

/// Take up the rebalances queued during the last poll: a new assignment
/// starts a fresh merger above the acknowledged watermark of the
/// committed offsets.
fn rebalanced(
    consumer: &MonitorConsumer,
    assigned: &mut Option<Assigned>,
    (topology, store): (&Topology, &WatermarkStore),
    shards: usize,
) -> anyhow::Result<()> {
    let events = std::mem::take(&mut *consumer.context().events.lock().expect("events lock"));
    for e in events {
        match e {
            Assignment::Revoked(_) => *assigned = None,
            Assignment::Assigned(parts) => {
                let floors = kafka::committed_floors(consumer, &parts, Duration::from_secs(10))?;
                let floor = floors
                    .iter()
                    .filter_map(|(tp, committed)| (*committed).max(store.load(tp)))
                    .max()
                    .unwrap_or(i64::MIN);
                let mut partitions: Vec<i32> = parts.iter().map(|tp| tp.1).collect();
                partitions.sort_unstable();
                let mut merger = topology.merger(shards * partitions.len());
                merger.set_floor(floor);
                tracing::info!(floor, "merge state rebuilt for the new assignment");
                *assigned = Some(Assigned {
                    merger,
                    partitions,
                    sources: shards,
                    tracker: OffsetTracker::new(),
                    floor,
                    released_to: floor,
                });
            }
        }
    }
    Ok(())
}

/// Commit the partials offsets no unacknowledged window needs. Once the
/// sinks acknowledged every push, every window up to the last release is
/// written, also those with nothing to write (a merge consumer owning
/// models that went quiet).
fn commit(
    consumer: &MonitorConsumer,
    assigned: Option<&mut Assigned>,
    (sinks, metrics, store): (&Sinks, &MonitorMetrics, &WatermarkStore),
    mode: CommitMode,
) {
    let Some(a) = assigned else { return };
    let acked = sinks.written(a.released_to).max(a.floor);
    metrics.acked_watermark_seconds.set(http::seconds(acked));
    a.tracker.release(acked);
    let offsets: Vec<_> = a
        .tracker
        .committable()
        .into_iter()
        .map(|(tp, o)| (tp, o, acked))
        .collect();
    if offsets.is_empty() {
        return;
    }
    let committed = kafka::commit_list(&offsets).and_then(|tpl| {
        consumer.commit(&tpl, mode)?;
        let watermarks: Vec<_> = offsets
            .iter()
            .map(|(tp, _, wm)| (tp.clone(), *wm))
            .collect();
        store.save(&watermarks)?;
        *consumer.context().safe.lock().expect("safe lock") = Some(tpl);
        Ok(())
    });
    match committed {
        Ok(()) => {
            metrics
                .committed_watermark_seconds
                .set(http::seconds(acked));
        }
        Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
    }
}
