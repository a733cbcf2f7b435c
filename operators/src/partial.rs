//! What a partial monitor publishes on the partials topic and the merge
//! stage reads: one source partition's closed windows (mergeable state:
//! sketch bins, counters, drift bin counts, gradient summaries), its label
//! state once a window's label wait ended, and its progress (watermark,
//! idleness) — JSON, one message each.
//!
//! Drift counts travel without their reference: the merge stage attaches
//! the same reference (from `[drift.reference_files]`, the one owner of
//! references in the scale-out) before adding them up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drift::DriftCounts;
use crate::engine::{ClosedWindow, LabelledWindow, SeriesKey, SeriesState};
use crate::gradients::GradientWindow;
use crate::latency::LatencyAccumulator;
use crate::merge::ShardProgress;
use crate::sketch::LatencySketch;
use crate::throughput::ThroughputAccumulator;
use crate::topology::Topology;

/// One message of the partials topic. `shard` is the source partition
/// (predictions, feedback and training of partition p are shard p).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartialMessage {
    /// A window the shard's watermark passed (one model's series).
    Window {
        /// Source partition.
        shard: usize,
        /// The model: a window's partial is sent per model, keyed by it, so
        /// that each merge consumer owns whole models.
        #[serde(default)]
        model: String,
        /// The window's state.
        window: WindowWire,
    },
    /// Label state of a window whose label wait ended in the shard (one
    /// model's series).
    Labels {
        /// Source partition.
        shard: usize,
        /// The model.
        #[serde(default)]
        model: String,
        /// Labels per series.
        window: LabelledWindow,
    },
    /// Points judged at once, not per window (gradient anomalies); fields
    /// that are not finite numbers are left out (line protocol cannot
    /// carry them either).
    Points {
        /// Source partition.
        shard: usize,
        /// The points.
        points: Vec<infermon_schemas::Point>,
    },
    /// The shard's watermark, sent after its windows on every turn (also
    /// when it had no data: it may be idle).
    Progress {
        /// Source partition.
        shard: usize,
        /// Watermark, ms (None: no event time yet).
        watermark: Option<i64>,
        /// Idle by the engine's rules: it does not hold the merge.
        idle: bool,
    },
}

/// A [`ClosedWindow`] without its rows or drift reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowWire {
    start: i64,
    end: i64,
    series: Vec<(SeriesKey, SeriesWire)>,
    late: Vec<(SeriesKey, u64)>,
    gradients: Vec<((String, String), GradientWindow)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesWire {
    /// Per stage ([`infermon_schemas::batch::STAGES`] order); None when
    /// empty.
    stages: Vec<Option<LatencySketch>>,
    throughput: ThroughputAccumulator,
    drift: Option<DriftCounts>,
}

impl WindowWire {
    /// Split into one window per model (series, late counts and training
    /// summaries of that model).
    pub fn by_model(self) -> BTreeMap<String, Self> {
        let mut models: BTreeMap<String, Self> = BTreeMap::new();
        let (start, end) = (self.start, self.end);
        fn part<'m>(
            models: &'m mut BTreeMap<String, WindowWire>,
            model: &str,
            (start, end): (i64, i64),
        ) -> &'m mut WindowWire {
            models
                .entry(model.to_string())
                .or_insert_with(|| WindowWire {
                    start,
                    end,
                    series: Vec::new(),
                    late: Vec::new(),
                    gradients: Vec::new(),
                })
        }
        for (key, s) in self.series {
            part(&mut models, &key.model, (start, end))
                .series
                .push((key, s));
        }
        for (key, n) in self.late {
            part(&mut models, &key.model, (start, end))
                .late
                .push((key, n));
        }
        for (key, g) in self.gradients {
            part(&mut models, &key.0, (start, end))
                .gradients
                .push((key, g));
        }
        models
    }

    /// The state of `window` (its rows are not sent: custom SQL metrics
    /// are refused in the scale-out).
    pub fn of(window: &ClosedWindow) -> Self {
        let series = window
            .series
            .iter()
            .map(|(key, s)| {
                let stages = s
                    .stages
                    .iter()
                    .map(|a| (a.sketch().count() > 0).then(|| a.sketch().clone()))
                    .collect();
                let wire = SeriesWire {
                    stages,
                    throughput: s.throughput.clone(),
                    drift: s.drift.as_ref().map(|d| d.counts()),
                };
                (key.clone(), wire)
            })
            .collect();
        Self {
            start: window.start,
            end: window.end,
            series,
            late: window.late.clone(),
            gradients: window.gradients.clone(),
        }
    }

    /// Back into a window, drift counts on `topology`'s references.
    pub fn into_window(self, topology: &Topology) -> ClosedWindow {
        let start = self.start;
        let series = self
            .series
            .into_iter()
            .map(|(key, wire)| {
                let mut stages: [LatencyAccumulator; 5] = Default::default();
                for (acc, sketch) in stages.iter_mut().zip(wire.stages) {
                    if let Some(s) = sketch {
                        *acc = LatencyAccumulator::from_sketch(s);
                    }
                }
                let drift = wire.drift.and_then(|counts| {
                    let mut w = topology.drift_window(&key, start)?;
                    w.add_counts(&counts);
                    Some(w)
                });
                let state = SeriesState {
                    stages,
                    throughput: wire.throughput,
                    drift,
                };
                (key, state)
            })
            .collect();
        ClosedWindow {
            start,
            end: self.end,
            series,
            batches: Vec::new(),
            late: self.late,
            gradients: self.gradients,
        }
    }
}

/// Split labels of a window into one per model.
pub fn labels_by_model(window: LabelledWindow) -> BTreeMap<String, LabelledWindow> {
    let mut models: BTreeMap<String, LabelledWindow> = BTreeMap::new();
    for (key, state) in window.series {
        models
            .entry(key.model.clone())
            .or_insert_with(|| LabelledWindow {
                end: window.end,
                series: Vec::new(),
            })
            .series
            .push((key, state));
    }
    models
}

impl PartialMessage {
    /// The progress message of `shard`.
    pub fn progress(shard: usize, p: ShardProgress) -> Self {
        PartialMessage::Progress {
            shard,
            watermark: p.watermark,
            idle: p.idle,
        }
    }

    /// The model a message is about, its key on the partials topic (None:
    /// progress, which every partition gets).
    pub fn model(&self) -> Option<&str> {
        match self {
            PartialMessage::Window { model, .. } | PartialMessage::Labels { model, .. } => {
                Some(model)
            }
            PartialMessage::Points { points, .. } => {
                points.first().and_then(|p| p.tag_value("model"))
            }
            PartialMessage::Progress { .. } => None,
        }
    }

    /// The source partition the message is from.
    pub fn shard(&self) -> usize {
        match self {
            PartialMessage::Window { shard, .. }
            | PartialMessage::Labels { shard, .. }
            | PartialMessage::Points { shard, .. }
            | PartialMessage::Progress { shard, .. } => *shard,
        }
    }
}
