//! Shared helpers: the binary, required environment, line-protocol parsing.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `infermon` binary built for these tests.
pub fn infermon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_infermon"))
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
