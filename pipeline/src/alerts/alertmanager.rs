//! Alertmanager as a receiver: infermon becomes one more alert source, the
//! way Prometheus is, and the team's Alertmanager does the routing, grouping,
//! silences and inhibition it already does for everything else.
//!
//! Every notification goes to `POST {url}{path_prefix}/api/v2/alerts` of
//! each Alertmanager listed (the members of one HA cluster each get it, as
//! Prometheus sends to all). As in Prometheus, a firing alert is re-sent
//! every `resend_delay` (wall clock) with `endsAt` four resend delays ahead,
//! so Alertmanager resolves it by itself when infermon dies; a resolved one
//! is sent once with its real `endsAt`. Retries are the delivery thread's
//! ([`super::delivery`]): 5xx, 429 and network errors again, other 4xx not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::delivery::{DeliveryQueue, DeliveryStats, RetryPolicy, Transport, defaults};
use crate::retry::http_outcome;
use crate::retry::{Backoff, Outcome};
use infermon_operators::alerts::notification::{AlertStatus, Notification, rfc3339};

/// One Alertmanager cluster (`[[alerts.alertmanagers]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Receiver name, for logs and counters.
    pub name: String,
    /// Base URL of every Alertmanager of the cluster, e.g.
    /// `http://am-1:9093`; each gets every alert.
    pub urls: Vec<String>,
    /// Path under which Alertmanager is served (its `--web.route-prefix`),
    /// e.g. `/alertmanager`.
    #[serde(default)]
    pub path_prefix: String,
    /// A firing alert is re-sent this often, with `endsAt` four times this
    /// far ahead (Prometheus' `resend_delay` rule).
    #[serde(default = "default_resend_delay", with = "humantime_serde")]
    pub resend_delay: Duration,
    /// Per-request timeout.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Environment variable holding a bearer token (`Authorization: Bearer`).
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// HTTP basic auth; the password comes from an environment variable.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// `generatorURL` of every alert: `{label}` placeholders are replaced by
    /// the alert's labels (percent-encoded), e.g.
    /// `https://grafana/d/infermon-models?var-model={model}`.
    #[serde(default)]
    pub generator_url: Option<String>,
    /// First retry delay; doubles up to `max_backoff`.
    #[serde(default = "defaults::initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between retries.
    #[serde(default = "defaults::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Requests waiting per Alertmanager; beyond this the oldest is dropped.
    #[serde(default = "defaults::queue")]
    pub queue_capacity: usize,
}

/// HTTP basic auth of an Alertmanager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Environment variable holding the password.
    pub password_env: String,
}

fn default_resend_delay() -> Duration {
    Duration::from_secs(60)
}

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How far ahead a firing alert's `endsAt` is set, in resend delays.
pub const ENDS_AT_RESENDS: u32 = 4;

/// One alert of Alertmanager's v2 API (`postableAlert`). A firing alert
/// ends `ends_in` after `now_ms` (wall clock) unless re-sent; a resolved
/// one carries its real end. Event times ahead of the wall clock (a producer
/// clock up to `max_future_skew` fast) are brought back to it, since
/// Alertmanager refuses an alert that starts after it ends, and keeps a
/// resolved one active until its end.
pub fn postable_alert(
    n: &Notification,
    now_ms: i64,
    ends_in: Duration,
    generator_url: Option<&str>,
) -> Value {
    let starts_at = n.starts_at_ms.min(now_ms);
    let ends_at = match (n.status, n.ends_at_ms) {
        (AlertStatus::Resolved, Some(end)) => end.clamp(starts_at, now_ms.max(starts_at)),
        _ => now_ms + ends_in.as_millis() as i64,
    };
    // Label values go into a URL: percent-encoded.
    let mut link = generator_url.unwrap_or_default().to_string();
    for (k, v) in &n.labels {
        let value = utf8_percent_encode(v, URL_VALUE).to_string();
        link = link.replace(&format!("{{{k}}}"), &value);
    }
    json!({
        "labels": n.labels,
        "annotations": n.annotations,
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
        "generatorURL": link,
    })
}

/// Alerts still firing, by fingerprint: what the resend loop re-sends.
type Active = Arc<Mutex<BTreeMap<String, Notification>>>;

/// An Alertmanager receiver: one delivery queue per Alertmanager and a
/// thread re-sending firing alerts.
pub struct AlertmanagerSender {
    active: Active,
    queues: Arc<Vec<DeliveryQueue<Vec<Notification>>>>,
    stop: Arc<AtomicBool>,
    resender: Option<JoinHandle<()>>,
}

impl AlertmanagerSender {
    /// Start the delivery threads and the resend loop. Fails when a
    /// credential's environment variable is not set, or no URL is given.
    pub fn start(config: AlertmanagerConfig) -> Result<Self, String> {
        let name = &config.name;
        if config.urls.is_empty() {
            return Err(format!("alertmanager {name}: `urls` is empty"));
        }
        if config.resend_delay < Duration::from_secs(1) {
            return Err(format!(
                "alertmanager {name}: resend_delay must be at least 1s (endsAt is 4 of them ahead)"
            ));
        }
        let env = |var: &str| {
            std::env::var(var).map_err(|_| format!("alertmanager {name}: {var} is not set"))
        };
        let authorization = match (&config.bearer_token_env, &config.basic_auth) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "alertmanager {name}: set bearer_token_env or basic_auth, not both"
                ));
            }
            (Some(var), None) => Some(format!("Bearer {}", env(var)?)),
            (None, Some(b)) => {
                let pair = format!("{}:{}", b.username, env(&b.password_env)?);
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
        };
        let policy = RetryPolicy {
            backoff: Backoff {
                initial: config.initial_backoff,
                max: config.max_backoff,
            },
            queue_capacity: config.queue_capacity,
            min_interval: Duration::ZERO,
        };
        let mut queues = Vec::new();
        for url in &config.urls {
            let transport = PostAlerts {
                ends_in: config.resend_delay * ENDS_AT_RESENDS,
                generator_url: config.generator_url.clone(),
                url: format!(
                    "{}{}/api/v2/alerts",
                    url.trim_end_matches('/'),
                    config.path_prefix.trim_end_matches('/')
                ),
                authorization: authorization.clone(),
                agent: ureq::AgentBuilder::new().timeout(config.timeout).build(),
            };
            let queue = DeliveryQueue::start(&format!("{name} {url}"), transport, policy)
                .map_err(|e| format!("alertmanager {name}: {e}"))?;
            queues.push(queue);
        }
        let (active, queues) = (Active::default(), Arc::new(queues));
        let stop = Arc::new(AtomicBool::new(false));
        let resender = {
            let (active, queues, stop) = (active.clone(), queues.clone(), stop.clone());
            let config = config.clone();
            std::thread::Builder::new()
                .name(format!("resend {name}"))
                .spawn(move || resend_loop(&config, &active, &queues, &stop))
                .map_err(|e| format!("alertmanager {name}: {e}"))?
        };
        Ok(Self {
            active,
            queues,
            stop,
            resender: Some(resender),
        })
    }

    /// Hand notifications to every Alertmanager (never blocks on them).
    pub fn send(&self, notifications: &[Notification]) {
        if notifications.is_empty() {
            return;
        }
        // Queued under the lock the resend loop takes too, so a resolve can
        // never be overtaken by a resend of the alert it resolves.
        let mut active = self.active.lock().expect("active alerts lock");
        for n in notifications {
            match n.status {
                AlertStatus::Firing => active.insert(n.fingerprint(), n.clone()),
                AlertStatus::Resolved => active.remove(&n.fingerprint()),
            };
        }
        push(&self.queues, notifications);
    }

    /// Alerts an earlier run left firing: re-sent from the next resend on,
    /// so Alertmanager does not let them expire while they still fire.
    pub fn resume(&self, firing: impl IntoIterator<Item = Notification>) {
        let mut active = self.active.lock().expect("active alerts lock");
        let firing: Vec<Notification> = firing.into_iter().collect();
        for n in &firing {
            active.insert(n.fingerprint(), n.clone());
        }
        // At once: the last resend before the restart may be close to
        // expiring.
        push(&self.queues, &firing);
    }

    /// Stop re-sending, deliver what is queued (at most `deadline` for each
    /// Alertmanager); delivery counts summed over them. Alerts still firing
    /// then end at their `endsAt` in Alertmanager.
    pub fn close(mut self, deadline: Duration) -> DeliveryStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.resender.take() {
            let _ = t.join();
        }
        let queues = Arc::try_unwrap(self.queues)
            .unwrap_or_else(|_| unreachable!("the resend thread, the only other owner, has ended"));
        let mut total = DeliveryStats::default();
        for q in queues {
            let s = q.close(deadline);
            total.delivered += s.delivered;
            total.retries += s.retries;
            total.rejected += s.rejected;
            total.dropped += s.dropped;
            total.undelivered += s.undelivered;
        }
        total
    }
}

/// One request with these alerts to every Alertmanager (its body is made
/// when it is sent, so a retried resend still ends ahead of the clock).
fn push(queues: &[DeliveryQueue<Vec<Notification>>], alerts: &[Notification]) {
    if alerts.is_empty() {
        return;
    }
    for q in queues {
        q.push(alerts.to_vec());
    }
}

fn resend_loop(
    config: &AlertmanagerConfig,
    active: &Active,
    queues: &[DeliveryQueue<Vec<Notification>>],
    stop: &AtomicBool,
) {
    let mut next = Instant::now() + config.resend_delay;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(config.resend_delay));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + config.resend_delay;
        let active = active.lock().expect("active alerts lock");
        let firing: Vec<Notification> = active.values().cloned().collect();
        push(queues, &firing);
    }
}

/// One `POST /api/v2/alerts`.
struct PostAlerts {
    url: String,
    authorization: Option<String>,
    agent: ureq::Agent,
    ends_in: Duration,
    generator_url: Option<String>,
}

impl Transport for PostAlerts {
    type Item = Vec<Notification>;

    fn attempt(&mut self, alerts: &Vec<Notification>) -> Outcome {
        let now = crate::telemetry::now_ms();
        let link = self.generator_url.as_deref();
        let body: Vec<Value> = alerts
            .iter()
            .map(|n| postable_alert(n, now, self.ends_in, link))
            .collect();
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        if let Some(auth) = &self.authorization {
            req = req.set("Authorization", auth);
        }
        http_outcome(req.send_string(&Value::Array(body).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(status: AlertStatus) -> Notification {
        Notification {
            status,
            labels: [
                ("alertname", "errors"),
                ("model", "ads ctr"),
                ("severity", "critical"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            annotations: [("summary".to_string(), "s".to_string())].into(),
            starts_at_ms: 1_763_649_420_000,
            ends_at_ms: (status == AlertStatus::Resolved).then_some(1_763_649_960_000),
            value: 0.08,
            at_ms: 1_763_649_960_000,
        }
    }

    #[test]
    fn firing_alerts_end_ahead_resolved_ones_at_their_end() {
        let now = 1_800_000_000_000;
        let link = Some("https://grafana/d/m?var-model={model}&a={alertname}");
        let ends_in = Duration::from_secs(60) * ENDS_AT_RESENDS;
        let firing = postable_alert(&n(AlertStatus::Firing), now, ends_in, link);
        assert_eq!(firing["startsAt"], "2025-11-20T14:37:00.000Z");
        assert_eq!(firing["endsAt"], rfc3339(now + 240_000));
        assert_eq!(firing["labels"]["model"], "ads ctr");
        assert_eq!(firing["annotations"]["summary"], "s");
        assert_eq!(
            firing["generatorURL"],
            "https://grafana/d/m?var-model=ads%20ctr&a=errors"
        );
        let resolved = postable_alert(&n(AlertStatus::Resolved), now, ends_in, None);
        assert_eq!(resolved["endsAt"], "2025-11-20T14:46:00.000Z");
        assert_eq!(resolved["generatorURL"], "");

        // Event time ahead of the wall clock (a fast producer clock):
        // startsAt never after endsAt, a resolve ends now at the latest.
        let early = 1_763_649_420_000 - 60_000;
        let firing = postable_alert(&n(AlertStatus::Firing), early, ends_in, None);
        assert_eq!(firing["startsAt"], rfc3339(early));
        assert_eq!(firing["endsAt"], rfc3339(early + 240_000));
        let resolved = postable_alert(&n(AlertStatus::Resolved), early, ends_in, None);
        assert_eq!(resolved["startsAt"], rfc3339(early));
        assert_eq!(resolved["endsAt"], rfc3339(early));
    }

    #[test]
    fn credentials_come_from_the_environment_or_fail_at_start() {
        let config: AlertmanagerConfig = toml::from_str(
            r#"
            name = "am"
            urls = ["http://127.0.0.1:1"]
            bearer_token_env = "INFERMON_TEST_UNSET_AM_TOKEN"
        "#,
        )
        .unwrap();
        let err = AlertmanagerSender::start(config.clone()).err().unwrap();
        assert!(
            err.contains("INFERMON_TEST_UNSET_AM_TOKEN is not set"),
            "{err}"
        );
        let none = AlertmanagerConfig {
            urls: Vec::new(),
            bearer_token_env: None,
            ..config
        };
        let err = AlertmanagerSender::start(none).err().unwrap();
        assert!(err.contains("`urls` is empty"), "{err}");
    }
}
