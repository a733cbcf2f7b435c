//! The `infermon` configuration: one serde struct per component, TOML on
//! disk, built-in defaults in `default.toml`.

use std::path::Path;

use anyhow::Context;
use infermon_operators::{
    CanaryConfig, DriftConfig, GradientConfig, QualityConfig, Sections, SqlMetricConfig, Topology,
    WindowConfig,
};
use infermon_schemas::TopicNames;
use serde::{Deserialize, Serialize};

use crate::alerts::AlertsConfig;
use crate::monitor::MonitorConfig;
use crate::references::{ProfileSettings, load_references};
use crate::sinks::influxdb::InfluxDbConfig;
use crate::sources::kafka::KafkaConfig;
use crate::worker::WorkerConfig;

/// The built-in defaults, documented.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Everything `infermon` can be told. Unknown keys are errors, so a typo
/// fails at start-up instead of silently keeping a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Event-time windows and watermarks.
    pub window: WindowConfig,
    /// Topic names (also the `topic` values in recorded files).
    pub topics: TopicNames,
    /// Custom per-window metrics written as SQL.
    pub sql_metrics: Vec<SqlMetricConfig>,
    /// Distribution drift of features and scores against a reference.
    pub drift: DriftConfig,
    /// Gradient anomaly detection over training telemetry.
    pub gradients: GradientConfig,
    /// Label quality from feedback joined to predictions.
    pub quality: QualityConfig,
    /// Canary against stable: a model's versions compared per window.
    pub canary: CanaryConfig,
    /// Alert rules.
    pub alerts: AlertsConfig,
    /// `infermon monitor`: brokers, group and batching of the Kafka source.
    pub kafka: KafkaConfig,
    /// `infermon monitor`: InfluxDB servers to write to (none: a file).
    pub influxdb: Vec<InfluxDbConfig>,
    /// `infermon monitor`: health endpoints, state directory, output files.
    pub monitor: MonitorConfig,
    /// `infermon worker`: identity, group and the models it serves.
    pub worker: WorkerConfig,
}

impl Config {
    /// The config file at `path`, or the built-in defaults when `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Self::parse(DEFAULT_TOML).context("built-in default config");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parse TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The sections the operators read.
    pub fn sections(&self) -> Sections<'_> {
        Sections {
            window: &self.window,
            drift: &self.drift,
            gradients: self.gradients,
            quality: &self.quality,
            canary: &self.canary,
            sql_metrics: &self.sql_metrics,
        }
    }

    /// What reading recordings for a drift profile takes.
    pub fn profile_settings(&self) -> ProfileSettings<'_> {
        ProfileSettings {
            drift: &self.drift,
            topics: &self.topics,
            window: &self.window,
        }
    }

    /// The topology the monitor and the replay share: operators, SQL
    /// metrics and alert rules, with the drift references of
    /// `[drift.reference_files]` read.
    pub async fn topology(&self) -> anyhow::Result<Topology> {
        let references = match self.drift.enabled {
            true => Some(load_references(self.profile_settings())?),
            false => None,
        };
        let window = &self.window;
        let tick = window.slide.unwrap_or(window.size);
        let rules = self.alerts.rules(tick).map_err(anyhow::Error::msg)?;
        Ok(Topology::new(self.sections(), references, rules).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default_config() {
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn the_deploy_examples_parse() {
        for f in [
            "infermon.toml",
            "monitor.toml",
            "worker.toml",
            "partial.toml",
            "merge.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy")
                .join(f);
            Config::load(Some(&path)).unwrap_or_else(|e| panic!("{f}: {e:#}"));
        }
        let c = Config::load(Some(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitor.toml"),
        ))
        .unwrap();
        assert_eq!(c.influxdb.len(), 2);
        assert_eq!(c.influxdb[1].api, crate::sinks::influxdb::InfluxApi::V1);
    }

    #[test]
    fn typos_are_errors() {
        let err = Config::parse("[window]\nsise = \"30s\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `sise`"),
            "{err:#}"
        );
    }

    #[test]
    fn drift_thresholds_per_feature() {
        let c = Config::parse(
            "[drift]\nreference_window = \"10m\"\n[drift.feature_thresholds.price]\npsi = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.drift.reference_window.as_secs(), 600);
        let price = c.drift.feature_thresholds["price"];
        assert_eq!(price.psi, 0.5);
        // Unset keys of an override keep the defaults.
        assert_eq!(price.js, c.drift.thresholds.js);
    }

    #[test]
    fn durations_are_human() {
        let c = Config::parse("[window]\nsize = \"5m\"\nslide = \"1m\"\n").unwrap();
        assert_eq!(c.window.size.as_secs(), 300);
        assert_eq!(c.window.slide.unwrap().as_secs(), 60);
        assert_eq!(c.window.allowed_lateness.as_secs(), 10);
    }
}
