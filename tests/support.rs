//! Shared helpers: the binary, required environment, line-protocol parsing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `infermon` binary built for these tests, run in a scratch folder
/// outside the source tree: whatever a command writes to its default paths
/// (`infermon-alerts.jsonl`, `infermon-rejects.jsonl`, ...) lands there.
/// Every path a test reads is given explicitly and absolute.
pub fn infermon() -> Command {
    let scratch = std::env::temp_dir().join("infermon-e2e-scratch");
    std::fs::create_dir_all(&scratch).expect("scratch folder for the binary's default outputs");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infermon"));
    cmd.current_dir(scratch);
    cmd
}

/// Run and require success, showing stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An environment variable the test cannot run without.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the test services with `bash .ci/run` (or `.ci/services.sh start` and `eval \"$(.ci/services.sh env)\"`)")
    })
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bundled recordings.
pub fn recordings() -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo().join("replay-data/recordings"))
        .expect("replay-data/recordings")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.zst"))
        .collect();
    v.sort();
    v
}

/// One parsed line of line protocol; field values as written (`3i`,
/// `0.25`, `"firing"`, `true`).
#[derive(Debug, Clone)]
pub struct Line {
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, String)>,
    pub ts_ns: i64,
}

impl Line {
    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.0 == k).map(|t| t.1.as_str())
    }
    pub fn float(&self, k: &str) -> Option<f64> {
        let v = &self.fields.iter().find(|f| f.0 == k)?.1;
        v.trim_end_matches('i').parse().ok()
    }
}

/// Parse line protocol with the schemas crate's parser (escapes included);
/// a line that does not parse fails the test.
pub fn parse_lines(text: &str) -> Vec<Line> {
    use infermon_schemas::FieldValue;
    let points = infermon_schemas::line_protocol::parse_lines(text)
        .unwrap_or_else(|e| panic!("not line protocol: {e}\n{text}"));
    points
        .into_iter()
        .map(|p| Line {
            measurement: p.measurement,
            tags: p.tags,
            fields: p
                .fields
                .into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        FieldValue::Int(i) => format!("{i}i"),
                        FieldValue::Float(x) => format!("{x}"),
                        FieldValue::Bool(b) => b.to_string(),
                        FieldValue::Str(s) => format!("{s:?}"),
                    };
                    (k, text)
                })
                .collect(),
            ts_ns: p.timestamp_ns,
        })
        .collect()
}

/// A name part no other test run shares (process id and clock), for
/// topics, groups and databases of one test.
pub fn unique_id(prefix: &str) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{prefix}{}x{}", std::process::id(), micros % 1_000_000_000)
}

/// Create `topics` (name, partitions) on the test broker; any failure
/// fails the test.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An InfluxQL query (or statement) against the InfluxDB 1.x at `base`,
/// times in ns; the parsed JSON answer.
pub fn influx_query(base: &str, db: &str, q: &str) -> Value {
    let body = ureq::post(&format!("{base}/query"))
        .query("db", db)
        .query("epoch", "ns")
        .query("q", q)
        .call()
        .unwrap_or_else(|e| panic!("InfluxDB query {q:?}: {e}"))
        .into_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// A process a test started: its log file, and kill-on-drop so a failing
/// test leaks nothing. Every service helper (monitor, worker,
/// Alertmanager, Prometheus, VictoriaMetrics, SMTP) holds one.
pub struct Process {
    child: Option<Child>,
    name: String,
    /// Where its stderr goes (`None` when it was not redirected).
    pub log: Option<PathBuf>,
}

impl Process {
    /// Spawn `cmd` (stdout discarded, stderr to `log` when given).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<PathBuf>) -> Self {
        cmd.stdout(Stdio::null());
        if let Some(log) = &log {
            cmd.stderr(std::fs::File::create(log).unwrap());
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("{name}: cannot start {cmd:?}: {e} (bash .ci/run installs the services)")
        });
        Self {
            child: Some(child),
            name: name.into(),
            log,
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Wait up to `timeout` for `ok`, failing with `what` and the log's tail.
    pub fn wait_until(&mut self, timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
        let until = Instant::now() + timeout;
        while !ok() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "{}: exited ({status}) waiting for {what}; log:\n{}",
                    self.name,
                    tail(&self.log_text(), 40)
                );
            }
            assert!(
                Instant::now() < until,
                "{}: no {what} within {timeout:?}; log:\n{}",
                self.name,
                tail(&self.log_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `url` answers 2xx.
    pub fn wait_ready(&mut self, url: &str, timeout: Duration) {
        let what = format!("answer from {url}");
        self.wait_until(timeout, &what, || {
            ureq::get(url)
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok()
        });
    }

    /// SIGTERM, and wait (at most 20 s) for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: did not stop within 20 s of SIGTERM; log:\n{}",
                    self.name,
                    tail(&self.log_text(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of a log, after its panic message and errors (a
/// backtrace would push them out of the tail).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") {
            // The message is on the next line.
            out.extend(&lines[i..(i + 2).min(lines.len())]);
        } else if l.contains("ERROR") {
            out.push(l);
        }
    }
    out.truncate(12);
    if !out.is_empty() {
        out.push("...");
    }
    out.extend(&lines[lines.len().saturating_sub(n)..]);
    out.join("\n")
}

/// Sum of a Prometheus-text metric's samples at `url` whose line contains
/// every `labels` part (NaN when `url` does not answer).
pub fn scrape(url: &str, name: &str, labels: &[&str]) -> f64 {
    let Some(text) = ureq::get(url)
        .timeout(Duration::from_secs(2))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
    else {
        return f64::NAN;
    };
    text.lines()
        .filter(|l| {
            l.split([' ', '{']).next() == Some(name) && labels.iter().all(|p| l.contains(p))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A real Alertmanager 0.25 of the test's own, routing every alert to one
/// webhook (`webhook`: the YAML of its `webhook_configs` entry, from `url:`;
/// grouped by alertname and model, 1 s waits, resolves sent).
pub struct Alertmanager {
    _process: Process,
    pub url: String,
}

impl Alertmanager {
    pub fn start(dir: &Path, webhook: &str) -> Self {
        let config = dir.join("alertmanager.yml");
        let webhook = webhook.replace('\n', "\n        ");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: test\n  group_by: [alertname, model]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: test\n    webhook_configs:\n      - {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let mut process = Process::spawn(
            "prometheus-alertmanager",
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", dir.join("am-data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address="),
            Some(dir.join("alertmanager.log")),
        );
        let url = format!("http://127.0.0.1:{port}");
        process.wait_ready(&format!("{url}/-/ready"), Duration::from_secs(30));
        Self {
            _process: process,
            url,
        }
    }

    /// Alerts Alertmanager holds (active, suppressed), from its v2 API.
    pub fn alerts(&self) -> Vec<Value> {
        let text = ureq::get(&format!("{}/api/v2/alerts", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let until = Instant::now() + timeout;
        loop {
            let alerts = self.alerts();
            if ok(&alerts) {
                return alerts;
            }
            assert!(
                Instant::now() < until,
                "Alertmanager: no {what} within {timeout:?}: {alerts:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `promtool` (Debian's `prometheus` package) on `args`, with `stdin`;
/// its output, after requiring success.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian's prometheus package) must be installed: bash .ci/run installs it",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// A real Prometheus of the test's own scraping one target every second.
pub struct Prometheus {
    _process: Process,
    port: u16,
}

impl Prometheus {
    pub fn start(dir: &Path, job: &str, target: &str) -> Self {
        let port = free_port();
        let config = dir.join(format!("prometheus-{job}.yml"));
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{target:?}]\n"
            ),
        )
        .unwrap();
        let process = Process::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("prom-{job}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
            Some(dir.join(format!("prometheus-{job}.log"))),
        );
        Self {
            _process: process,
            port,
        }
    }

    /// The first value of an instant query, if any.
    pub fn query(&self, q: &str) -> Option<f64> {
        let text = ureq::get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", q)
            .call()
            .ok()?
            .into_string()
            .ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Wait (up to a minute) until `job` is up and `q` gives `want`; the last
    /// value `q` gave.
    pub fn scraped(&self, job: &str, q: &str, want: f64) -> Option<f64> {
        let until = Instant::now() + Duration::from_secs(60);
        let mut got = None;
        while Instant::now() < until {
            if self.query(&format!("up{{job=\"{job}\"}}")) == Some(1.0) {
                got = self.query(q);
                if got == Some(want) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        got
    }
}
