//! Grouping for receivers, as Alertmanager does it: notifications with the
//! same `group_by` labels travel together; a new group waits `group_wait`
//! to collect its first batch, changes to a group go out at most every
//! `group_interval`, and a group still firing is re-sent every
//! `repeat_interval`. Time is event time, so replays stay deterministic.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::notification::{AlertStatus, Notification};

/// Grouping settings (`[alerts.grouping]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupingConfig {
    /// Labels that make a group.
    pub group_by: Vec<String>,
    /// A new group waits this long for more alerts before its first send.
    #[serde(with = "humantime_serde")]
    pub group_wait: Duration,
    /// Changes to a group that was sent wait at least this long.
    #[serde(with = "humantime_serde")]
    pub group_interval: Duration,
    /// A group whose alerts still fire is sent again after this long.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        Self {
            group_by: vec!["alertname".into(), "model".into()],
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(5 * 60),
            repeat_interval: Duration::from_secs(4 * 3600),
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    /// Latest notification per alert (fingerprint).
    alerts: BTreeMap<String, Notification>,
    /// Something changed since the last send.
    changed: bool,
    /// When the first alert arrived.
    created: i64,
    last_sent: Option<i64>,
}

/// Groups notifications and says which groups are due.
#[derive(Debug, Default)]
pub struct Grouper {
    config: GroupingConfig,
    groups: BTreeMap<Vec<String>, Group>,
}

impl Grouper {
    /// An empty grouper.
    pub fn new(config: GroupingConfig) -> Self {
        Self {
            config,
            groups: BTreeMap::new(),
        }
    }

    /// The labels groups are made of.
    pub fn group_by(&self) -> &[String] {
        &self.config.group_by
    }

    /// Take notifications (made at event time `now`).
    pub fn add(&mut self, notifications: &[Notification], now: i64) {
        for n in notifications {
            let key = self
                .config
                .group_by
                .iter()
                .map(|k| n.labels.get(k).cloned().unwrap_or_default())
                .collect();
            let g = self.groups.entry(key).or_insert_with(|| Group {
                created: now,
                ..Group::default()
            });
            g.alerts.insert(n.fingerprint(), n.clone());
            g.changed = true;
        }
    }

    /// Groups due at event time `now` (or all pending ones, when `flush`).
    /// Resolved alerts leave their group once sent.
    pub fn due(&mut self, now: i64, flush: bool) -> Vec<Vec<Notification>> {
        let ms = |d: Duration| d.as_millis() as i64;
        let mut out = Vec::new();
        for g in self.groups.values_mut() {
            let firing = g.alerts.values().any(|n| n.status == AlertStatus::Firing);
            let send = match g.last_sent {
                None => g.changed && (flush || now - g.created >= ms(self.config.group_wait)),
                Some(last) if g.changed => flush || now - last >= ms(self.config.group_interval),
                Some(last) => firing && !flush && now - last >= ms(self.config.repeat_interval),
            };
            if !send {
                continue;
            }
            out.push(g.alerts.values().cloned().collect());
            g.alerts.retain(|_, n| n.status == AlertStatus::Firing);
            g.changed = false;
            g.last_sent = Some(now);
        }
        self.groups.retain(|_, g| !g.alerts.is_empty() || g.changed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn n(name: &str, model: &str, version: &str, status: AlertStatus) -> Notification {
        Notification {
            status,
            labels: [
                ("alertname", name),
                ("model", model),
                ("model_version", version),
                ("severity", "warning"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            annotations: BTreeMap::new(),
            starts_at_ms: 0,
            ends_at_ms: None,
            value: 1.0,
            at_ms: 0,
        }
    }

    fn sizes(groups: &[Vec<Notification>]) -> Vec<usize> {
        groups.iter().map(Vec::len).collect()
    }

    #[test]
    fn group_wait_collects_then_group_interval_spaces_updates() {
        let mut g = Grouper::new(GroupingConfig::default());
        g.add(&[n("drift", "m", "1", AlertStatus::Firing)], 0);
        assert!(g.due(10 * S, false).is_empty(), "still in group_wait");
        g.add(&[n("drift", "m", "2", AlertStatus::Firing)], 20 * S);
        g.add(&[n("drift", "other", "1", AlertStatus::Firing)], 20 * S);
        // At 30 s the first group goes out with both alerts; the other
        // group's wait started at 20 s.
        assert_eq!(sizes(&g.due(30 * S, false)), vec![2]);
        assert_eq!(sizes(&g.due(50 * S, false)), vec![1]);
        // A change to the first group waits for group_interval (5 min).
        g.add(&[n("drift", "m", "1", AlertStatus::Resolved)], 60 * S);
        assert!(g.due(120 * S, false).is_empty());
        let update = g.due(330 * S, false);
        assert_eq!(sizes(&update), vec![2], "the whole group, current states");
        assert!(update[0].iter().any(|n| n.status == AlertStatus::Resolved));
    }

    #[test]
    fn firing_groups_repeat_and_resolved_alerts_leave() {
        let mut g = Grouper::new(GroupingConfig::default());
        g.add(&[n("x", "m", "1", AlertStatus::Firing)], 0);
        assert_eq!(sizes(&g.due(30 * S, false)), vec![1]);
        assert!(g.due(3600 * S, false).is_empty());
        assert_eq!(
            sizes(&g.due(4 * 3600 * S + 30 * S, false)),
            vec![1],
            "repeat"
        );
        g.add(&[n("x", "m", "1", AlertStatus::Resolved)], 5 * 3600 * S);
        assert_eq!(
            sizes(&g.due(5 * 3600 * S, true)),
            vec![1],
            "flush sends now"
        );
        assert!(g.groups.is_empty(), "resolved and sent: the group is gone");
        assert!(g.due(10 * 3600 * S, false).is_empty());
    }
}
