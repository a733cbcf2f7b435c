//! The one path from events to points, shared by the monitor and the
//! offline replay: build the window engine with every operator from the
//! config sections, and turn what the engine emits (closed windows, and
//! loose points such as gradient anomalies or late quality) into points,
//! custom SQL metrics and alert evaluations, in one order.
//!
//! ```text
//! engine() ─▶ WindowEngine ─ fire() ─▶ ClosedWindow ─┐
//!                          ─ anomalies, pending ─────┤
//!                                                    ▼
//!            emit(): window points + SQL metrics ─▶ AlertRules ─▶ Emitted
//! ```
//!
//! No I/O: the caller reads the references, writes the points to its
//! sinks and delivers the notifications.

use std::collections::{BTreeMap, HashMap};

use infermon_schemas::Point;

use crate::Profile;
use crate::alerts::{AlertRules, Evaluation, Notification, PolicyStats, Restored};
use crate::canary::CanaryConfig;
use crate::drift::{DriftConfig, DriftError, DriftOperator, FrozenReference};
use crate::engine::{ClosedWindow, EngineError, WindowEngine, engine_schema};
use crate::gradients::{GradientConfig, GradientMonitor};
use crate::quality::{LabelJoin, QualityConfig, QualityConfigError};
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
    canary: CanaryConfig,
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
        let topology = Self {
            window: sections.window.clone(),
            drift: references.map(|r| (sections.drift.clone(), r)),
            gradients: sections.gradients,
            quality: sections.quality.clone(),
            canary: sections.canary.clone(),
            sql,
            rules,
        };
        topology.engine(Vec::new())?;
        Ok(topology)
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
        Ok(WindowEngine::new(&self.window, !self.sql.is_empty())?
            .with_operators(
                drift,
                Some(GradientMonitor::new(self.gradients)),
                Some(LabelJoin::new(self.quality.clone())),
            )
            .with_canary(self.canary.clone()))
    }

    /// Turn `loose` points (gradient anomalies, quality whose label wait
    /// ended) and `closed` windows into points and alert evaluations.
    ///
    /// Loose points (when there are any) are evaluated first, on their own;
    /// each window is evaluated at its end, after its points.
    ///
    /// # Errors
    /// A window whose state does not fit the schema, or a failing SQL
    /// metric (named).
    pub async fn emit(
        &mut self,
        loose: Vec<Point>,
        closed: Vec<ClosedWindow>,
    ) -> Result<Emitted, TopologyError> {
        let mut out = Emitted::default();
        if !loose.is_empty() {
            out.add_loose(&mut self.rules, loose);
        }
        for mut window in closed {
            out.windows += 1;
            let mut points = window.points()?;
            if !self.sql.is_empty() {
                let batches = std::mem::take(&mut window.batches);
                points.extend(self.sql.evaluate(window.end, batches).await?);
            }
            let evaluation = self.rules.evaluate(&points, Some(window.end));
            out.points.extend(points);
            out.add(evaluation);
        }
        Ok(out)
    }

    /// End of input (a replay): every window still open, then the quality
    /// still waiting for labels, in a last evaluation (held notifications
    /// are released there even when nothing waits).
    ///
    /// # Errors
    /// As [`Topology::emit`].
    pub async fn finish(&mut self, engine: &mut WindowEngine) -> Result<Emitted, TopologyError> {
        let mut out = self.emit(Vec::new(), engine.flush()).await?;
        out.add_loose(&mut self.rules, engine.take_pending_points());
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
