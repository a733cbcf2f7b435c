//! InfluxDB sink: line protocol over the v2 write API (`/api/v2/write`,
//! org, bucket, token) or the 1.x one (`/write?db=&rp=`, basic auth), gzip
//! compressed, behind an on-disk [`Spool`].
//!
//! Written with `ureq` rather than the `influxdb2` crate: that crate's
//! line-protocol call cannot send gzip, does not expose the `Retry-After`
//! header, treats every non-204 alike and is async only, while this sink is
//! one blocking writer thread that must tell 429/5xx from other 4xx.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::Sink;
use super::spool::{LineWriter, RejectHook, Spool, SpoolStats};
use crate::retry::{Backoff, Outcome, http_outcome};

/// Which write API the server speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// InfluxDB 2.x / 3.x, VictoriaMetrics: `/api/v2/write`.
    #[default]
    V2,
    /// InfluxDB 1.x: `/write?db=&rp=`.
    V1,
}

/// One InfluxDB (or InfluxDB-API) server to write points to. Secrets are
/// named here (an environment variable or a file), never written inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfluxDbConfig {
    /// Name in logs and metrics.
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// `v2` or `v1`.
    pub api: InfluxApi,
    /// v2: organisation.
    pub org: String,
    /// v2: bucket.
    pub bucket: String,
    /// v2: environment variable holding the API token.
    pub token_env: String,
    /// v2: or a file holding it (e.g. a mounted secret); wins over the env.
    pub token_file: Option<PathBuf>,
    /// v1: database.
    pub db: String,
    /// v1: retention policy (server default when absent).
    pub rp: Option<String>,
    /// v1: user for basic auth (none when absent).
    pub username: Option<String>,
    /// v1: environment variable holding that user's password.
    pub password_env: String,
    /// Lines per write request.
    pub batch_size: usize,
    /// Anomaly events wait at most this long to be batched.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Compress request bodies (turned off by itself if the server answers
    /// 415).
    pub gzip: bool,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay (doubled per failure, jittered, capped).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Cap on the retry delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Where points wait while the server is unreachable (default:
    /// `<state_dir>/spool/<name>`).
    pub spool_dir: Option<PathBuf>,
    /// When the spool holds this much, consumption pauses.
    pub spool_max_bytes: u64,
}

impl Default for InfluxDbConfig {
    fn default() -> Self {
        Self {
            name: "influxdb".into(),
            url: "http://127.0.0.1:8086".into(),
            api: InfluxApi::V2,
            org: "infermon".into(),
            bucket: "infermon".into(),
            token_env: "INFLUX_TOKEN".into(),
            token_file: None,
            db: "infermon".into(),
            rp: None,
            username: None,
            password_env: "INFLUX_PASSWORD".into(),
            batch_size: 5000,
            linger: Duration::from_secs(1),
            gzip: true,
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            spool_dir: None,
            spool_max_bytes: 256 << 20,
        }
    }
}

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum InfluxDbError {
    /// A secret the config names is missing.
    #[error("influxdb {name}: {what}")]
    Secret {
        /// Sink name.
        name: String,
        /// Which secret and where it was looked for (never its value).
        what: String,
    },
    /// Bad URL.
    #[error("influxdb {name}: url {url:?} must start with http:// or https://")]
    Url {
        /// Sink name.
        name: String,
        /// The URL.
        url: String,
    },
    /// The spool directory.
    #[error("influxdb {name}: {source}")]
    Spool {
        /// Sink name.
        name: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// The HTTP side: one request per call, no retries (the spool retries).
struct HttpWriter {
    agent: ureq::Agent,
    url: String,
    /// `Authorization` header value; never logged.
    auth: Option<String>,
    gzip: bool,
    name: String,
}

impl HttpWriter {
    fn new(c: &InfluxDbConfig) -> Result<Self, InfluxDbError> {
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            return Err(InfluxDbError::Url {
                name: c.name.clone(),
                url: c.url.clone(),
            });
        }
        let base = c.url.trim_end_matches('/');
        let enc = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let secret_err = |what: String| InfluxDbError::Secret {
            name: c.name.clone(),
            what,
        };
        let (url, auth) = match c.api {
            InfluxApi::V2 => {
                let token = match &c.token_file {
                    Some(f) => std::fs::read_to_string(f)
                        .map_err(|e| secret_err(format!("token_file {}: {e}", f.display())))?
                        .trim()
                        .to_string(),
                    None => std::env::var(&c.token_env).unwrap_or_default(),
                };
                let url = format!(
                    "{base}/api/v2/write?org={}&bucket={}&precision=ns",
                    enc(&c.org),
                    enc(&c.bucket)
                );
                // An empty token is allowed: servers without auth
                // (VictoriaMetrics, InfluxDB with auth off) ignore it.
                (url, (!token.is_empty()).then(|| format!("Token {token}")))
            }
            InfluxApi::V1 => {
                let mut url = format!("{base}/write?db={}&precision=ns", enc(&c.db));
                if let Some(rp) = &c.rp {
                    url.push_str(&format!("&rp={}", enc(rp)));
                }
                let auth = match &c.username {
                    Some(user) => {
                        let password = std::env::var(&c.password_env).map_err(|_| {
                            secret_err(format!(
                                "username is set but the password variable {} is not",
                                c.password_env
                            ))
                        })?;
                        let b64 = base64::engine::general_purpose::STANDARD
                            .encode(format!("{user}:{password}"));
                        Some(format!("Basic {b64}"))
                    }
                    None => None,
                };
                (url, auth)
            }
        };
        Ok(Self {
            agent: ureq::AgentBuilder::new().timeout(c.timeout).build(),
            url,
            auth,
            gzip: c.gzip,
            name: c.name.clone(),
        })
    }
}

impl LineWriter for HttpWriter {
    fn write(&mut self, body: &[u8]) -> Outcome {
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "text/plain; charset=utf-8");
        if let Some(auth) = &self.auth {
            req = req.set("Authorization", auth);
        }
        let result = if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let gz = enc.write_all(body).and_then(|_| enc.finish());
            match gz {
                Ok(gz) => req.set("Content-Encoding", "gzip").send_bytes(&gz),
                Err(e) => {
                    return Outcome::retry(format!("gzip: {e}"));
                }
            }
        } else {
            req.send_bytes(body)
        };
        match result {
            Err(ureq::Error::Status(415, _)) if self.gzip => {
                tracing::warn!(sink = %self.name, "server does not take gzip (415); sending uncompressed");
                self.gzip = false;
                Outcome::Retry {
                    reason: "415: gzip not accepted".into(),
                    after: Some(Duration::ZERO),
                }
            }
            result => http_outcome(result),
        }
    }
}

/// An InfluxDB server behind its on-disk spool.
pub struct InfluxSink {
    name: String,
    spool: Spool,
    /// The first segment of the current window state.
    generation_start: u64,
}

impl InfluxSink {
    /// Start the spool (default `<state_dir>/spool/<name>`) and its writer.
    ///
    /// # Errors
    /// Bad URL or missing secret, or a spool that cannot be opened.
    pub fn start(
        c: &InfluxDbConfig,
        state_dir: &std::path::Path,
        on_reject: RejectHook,
    ) -> Result<Self, InfluxDbError> {
        Ok(Self {
            name: c.name.clone(),
            spool: start(c, state_dir, on_reject)?,
            generation_start: 0,
        })
    }
}

impl Sink for InfluxSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn push(&mut self, lines: &[u8], watermark: i64) -> std::io::Result<()> {
        self.spool.push(lines, watermark)
    }

    fn acked(&self) -> i64 {
        let stats = self.spool.stats();
        stats.acked_since(self.generation_start).unwrap_or(i64::MIN)
    }

    fn new_generation(&mut self) {
        self.generation_start = self.spool.next_seq();
    }

    fn full(&self) -> bool {
        self.spool.is_full()
    }

    fn spool_stats(&self) -> Option<Arc<SpoolStats>> {
        Some(self.spool.stats())
    }

    fn close(self: Box<Self>, deadline: std::time::Duration) -> u64 {
        self.spool.close(deadline)
    }
}

/// Start a sink's spool (default `<state_dir>/spool/<name>`) and writer.
fn start(
    c: &InfluxDbConfig,
    state_dir: &std::path::Path,
    on_reject: RejectHook,
) -> Result<Spool, InfluxDbError> {
    let writer = HttpWriter::new(c)?;
    let dir = c
        .spool_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("spool").join(&c.name));
    Spool::open(
        &dir,
        c.spool_max_bytes,
        c.batch_size,
        Backoff {
            initial: c.initial_backoff,
            max: c.max_backoff,
        },
        writer,
        on_reject,
    )
    .map_err(|source| InfluxDbError::Spool {
        name: c.name.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_with_user_but_no_password_names_the_variable_not_a_value() {
        let c = InfluxDbConfig {
            api: InfluxApi::V1,
            username: Some("writer".into()),
            password_env: "INFERMON_TEST_SURELY_UNSET_PW".into(),
            ..InfluxDbConfig::default()
        };
        let err = HttpWriter::new(&c).err().unwrap().to_string();
        assert!(err.contains("INFERMON_TEST_SURELY_UNSET_PW"), "{err}");
    }

    #[test]
    fn urls_carry_org_bucket_db_and_rp_encoded() {
        let v2 = HttpWriter::new(&InfluxDbConfig {
            org: "my org".into(),
            bucket: "b/1".into(),
            ..InfluxDbConfig::default()
        })
        .unwrap();
        assert_eq!(
            v2.url,
            "http://127.0.0.1:8086/api/v2/write?org=my%20org&bucket=b%2F1&precision=ns"
        );
        let v1 = HttpWriter::new(&InfluxDbConfig {
            api: InfluxApi::V1,
            db: "mon".into(),
            rp: Some("week".into()),
            ..InfluxDbConfig::default()
        })
        .unwrap();
        assert_eq!(
            v1.url,
            "http://127.0.0.1:8086/write?db=mon&precision=ns&rp=week"
        );
        assert!(v1.auth.is_none());
        assert!(
            HttpWriter::new(&InfluxDbConfig {
                url: "localhost:8086".into(),
                ..InfluxDbConfig::default()
            })
            .is_err()
        );
    }
}
