//! Alert rules over points, in event time: the rules, a state machine per
//! rule × series, silences and inhibition, grouping, and notifications in
//! the Alertmanager format. Pure logic: the alerts log and the receivers
//! (webhooks, email, Alertmanager) are the pipeline's.
//!
//! points → [`AlertEngine`] (rules, `for`, hysteresis, `keep_firing_for`,
//! flapping, missing data) → [`Policy`] (silences, inhibition) →
//! [`Notification`]s; [`grouping::Grouper`] paces them for receivers.

pub mod engine;
pub mod grouping;
pub mod horizon;
pub mod notification;
pub mod policy;
pub mod rule;

use std::collections::HashMap;

use infermon_schemas::Point;
use serde::Deserialize;

pub use engine::{AlertEngine, Flapping, Restored};
pub use grouping::{Grouper, GroupingConfig};
pub use horizon::{CountTest, EventRate};
pub use notification::{AlertStatus, Notification};
pub use policy::{Policy, PolicyStats, Silence};
pub use rule::RuleConfig;

/// The built-in rules, documented.
pub const DEFAULT_RULES_TOML: &str = include_str!("default_rules.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rules: Vec<RuleConfig>,
}

/// The built-in rules.
pub fn default_rules() -> Vec<RuleConfig> {
    toml::from_str::<RuleFile>(DEFAULT_RULES_TOML)
        .expect("default_rules.toml parses (checked by a test)")
        .rules
}

/// The rules in force: the built-in ones (with `defaults`, less those one
/// of `own` replaces by name), then `own`.
pub fn rules_in_force(defaults: bool, own: &[RuleConfig]) -> Vec<RuleConfig> {
    let mut rules: Vec<RuleConfig> = if defaults {
        default_rules()
            .into_iter()
            .filter(|d| own.iter().all(|r| r.name != d.name))
            .collect()
    } else {
        Vec::new()
    };
    rules.extend(own.iter().cloned());
    rules
}

/// One evaluation of the rules: what they said, and what passed the policy.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// The closed window's end, when the points were a window's (series
    /// without a point then got their missing-data treatment).
    pub window_end: Option<i64>,
    /// Every state change, before silences and inhibition (Alertmanager
    /// gets these: it silences and inhibits by itself).
    pub fired: Vec<Notification>,
    /// What passed silences and inhibition: the alerts log, the `alerts`
    /// points and infermon's own receivers get these.
    pub passed: Vec<Notification>,
}

/// The rules and the policy, evaluated together in event time.
#[derive(Debug)]
pub struct AlertRules {
    engine: AlertEngine,
    policy: Policy,
    /// Windows close this often (the slide of hopping windows), ms.
    tick_ms: i64,
    /// Event time of the latest evaluation.
    last_now: i64,
}

impl AlertRules {
    /// Rules and policy for windows that close every `tick_ms`.
    pub fn new(engine: AlertEngine, policy: Policy, tick_ms: i64) -> Self {
        Self {
            engine,
            policy,
            tick_ms,
            last_now: i64::MIN,
        }
    }

    /// Judge points; `window_end` when they are a closed window's.
    pub fn evaluate(&mut self, points: &[Point], window_end: Option<i64>) -> Evaluation {
        let mut fired = self.engine.observe(points);
        if let Some(end) = window_end {
            fired.extend(self.engine.tick(end, self.tick_ms));
        }
        // Evaluations without a time of their own (the end of a replay)
        // happen at the latest one's.
        let now = window_end
            .or_else(|| fired.iter().map(|n| n.at_ms).max())
            .unwrap_or(self.last_now)
            .max(self.last_now);
        self.last_now = now;
        let passed = self.policy.apply(fired.clone(), now);
        Evaluation {
            window_end,
            fired,
            passed,
        }
    }

    /// Take up alert state an earlier run left (its alerts log).
    pub fn restore(&mut self, restored: HashMap<String, Restored>) {
        self.policy.restore(restored.values());
        self.engine.restore(restored);
    }

    /// Notifications muted so far.
    pub fn stats(&self) -> PolicyStats {
        self.policy.stats()
    }
}

#[cfg(test)]
mod tests;
