//! Webhook delivery: Alertmanager v4 bodies, optional HMAC-SHA256 signature,
//! retries with capped exponential backoff and jitter on 5xx / 429 / network
//! errors (`Retry-After` honoured), no retry on other 4xx, and nothing but a
//! 2xx counts as delivered.
//!
//! Delivery runs on its own thread behind a bounded queue ([`super::delivery`]),
//! so a slow or dead receiver never blocks the data path. A blocking HTTP
//! client (ureq) on that one thread is all this needs.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use super::delivery::{DeliveryQueue, DeliveryStats, RetryPolicy, Transport, defaults};
use crate::retry::{Backoff, Outcome, http_outcome};
use infermon_operators::alerts::notification::{AlertStatus, Notification};

/// One webhook receiver (`[[alerts.webhooks]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Receiver name (the body's `receiver`).
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// Environment variable holding the HMAC secret; the secret itself never
    /// appears in config files or logs.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Per-request timeout.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    #[serde(default = "defaults::initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between retries.
    #[serde(default = "defaults::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Groups waiting for delivery; beyond this the oldest is dropped.
    #[serde(default = "defaults::queue")]
    pub queue_capacity: usize,
    /// Rate limit of this receiver (0 = none); excess waits, is not dropped.
    #[serde(default)]
    pub max_per_minute: u32,
}

/// The Alertmanager v4 webhook body for one group.
pub fn body(receiver: &str, group_by: &[String], alerts: &[Notification]) -> Value {
    let common = |get: fn(&Notification) -> &BTreeMap<String, String>| {
        let mut common = alerts.first().map(get).cloned().unwrap_or_default();
        for a in alerts.iter().skip(1) {
            common.retain(|k, v| get(a).get(k) == Some(v));
        }
        common
    };
    let group_labels: BTreeMap<&str, &str> = group_by
        .iter()
        .filter_map(|k| {
            let v = alerts.first()?.labels.get(k)?;
            Some((k.as_str(), v.as_str()))
        })
        .collect();
    let status = if alerts.iter().any(|a| a.status == AlertStatus::Firing) {
        "firing"
    } else {
        "resolved"
    };
    let group_key = format!(
        "{{}}:{{{}}}",
        group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common(|n| &n.labels),
        "commonAnnotations": common(|n| &n.annotations),
        "externalURL": "",
        "alerts": alerts.iter().map(Notification::alertmanager_alert).collect::<Vec<_>>(),
    })
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is `sha256=<hex>` of the HMAC-SHA256 of `body` under
/// `secret`, compared in constant time (`hmac`'s `verify_slice`).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(tag) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// A webhook receiver: notifications grouped into Alertmanager bodies and
/// handed to its delivery thread.
pub struct WebhookSender {
    config: WebhookConfig,
    queue: DeliveryQueue<Vec<u8>>,
}

impl WebhookSender {
    /// Start the delivery thread. Fails if `secret_env` names a variable
    /// that is not set (a missing secret must not silently mean "unsigned").
    pub fn start(config: WebhookConfig) -> Result<Self, String> {
        let secret = match &config.secret_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| format!("webhook {}: {var} is not set", config.name))?
                    .into_bytes(),
            ),
            None => None,
        };
        let transport = HttpPost {
            url: config.url.clone(),
            secret,
            agent: ureq::AgentBuilder::new().timeout(config.timeout).build(),
        };
        let policy = RetryPolicy {
            backoff: Backoff {
                initial: config.initial_backoff,
                max: config.max_backoff,
            },
            queue_capacity: config.queue_capacity,
            min_interval: RetryPolicy::interval_for(config.max_per_minute),
        };
        let queue = DeliveryQueue::start(&config.name, transport, policy)
            .map_err(|e| format!("webhook {}: {e}", config.name))?;
        Ok(Self { config, queue })
    }

    /// Queue one group (made by [`infermon_operators::alerts::Grouper`] over
    /// `group_by`) as one request; never blocks on the receiver.
    pub fn send(&self, group_by: &[String], alerts: &[Notification]) {
        let bytes = body(&self.config.name, group_by, alerts).to_string();
        self.queue.push(bytes.into_bytes());
    }

    /// Deliver what is queued, waiting at most `deadline`; then stop.
    pub fn close(self, deadline: Duration) -> DeliveryStats {
        self.queue.close(deadline)
    }
}

/// One POST of a body, signed when there is a secret.
struct HttpPost {
    url: String,
    secret: Option<Vec<u8>>,
    agent: ureq::Agent,
}

impl Transport for HttpPost {
    type Item = Vec<u8>;

    fn attempt(&mut self, body: &Vec<u8>) -> Outcome {
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        if let Some(secret) = &self.secret {
            req = req.set("X-Infermon-Signature", &signature(secret, body));
        }
        http_outcome(req.send_bytes(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn body_is_alertmanager_v4() {
        let n = |model: &str, status| Notification {
            status,
            labels: [
                ("alertname", "x"),
                ("model", model),
                ("severity", "warning"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            annotations: [("summary".to_string(), "s".to_string())].into(),
            starts_at_ms: 0,
            ends_at_ms: None,
            value: 1.0,
            at_ms: 0,
        };
        let group = ["alertname".to_string(), "model".to_string()];
        let b = body(
            "oncall",
            &group,
            &[n("m", AlertStatus::Resolved), n("m", AlertStatus::Firing)],
        );
        assert_eq!(b["version"], "4");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["receiver"], "oncall");
        assert_eq!(b["groupLabels"], json!({"alertname": "x", "model": "m"}));
        assert_eq!(b["commonLabels"]["severity"], "warning");
        assert_eq!(b["commonAnnotations"]["summary"], "s");
        assert_eq!(b["alerts"].as_array().unwrap().len(), 2);
        assert_eq!(b["groupKey"], "{}:{alertname=\"x\", model=\"m\"}");
    }

    #[test]
    fn hook_signatures_verify_in_constant_time() {
        let signed = signature(b"k", b"body");
        assert!(verify(b"k", b"body", &signed));
        assert!(!verify(b"k", b"bodY", &signed));
        assert!(!verify(b"k", b"body", &signed[..signed.len() - 1]));
    }
}
