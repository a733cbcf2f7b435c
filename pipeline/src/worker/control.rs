//! Commands to every worker: the control topic (`infermon.control`, keyed
//! by model) and the alert hook that feeds it.
//!
//! A rollback can come from `infermon model rollback --model M --brokers B`
//! or from an alert: the worker's `POST /alerts` takes the Alertmanager
//! webhook body infermon's alert engine sends (so a `[[alerts.webhooks]]`
//! receiver pointing at a worker is the whole hook), and every firing alert
//! named in a model's `rollback_on` becomes a rollback command on the
//! control topic. Every worker reads the whole topic (a consumer group of
//! its own) and acts on commands newer than its start; a command names
//! the version it takes out, so one delivered twice, or to a worker that
//! already rolled back, changes nothing.

use std::sync::mpsc;

use infermon_inference::serving::{ControlCommand, RollbackRules, commands_for_alerts};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::Value;
use subtle::ConstantTimeEq as _;

use crate::sources::kafka::KafkaConfig;
use crate::telemetry::now_ms;

/// Reads the whole control topic in a consumer group of this worker's own.
pub struct ControlConsumer {
    consumer: BaseConsumer,
    started_ms: i64,
}

impl ControlConsumer {
    /// Subscribe to `topic` as `<group_id>.control.<worker id>`.
    pub fn new(kafka: &KafkaConfig, topic: &str, group: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka
            .consumer_config(
                group,
                &[
                    ("enable.auto.commit", "true"),
                    ("auto.offset.reset", "earliest"),
                ],
            )?
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            consumer,
            started_ms: now_ms(),
        })
    }

    /// Commands that arrived since the last call (never blocks). Malformed
    /// messages are logged and skipped: the topic is ours, not user input.
    pub fn poll(&self) -> Vec<ControlCommand> {
        let mut out = Vec::new();
        while let Some(m) = self.consumer.poll(std::time::Duration::ZERO) {
            match m {
                Err(e) => tracing::debug!(error = %e, "control topic"),
                Ok(m) => {
                    match serde_json::from_slice::<ControlCommand>(m.payload().unwrap_or_default())
                    {
                        Ok(c) if c.ts >= self.started_ms => out.push(c),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, offset = m.offset(), "bad control message skipped")
                        }
                    }
                }
            }
        }
        out
    }
}

/// The worker's `POST /alerts` hook: rollback commands for firing alerts
/// that match `rules` go to `tx`. With a secret, bodies without a valid
/// `X-Infermon-Signature: sha256=<hex>` are refused (401), with a bearer
/// token, requests without it.
pub fn alerts_hook(
    rules: RollbackRules,
    auth: HookAuth,
    tx: mpsc::Sender<ControlCommand>,
) -> crate::telemetry::AlertsHook {
    // tiny_http's handler thread owns the hook; the sender is behind a
    // mutex because mpsc::Sender is not Sync.
    let tx = std::sync::Mutex::new(tx);
    Box::new(move |req, body| {
        let tx = tx.lock().expect("hook sender lock");
        handle_alerts(req, body, &rules, &auth, &tx)
    })
}

/// Who may post to `/alerts`: with neither set, anyone on the network.
#[derive(Debug, Clone, Default)]
pub struct HookAuth {
    /// HMAC secret of `X-Infermon-Signature` (infermon's own webhooks).
    pub secret: Option<Vec<u8>>,
    /// Bearer token (an Alertmanager `webhook_config`).
    pub bearer_token: Option<String>,
}

impl HookAuth {
    /// Whether the request proves one of the configured credentials.
    fn admits(&self, req: &tiny_http::Request, body: &[u8]) -> bool {
        if self.secret.is_none() && self.bearer_token.is_none() {
            return true;
        }
        let header = |name: &'static str| {
            req.headers()
                .iter()
                .find(|h| h.field.equiv(name))
                .map(|h| h.value.as_str().to_string())
                .unwrap_or_default()
        };
        // The same signature the alert engine's webhooks carry.
        let signed = self.secret.as_ref().is_some_and(|secret| {
            crate::alerts::webhook::verify(secret, body, &header("X-Infermon-Signature"))
        });
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        let bearer = self.bearer_token.as_ref().is_some_and(|token| {
            let authorization = header("Authorization");
            authorization
                .split_once(' ')
                .is_some_and(|(scheme, given)| {
                    scheme.eq_ignore_ascii_case("bearer")
                        && bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
                })
        });
        signed || bearer
    }
}

fn handle_alerts(
    req: &tiny_http::Request,
    body: &[u8],
    rules: &RollbackRules,
    auth: &HookAuth,
    tx: &mpsc::Sender<ControlCommand>,
) -> (u16, String) {
    if !auth.admits(req, body) {
        tracing::warn!("alert hook: no valid X-Infermon-Signature or bearer token; refused");
        return (
            401,
            "missing or wrong X-Infermon-Signature (or bearer token)\n".into(),
        );
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return (400, format!("body is not JSON: {e}\n")),
    };
    match commands_for_alerts(&parsed, rules) {
        Err(e) => (400, format!("{e}\n")),
        Ok(commands) => {
            let n = commands.len();
            for c in commands {
                tracing::warn!(model = %c.model, from = ?c.from_version, reason = %c.reason, "alert hook: rollback requested");
                let _ = tx.send(c);
            }
            (200, format!("{{\"rollbacks\": {n}}}\n"))
        }
    }
}
