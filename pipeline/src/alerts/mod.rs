//! Alerts: rules over the measurements and anomaly events, a state machine
//! per rule × series, and notifications in the Alertmanager format.
//!
//! points → [`AlertEngine`] (rules, `for`, hysteresis, `keep_firing_for`,
//! flapping, missing data) → [`Notification`]s → alerts log / `alerts` points
//! (delivery to webhooks and email is the next step).

pub mod alertmanager;
pub mod delivery;
pub mod email;
pub mod engine;
pub mod grouping;
pub mod notification;
pub mod policy;
pub mod rule;
pub mod stage;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use alertmanager::{AlertmanagerConfig, AlertmanagerSender};
pub use delivery::DeliveryStats;
pub use email::{EmailConfig, EmailSender};
pub use engine::{AlertEngine, Flapping};
pub use notification::{AlertStatus, Notification};
pub use policy::{Policy, PolicyStats, Silence};
pub use rule::RuleConfig;
pub use stage::AlertStage;
pub use webhook::{WebhookConfig, WebhookSender};

/// The built-in rules, documented.
pub const DEFAULT_RULES_TOML: &str = include_str!("default_rules.toml");

/// Alert settings (`[alerts]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate the built-in rules (`default_rules.toml`) as well.
    pub default_rules: bool,
    /// Rules of your own (`[[alerts.rules]]`); one with the name of a
    /// built-in rule replaces it.
    pub rules: Vec<RuleConfig>,
    /// State changes counted for flap detection within this span...
    #[serde(with = "humantime_serde")]
    pub flap_window: Duration,
    /// ...above this many make an alert flapping.
    pub flap_limit: usize,
    /// Webhook receivers (`[[alerts.webhooks]]`); offline replays only send
    /// with `--send`.
    pub webhooks: Vec<WebhookConfig>,
    /// Email receivers (`[[alerts.emails]]`); offline, only with `--send`.
    pub emails: Vec<EmailConfig>,
    /// Alertmanagers (`[[alerts.alertmanagers]]`) that get every
    /// notification before infermon's own silences, inhibition and
    /// grouping (Alertmanager does its own); offline, only with `--send`.
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// Silences written in the config (`[[alerts.silences]]`).
    pub silences: Vec<Silence>,
    /// The file `infermon silence add` appends to (JSON lines), read at
    /// start-up.
    pub silences_file: Option<PathBuf>,
    /// A firing critical alert mutes warnings of the same model.
    pub inhibit: bool,
    /// How notifications are grouped and paced for receivers.
    pub grouping: grouping::GroupingConfig,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            default_rules: true,
            rules: Vec::new(),
            flap_window: Duration::from_secs(30 * 60),
            flap_limit: 6,
            webhooks: Vec::new(),
            emails: Vec::new(),
            alertmanagers: Vec::new(),
            silences: Vec::new(),
            silences_file: None,
            inhibit: true,
            grouping: grouping::GroupingConfig::default(),
        }
    }
}

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

impl AlertsConfig {
    /// The rules in force: built-in ones (unless replaced or turned off),
    /// then the user's.
    pub fn effective_rules(&self) -> Vec<RuleConfig> {
        let mut rules: Vec<RuleConfig> = if self.default_rules {
            default_rules()
                .into_iter()
                .filter(|d| self.rules.iter().all(|r| r.name != d.name))
                .collect()
        } else {
            Vec::new()
        };
        rules.extend(self.rules.iter().cloned());
        rules
    }

    /// Silences from the config and the silences file.
    pub fn all_silences(&self) -> Result<Vec<Silence>, String> {
        let mut all = self.silences.clone();
        for s in &all {
            s.validate()?;
        }
        if let Some(path) = &self.silences_file {
            all.extend(policy::read_silences_file(path)?);
        }
        Ok(all)
    }

    /// The policy stage (silences, inhibition) for these settings.
    pub fn policy(&self) -> Result<Policy, String> {
        Ok(Policy::new(self.all_silences()?, self.inhibit))
    }

    /// An engine for the rules in force.
    pub fn engine(&self) -> AlertEngine {
        AlertEngine::new(
            self.effective_rules(),
            Flapping {
                window: self.flap_window,
                limit: self.flap_limit,
            },
        )
    }
}

#[cfg(test)]
mod tests;
