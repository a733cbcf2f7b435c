//! The alert stage shared by replays and the monitor: rules → silences and
//! inhibition → alerts log and (when sending) the grouped receivers.

use std::collections::HashMap;
use std::time::Duration;

use infermon_schemas::Point;

use super::engine::Restored;
use super::grouping::Grouper;
use super::{
    AlertEngine, AlertStatus, AlertmanagerSender, DeliveryStats, EmailSender, Notification, Policy,
    PolicyStats, WebhookSender,
};
use crate::config::Config;
use crate::sinks::alerts_file::AlertsFile;

/// The receivers notifications are delivered to, behind the grouping
/// timers.
#[derive(Default)]
struct Senders {
    grouper: Grouper,
    webhooks: Vec<(String, WebhookSender)>,
    emails: Vec<(String, EmailSender)>,
    /// Alertmanagers: every notification, before silences and grouping.
    alertmanagers: Vec<(String, AlertmanagerSender)>,
}

impl Senders {
    fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.emails.is_empty()
    }

    /// Hand notifications made at event time `now` to the grouper, and send
    /// what is due.
    fn add(&mut self, fired: &[Notification], now: i64) {
        if self.is_empty() {
            return;
        }
        self.grouper.add(fired, now);
        self.dispatch(now, false);
    }

    /// Send the groups due at `now` (all of them when `flush`).
    fn dispatch(&mut self, now: i64, flush: bool) {
        for group in self.grouper.due(now, flush) {
            let by = self.grouper.group_by();
            self.webhooks.iter().for_each(|(_, s)| s.send(by, &group));
            self.emails.iter().for_each(|(_, s)| s.send(&group));
        }
    }

    /// Wait for each queue to drain (at most `deadline` each), then stop;
    /// delivery counts per receiver.
    fn close(self, deadline: Duration) -> Vec<(String, DeliveryStats)> {
        let mut out = Vec::new();
        for (name, s) in self.webhooks {
            out.push((format!("webhook {name}"), s.close(deadline)));
        }
        for (name, s) in self.emails {
            out.push((format!("email {name}"), s.close(deadline)));
        }
        for (name, s) in self.alertmanagers {
            out.push((format!("alertmanager {name}"), s.close(deadline)));
        }
        out
    }
}

/// Rules, policy, log and receivers, driven by points and window ends.
pub struct AlertStage<'a> {
    engine: AlertEngine,
    policy: Policy,
    senders: Senders,
    log: &'a mut AlertsFile,
    /// Receiver name written on alerts-log lines.
    log_receiver: &'static str,
    /// Windows close this often (the slide of hopping windows).
    tick_ms: i64,
    /// Event time of the latest evaluation.
    last_now: i64,
}

impl<'a> AlertStage<'a> {
    /// The stage for `config`; with `send`, the configured webhooks and
    /// mail receivers are started.
    pub fn new(
        config: &Config,
        send: bool,
        log_receiver: &'static str,
        log: &'a mut AlertsFile,
    ) -> anyhow::Result<Self> {
        let mut senders = Senders {
            grouper: Grouper::new(config.alerts.grouping.clone()),
            ..Senders::default()
        };
        if send {
            for w in &config.alerts.webhooks {
                let s = WebhookSender::start(w.clone()).map_err(anyhow::Error::msg)?;
                senders.webhooks.push((w.name.clone(), s));
            }
            for e in &config.alerts.emails {
                let s = EmailSender::start(e.clone()).map_err(anyhow::Error::msg)?;
                senders.emails.push((e.name.clone(), s));
            }
            for a in &config.alerts.alertmanagers {
                let s = AlertmanagerSender::start(a.clone()).map_err(anyhow::Error::msg)?;
                senders.alertmanagers.push((a.name.clone(), s));
            }
        }
        let window = &config.window;
        Ok(Self {
            engine: config.alerts.engine(),
            policy: config.alerts.policy().map_err(anyhow::Error::msg)?,
            senders,
            log,
            log_receiver,
            tick_ms: window.slide.unwrap_or(window.size).as_millis() as i64,
            last_now: i64::MIN,
        })
    }

    /// Judge points; `window_end` when they are a closed window's (then
    /// series without a point get their missing-data treatment and due
    /// groups go out). Returns the notifications that passed the policy
    /// (already logged and handed to the receivers), for `alerts` points.
    pub fn points(
        &mut self,
        points: &[Point],
        window_end: Option<i64>,
    ) -> anyhow::Result<Vec<Notification>> {
        let mut fired = self.engine.observe(points);
        if let Some(end) = window_end {
            fired.extend(self.engine.tick(end, self.tick_ms));
        }
        // Alertmanager routes, silences and inhibits by itself.
        for (_, am) in &self.senders.alertmanagers {
            am.send(&fired);
        }
        // Evaluations without a time of their own (the end of a replay)
        // happen at the latest one's.
        let now = window_end
            .or_else(|| fired.iter().map(|n| n.at_ms).max())
            .unwrap_or(self.last_now)
            .max(self.last_now);
        self.last_now = now;
        let fired = self.policy.apply(fired, now);
        if !fired.is_empty() {
            // On disk before any receiver hears of it: the log is the
            // journal a restarted monitor resumes from.
            self.log.write(self.log_receiver, &fired)?;
            self.log.flush()?;
            let now = fired.iter().map(|n| n.at_ms).max().unwrap_or_default();
            self.senders.add(&fired, now);
        }
        if let Some(end) = window_end {
            self.senders.dispatch(end, false);
        }
        Ok(fired)
    }

    /// Take up alert state an earlier run left in its alerts log.
    pub fn restore(&mut self, restored: HashMap<String, Restored>) {
        self.policy.restore(restored.values());
        let firing: Vec<Notification> = restored
            .values()
            .filter(|r| r.status == AlertStatus::Firing)
            .map(Restored::notification)
            .collect();
        for (_, am) in &self.senders.alertmanagers {
            am.resume(firing.iter().cloned());
        }
        self.engine.restore(restored);
    }

    /// Flush the alerts log (the monitor does so after each window).
    pub fn flush_log(&mut self) -> anyhow::Result<()> {
        Ok(self.log.flush()?)
    }

    /// End of input: send whatever waits in a group, drain the receivers
    /// (at most `deadline` each); delivery per receiver and muted counts.
    pub fn finish(
        mut self,
        deadline: Duration,
    ) -> anyhow::Result<(Vec<(String, DeliveryStats)>, PolicyStats)> {
        self.senders.dispatch(i64::MAX, true);
        self.log.flush()?;
        Ok((self.senders.close(deadline), self.policy.stats()))
    }
}
