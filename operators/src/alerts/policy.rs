//! What happens to a notification between the rules and the receivers:
//! silences (label matchers with an expiry) and inhibition (a firing
//! critical alert mutes warnings of the same model), as in Alertmanager.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::engine::Restored;
use super::notification::{AlertStatus, Notification, rfc3339};

/// One silence (`[[alerts.silences]]`, or a line of the silences file that
/// `infermon silence add` appends to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    /// Labels that must all be equal (`model = "ads-ctr"`); a value starting
    /// with `!` must differ instead.
    pub matchers: BTreeMap<String, String>,
    /// When the silence ends (RFC 3339). Compared with the notification's
    /// event time, so a replay honours silences of its own period.
    pub ends_at: String,
    /// When it starts (RFC 3339; default: always).
    #[serde(default)]
    pub starts_at: Option<String>,
    /// Who and why.
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    /// Whether `n` is muted by this silence.
    pub fn mutes(&self, n: &Notification) -> bool {
        let in_time = parse_ms(&self.ends_at).is_some_and(|end| n.at_ms < end)
            && self
                .starts_at
                .as_deref()
                .is_none_or(|s| parse_ms(s).is_some_and(|start| n.at_ms >= start));
        in_time
            && self.matchers.iter().all(|(k, want)| {
                let have = n.labels.get(k).map_or("", String::as_str);
                match want.strip_prefix('!') {
                    Some(not) => have != not,
                    None => have == want,
                }
            })
    }

    /// Whether the silence is still in force at `now_ms`.
    pub fn active_at(&self, now_ms: i64) -> bool {
        parse_ms(&self.ends_at).is_some_and(|end| now_ms < end)
    }

    /// Check the times parse; the error names the silence.
    pub fn validate(&self) -> Result<(), String> {
        for t in std::iter::once(&self.ends_at).chain(&self.starts_at) {
            if parse_ms(t).is_none() {
                return Err(format!(
                    "silence {:?}: {t:?} is not an RFC 3339 time",
                    self.matchers
                ));
            }
        }
        Ok(())
    }
}

/// RFC 3339 → ms since the epoch.
pub fn parse_ms(t: &str) -> Option<i64> {
    let st = humantime::parse_rfc3339_weak(t).ok()?;
    let d = st.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Counters of the policy stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Notifications muted by a silence.
    pub silenced: u64,
    /// Warnings muted by a firing critical alert of the same model.
    pub inhibited: u64,
}

/// Silences and inhibition, applied in that order.
///
/// Inhibition holds only while the inhibiting alert fires, as in
/// Alertmanager: a warning muted by a firing critical of its model is
/// announced at the first evaluation after the last such critical resolved,
/// if it still fires then (and its resolve later); a warning that resolves
/// while muted, or at that first evaluation, was never announced, so its
/// resolve is muted too (Alertmanager's next group flush behaves the same).
#[derive(Debug, Default)]
pub struct Policy {
    silences: Vec<Silence>,
    inhibit: bool,
    /// Fingerprints of firing critical alerts, per model.
    critical: BTreeMap<String, BTreeSet<String>>,
    /// Firing warnings held back by a firing critical, by fingerprint.
    muted: BTreeMap<String, Notification>,
    /// Muted warnings whose critical resolved at the last evaluation: they
    /// go out at this one if they still fire.
    releasing: Vec<String>,
    stats: PolicyStats,
}

impl Policy {
    /// A policy with these silences; `inhibit` turns inhibition on.
    pub fn new(silences: Vec<Silence>, inhibit: bool) -> Self {
        Self {
            silences,
            inhibit,
            ..Self::default()
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PolicyStats {
        self.stats
    }

    /// The notifications of one evaluation at event time `now` that go out.
    pub fn apply(&mut self, notifications: Vec<Notification>, now: i64) -> Vec<Notification> {
        // Critical alerts first, silenced or not (a silenced outage still
        // explains its warnings), so a warning and its critical made in the
        // same evaluation are judged together, whatever their order.
        let mut lifted = BTreeSet::new();
        for n in &notifications {
            if n.labels.get("severity").map(String::as_str) == Some("critical") {
                let model = n.labels.get("model").cloned().unwrap_or_default();
                let set = self.critical.entry(model.clone()).or_default();
                match n.status {
                    AlertStatus::Firing => {
                        set.insert(n.fingerprint());
                    }
                    AlertStatus::Resolved => {
                        if set.remove(&n.fingerprint()) && set.is_empty() {
                            lifted.insert(model);
                        }
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(notifications.len());
        for n in notifications {
            if self.silenced(&n) {
                continue;
            }
            let severity = n.labels.get("severity").map_or("", String::as_str);
            if self.inhibit && severity == "warning" {
                let model = n.labels.get("model").map_or("", String::as_str);
                let fingerprint = n.fingerprint();
                let muted = match n.status {
                    AlertStatus::Firing => self.critical_firing(model),
                    AlertStatus::Resolved => self.muted.remove(&fingerprint).is_some(),
                };
                if muted {
                    if n.status == AlertStatus::Firing {
                        self.muted.insert(fingerprint, n);
                    }
                    self.stats.inhibited += 1;
                    continue;
                }
            }
            out.push(n);
        }
        // Warnings whose critical resolved at the last evaluation and that
        // still fire (and are not muted again) are announced now.
        for fingerprint in std::mem::take(&mut self.releasing) {
            let Some(model) = self.muted.get(&fingerprint).map(model_of) else {
                continue; // resolved meanwhile: never announced
            };
            if self.critical_firing(&model) {
                continue;
            }
            let mut n = self.muted.remove(&fingerprint).expect("looked up above");
            n.at_ms = n.at_ms.max(now);
            if !self.silenced(&n) {
                out.push(n);
            }
        }
        self.releasing = self
            .muted
            .iter()
            .filter(|(_, n)| lifted.contains(&model_of(n)))
            .map(|(f, _)| f.clone())
            .collect();
        out
    }

    /// Critical alerts still firing when an earlier run stopped go on
    /// inhibiting their model's warnings.
    pub fn restore<'a>(&mut self, alerts: impl IntoIterator<Item = &'a Restored>) {
        for r in alerts {
            if r.status == AlertStatus::Firing
                && r.labels.get("severity").map(String::as_str) == Some("critical")
            {
                let model = r.labels.get("model").cloned().unwrap_or_default();
                let fingerprint = super::notification::fingerprint(&r.labels);
                self.critical.entry(model).or_default().insert(fingerprint);
            }
        }
    }

    /// Whether a critical alert of `model` fires.
    fn critical_firing(&self, model: &str) -> bool {
        self.critical.get(model).is_some_and(|s| !s.is_empty())
    }

    /// Whether a silence mutes `n` (and count it).
    fn silenced(&mut self, n: &Notification) -> bool {
        let hit = self.silences.iter().any(|s| s.mutes(n));
        if hit {
            self.stats.silenced += 1;
        }
        hit
    }
}

fn model_of(n: &Notification) -> String {
    n.labels.get("model").cloned().unwrap_or_default()
}

/// A table of silences for `infermon silence ls`.
pub fn silences_table(silences: &[Silence], now_ms: i64) -> String {
    let mut out = String::from("state     ends_at                   matchers  comment\n");
    for s in silences {
        let matchers: Vec<String> = s.matchers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = if s.active_at(now_ms) {
            "active"
        } else {
            "expired"
        };
        let ends = parse_ms(&s.ends_at).map_or(s.ends_at.clone(), rfc3339);
        out.push_str(&format!(
            "{state:<9} {ends:<25} {}  {}\n",
            matchers.join(","),
            s.comment
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, severity: &str, model: &str, status: AlertStatus, at_ms: i64) -> Notification {
        Notification {
            status,
            labels: [
                ("alertname", name),
                ("severity", severity),
                ("model", model),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            annotations: BTreeMap::new(),
            starts_at_ms: at_ms,
            ends_at_ms: None,
            value: 1.0,
            at_ms,
        }
    }

    fn silence(matchers: &[(&str, &str)], ends_at: &str) -> Silence {
        Silence {
            matchers: matchers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ends_at: ends_at.into(),
            starts_at: None,
            comment: "maintenance".into(),
        }
    }

    #[test]
    fn silences_match_labels_until_they_expire() {
        let s = silence(
            &[("model", "ads"), ("severity", "!critical")],
            "1970-01-01T00:10:00Z",
        );
        let mut p = Policy::new(vec![s], false);
        let out = p.apply(
            vec![
                n("drift", "warning", "ads", AlertStatus::Firing, 60_000),
                n("errors", "critical", "ads", AlertStatus::Firing, 60_000),
                n("drift", "warning", "other", AlertStatus::Firing, 60_000),
                n(
                    "drift",
                    "warning",
                    "ads",
                    AlertStatus::Resolved,
                    11 * 60_000,
                ),
            ],
            11 * 60_000,
        );
        let kept: Vec<(&str, &str)> = out
            .iter()
            .map(|n| (n.labels["model"].as_str(), n.status.as_str()))
            .collect();
        assert_eq!(
            kept,
            vec![("ads", "firing"), ("other", "firing"), ("ads", "resolved")]
        );
        assert_eq!(p.stats().silenced, 1);
    }

    #[test]
    fn a_firing_critical_inhibits_warnings_of_the_same_model() {
        let mut p = Policy::new(Vec::new(), true);
        let mut kept = Vec::new();
        // One apply per evaluation; in the first, the warning comes first.
        for batch in [
            vec![
                n("slow", "warning", "m", AlertStatus::Firing, 1),
                n("errors", "critical", "m", AlertStatus::Firing, 1),
                n("slow", "warning", "other", AlertStatus::Firing, 1),
            ],
            vec![n("slow", "warning", "m", AlertStatus::Resolved, 3)],
            vec![n("errors", "critical", "m", AlertStatus::Resolved, 4)],
            vec![n("slow", "warning", "m", AlertStatus::Firing, 5)],
        ] {
            let now = batch.iter().map(|n| n.at_ms).max().unwrap_or_default();
            kept.extend(p.apply(batch, now).into_iter().map(|n| {
                let l = |k: &str| n.labels[k].clone();
                (l("alertname"), l("model"), n.at_ms)
            }));
        }
        let want = [
            ("errors", "m", 1),
            ("slow", "other", 1),
            ("errors", "m", 4),
            ("slow", "m", 5),
        ]
        .map(|(a, m, t)| (a.to_string(), m.to_string(), t));
        assert_eq!(kept, want);
        assert_eq!(
            p.stats().inhibited,
            2,
            "the muted warning's resolve is muted too"
        );
    }

    #[test]
    fn inhibition_ends_when_the_critical_resolves() {
        let mut p = Policy::new(Vec::new(), true);
        let mut kept = Vec::new();
        // (evaluation time, notifications).
        for (now, batch) in [
            (
                1,
                vec![n("errors", "critical", "m", AlertStatus::Firing, 1)],
            ),
            (
                2,
                vec![
                    n("slow", "warning", "m", AlertStatus::Firing, 2),
                    n("drift", "warning", "m", AlertStatus::Firing, 2),
                    n("queue", "warning", "m", AlertStatus::Firing, 2),
                    n("drift", "warning", "other", AlertStatus::Firing, 2),
                ],
            ),
            // One muted warning resolves while the critical still fires.
            (
                3,
                vec![n("drift", "warning", "m", AlertStatus::Resolved, 3)],
            ),
            (
                4,
                vec![n("errors", "critical", "m", AlertStatus::Resolved, 4)],
            ),
            // The next evaluation: `queue` resolves right then (never
            // announced), `slow` still fires (announced now).
            (
                5,
                vec![n("queue", "warning", "m", AlertStatus::Resolved, 5)],
            ),
            (6, vec![]),
            (
                30,
                vec![n("slow", "warning", "m", AlertStatus::Resolved, 30)],
            ),
        ] {
            kept.extend(p.apply(batch, now).into_iter().map(|n| {
                let l = |k: &str| n.labels[k].clone();
                (l("alertname"), l("model"), n.status.as_str(), n.at_ms)
            }));
        }
        let want = [
            ("errors", "m", "firing", 1),
            ("drift", "other", "firing", 2),
            ("errors", "m", "resolved", 4),
            ("slow", "m", "firing", 5),
            ("slow", "m", "resolved", 30),
        ]
        .map(|(a, m, s, t)| (a.to_string(), m.to_string(), s, t));
        assert_eq!(kept, want);
        assert_eq!(p.stats().inhibited, 5);
    }

    #[test]
    fn a_critical_firing_again_before_the_release_keeps_the_mute() {
        let mut p = Policy::new(Vec::new(), true);
        let mut kept = Vec::new();
        for (now, batch) in [
            (
                1,
                vec![n("errors", "critical", "m", AlertStatus::Firing, 1)],
            ),
            (2, vec![n("slow", "warning", "m", AlertStatus::Firing, 2)]),
            (
                3,
                vec![n("errors", "critical", "m", AlertStatus::Resolved, 3)],
            ),
            (4, vec![n("oom", "critical", "m", AlertStatus::Firing, 4)]),
            (5, vec![n("oom", "critical", "m", AlertStatus::Resolved, 5)]),
            (6, vec![]),
        ] {
            kept.extend(
                p.apply(batch, now)
                    .into_iter()
                    .map(|n| (n.labels["alertname"].clone(), n.at_ms)),
            );
        }
        let names: Vec<(&str, i64)> = kept.iter().map(|(a, t)| (a.as_str(), *t)).collect();
        assert_eq!(
            names,
            [
                ("errors", 1),
                ("errors", 3),
                ("oom", 4),
                ("oom", 5),
                ("slow", 6)
            ]
        );
    }

    #[test]
    fn bad_times_are_clear_errors() {
        let err = silence(&[("model", "m")], "tomorrow")
            .validate()
            .unwrap_err();
        assert!(
            err.contains("\"tomorrow\" is not an RFC 3339 time"),
            "{err}"
        );
    }
}
