//! Webhook delivery: Alertmanager v4 bodies, optional HMAC-SHA256 signature,
//! retries with capped exponential backoff and jitter on 5xx / 429 / network
//! errors (`Retry-After` honoured), no retry on other 4xx, and nothing but a
//! 2xx counts as delivered.
//!
//! Delivery runs on its own thread behind a bounded queue, so a slow or dead
//! receiver never blocks the data path: while it is down, notifications
//! wait; when the queue is full the oldest group is dropped, counted and
//! logged. A blocking HTTP client (ureq) on one thread is all this needs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use super::notification::{AlertStatus, Notification};

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
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between retries.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Groups waiting for delivery; beyond this the oldest is dropped.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Labels that group notifications into one request.
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(500)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_queue() -> usize {
    1000
}
fn default_group_by() -> Vec<String> {
    vec!["alertname".into(), "model".into()]
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
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What one POST came to.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    Delivered,
    /// Worth retrying (5xx, 429, network); the server may say when.
    Retry(String, Option<Duration>),
    /// Never worth retrying (other 4xx).
    Reject(String),
}

/// Delivery counters, for logs, `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Requests answered with 2xx.
    pub delivered: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Groups the receiver refused with a 4xx (not retried).
    pub rejected: u64,
    /// Groups dropped because the queue was full.
    pub dropped: u64,
    /// Groups still queued when the sender was closed.
    pub undelivered: u64,
}

#[derive(Default)]
struct Queue {
    groups: VecDeque<Vec<u8>>,
    closing: bool,
    /// A delivery is in progress (the queue is not yet drained).
    busy: bool,
    stats: WebhookStats,
}

/// A webhook receiver with its delivery thread.
pub struct WebhookSender {
    config: WebhookConfig,
    shared: Arc<(Mutex<Queue>, Condvar)>,
    thread: Option<JoinHandle<()>>,
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
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let worker = Worker {
            config: config.clone(),
            secret,
            agent: ureq::AgentBuilder::new().timeout(config.timeout).build(),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("webhook {}", config.name))
            .spawn(move || worker.run())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            shared,
            thread: Some(thread),
        })
    }

    /// Queue notifications, one request per group; never blocks on the
    /// receiver.
    pub fn send(&self, notifications: &[Notification]) {
        let mut groups: BTreeMap<Vec<&str>, Vec<Notification>> = BTreeMap::new();
        for n in notifications {
            let key = self
                .config
                .group_by
                .iter()
                .map(|k| n.labels.get(k).map_or("", String::as_str))
                .collect();
            groups.entry(key).or_default().push(n.clone());
        }
        let (lock, wake) = &*self.shared;
        let mut q = lock.lock().expect("webhook queue lock");
        for alerts in groups.values() {
            let bytes = body(&self.config.name, &self.config.group_by, alerts).to_string();
            if q.groups.len() >= self.config.queue_capacity.max(1) {
                q.groups.pop_front();
                q.stats.dropped += 1;
                tracing::warn!(
                    receiver = %self.config.name,
                    capacity = self.config.queue_capacity,
                    "webhook queue full: dropped the oldest notification group"
                );
            }
            q.groups.push_back(bytes.into_bytes());
        }
        wake.notify_all();
    }

    /// Deliver what is queued, waiting at most `deadline`; then stop.
    pub fn close(mut self, deadline: Duration) -> WebhookStats {
        let (lock, wake) = &*self.shared;
        let until = Instant::now() + deadline;
        let mut q = lock.lock().expect("webhook queue lock");
        while (!q.groups.is_empty() || q.busy) && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            q = wake.wait_timeout(q, left).expect("webhook queue lock").0;
        }
        q.closing = true;
        q.stats.undelivered = q.groups.len() as u64 + u64::from(q.busy);
        let stats = q.stats;
        drop(q);
        wake.notify_all();
        if stats.undelivered > 0 {
            tracing::error!(
                receiver = %self.config.name,
                undelivered = stats.undelivered,
                "webhook receiver still failing at shutdown; notification groups not delivered"
            );
        } else if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        stats
    }
}

struct Worker {
    config: WebhookConfig,
    secret: Option<Vec<u8>>,
    agent: ureq::Agent,
    shared: Arc<(Mutex<Queue>, Condvar)>,
}

impl Worker {
    fn run(self) {
        let (lock, wake) = &*self.shared;
        loop {
            let body = {
                let mut q = lock.lock().expect("webhook queue lock");
                loop {
                    if q.closing {
                        return;
                    }
                    if let Some(b) = q.groups.pop_front() {
                        q.busy = true;
                        break b;
                    }
                    q = wake.wait(q).expect("webhook queue lock");
                }
            };
            let mut backoff = self.config.initial_backoff;
            loop {
                match self.post(&body) {
                    Attempt::Delivered => {
                        lock.lock().expect("webhook queue lock").stats.delivered += 1;
                        break;
                    }
                    Attempt::Reject(why) => {
                        tracing::error!(receiver = %self.config.name, %why, "webhook refused the notification; not retrying");
                        lock.lock().expect("webhook queue lock").stats.rejected += 1;
                        break;
                    }
                    Attempt::Retry(why, after) => {
                        let wait = after.unwrap_or_else(|| jitter(backoff));
                        tracing::warn!(receiver = %self.config.name, %why, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
                        {
                            let mut q = lock.lock().expect("webhook queue lock");
                            q.stats.retries += 1;
                            if q.closing {
                                return;
                            }
                        }
                        std::thread::sleep(wait.min(self.config.max_backoff));
                        backoff = (backoff * 2).min(self.config.max_backoff);
                    }
                }
            }
            lock.lock().expect("webhook queue lock").busy = false;
            wake.notify_all();
        }
    }

    fn post(&self, body: &[u8]) -> Attempt {
        let mut req = self
            .agent
            .post(&self.config.url)
            .set("Content-Type", "application/json");
        if let Some(secret) = &self.secret {
            req = req.set("X-Infermon-Signature", &signature(secret, body));
        }
        match req.send_bytes(body) {
            Ok(r) if (200..300).contains(&r.status()) => Attempt::Delivered,
            Ok(r) => Attempt::Retry(format!("HTTP {}", r.status()), None),
            Err(ureq::Error::Status(code, r)) => {
                let after = r
                    .header("Retry-After")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = r.into_string().unwrap_or_default();
                let why = format!(
                    "HTTP {code}: {}",
                    text.chars().take(200).collect::<String>()
                );
                if code == 429 || code >= 500 {
                    Attempt::Retry(why, after)
                } else {
                    Attempt::Reject(why)
                }
            }
            Err(e) => Attempt::Retry(e.to_string(), None),
        }
    }
}

/// `d` scaled by a random factor in [0.5, 1.5), so retries of many senders
/// do not arrive in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.5))
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
}
