//! The one path from events to points, shared by the monitor and the
//! offline replay: build the window engine with every operator from the
//! config sections, and turn what the engine emits (closed windows, and
//! loose points such as gradient anomalies or late quality) into points,
//! custom SQL metrics and alert evaluations, in one order.
//!
//! ```text
//! shards() ─▶ WindowEngine × SHARDS ─ fire() ─▶ ClosedWindow, LabelledWindow (partials)
//!                                                 │ Merger: added up per window
//!                 anomalies ──────────────────────┤ once every shard's watermark passed
//!                                                 ▼
//!   emit(): window points, drift, canary, quality + SQL metrics ─▶ AlertRules ─▶ Emitted
//! ```
//!
//! The scale-out runs the same stages in two processes: partial monitors
//! send each engine's closed windows over Kafka, and the merge stage feeds
//! them to a [`Merger`] and calls [`Topology::emit`].
//!
//! No I/O: the caller reads the references, writes the points to its
//! sinks and delivers the notifications.

use std::collections::{BTreeMap, HashMap};

use infermon_schemas::Point;

use crate::Profile;
use crate::alerts::{AlertRules, Evaluation, Notification, PolicyStats, Restored};
use crate::canary::{CanaryConfig, CanaryJudge, Labelled, Served};
use crate::drift::{DriftConfig, DriftError, DriftOperator, FrozenReference};
use crate::engine::{
    ClosedWindow, EngineError, LabelledWindow, SeriesKey, SeriesState, WindowEngine, engine_schema,
};
use crate::gradients::{GradientConfig, GradientMonitor};
use crate::merge::{Merger, Released};
use crate::quality::{LabelJoin, Quality, QualityConfig, QualityConfigError};
use crate::shards::{SHARDS, Shards};
use crate::sql::{SqlMetricConfig, SqlMetricError, SqlMetrics};
use crate::window::WindowConfig;

/// Why the topology could not be built or a window not be turned into
/// points.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Window settings, or a batch that does not fit the schema.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A custom SQL metric failed to plan or to run (names the metric).
    #[error(transparent)]
    Sql(#[from] SqlMetricError),
    /// Bad `[drift]` settings.
    #[error(transparent)]
    Drift(#[from] DriftError),
    /// Bad `[quality]` settings.
    #[error(transparent)]
    Quality(#[from] QualityConfigError),
    /// A custom SQL metric in the scale-out (partial monitors send window
    /// state, not rows).
    #[error(
        "custom metric {0:?}: [[sql_metrics]] need the window's rows, which the scale-out's partial monitors do not send; remove it or run one monitor (role = \"single\")"
    )]
    ScaleOut(String),
}

/// The config sections the operators read (`[window]`, `[drift]`,
/// `[gradients]`, `[quality]`, `[canary]`, `[[sql_metrics]]`).
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    /// Event-time windows and watermarks.
    pub window: &'a WindowConfig,
    /// Drift of features and scores against a reference.
    pub drift: &'a DriftConfig,
    /// Gradient anomalies in training telemetry.
    pub gradients: GradientConfig,
    /// The feedback join and label quality.
    pub quality: &'a QualityConfig,
    /// Canary against stable.
    pub canary: &'a CanaryConfig,
    /// Custom per-window metrics.
    pub sql_metrics: &'a [SqlMetricConfig],
}

/// What one [`Topology::emit`] produced.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Every point, in order: the loose points, then each window's points
    /// (operators, then SQL metrics), each followed by the `alerts` points
    /// of its evaluation.
    pub points: Vec<Point>,
    /// The alert evaluations, in the order they ran (for delivery).
    pub evaluations: Vec<Evaluation>,
    /// Windows closed.
    pub windows: usize,
}

impl Emitted {
    /// Notifications that passed silences and inhibition, in order.
    pub fn passed(&self) -> impl Iterator<Item = &Notification> {
        self.evaluations.iter().flat_map(|e| &e.passed)
    }
}

/// Operators, custom SQL metrics and alert rules, built once per process.
pub struct Topology {
    window: WindowConfig,
    drift: Option<(DriftConfig, BTreeMap<String, Profile>)>,
    gradients: GradientConfig,
    quality: QualityConfig,
    /// Compares a model's versions in merged windows (when on).
    canary_judge: Option<CanaryJudge>,
    /// Judges merged drift counts (the config; references ride in the
    /// windows).
    drift_judge: Option<DriftOperator>,
    sql: SqlMetrics,
    rules: AlertRules,
}

impl Topology {
    /// Plan the SQL metrics and check the settings. `references`: the
    /// drift reference profiles given by file, per model (`None` turns
    /// drift off).
    ///
    /// # Errors
    /// A custom SQL metric that does not plan (named), bad window or drift
    /// settings.
    pub async fn new(
        sections: Sections<'_>,
        references: Option<BTreeMap<String, Profile>>,
        rules: AlertRules,
    ) -> Result<Self, TopologyError> {
        sections.quality.validate()?;
        let window_ms = sections.window.size.as_millis() as i64;
        let sql = SqlMetrics::new(
            sections.sql_metrics,
            engine_schema(sections.window),
            window_ms,
        )
        .await?;
        let drift_judge = match &references {
            Some(r) => Some(DriftOperator::new(sections.drift, window_ms, r.clone())?),
            None => None,
        };
        let topology = Self {
            window: sections.window.clone(),
            drift: references.map(|r| (sections.drift.clone(), r)),
            gradients: sections.gradients,
            quality: sections.quality.clone(),
            canary_judge: sections
                .canary
                .enabled
                .then(|| CanaryJudge::new(sections.canary.clone())),
            drift_judge,
            sql,
            rules,
        };
        topology.engine(Vec::new())?;
        Ok(topology)
    }

    /// [`SHARDS`] window engines on `threads` threads, merged: what one
    /// process runs. `frozen`: drift references kept by an earlier run.
    ///
    /// # Errors
    /// As [`Topology::engine`].
    pub fn shards(
        &self,
        frozen: Vec<FrozenReference>,
        threads: usize,
    ) -> Result<Shards, TopologyError> {
        let engines = (0..SHARDS)
            .map(|_| self.engine(frozen.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let owner = match &self.drift {
            Some((config, references)) => {
                let window_ms = self.window.size.as_millis() as i64;
                let mut owner = DriftOperator::new(config, window_ms, references.clone())?;
                frozen.into_iter().for_each(|r| owner.restore(r));
                Some(owner)
            }
            None => None,
        };
        Ok(Shards::new(engines, owner, threads, self.label_wait_ms()))
    }

    /// A merger of `shards` partial engines (the merge stage's).
    pub fn merger(&self, shards: usize) -> Merger {
        Merger::new(shards, self.label_wait_ms())
    }

    /// How long labels are awaited past a window's end, ms.
    pub fn label_wait_ms(&self) -> i64 {
        self.quality.label_wait.as_millis() as i64
    }

    /// A fresh window state of `series` starting at `start`, with the drift
    /// reference every partial of it was counted against (what a merge
    /// stage adds decoded counts to). None when drift is off.
    pub fn drift_window(
        &self,
        series: &SeriesKey,
        start: i64,
    ) -> Option<crate::drift::DriftWindow> {
        self.drift_judge
            .as_ref()
            .map(|d| d.new_window(series, start))
    }

    /// A fresh window engine with every operator, taking up the drift
    /// references `frozen` by an earlier run (a rebalance builds a new one).
    ///
    /// # Errors
    /// Bad window or drift settings (checked by [`Topology::new`] already).
    pub fn engine(&self, frozen: Vec<FrozenReference>) -> Result<WindowEngine, TopologyError> {
        let window_ms = self.window.size.as_millis() as i64;
        let drift = match &self.drift {
            Some((config, references)) => {
                let mut d = DriftOperator::new(config, window_ms, references.clone())?;
                for r in frozen {
                    d.restore(r);
                }
                Some(d)
            }
            None => None,
        };
        Ok(
            WindowEngine::new(&self.window, !self.sql.is_empty())?.with_operators(
                drift,
                Some(GradientMonitor::new(self.gradients)),
                Some(LabelJoin::new(self.quality.clone())),
            ),
        )
    }

    /// The partial stage of the scale-out: one window engine per source
    /// partition (`partitions` of them, inputs added with
    /// [`Shards::add_input_to`]), whose outputs are published unmerged
    /// ([`Shards::fire_partials`]). Drift references come only from
    /// `[drift.reference_files]`: a partial monitor never freezes one from
    /// its share of the traffic.
    ///
    /// # Errors
    /// A custom SQL metric (named): the partials carry no rows.
    pub fn partition_shards(&self, partitions: usize) -> Result<Shards, TopologyError> {
        self.check_scale_out()?;
        let engines = (0..partitions.max(1))
            .map(|_| Ok(self.engine(Vec::new())?.without_reference_feed()))
            .collect::<Result<Vec<_>, TopologyError>>()?;
        Ok(Shards::new(engines, None, 1, self.label_wait_ms()))
    }

    /// The scale-out's partial and merge stages carry no rows: a custom
    /// SQL metric cannot run there.
    ///
    /// # Errors
    /// [`TopologyError::ScaleOut`] naming the first custom metric.
    pub fn check_scale_out(&self) -> Result<(), TopologyError> {
        match self.sql.first() {
            Some(m) => Err(TopologyError::ScaleOut(m.to_string())),
            None => Ok(()),
        }
    }

    /// Turn `loose` points (gradient anomalies) and merged windows and
    /// labels into points and alert evaluations.
    ///
    /// Loose points (when there are any) are evaluated first, on their own;
    /// each window is evaluated at its end, after its points. Label quality
    /// rides with the last window released with it, or is evaluated on its
    /// own when none was.
    ///
    /// # Errors
    /// A window whose state does not fit the schema, or a failing SQL
    /// metric (named).
    pub async fn emit(
        &mut self,
        loose: Vec<Point>,
        released: Released,
    ) -> Result<Emitted, TopologyError> {
        let mut out = Emitted::default();
        if !loose.is_empty() {
            out.add_loose(&mut self.rules, loose);
        }
        let mut quality = self.label_points(&released.labelled);
        let last = released.windows.len();
        for (i, mut window) in released.windows.into_iter().enumerate() {
            out.windows += 1;
            let mut points = window.points()?;
            points.extend(self.window_points(&window));
            if i + 1 == last {
                points.append(&mut quality);
            }
            if !self.sql.is_empty() {
                let batches = std::mem::take(&mut window.batches);
                points.extend(self.sql.evaluate(window.end, batches).await?);
            }
            let evaluation = self.rules.evaluate(&points, Some(window.end));
            out.points.extend(points);
            out.add(evaluation);
        }
        if !quality.is_empty() {
            out.add_loose(&mut self.rules, quality);
        }
        Ok(out)
    }

    /// `drift` and canary `comparison` points of a merged window.
    fn window_points(&mut self, window: &ClosedWindow) -> Vec<Point> {
        let mut out = Vec::new();
        if let Some(drift) = &self.drift_judge {
            for (key, state) in &window.series {
                if let Some(w) = &state.drift {
                    out.extend(drift.points(key, w, window.end));
                }
            }
        }
        if let Some(canary) = self.canary_judge.as_mut() {
            out.extend(compare_serving(canary, &window.series, window.end));
        }
        out
    }

    /// `quality`, `ranking`, `position_ctr` and the canary's label
    /// `comparison` points of merged label windows.
    fn label_points(&mut self, labelled: &[LabelledWindow]) -> Vec<Point> {
        let mut out = Vec::new();
        for window in labelled {
            let mut judged = Vec::new();
            for (key, state) in &window.series {
                let threshold = self.quality.threshold_of(&key.model);
                let quality = state
                    .labels
                    .as_ref()
                    .and_then(|l| Quality::of(l, threshold));
                if let Some(q) = &quality {
                    out.push(q.point(key, window.end));
                }
                if let Some(r) = &state.ranking {
                    out.extend(r.points(key, window.end));
                }
                judged.push((key, quality, state.ranking.as_ref()));
            }
            if let Some(canary) = self.canary_judge.as_mut() {
                out.extend(compare_labels(canary, &judged, window.end));
            }
        }
        out
    }

    /// End of input (a replay): every window still open and every label
    /// window, then a last evaluation (held notifications are released
    /// there even when nothing waits).
    ///
    /// # Errors
    /// As [`Topology::emit`].
    pub async fn finish(&mut self, shards: &mut Shards) -> Result<Emitted, TopologyError> {
        let mut out = self.emit(Vec::new(), shards.flush()?).await?;
        out.add_loose(&mut self.rules, Vec::new());
        Ok(out)
    }

    /// Take up alert state an earlier run left in its alerts log.
    pub fn restore_alerts(&mut self, restored: HashMap<String, Restored>) {
        self.rules.restore(restored);
    }

    /// Notifications muted by silences and inhibition so far.
    pub fn muted(&self) -> PolicyStats {
        self.rules.stats()
    }
}

impl Emitted {
    fn add_loose(&mut self, rules: &mut AlertRules, loose: Vec<Point>) {
        let evaluation = rules.evaluate(&loose, None);
        self.points.extend(loose);
        self.add(evaluation);
    }

    fn add(&mut self, evaluation: Evaluation) {
        self.points
            .extend(evaluation.passed.iter().map(Notification::point));
        self.evaluations.push(evaluation);
    }
}

/// `comparison` points of the versions of each model serving in one window
/// (whole-version series only; `series` is sorted by key, so a model's
/// versions are neighbours).
fn compare_serving(
    canary: &mut CanaryJudge,
    series: &[(SeriesKey, SeriesState)],
    end: i64,
) -> Vec<Point> {
    let whole: Vec<_> = series.iter().filter(|s| s.0.segments.is_empty()).collect();
    let mut out = Vec::new();
    for model in whole.chunk_by(|a, b| a.0.model == b.0.model) {
        let served: Vec<Served<'_>> = model
            .iter()
            .map(|(key, state)| Served {
                version: &key.model_version,
                requests: state.throughput.requests() as u64,
                errors: state.throughput.errors() as u64,
                latency: state.stages[0].sketch(),
            })
            .collect();
        out.extend(canary.compare_serving(&model[0].0.model, &served, end));
    }
    out
}

/// `comparison` points of the label quality of each model's versions in
/// one window (`judged` sorted by series key).
fn compare_labels(
    canary: &mut CanaryJudge,
    judged: &[(
        &SeriesKey,
        Option<Quality>,
        Option<&crate::quality::Ranking>,
    )],
    end: i64,
) -> Vec<Point> {
    let whole: Vec<_> = judged.iter().filter(|j| j.0.segments.is_empty()).collect();
    let mut out = Vec::new();
    for model in whole.chunk_by(|a, b| a.0.model == b.0.model) {
        let versions: Vec<Labelled<'_>> = model
            .iter()
            .map(|(key, quality, ranking)| Labelled {
                version: &key.model_version,
                quality: quality.as_ref(),
                ranking: *ranking,
            })
            .collect();
        out.extend(canary.compare_labels(&model[0].0.model, &versions, end));
    }
    out
}
