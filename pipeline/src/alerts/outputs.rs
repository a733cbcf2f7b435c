//! Where the rules' notifications go: the alerts log (also the journal a
//! restarted monitor resumes from) and, when sending, Alertmanager and the
//! grouped webhooks and mail receivers.

use std::collections::HashMap;
use std::time::Duration;

use infermon_operators::alerts::{AlertStatus, Evaluation, Grouper, Notification, Restored};

use super::{AlertmanagerSender, AlertsConfig, DeliveryStats, EmailSender, WebhookSender};
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

/// The alerts log and the receivers, fed by the rules' evaluations.
pub struct AlertOutputs<'a> {
    senders: Senders,
    log: &'a mut AlertsFile,
    /// Receiver name written on alerts-log lines.
    log_receiver: &'static str,
}

impl<'a> AlertOutputs<'a> {
    /// The outputs for `[alerts]`; with `send`, the configured receivers
    /// are started.
    ///
    /// # Errors
    /// A receiver that cannot start (bad URL, missing secret), named.
    pub fn new(
        config: &AlertsConfig,
        send: bool,
        log_receiver: &'static str,
        log: &'a mut AlertsFile,
    ) -> anyhow::Result<Self> {
        let mut senders = Senders {
            grouper: Grouper::new(config.grouping.clone()),
            ..Senders::default()
        };
        if send {
            for w in &config.webhooks {
                let s = WebhookSender::start(w.clone()).map_err(anyhow::Error::msg)?;
                senders.webhooks.push((w.name.clone(), s));
            }
            for e in &config.emails {
                let s = EmailSender::start(e.clone()).map_err(anyhow::Error::msg)?;
                senders.emails.push((e.name.clone(), s));
            }
            for a in &config.alertmanagers {
                let s = AlertmanagerSender::start(a.clone()).map_err(anyhow::Error::msg)?;
                senders.alertmanagers.push((a.name.clone(), s));
            }
        }
        Ok(Self {
            senders,
            log,
            log_receiver,
        })
    }

    /// Deliver evaluations, in order: Alertmanager gets every state change
    /// (it silences and inhibits by itself); what passed the policy goes to
    /// the log, on disk before any receiver hears of it, then to the
    /// grouper; groups due at a window's end go out.
    ///
    /// # Errors
    /// The alerts log cannot be written.
    pub fn deliver<'e>(
        &mut self,
        evaluations: impl IntoIterator<Item = &'e Evaluation>,
    ) -> anyhow::Result<()> {
        for e in evaluations {
            for (_, am) in &self.senders.alertmanagers {
                am.send(&e.fired);
            }
            if !e.passed.is_empty() {
                self.log.write(self.log_receiver, &e.passed)?;
                self.log.flush()?;
                let now = e.passed.iter().map(|n| n.at_ms).max().unwrap_or_default();
                self.senders.add(&e.passed, now);
            }
            if let Some(end) = e.window_end {
                self.senders.dispatch(end, false);
            }
        }
        Ok(())
    }

    /// Alertmanager hears again of what an earlier run left firing.
    pub fn resume(&self, restored: &HashMap<String, Restored>) {
        let firing: Vec<Notification> = restored
            .values()
            .filter(|r| r.status == AlertStatus::Firing)
            .map(Restored::notification)
            .collect();
        for (_, am) in &self.senders.alertmanagers {
            am.resume(firing.iter().cloned());
        }
    }

    /// End of input: send whatever waits in a group, drain the receivers
    /// (at most `deadline` each); delivery per receiver.
    ///
    /// # Errors
    /// The alerts log cannot be flushed.
    pub fn finish(mut self, deadline: Duration) -> anyhow::Result<Vec<(String, DeliveryStats)>> {
        self.senders.dispatch(i64::MAX, true);
        self.log.flush()?;
        Ok(self.senders.close(deadline))
    }
}
