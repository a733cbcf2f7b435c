//! Webhook delivery against a real HTTP receiver (a small server in the
//! test, on loopback): retries on 5xx, no retry on 4xx, HMAC signature,
//! and a receiver that is down for a while.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::support::{infermon, recordings, run_ok};

const SECRET: &str = "s3cret-for-tests";

/// One request as received, and the status it was answered with.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) signature: Option<String>,
    pub(crate) body: Vec<u8>,
    pub(crate) status: u16,
}

/// A real HTTP/1.1 server answering with `statuses` in turn (200 after),
/// recording every request. Runs until the test process ends.
pub(crate) fn receiver(listener: TcpListener, statuses: Vec<u16>) -> Arc<Mutex<Vec<Received>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut signature) = (0usize, None);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or(("", ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "x-infermon-signature" => signature = Some(value.trim().to_string()),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut log = seen.lock().unwrap();
            let status = statuses.get(log.len()).copied().unwrap_or(200);
            log.push(Received {
                signature,
                body,
                status,
            });
            drop(log);
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    log
}

fn config(dir: &Path, addr: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("infermon.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[alerts.webhooks]]
name = "oncall"
url = "http://{addr}/alerts"
secret_env = "INFERMON_TEST_WEBHOOK_SECRET"
initial_backoff = "50ms"
max_backoff = "200ms"
timeout = "2s"
"#
        ),
    )
    .unwrap();
    path
}

fn error_burst() -> std::path::PathBuf {
    recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("error-burst"))
        .unwrap()
}

fn replay_cmd(dir: &Path, config: &Path) -> std::process::Command {
    let mut cmd = infermon();
    cmd.env("INFERMON_TEST_WEBHOOK_SECRET", SECRET)
        .arg("--config")
        .arg(config)
        .args([
            "replay",
            "--offline",
            "--quiet",
            "--send",
            "--send-timeout",
            "30s",
        ])
        .arg(error_burst())
        .arg("--metrics-out")
        .arg(dir.join("m.lp"))
        .arg("--alerts-out")
        .arg(dir.join("a.jsonl"));
    cmd
}

fn valid_signature(r: &Received) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    r.signature.as_deref() == Some(&format!("sha256={hex}"))
}

#[test]
fn server_errors_are_retried_and_each_group_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = receiver(listener, vec![500, 503]);
    let out = run_ok(&mut replay_cmd(dir.path(), &config(dir.path(), addr)));
    let summary = String::from_utf8_lossy(&out.stdout);

    let got = log.lock().unwrap().clone();
    assert!(got.len() >= 3, "{got:?}");
    // The first group failed twice, then went through: the same bytes.
    assert_eq!(
        (got[0].status, got[1].status, got[2].status),
        (500, 503, 200)
    );
    assert_eq!(got[0].body, got[2].body);
    assert_eq!(got[1].body, got[2].body);
    // Every request is signed over its exact body; every 2xx body is unique.
    assert!(got.iter().all(valid_signature), "bad signature");
    let delivered: Vec<&Vec<u8>> = got
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| &r.body)
        .collect();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), delivered.len(), "a group was delivered twice");
    // Alertmanager v4 bodies carrying the documented alert.
    let bodies: Vec<Value> = delivered
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    for b in &bodies {
        assert_eq!(b["version"], "4");
        assert_eq!(b["receiver"], "oncall");
        assert!(!b["alerts"].as_array().unwrap().is_empty());
    }
    assert!(
        bodies
            .iter()
            .any(|b| b["groupLabels"]["alertname"] == "error_rate_high" && b["status"] == "firing")
    );
    assert!(bodies.iter().any(|b| b["status"] == "resolved"));
    assert!(
        summary.contains(&format!(
            "webhook oncall: {} delivered, 2 retries",
            delivered.len()
        )),
        "{summary}"
    );
}

#[test]
fn client_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = receiver(listener, vec![400; 100]);
    let out = run_ok(&mut replay_cmd(dir.path(), &config(dir.path(), addr)));
    let summary = String::from_utf8_lossy(&out.stdout);
    let got = log.lock().unwrap().clone();
    assert!(!got.is_empty());
    let mut bodies: Vec<&Vec<u8>> = got.iter().map(|r| &r.body).collect();
    let n = bodies.len();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), n, "a 400 was retried");
    assert!(
        summary.contains(&format!("0 delivered, 0 retries, {n} rejected (4xx)")),
        "{summary}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HTTP 400"),
        "the refusal is logged: {stderr}"
    );
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_when_back() {
    let dir = tempfile::tempdir().unwrap();
    // Reserve a port, then leave it closed: connections are refused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = replay_cmd(dir.path(), &config(dir.path(), addr))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let log = receiver(TcpListener::bind(addr).unwrap(), Vec::new());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let summary = String::from_utf8_lossy(&out.stdout);
    let got = log.lock().unwrap().clone();
    assert!(!got.is_empty());
    assert!(got.iter().all(|r| r.status == 200 && valid_signature(r)));
    assert!(
        summary.contains(&format!("webhook oncall: {} delivered", got.len())),
        "{summary}"
    );
    assert!(summary.contains("0 undelivered"), "{summary}");
    // It did retry while the receiver was down.
    assert!(!summary.contains(" 0 retries"), "{summary}");
}

#[test]
fn a_missing_secret_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = replay_cmd(dir.path(), &config(dir.path(), addr))
        .env_remove("INFERMON_TEST_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INFERMON_TEST_WEBHOOK_SECRET is not set"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET));
}
