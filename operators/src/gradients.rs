//! Gradient anomalies in training telemetry, per (model, run_id).
//!
//! Steps are judged as they arrive, so an anomaly is an event the alert
//! engine can act on at once; each window also gets a `gradients` summary.
//! The spike detector follows OLMo-core and ZClip: a rolling mean and
//! standard deviation of the log grad norm, a warm-up, non-finite values kept
//! out of the baseline, and spikes clipped before they enter it so one spike
//! cannot hide the next.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use infermon_schemas::{FieldValue, Point, TrainingEvent};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

/// Detector settings (`[gradients]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GradientConfig {
    /// Steps in the rolling baseline.
    pub window: usize,
    /// Steps before spikes are judged.
    pub warmup: usize,
    /// Spike threshold in standard deviations of the log grad norm.
    pub zscore: f64,
    /// Floor on the baseline's standard deviation (log units), so a run
    /// with perfectly steady gradients does not flag a 1% wobble.
    pub min_std: f64,
    /// Explosion: grad norm at least this many times the run's median...
    pub explosion_factor: f64,
    /// ...for at least this many consecutive steps.
    pub explosion_steps: u32,
    /// Vanishing: grad norm at most this fraction of the run's median...
    pub vanishing_factor: f64,
    /// ...for at least this many consecutive steps.
    pub vanishing_steps: u32,
    /// Loss divergence: loss at least this many times its rolling mean...
    pub loss_factor: f64,
    /// ...for at least this many consecutive steps.
    pub loss_steps: u32,
}

impl Default for GradientConfig {
    fn default() -> Self {
        Self {
            window: 128,
            warmup: 20,
            zscore: 6.0,
            min_std: 0.01,
            explosion_factor: 10.0,
            explosion_steps: 5,
            vanishing_factor: 1e-3,
            vanishing_steps: 20,
            loss_factor: 2.0,
            loss_steps: 5,
        }
    }
}

/// What went wrong at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// NaN or Inf gradients (or loss) in the step.
    Nonfinite,
    /// The log grad norm jumped above the rolling baseline.
    Spike,
    /// Grad norm stayed far above the run's median.
    Explosion,
    /// Grad norm stayed far below the run's median.
    Vanishing,
    /// Loss stayed far above its rolling mean.
    LossDivergence,
}

impl AnomalyKind {
    /// Tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Nonfinite => "nonfinite",
            AnomalyKind::Spike => "spike",
            AnomalyKind::Explosion => "explosion",
            AnomalyKind::Vanishing => "vanishing",
            AnomalyKind::LossDivergence => "loss_divergence",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One anomalous step, for the alert engine.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientAnomaly {
    /// Model being trained.
    pub model: String,
    /// Training run.
    pub run_id: String,
    /// Event time of the step, ms.
    pub ts: i64,
    /// Training step.
    pub step: u64,
    /// What happened.
    pub kind: AnomalyKind,
    /// Grad norm at the step (NaN/inf for non-finite steps).
    pub grad_norm: f64,
    /// z-score of the log grad norm against the baseline, when judged.
    pub zscore: Option<f64>,
}

impl GradientAnomaly {
    /// A `gradient_anomalies` point at the step's event time.
    pub fn point(&self) -> Point {
        let mut p = Point::new("gradient_anomalies", self.ts)
            .tag("model", &self.model)
            .tag("run_id", &self.run_id)
            .tag("kind", self.kind.as_str())
            .field("step", FieldValue::Int(self.step as i64));
        if self.grad_norm.is_finite() {
            p = p.field("grad_norm", FieldValue::Float(self.grad_norm));
        }
        if let Some(z) = self.zscore.filter(|z| z.is_finite()) {
            p = p.field("zscore", FieldValue::Float(z));
        }
        p
    }
}

/// Rolling mean and variance over the last `cap` values.
#[derive(Debug, Clone, Default)]
struct Rolling {
    values: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl Rolling {
    fn push(&mut self, x: f64, cap: usize) {
        self.values.push_back(x);
        self.sum += x;
        self.sum_sq += x * x;
        if self.values.len() > cap {
            let old = self.values.pop_front().expect("non-empty");
            self.sum -= old;
            self.sum_sq -= old * old;
        }
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn mean(&self) -> f64 {
        self.sum / self.values.len() as f64
    }

    fn std(&self) -> f64 {
        let n = self.values.len() as f64;
        (self.sum_sq / n - self.mean().powi(2)).max(0.0).sqrt()
    }
}

/// Detector state of one run.
struct RunState {
    log_norms: Rolling,
    losses: Rolling,
    /// All finite grad norms of the run, for its median.
    norms: DDSketch,
    explode_streak: u32,
    vanish_streak: u32,
    loss_streak: u32,
}

impl RunState {
    fn new() -> Self {
        Self {
            log_norms: Rolling::default(),
            losses: Rolling::default(),
            norms: norms_sketch(),
            explode_streak: 0,
            vanish_streak: 0,
            loss_streak: 0,
        }
    }
}

/// What one step showed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepVerdict {
    /// Anomalies found at this step.
    pub anomalies: Vec<GradientAnomaly>,
    /// z-score of the log grad norm, once the baseline is warm.
    pub zscore: Option<f64>,
    /// The step had NaN/Inf gradients or loss.
    pub nonfinite: bool,
}

/// Per-window summary of one run (the `gradients` measurement); mergeable.
#[derive(Clone, Serialize, Deserialize)]
pub struct GradientWindow {
    steps: u64,
    grad_norm_max: Option<f64>,
    #[serde(with = "norms_serde")]
    norms: DDSketch,
    zscore_max: Option<f64>,
    /// (step, loss) of the highest step seen (None: a non-finite loss).
    loss_last: Option<(u64, Option<f64>)>,
    nonfinite: u64,
    anomalies: u64,
}

impl fmt::Debug for GradientWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GradientWindow")
            .field("steps", &self.steps)
            .field("anomalies", &self.anomalies)
            .finish_non_exhaustive()
    }
}

impl Default for GradientWindow {
    fn default() -> Self {
        Self {
            steps: 0,
            grad_norm_max: None,
            norms: norms_sketch(),
            zscore_max: None,
            loss_last: None,
            nonfinite: 0,
            anomalies: 0,
        }
    }
}

impl GradientWindow {
    /// The `gradients` point of this window.
    pub fn point(&self, model: &str, run_id: &str, end_ms: i64) -> Point {
        let mut p = Point::new("gradients", end_ms)
            .tag("model", model)
            .tag("run_id", run_id)
            .field("steps", FieldValue::Int(self.steps as i64));
        if let Some(max) = self.grad_norm_max {
            p = p.field("grad_norm_max", FieldValue::Float(max));
        }
        if let Ok(Some(m)) = self.norms.quantile(0.5) {
            p = p.field("grad_norm_median", FieldValue::Float(m));
        }
        if let Some(z) = self.zscore_max {
            p = p.field("zscore_max", FieldValue::Float(z));
        }
        if let Some((_, Some(loss))) = self.loss_last {
            p = p.field("loss_last", FieldValue::Float(loss));
        }
        p.field("nonfinite", FieldValue::Int(self.nonfinite as i64))
            .field("anomalies", FieldValue::Int(self.anomalies as i64))
    }

    /// Add a judged step to this window's summary.
    pub fn record(&mut self, e: &TrainingEvent, verdict: &StepVerdict) {
        let w = self;
        let g = e.grad_norm;
        let loss = e.loss;
        let nonfinite = verdict.nonfinite;
        let zscore = verdict.zscore;
        {
            w.steps += 1;
            if g.is_finite() {
                w.grad_norm_max = Some(w.grad_norm_max.map_or(g, |m| m.max(g)));
                if g > 0.0 {
                    w.norms.add(g);
                }
            }
            if let Some(z) = zscore {
                w.zscore_max = Some(w.zscore_max.map_or(z, |m: f64| m.max(z)));
            }
            if let Some(l) = loss
                && w.loss_last.is_none_or(|(s, _)| e.step >= s)
            {
                w.loss_last = Some((e.step, Some(l).filter(|l| l.is_finite())));
            }
            w.nonfinite += if nonfinite { e.nonfinite.max(1) } else { 0 };
            w.anomalies += verdict.anomalies.len() as u64;
        }
    }

    /// Fold in the summary of the same run and window from another
    /// partial (steps of one run are judged in one place, so this only
    /// meets summaries of disjoint steps).
    pub fn merge(&mut self, other: &Self) {
        self.steps += other.steps;
        self.grad_norm_max = match (self.grad_norm_max, other.grad_norm_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if other.norms.count() > 0 {
            // Same configuration on both sides: the merge cannot fail.
            let _ = self.norms.merge(&other.norms);
        }
        self.zscore_max = match (self.zscore_max, other.zscore_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some((step, loss)) = other.loss_last
            && self.loss_last.is_none_or(|(s, _)| step >= s)
        {
            self.loss_last = Some((step, loss));
        }
        self.nonfinite += other.nonfinite;
        self.anomalies += other.anomalies;
    }

    /// Anomalies counted in this window.
    pub fn anomalies(&self) -> u64 {
        self.anomalies
    }
}

fn norms_sketch() -> DDSketch {
    DDSketch::new(SketchConfig::new(0.01, 2048, 1e-9))
}

/// The grad-norm sketch as its serde form, or null when empty (an empty
/// sketch's infinite min and max do not fit JSON).
mod norms_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use sketches_ddsketch::DDSketch;

    pub fn serialize<S: Serializer>(sketch: &DDSketch, s: S) -> Result<S::Ok, S::Error> {
        (sketch.count() > 0).then_some(sketch).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DDSketch, D::Error> {
        Ok(Option::<DDSketch>::deserialize(d)?.unwrap_or_else(super::norms_sketch))
    }
}

/// The anomaly detector over all runs.
pub struct GradientMonitor {
    config: GradientConfig,
    runs: HashMap<(String, String), RunState>,
}

impl fmt::Debug for GradientMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GradientMonitor")
            .field("config", &self.config)
            .field("runs", &self.runs.len())
            .finish()
    }
}

impl GradientMonitor {
    /// A detector with these settings.
    pub fn new(config: GradientConfig) -> Self {
        Self {
            config,
            runs: HashMap::new(),
        }
    }

    /// Judge one step (in arrival order) and return what was found.
    pub fn observe(&mut self, e: &TrainingEvent) -> StepVerdict {
        let c = self.config;
        let run = self
            .runs
            .entry((e.model.clone(), e.run_id.clone()))
            .or_insert_with(RunState::new);
        let mut kinds = Vec::new();
        let g = e.grad_norm;
        let loss = e.loss;
        let nonfinite = !g.is_finite() || loss.is_some_and(|l| !l.is_finite()) || e.nonfinite > 0;
        if nonfinite {
            kinds.push(AnomalyKind::Nonfinite);
        }

        let mut zscore = None;
        if g.is_finite() && g > 0.0 {
            let log_g = g.ln();
            let b = &run.log_norms;
            let mut entering = log_g;
            if b.len() >= c.warmup {
                let (mean, std) = (b.mean(), b.std().max(c.min_std));
                let z = (log_g - mean) / std;
                zscore = Some(z);
                if z > c.zscore {
                    kinds.push(AnomalyKind::Spike);
                    entering = mean + c.zscore * std;
                }
            }
            let median = run.norms.quantile(0.5).ok().flatten();
            let warmed = run.norms.count() >= c.warmup;
            run.log_norms.push(entering, c.window);
            run.norms.add(g);
            match median.filter(|_| warmed) {
                Some(m) if g >= c.explosion_factor * m => {
                    run.explode_streak += 1;
                    run.vanish_streak = 0;
                }
                Some(m) if g <= c.vanishing_factor * m => {
                    run.vanish_streak += 1;
                    run.explode_streak = 0;
                }
                _ => {
                    run.explode_streak = 0;
                    run.vanish_streak = 0;
                }
            }
            if run.explode_streak == c.explosion_steps {
                kinds.push(AnomalyKind::Explosion);
            }
            if run.vanish_streak == c.vanishing_steps {
                kinds.push(AnomalyKind::Vanishing);
            }
        } else if g == 0.0 {
            run.vanish_streak += 1;
            if run.vanish_streak == c.vanishing_steps {
                kinds.push(AnomalyKind::Vanishing);
            }
        }

        if let Some(l) = loss.filter(|l| l.is_finite()) {
            let diverging = run.losses.len() >= c.warmup && l >= c.loss_factor * run.losses.mean();
            if diverging {
                run.loss_streak += 1;
                if run.loss_streak == c.loss_steps {
                    kinds.push(AnomalyKind::LossDivergence);
                }
            } else {
                run.loss_streak = 0;
                // Diverging values stay out of the baseline they are judged by.
                run.losses.push(l, c.window);
            }
        } else if loss.is_some() {
            run.loss_streak += 1;
        }

        let anomalies = kinds
            .into_iter()
            .map(|kind| GradientAnomaly {
                model: e.model.clone(),
                run_id: e.run_id.clone(),
                ts: e.ts,
                step: e.step,
                kind,
                grad_norm: g,
                zscore,
            })
            .collect();
        StepVerdict {
            anomalies,
            zscore,
            nonfinite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, g: f64, loss: f64) -> TrainingEvent {
        TrainingEvent {
            run_id: "r".into(),
            model: "m".into(),
            ts: step as i64 * 1000,
            step,
            loss: Some(loss),
            grad_norm: g,
            lr: None,
            layer_grad_norms: Default::default(),
            nonfinite: 0,
        }
    }

    fn run(monitor: &mut GradientMonitor, steps: &[(f64, f64)]) -> Vec<(u64, AnomalyKind)> {
        steps
            .iter()
            .enumerate()
            .flat_map(|(i, &(g, l))| monitor.observe(&step(i as u64, g, l)).anomalies)
            .map(|a| (a.step, a.kind))
            .collect()
    }

    /// Steady noisy gradients: 1.0 ± ~5%.
    fn steady(n: usize) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (1.0 + 0.05 * ((i * 7919) % 13) as f64 / 13.0, 0.5))
            .collect()
    }

    #[test]
    fn steady_training_has_no_anomalies() {
        let mut m = GradientMonitor::new(GradientConfig::default());
        assert!(run(&mut m, &steady(500)).is_empty());
    }

    #[test]
    fn a_spike_after_warmup_is_flagged_once_and_clipped() {
        let mut m = GradientMonitor::new(GradientConfig::default());
        let mut s = steady(100);
        s[50].0 = 8.0;
        // Right after a clipped spike, the baseline is still tight.
        s[52].0 = 8.0;
        let got = run(&mut m, &s);
        assert_eq!(
            got,
            vec![(50, AnomalyKind::Spike), (52, AnomalyKind::Spike)]
        );
    }

    #[test]
    fn spikes_during_warmup_are_not_judged() {
        let mut m = GradientMonitor::new(GradientConfig::default());
        let mut s = steady(60);
        s[5].0 = 50.0;
        assert!(run(&mut m, &s).is_empty());
    }

    #[test]
    fn sustained_explosion_fires_at_the_fifth_step() {
        let mut m = GradientMonitor::new(GradientConfig::default());
        let mut s = steady(100);
        for x in &mut s[60..70] {
            x.0 = 20.0;
        }
        let got: Vec<_> = run(&mut m, &s)
            .into_iter()
            .filter(|(_, k)| *k == AnomalyKind::Explosion)
            .collect();
        assert_eq!(got, vec![(64, AnomalyKind::Explosion)]);
    }

    #[test]
    fn vanishing_gradients_fire_after_twenty_steps() {
        let mut m = GradientMonitor::new(GradientConfig::default());
        let mut s = steady(100);
        for x in &mut s[50..80] {
            x.0 = 1e-4;
        }
        let got: Vec<_> = run(&mut m, &s)
            .into_iter()
            .filter(|(_, k)| *k == AnomalyKind::Vanishing)
            .collect();
        assert_eq!(got, vec![(69, AnomalyKind::Vanishing)]);
    }

    #[test]
    fn loss_divergence_needs_five_steps() {
        let mut m = GradientMonitor::new(GradientConfig::default());
        let mut s = steady(100);
        for x in &mut s[40..44] {
            x.1 = 5.0; // four steps: not yet
        }
        for x in &mut s[60..70] {
            x.1 = 5.0;
        }
        let got: Vec<_> = run(&mut m, &s)
            .into_iter()
            .filter(|(_, k)| *k == AnomalyKind::LossDivergence)
            .collect();
        assert_eq!(got, vec![(64, AnomalyKind::LossDivergence)]);
    }

    #[test]
    fn nonfinite_steps_are_anomalies_and_stay_out_of_the_baseline() {
        let mut m = GradientMonitor::new(GradientConfig::default());
        let mut w = GradientWindow::default();
        let mut observe = |e: &TrainingEvent| {
            let v = m.observe(e);
            w.record(e, &v);
            v.anomalies
        };
        for (i, g) in steady(40).iter().enumerate() {
            assert!(observe(&step(i as u64, g.0, g.1)).is_empty());
        }
        let mut bad = step(40, f64::NAN, 0.5);
        bad.nonfinite = 3;
        let a = observe(&bad);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AnomalyKind::Nonfinite);
        // The next normal step is judged against an unpolluted baseline.
        assert!(observe(&step(41, 1.0, 0.5)).is_empty());
        let p = w.point("m", "r", 60_000);
        let field = |k: &str| p.fields.iter().find(|f| f.0 == k).map(|f| f.1.clone());
        assert_eq!(field("steps"), Some(FieldValue::Int(42)));
        assert_eq!(field("nonfinite"), Some(FieldValue::Int(3)));
        assert_eq!(field("anomalies"), Some(FieldValue::Int(1)));
    }
}
