//! `[worker]` and `[[worker.models]]`: who a worker is, what it serves and
//! how (batching, threads, device, canary, automatic rollback).

use std::time::Duration;

use infermon_inference::serving::ModelConfig;
use serde::{Deserialize, Serialize};

/// `[worker]`: who this worker is and what it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Name in each prediction's `worker` field (and in its control group).
    pub id: String,
    /// Consumer group of the workers (they share the requests).
    pub group_id: String,
    /// Models served.
    pub models: Vec<ModelConfig>,
    /// Offsets are committed this often.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How often model directories are checked for a new version (or a
    /// rollback pin, `SERVE_VERSION`) of models without a `version` in the
    /// config: it is loaded, warmed up and swapped in between two batches,
    /// so no request is dropped or failed.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Address of the worker's HTTP endpoint: `/healthz`, and `POST
    /// /alerts`, an Alertmanager-format webhook receiver that rolls back
    /// models whose `rollback_on` alerts fire (none: no endpoint).
    pub listen: Option<String>,
    /// Environment variable holding the HMAC secret `/alerts` bodies must
    /// be signed with (`X-Infermon-Signature`); the secret is never logged.
    pub alert_secret_env: Option<String>,
    /// Environment variable holding a bearer token that also admits a
    /// request (`Authorization: Bearer <token>`): what an Alertmanager
    /// `webhook_config` sends (`http_config.authorization`), as it cannot
    /// sign bodies. Never logged.
    pub alert_bearer_token_env: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: "worker-0".into(),
            group_id: "infermon-workers".into(),
            models: Vec::new(),
            commit_interval: Duration::from_secs(2),
            reload_interval: Duration::from_secs(5),
            listen: None,
            alert_secret_env: None,
            alert_bearer_token_env: None,
        }
    }
}
