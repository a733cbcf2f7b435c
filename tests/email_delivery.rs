//! Email delivery against a real SMTP server (aiosmtpd, started by the test
//! on loopback): plain SMTP, STARTTLS with a self-signed certificate, and a
//! server that requires STARTTLS refusing a plain client.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Process, infermon, recordings, repo, required_env, run_ok};

/// The SMTP server process; killed when dropped.
struct SmtpServer {
    _process: Process,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>, require_starttls: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = dir.join(format!("mail-{port}"));
        std::fs::create_dir_all(&maildir).unwrap();
        let mut cmd = Command::new(required_env("INFERMON_TEST_PYTHON"));
        cmd.arg(repo().join("tests/support_py/smtp_server.py"))
            .arg(port.to_string())
            .arg(&maildir);
        if let Some((cert, key)) = tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if require_starttls {
            cmd.arg("--require-starttls");
        }
        let log = dir.join(format!("smtp-{port}.log"));
        let mut process = Process::spawn("smtp_server.py", &mut cmd, Some(log.clone()));
        // It prints "ready" on stdout once listening; the port answering is
        // the same signal without a pipe.
        process.wait_until(Duration::from_secs(30), "the SMTP port", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            _process: process,
            port,
            maildir,
        }
    }

    fn mails(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.maildir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}

fn replay_with_email(dir: &Path, port: u16, tls: &str) -> std::process::Output {
    let config = dir.join("infermon.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[alerts.emails]]
name = "oncall-mail"
host = "127.0.0.1"
port = {port}
tls = "{tls}"
accept_invalid_certs = true
from = "infermon <infermon@example.test>"
to = ["sre@example.test", "ml-team@example.test"]
link_template = "https://grafana.example.test/d/infermon?var-model={{model}}"
initial_backoff = "50ms"
timeout = "5s"
"#
        ),
    )
    .unwrap();
    let rec = recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("error-burst"))
        .unwrap();
    infermon()
        .arg("--config")
        .arg(&config)
        .args([
            "replay",
            "--offline",
            "--quiet",
            "--send",
            "--send-timeout",
            "30s",
        ])
        .arg(rec)
        .arg("--metrics-out")
        .arg(dir.join("m.lp"))
        .arg("--alerts-out")
        .arg(dir.join("a.jsonl"))
        .output()
        .unwrap()
}

fn check_incident_mail(mails: &[Value], tls: bool) {
    let subjects: Vec<String> = mails
        .iter()
        .map(|m| {
            let data = m["data"].as_str().unwrap();
            data.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for want in [
        "[FIRING] error_rate_high recsys-ranker",
        "[RESOLVED] error_rate_high recsys-ranker",
    ] {
        assert!(
            subjects.iter().any(|s| s == want),
            "no {want:?} in {subjects:?}"
        );
    }
    for m in mails {
        let to: Vec<&str> = m["to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(to, ["sre@example.test", "ml-team@example.test"]);
        assert_eq!(m["tls"], tls);
        let data = m["data"].as_str().unwrap();
        assert!(data.contains("multipart/alternative"), "{data}");
        assert!(
            data.contains("text/plain") && data.contains("text/html"),
            "{data}"
        );
        assert!(data.contains("var-model="), "link missing: {data}");
    }
}

#[test]
fn incident_mail_over_plain_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start(dir.path(), None, false);
    let out = replay_with_email(dir.path(), server.port, "none");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mails = server.mails();
    check_incident_mail(&mails, false);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("email oncall-mail: {} delivered", mails.len())),
        "{summary}"
    );
}

#[test]
fn incident_mail_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = SmtpServer::start(dir.path(), Some((&cert, &key)), true);
    let out = replay_with_email(dir.path(), server.port, "starttls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_incident_mail(&server.mails(), true);
}

#[test]
fn a_server_requiring_starttls_refuses_a_plain_client_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = SmtpServer::start(dir.path(), Some((&cert, &key)), true);
    let out = replay_with_email(dir.path(), server.port, "none");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(server.mails().is_empty());
    assert!(
        stderr.contains("STARTTLS"),
        "no clear error in the log: {stderr}"
    );
    assert!(stderr.contains("not retrying"), "{stderr}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("0 delivered"), "{summary}");
}
