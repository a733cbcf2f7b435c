//! One process, all cores: the stream split over several window engines
//! (shards) that run on `threads` threads, their closed windows added up
//! by the [`Merger`] — the partial and merge stages of the scale-out,
//! inside one process.
//!
//! Rows are routed by a hash of `request_id` (feedback too, so the label
//! join stays inside a shard; training steps go to shard 0, where each
//! run's steps stay in order). The number of shards is fixed
//! ([`SHARDS`]), not the number of threads, so the output never depends on
//! `threads`. Every shard sees the event time of every input: the owner
//! computes each row's running maximum over the whole batch, so a row is
//! late in its shard exactly when it would be in one engine given all rows.
//! Drift references are frozen once, by the owner, from all rows, and
//! handed to every shard.

use std::hash::BuildHasher;

use arrow::array::{AsArray, RecordBatch, StringArray};
use foldhash::fast::FixedState;
use infermon_schemas::{FeedbackEvent, TrainingEvent};
use rayon::prelude::*;

use crate::drift::{DriftOperator, FrozenReference};
use crate::engine::{EngineError, SeriesKey, SeriesStats, WindowEngine, running_max, timestamps};
use crate::gradients::GradientAnomaly;
use crate::merge::{Merger, Released, ShardProgress};
use crate::quality::JoinStats;
use crate::watermark::InputId;

/// Shards of one process: enough for the cores of one machine.
pub const SHARDS: usize = 8;

/// Fixed, so a request goes to the same shard in every run.
const ROUTE: FixedState = FixedState::with_seed(0x0005_4a2d_2026_1130);

/// The shard of a request id among `n`.
pub fn shard_of(request_id: &str, n: usize) -> usize {
    (ROUTE.hash_one(request_id) % n as u64) as usize
}

/// `threads` threads for the shards, or None (with a warning) when the
/// system refuses them: the shards then run on the caller's thread.
fn pool(threads: usize) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("shard-{i}"))
        .build()
        .inspect_err(|e| tracing::warn!(error = %e, threads, "no shard threads: one thread runs every shard"))
        .ok()
}

/// Where an input's rows go.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Split by request id over every shard (the same id in each).
    Split(InputId),
    /// All to one shard (a source partition of a partial monitor), under
    /// that shard's id for it.
    One(usize, InputId),
}

/// One shard's output of a [`Shards::fire_partials`]: what a partial
/// monitor publishes.
#[derive(Debug)]
pub struct ShardOutput {
    /// The shard.
    pub shard: usize,
    /// Windows its watermark passed.
    pub windows: Vec<crate::engine::ClosedWindow>,
    /// Label state of windows whose label wait ended.
    pub labelled: Vec<crate::engine::LabelledWindow>,
    /// Its watermark and idleness.
    pub progress: ShardProgress,
}

/// Window engines over shares of the stream, merged.
pub struct Shards {
    engines: Vec<WindowEngine>,
    inputs: Vec<Route>,
    /// Freezes drift references from every row and hands them to the
    /// shards (when drift learns references from traffic).
    owner: Option<DriftOperator>,
    /// Frozen by the owner and not yet taken by the caller (to keep them).
    frozen: Vec<FrozenReference>,
    merger: Merger,
    /// The threads the shards run on (None: the caller's thread only).
    /// Kept for the life of the shards: a thread started per batch cost
    /// its stack's page faults and the allocator's arena churn.
    pool: Option<rayon::ThreadPool>,
    /// Scratch: the rows of each shard in the current batch.
    routed: Vec<Vec<u32>>,
}

impl Shards {
    /// `engines` (at least one) run on up to `threads` threads; `owner`
    /// freezes drift references for them all. `label_wait_ms`: when a
    /// window's labels are complete.
    pub fn new(
        engines: Vec<WindowEngine>,
        owner: Option<DriftOperator>,
        threads: usize,
        label_wait_ms: i64,
    ) -> Self {
        let n = engines.len();
        let engines = if owner.is_some() {
            engines
                .into_iter()
                .map(WindowEngine::without_reference_feed)
                .collect()
        } else {
            engines
        };
        Self {
            engines,
            inputs: Vec::new(),
            owner,
            frozen: Vec::new(),
            merger: Merger::new(n, label_wait_ms),
            pool: (threads > 1).then(|| pool(threads)).flatten(),
            routed: vec![Vec::new(); n],
        }
    }

    /// Register an input (file or partition) whose rows are split over
    /// every shard by request id.
    pub fn add_input(&mut self, now_ms: i64) -> InputId {
        let ids: Vec<_> = self
            .engines
            .iter_mut()
            .map(|e| e.add_input(now_ms))
            .collect();
        self.inputs.push(Route::Split(ids[0]));
        self.inputs.len() - 1
    }

    /// Register an input whose rows all go to `shard` (a source partition:
    /// predictions, feedback and training of partition p share a shard).
    pub fn add_input_to(&mut self, shard: usize, now_ms: i64) -> InputId {
        let id = self.engines[shard].add_input(now_ms);
        self.inputs.push(Route::One(shard, id));
        self.inputs.len() - 1
    }

    /// Apply `f` to every engine that has `input`, with its id there.
    fn each(&mut self, input: InputId, mut f: impl FnMut(&mut WindowEngine, InputId)) {
        match self.inputs[input] {
            Route::Split(id) => self.engines.iter_mut().for_each(|e| f(e, id)),
            Route::One(shard, id) => f(&mut self.engines[shard], id),
        }
    }

    /// Rows of `input` skip windows ending at or before `floor_ms`
    /// ([`WindowEngine::set_floor`]).
    pub fn set_floor(&mut self, input: InputId, floor_ms: i64) {
        self.each(input, |e, id| e.set_floor(id, floor_ms));
    }

    /// Event time progressed on `input` without predictions.
    pub fn observe(&mut self, input: InputId, max_ts: i64, now_ms: i64) {
        self.each(input, |e, id| e.observe(id, max_ts, now_ms));
    }

    /// `input` has data waiting to be read: it holds the watermark.
    pub fn touch_input(&mut self, input: InputId, now_ms: i64) {
        self.each(input, |e, id| e.touch_input(id, now_ms));
    }

    /// The input is exhausted.
    pub fn finish_input(&mut self, input: InputId) {
        self.each(input, |e, id| e.finish_input(id));
    }

    /// Route a batch of predictions to the shards of their request ids and
    /// push each share on the shards' threads.
    ///
    /// # Errors
    /// A batch that does not fit the prediction schema.
    pub fn push_predictions(
        &mut self,
        input: InputId,
        batch: &RecordBatch,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let input = match self.inputs[input] {
            Route::One(shard, id) => {
                return self.engines[shard].push_predictions(id, batch, now_ms);
            }
            Route::Split(id) => id,
        };
        let ts = timestamps(batch)?;
        let request_id: &StringArray = batch
            .column_by_name("request_id")
            .and_then(|c| c.as_string_opt())
            .ok_or_else(|| EngineError::Schema("request_id must be a Utf8 column".into()))?;
        if let Some(owner) = self.owner.as_mut() {
            owner.feed_batch(batch);
            let fresh = owner.take_frozen();
            for r in &fresh {
                for e in &mut self.engines {
                    if let Some(d) = e.drift_mut() {
                        d.restore(r.clone());
                    }
                }
            }
            self.frozen.extend(fresh);
        }
        let event_max = running_max(ts, self.engines[0].input_max(input));
        let n = self.engines.len();
        for r in &mut self.routed {
            r.clear();
        }
        for row in 0..batch.num_rows() {
            self.routed[shard_of(request_id.value(row), n)].push(row as u32);
        }
        let mut work: Vec<_> = self.engines.iter_mut().zip(&self.routed).collect();
        let push = |(engine, rows): &mut (&mut WindowEngine, &Vec<u32>)| {
            engine.push_rows(input, batch, rows, &event_max, now_ms)
        };
        match &self.pool {
            None => work.iter_mut().try_for_each(push),
            Some(pool) => pool.install(|| work.par_iter_mut().try_for_each(push)),
        }
    }

    /// Feedback read from `input`, to the shards of their request ids (or
    /// to the input's shard).
    pub fn push_feedback(&mut self, input: InputId, events: &[FeedbackEvent]) {
        if let Route::One(shard, _) = self.inputs[input] {
            self.engines[shard].push_feedback(events);
            return;
        }
        let n = self.engines.len();
        let mut routed: Vec<Vec<&FeedbackEvent>> = vec![Vec::new(); n];
        for e in events {
            routed[shard_of(&e.request_id, n)].push(e);
        }
        for (engine, events) in self.engines.iter_mut().zip(routed) {
            engine.push_feedback(events);
        }
    }

    /// Training steps to shard 0 (each run's steps in one place, in order);
    /// the others see their event time.
    pub fn push_training(
        &mut self,
        input: InputId,
        events: &[TrainingEvent],
        now_ms: i64,
    ) -> Vec<GradientAnomaly> {
        let input = match self.inputs[input] {
            Route::One(shard, id) => return self.engines[shard].push_training(id, events, now_ms),
            Route::Split(id) => id,
        };
        let anomalies = self.engines[0].push_training(input, events, now_ms);
        if let Some(max) = events.iter().map(|e| e.ts).max() {
            for e in &mut self.engines[1..] {
                e.observe(input, max, now_ms);
            }
        }
        anomalies
    }

    /// Advance every shard to processing time `now_ms` and release what
    /// the merged watermark has passed.
    ///
    /// # Errors
    /// Partials that do not merge.
    pub fn fire(&mut self, now_ms: i64) -> Result<Released, EngineError> {
        for out in self.fire_partials(now_ms) {
            for w in out.windows {
                self.merger.add_window(out.shard, w);
            }
            for l in out.labelled {
                self.merger.add_labelled(out.shard, l);
            }
            self.merger.set_progress(out.shard, out.progress);
        }
        self.merger.release()
    }

    /// Advance every shard to processing time `now_ms` and return each
    /// one's closed windows, labels and progress, unmerged (what a partial
    /// monitor publishes).
    pub fn fire_partials(&mut self, now_ms: i64) -> Vec<ShardOutput> {
        let fire = |(shard, e): (usize, &mut WindowEngine)| ShardOutput {
            shard,
            windows: e.fire(now_ms),
            labelled: e.take_labelled(),
            progress: ShardProgress {
                watermark: e.watermark(),
                idle: e.is_idle(now_ms),
            },
        };
        let engines = &mut self.engines;
        match &self.pool {
            None => engines.iter_mut().enumerate().map(fire).collect(),
            // In shard order, as on one thread.
            Some(pool) => pool.install(|| engines.par_iter_mut().enumerate().map(fire).collect()),
        }
    }

    /// End of input: every window and label window.
    ///
    /// # Errors
    /// As [`Shards::fire`].
    pub fn flush(&mut self) -> Result<Released, EngineError> {
        for (i, e) in self.engines.iter_mut().enumerate() {
            for w in e.flush() {
                self.merger.add_window(i, w);
            }
            for l in e.take_labelled() {
                self.merger.add_labelled(i, l);
            }
        }
        self.merger.flush()
    }

    /// The merged watermark.
    pub fn watermark(&self) -> Option<i64> {
        self.merger.watermark()
    }

    /// Drift references frozen since the last call, to keep.
    pub fn take_frozen(&mut self) -> Vec<FrozenReference> {
        std::mem::take(&mut self.frozen)
    }

    /// Totals per series over every shard, sorted by key.
    pub fn series_stats(&self) -> Vec<(SeriesKey, SeriesStats)> {
        let mut all: std::collections::BTreeMap<SeriesKey, SeriesStats> = Default::default();
        for e in &self.engines {
            for (key, s) in e.series_stats() {
                let t = all.entry(key).or_default();
                t.events += s.events;
                t.late += s.late;
            }
        }
        all.into_iter().collect()
    }

    /// Counters of the feedback join over every shard.
    pub fn label_stats(&self) -> Option<JoinStats> {
        let stats: Vec<JoinStats> = self
            .engines
            .iter()
            .filter_map(|e| e.label_stats())
            .collect();
        (!stats.is_empty()).then(|| JoinStats {
            matched: stats.iter().map(|s| s.matched).sum(),
            unmatched: stats.iter().map(|s| s.unmatched).sum(),
            evicted: stats.iter().map(|s| s.evicted).sum(),
        })
    }

    /// Training steps that arrived after their window closed.
    pub fn late_training_steps(&self) -> u64 {
        self.engines.iter().map(|e| e.late_training_steps()).sum()
    }
}
