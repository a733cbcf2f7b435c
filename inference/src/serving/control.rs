//! Commands to every worker serving a model, as they travel on the control
//! topic (`infermon.control`, keyed by model), and the rollbacks an
//! Alertmanager webhook body asks for. The Kafka side is the pipeline's
//! (`worker/control.rs`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One command on the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlCommand {
    /// What to do: `rollback`.
    pub command: String,
    /// The model it is about.
    pub model: String,
    /// The version to take out (a worker serving another one ignores the
    /// command); absent: whatever is newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Why (the alert, or who ran the command).
    #[serde(default)]
    pub reason: String,
    /// When it was issued, ms since the epoch; workers ignore commands
    /// from before they started (their pins already hold the outcome).
    pub ts: i64,
}

impl ControlCommand {
    /// A rollback of `model`'s version `from`.
    pub fn rollback(model: &str, from: Option<&str>, reason: &str) -> Self {
        Self {
            command: "rollback".into(),
            model: model.into(),
            from_version: from.map(str::to_string),
            reason: reason.into(),
            ts: now_ms(),
        }
    }
}

/// What `POST /alerts` acts on: model name → alert names that roll it back.
pub type RollbackRules = BTreeMap<String, Vec<String>>;

/// Rollback commands for the firing alerts of an Alertmanager webhook body
/// that match `rules`. The version taken out is the alert's
/// `model_version` label when it has one.
pub fn commands_for_alerts(
    body: &Value,
    rules: &RollbackRules,
) -> Result<Vec<ControlCommand>, String> {
    let alerts = body
        .get("alerts")
        .and_then(Value::as_array)
        .ok_or("no `alerts` array: expected an Alertmanager webhook body")?;
    let mut out = Vec::new();
    for a in alerts {
        if a.get("status").and_then(Value::as_str) != Some("firing") {
            continue;
        }
        let label = |k: &str| a.pointer(&format!("/labels/{k}")).and_then(Value::as_str);
        let (Some(name), Some(model)) = (label("alertname"), label("model")) else {
            continue;
        };
        if !rules
            .get(model)
            .is_some_and(|names| names.iter().any(|n| n == name))
        {
            continue;
        }
        let summary = a
            .pointer("/annotations/summary")
            .and_then(Value::as_str)
            .unwrap_or("");
        out.push(ControlCommand::rollback(
            model,
            label("model_version"),
            &format!("alert {name} firing: {summary}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_firing_alerts_named_for_the_model_roll_back() {
        let rules = RollbackRules::from([("ctr".to_string(), vec!["ScoreDrift".to_string()])]);
        let body = serde_json::json!({"version": "4", "alerts": [
            {"status": "firing", "labels": {"alertname": "ScoreDrift", "model": "ctr", "model_version": "7"},
             "annotations": {"summary": "psi 0.4"}},
            {"status": "resolved", "labels": {"alertname": "ScoreDrift", "model": "ctr"}},
            {"status": "firing", "labels": {"alertname": "LatencyP99", "model": "ctr"}},
            {"status": "firing", "labels": {"alertname": "ScoreDrift", "model": "other"}},
        ]});
        let c = commands_for_alerts(&body, &rules).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].model, "ctr");
        assert_eq!(c[0].from_version.as_deref(), Some("7"));
        assert!(c[0].reason.contains("ScoreDrift") && c[0].reason.contains("psi 0.4"));
        let err = commands_for_alerts(&serde_json::json!({"x": 1}), &rules).unwrap_err();
        assert!(err.contains("alerts"), "{err}");
    }
}
