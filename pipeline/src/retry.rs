//! One retry policy for every remote write: InfluxDB, webhooks,
//! Alertmanager and email say how one attempt went ([`Outcome`]); HTTP
//! answers are classified in one place ([`http_outcome`]); the delays come
//! from one capped exponential backoff with jitter ([`Backoff`], by
//! `backon`), stretched to what a server's `Retry-After` asks.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The server took it (HTTP 2xx, SMTP 250).
    Done,
    /// Worth trying again: network errors, HTTP 408, 429 and 5xx, SMTP 4xx.
    Retry {
        /// Why, for the log.
        reason: String,
        /// How long the server asked us to wait (`Retry-After`).
        after: Option<Duration>,
    },
    /// Never worth retrying (other HTTP 4xx, SMTP 5xx): the server's word.
    Reject(String),
}

impl Outcome {
    /// A retry without a server-requested delay.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            after: None,
        }
    }
}

/// Classify an HTTP exchange: 2xx done; 408, 429, 5xx and transport errors
/// retried (with `Retry-After` as seconds or an HTTP date); other statuses
/// rejected. The reason carries the status and the start of the body.
pub fn http_outcome(result: Result<ureq::Response, ureq::Error>) -> Outcome {
    match result {
        Ok(r) if (200..300).contains(&r.status()) => Outcome::Done,
        Ok(r) => Outcome::retry(format!("HTTP {}", r.status())),
        Err(ureq::Error::Status(code, r)) => {
            let after = r
                .header("Retry-After")
                .and_then(|v| retry_after(v, SystemTime::now()));
            let text = r.into_string().unwrap_or_default();
            let reason = format!(
                "HTTP {code}: {}",
                text.trim().chars().take(1000).collect::<String>()
            );
            if retryable(code) {
                Outcome::Retry { reason, after }
            } else {
                Outcome::Reject(reason)
            }
        }
        Err(e) => Outcome::retry(e.to_string()),
    }
}

/// HTTP statuses worth retrying: 408 Request Timeout, 429 Too Many
/// Requests, and every 5xx (RFC 9110 §15.5.9, RFC 6585 §4).
pub fn retryable(code: u16) -> bool {
    code == 408 || code == 429 || code >= 500
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP
/// date (a date in the past means now). `None` when it is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Retry delays: from `initial`, doubling up to `max`, each with a random
/// jitter of up to its own length (so at most `2 × max`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay after a failure.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
}

impl Backoff {
    /// The delays of one item's retries, endless.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max.max(self.initial))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// How long to wait after a failed attempt: the next delay, or longer
    /// when the server asked for it (`Retry-After`), but never past the
    /// cap, so a server cannot stall the queue behind it for hours.
    pub fn wait(
        &self,
        delays: &mut impl Iterator<Item = Duration>,
        after: Option<Duration>,
    ) -> Duration {
        let next = delays.next().unwrap_or(self.max);
        after.map_or(next, |a| a.max(next).min(self.max.max(next)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn which_statuses_are_retried() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(code), "{code}");
        }
        for code in [400, 401, 403, 404, 413, 415, 422] {
            assert!(!retryable(code), "{code}");
        }
    }

    #[test]
    fn delays_grow_to_the_cap_and_a_server_can_ask_for_more() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let d: Vec<Duration> = b.delays().take(8).collect();
        assert!(d[0] >= Duration::from_millis(100), "{d:?}");
        // backon's jitter adds up to the delay itself on top of it.
        assert!(d.iter().all(|x| *x <= Duration::from_millis(1600)), "{d:?}");
        assert!(d[6] >= Duration::from_millis(800), "{d:?}");
        let mut it = b.delays();
        let asked = b.wait(&mut it, Some(Duration::from_millis(700)));
        assert_eq!(asked, Duration::from_millis(700));
        let capped = b.wait(&mut it, Some(Duration::from_secs(3600)));
        assert!(capped <= Duration::from_millis(1600), "{capped:?}");
    }
}
