//! Alert delivery: the `[alerts]` settings, and the receivers the rules'
//! notifications go to (alerts log, webhooks, email, Alertmanager). The
//! rules themselves are pure logic in `infermon_operators::alerts`.

pub mod alertmanager;
pub mod delivery;
pub mod email;
pub mod outputs;
pub mod silences_file;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use infermon_operators::alerts::{
    AlertEngine, AlertRules, Flapping, GroupingConfig, Policy, RuleConfig, Silence, rules_in_force,
};
use serde::{Deserialize, Serialize};

pub use alertmanager::{AlertmanagerConfig, AlertmanagerSender};
pub use delivery::DeliveryStats;
pub use email::{EmailConfig, EmailSender};
pub use outputs::AlertOutputs;
pub use webhook::{WebhookConfig, WebhookSender};

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
    pub grouping: GroupingConfig,
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
            grouping: GroupingConfig::default(),
        }
    }
}

impl AlertsConfig {
    /// The rules in force: built-in ones (unless replaced or turned off),
    /// then the user's.
    pub fn effective_rules(&self) -> Vec<RuleConfig> {
        rules_in_force(self.default_rules, &self.rules)
    }

    /// Silences from the config and the silences file.
    pub fn all_silences(&self) -> Result<Vec<Silence>, String> {
        let mut all = self.silences.clone();
        for s in &all {
            s.validate()?;
        }
        if let Some(path) = &self.silences_file {
            all.extend(silences_file::read_silences_file(path)?);
        }
        Ok(all)
    }

    /// The policy stage (silences, inhibition) for these settings.
    pub fn policy(&self) -> Result<Policy, String> {
        Ok(Policy::new(self.all_silences()?, self.inhibit))
    }

    /// The rules and policy in force, for windows that close every `tick`.
    pub fn rules(&self, tick: Duration) -> Result<AlertRules, String> {
        Ok(AlertRules::new(
            self.engine(),
            self.policy()?,
            tick.as_millis() as i64,
        ))
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
