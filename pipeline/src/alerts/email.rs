//! Email delivery through SMTP (lettre): plain, STARTTLS or TLS, optional
//! auth, several recipients, a plain-text and an HTML body with the values,
//! the rule, the window and a link. Subject: `[FIRING]` / `[RESOLVED]`, the
//! alert name and the model (contract §3). SMTP 4xx and network errors are
//! retried by the delivery thread; 5xx (including "STARTTLS required") are
//! not, and are logged with the server's words.

use std::fmt::Write as _;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport as _};
use serde::{Deserialize, Serialize};

use super::delivery::{DeliveryQueue, DeliveryStats, RetryPolicy, Transport, defaults};
use crate::retry::{Backoff, Outcome};
use infermon_operators::alerts::notification::{AlertStatus, Notification, rfc3339};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (only for a relay on a trusted network).
    None,
    /// Plain connection upgraded with STARTTLS, which must succeed.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// One email receiver (`[[alerts.emails]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Receiver name.
    pub name: String,
    /// SMTP server.
    pub host: String,
    /// Port (default 25 for none, 587 for STARTTLS, 465 for TLS).
    #[serde(default)]
    pub port: Option<u16>,
    /// Connection security.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Accept self-signed or otherwise invalid certificates (tests, labs).
    #[serde(default)]
    pub accept_invalid_certs: bool,
    /// SMTP user, if the server wants auth.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable with the SMTP password (never in the file).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Link put in each mail; `{model}`, `{alertname}`, any label replaced
    /// (e.g. a Grafana dashboard URL).
    #[serde(default)]
    pub link_template: Option<String>,
    /// Mail resolved alerts too.
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Per-connection timeout.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay.
    #[serde(default = "defaults::initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest retry delay.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Mails waiting; beyond this the oldest is dropped.
    #[serde(default = "defaults::queue")]
    pub queue_capacity: usize,
    /// Rate limit of this receiver (0 = none); excess waits, is not dropped.
    #[serde(default)]
    pub max_per_minute: u32,
}

fn yes() -> bool {
    true
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}

/// An email receiver with its delivery thread.
pub struct EmailSender {
    config: EmailConfig,
    from: Mailbox,
    to: Vec<Mailbox>,
    queue: DeliveryQueue<Message>,
}

impl EmailSender {
    /// Check the addresses, build the SMTP transport, start delivering.
    pub fn start(config: EmailConfig) -> Result<Self, String> {
        let err = |what: String| format!("email {}: {what}", config.name);
        let parse = |a: &str| {
            a.parse::<Mailbox>()
                .map_err(|e| err(format!("address {a:?}: {e}")))
        };
        let from = parse(&config.from)?;
        let to = config
            .to
            .iter()
            .map(|a| parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(err("no recipients (`to`)".into()));
        }
        let params = || {
            TlsParameters::builder(config.host.clone())
                .dangerous_accept_invalid_certs(config.accept_invalid_certs)
                .build_rustls()
                .map_err(|e| err(format!("TLS: {e}")))
        };
        let (tls, port) = match config.tls {
            SmtpTls::None => (Tls::None, 25),
            SmtpTls::Starttls => (Tls::Required(params()?), 587),
            SmtpTls::Tls => (Tls::Wrapper(params()?), 465),
        };
        let mut builder = SmtpTransport::builder_dangerous(&config.host)
            .port(config.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(config.timeout));
        if let Some(user) = &config.username {
            let password = match &config.password_env {
                Some(var) => std::env::var(var).map_err(|_| err(format!("{var} is not set")))?,
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let policy = RetryPolicy {
            backoff: Backoff {
                initial: config.initial_backoff,
                max: config.max_backoff,
            },
            queue_capacity: config.queue_capacity,
            min_interval: RetryPolicy::interval_for(config.max_per_minute),
        };
        let queue = DeliveryQueue::start(&config.name, Smtp(builder.build()), policy)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            config,
            from,
            to,
            queue,
        })
    }

    /// Queue one group (made by [`infermon_operators::alerts::Grouper`]) as one mail.
    pub fn send(&self, alerts: &[Notification]) {
        let wanted: Vec<Notification> = alerts
            .iter()
            .filter(|n| self.config.send_resolved || n.status == AlertStatus::Firing)
            .cloned()
            .collect();
        if wanted.is_empty() {
            return;
        }
        match self.message(&wanted) {
            Ok(m) => self.queue.push(m),
            Err(e) => {
                tracing::error!(receiver = %self.config.name, error = %e, "could not build the alert mail")
            }
        }
    }

    /// Deliver what is queued, waiting at most `deadline`; then stop.
    pub fn close(self, deadline: Duration) -> DeliveryStats {
        self.queue.close(deadline)
    }

    fn message(&self, alerts: &[Notification]) -> Result<Message, lettre::error::Error> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject(alerts));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let link = self.config.link_template.as_deref();
        builder.multipart(MultiPart::alternative_plain_html(
            text_body(alerts, link),
            html_body(alerts, link),
        ))
    }
}

/// `[FIRING] alertname model` (or `[RESOLVED]`), plus a count for groups.
pub fn subject(alerts: &[Notification]) -> String {
    let firing = alerts.iter().any(|a| a.status == AlertStatus::Firing);
    let first = &alerts[0];
    let label = |k: &str| first.labels.get(k).map_or("", String::as_str);
    let mut s = format!(
        "[{}] {} {}",
        if firing { "FIRING" } else { "RESOLVED" },
        label("alertname"),
        label("model")
    );
    if alerts.len() > 1 {
        let _ = write!(s, " ({} alerts)", alerts.len());
    }
    s
}

fn link_for(template: Option<&str>, n: &Notification) -> Option<String> {
    let mut link = template?.to_string();
    for (k, v) in &n.labels {
        link = link.replace(&format!("{{{k}}}"), v);
    }
    Some(link)
}

fn window_of(n: &Notification) -> String {
    match n.ends_at_ms {
        Some(end) => format!("{} .. {}", rfc3339(n.starts_at_ms), rfc3339(end)),
        None => format!("since {}", rfc3339(n.starts_at_ms)),
    }
}

/// The plain-text body: per alert its summary, value, window, labels, link.
pub fn text_body(alerts: &[Notification], link: Option<&str>) -> String {
    let mut out = String::new();
    for n in alerts {
        let get = |m: &std::collections::BTreeMap<String, String>, k: &str| {
            m.get(k).cloned().unwrap_or_default()
        };
        let _ = writeln!(
            out,
            "[{}] {}",
            n.status.as_str().to_uppercase(),
            get(&n.annotations, "summary")
        );
        let _ = writeln!(out, "{}", get(&n.annotations, "description"));
        let _ = writeln!(
            out,
            "  rule:     {} ({})",
            get(&n.labels, "alertname"),
            get(&n.labels, "severity")
        );
        let _ = writeln!(out, "  value:    {}", n.value);
        let _ = writeln!(out, "  window:   {}", window_of(n));
        for (k, v) in &n.labels {
            let _ = writeln!(out, "  {k}: {v}");
        }
        if let Some(l) = link_for(link, n) {
            let _ = writeln!(out, "  link:     {l}");
        }
        out.push('\n');
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML body: one table per alert.
pub fn html_body(alerts: &[Notification], link: Option<&str>) -> String {
    let mut out = String::from("<html><body>");
    for n in alerts {
        let summary = n.annotations.get("summary").map_or("", String::as_str);
        let description = n.annotations.get("description").map_or("", String::as_str);
        let color = if n.status == AlertStatus::Firing {
            "#c0392b"
        } else {
            "#27ae60"
        };
        let _ = write!(
            out,
            "<h3 style=\"color:{color}\">[{}] {}</h3><p>{}</p><table>",
            n.status.as_str().to_uppercase(),
            escape(summary),
            escape(description)
        );
        let mut row = |k: &str, v: &str| {
            let _ = write!(
                out,
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
                escape(k),
                escape(v)
            );
        };
        row("value", &n.value.to_string());
        row("window", &window_of(n));
        for (k, v) in &n.labels {
            row(k, v);
        }
        out.push_str("</table>");
        if let Some(l) = link_for(link, n) {
            let _ = write!(out, "<p><a href=\"{0}\">{0}</a></p>", escape(&l));
        }
    }
    out.push_str("</body></html>");
    out
}

/// One SMTP submission per mail.
struct Smtp(SmtpTransport);

impl Transport for Smtp {
    type Item = Message;

    fn attempt(&mut self, mail: &Message) -> Outcome {
        match self.0.send(mail) {
            Ok(_) => Outcome::Done,
            Err(e) if e.is_permanent() => Outcome::Reject(format!("SMTP: {e}")),
            Err(e) => Outcome::retry(format!("SMTP: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn n(status: AlertStatus) -> Notification {
        Notification {
            status,
            labels: [
                ("alertname", "error_rate_high"),
                ("model", "recsys"),
                ("severity", "critical"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            annotations: BTreeMap::from([("summary".to_string(), "errors <high>".to_string())]),
            starts_at_ms: 0,
            ends_at_ms: (status == AlertStatus::Resolved).then_some(60_000),
            value: 0.08,
            at_ms: 0,
        }
    }

    #[test]
    fn subject_and_bodies() {
        assert_eq!(
            subject(&[n(AlertStatus::Firing)]),
            "[FIRING] error_rate_high recsys"
        );
        assert_eq!(
            subject(&[n(AlertStatus::Resolved), n(AlertStatus::Resolved)]),
            "[RESOLVED] error_rate_high recsys (2 alerts)"
        );
        let link = Some("https://grafana/d/x?var-model={model}");
        let text = text_body(&[n(AlertStatus::Resolved)], link);
        assert!(text.contains("value:    0.08"), "{text}");
        assert!(
            text.contains("1970-01-01T00:00:00.000Z .. 1970-01-01T00:01:00.000Z"),
            "{text}"
        );
        assert!(
            text.contains("https://grafana/d/x?var-model=recsys"),
            "{text}"
        );
        let html = html_body(&[n(AlertStatus::Firing)], link);
        assert!(html.contains("errors &lt;high&gt;"), "{html}");
    }
}
