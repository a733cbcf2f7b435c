//! The built-in alert rules on the bundled recordings (offline replay,
//! notifications to `--alerts-out`): every incident fires its documented
//! alert within two windows of its start; nothing fires for the quiet model
//! or outside an incident of the alerting model.

use serde_json::Value;

use crate::support::{infermon, parse_lines, recordings, repo, run_ok};

const WINDOW_MS: i64 = 60_000;

struct Fired {
    alertname: String,
    model: String,
    /// When the notification was made (the `alerts` point's time).
    at_ms: i64,
}

/// Replay `files` on built-in defaults; the alerts log and the `alerts`
/// points that fired.
fn replay_defaults(files: &[std::path::PathBuf]) -> (Vec<Value>, Vec<Fired>) {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, alerts) = (dir.path().join("m.lp"), dir.path().join("alerts.jsonl"));
    let out = run_ok(
        infermon()
            .arg("replay")
            .args(files)
            .args(["--offline", "--quiet", "--metrics-out"])
            .arg(&metrics)
            .arg("--alerts-out")
            .arg(&alerts),
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("alerts fired:"), "{summary}");
    let log: Vec<Value> = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines = parse_lines(&std::fs::read_to_string(&metrics).unwrap());
    let fired: Vec<Fired> = lines
        .iter()
        .filter(|l| l.measurement == "alerts")
        .filter(|l| {
            l.fields
                .iter()
                .any(|(k, v)| k == "state" && v == "\"firing\"")
        })
        .map(|l| Fired {
            alertname: l.tag("alertname").unwrap().to_string(),
            model: l.tag("model").unwrap().to_string(),
            at_ms: l.ts_ns / 1_000_000,
        })
        .collect();
    (log, fired)
}

fn incidents() -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo().join("replay-data/recordings/incidents.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Each incident's documented alert fired within two windows of its start.
fn assert_fires(incident: &Value, fired: &[Fired]) {
    let start = incident["start_ms"].as_i64().unwrap();
    let model = incident["model"].as_str().unwrap();
    // "gradient_nonfinite / gradient_explosion (gradients...)" → names.
    let documented = incident["alert"].as_str().unwrap();
    let names: Vec<&str> = documented
        .split(" (")
        .next()
        .unwrap()
        .split(" / ")
        .collect();
    let first_window_end = start - start.rem_euclid(WINDOW_MS) + WINDOW_MS;
    let hit = fired.iter().any(|f| {
        names.contains(&f.alertname.as_str())
            && f.model == model
            && f.at_ms >= start
            && f.at_ms <= first_window_end + WINDOW_MS
    });
    assert!(
        hit,
        "incident {:?}: none of {names:?} fired for {model} within two windows of {start}",
        incident["name"]
    );
}

/// Nothing else: each firing belongs to an incident of its model.
fn assert_nothing_else(incidents: &[Value], fired: &[Fired]) {
    for f in fired {
        assert_ne!(
            f.model, "query-encoder",
            "the quiet model alerted: {}",
            f.alertname
        );
        let explained = incidents.iter().any(|i| {
            i["model"] == f.model.as_str()
                && f.at_ms >= i["start_ms"].as_i64().unwrap()
                && f.at_ms <= i["end_ms"].as_i64().unwrap() + 2 * WINDOW_MS
        });
        assert!(
            explained,
            "{} fired for {} at {} outside every incident",
            f.alertname, f.model, f.at_ms
        );
    }
}

#[test]
fn each_bundled_file_on_defaults_fires_its_documented_alert_and_nothing_else() {
    let all = incidents();
    for incident in &all {
        let file = repo()
            .join("replay-data/recordings")
            .join(incident["file"].as_str().unwrap());
        let (_, fired) = replay_defaults(&[file]);
        assert_fires(incident, &fired);
        assert_nothing_else(&all, &fired);
    }
}

#[test]
fn all_bundled_files_together_and_the_alert_log_format() {
    let all = incidents();
    let (log, fired) = replay_defaults(&recordings());
    for incident in &all {
        assert_fires(incident, &fired);
    }
    assert_nothing_else(&all, &fired);
    // The alerts log: Alertmanager alert objects plus the receiver, one per
    // notification, each firing one also an `alerts` point.
    assert!(!log.is_empty());
    for a in &log {
        for key in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "fingerprint",
            "receiver",
        ] {
            assert!(a.get(key).is_some(), "{key} missing in {a}");
        }
        for label in ["alertname", "severity", "model"] {
            assert!(a["labels"][label].is_string(), "{label} missing in {a}");
        }
        assert!(
            !a["annotations"]["summary"].as_str().unwrap().contains('{'),
            "{a}"
        );
    }
    let firing_in_log = log.iter().filter(|a| a["status"] == "firing").count();
    assert_eq!(fired.len(), firing_in_log);
}

/// A rule in the config file joins the built-in ones and can replace one;
/// a broken rule is a start-up error naming the problem.
#[test]
fn rules_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let rec = recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("error-burst"))
        .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        r#"
[alerts]
default_rules = false
[[alerts.rules]]
name = "any_errors"
measurement = "throughput"
field = "errors"
op = ">"
threshold = 0.0
severity = "info"
summary = "{model} had {value} errors"
"#,
    )
    .unwrap();
    let alerts = dir.path().join("a.jsonl");
    run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet"])
            .arg(&rec)
            .arg("--metrics-out")
            .arg(dir.path().join("m.lp"))
            .arg("--alerts-out")
            .arg(&alerts),
    );
    let text = std::fs::read_to_string(&alerts).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let a: Value = serde_json::from_str(line).unwrap();
        assert_eq!(a["labels"]["alertname"], "any_errors", "{a}");
        assert_eq!(a["labels"]["severity"], "info");
    }

    std::fs::write(
        &config,
        "[[alerts.rules]]\nname = \"x\"\nmeasurement = \"latency\"\nfield = \"p99\"\nop = \"=>\"\nseverity = \"warning\"\nsummary = \"\"\n",
    )
    .unwrap();
    let out = infermon()
        .arg("--config")
        .arg(&config)
        .args(["replay", "--offline", "--quiet"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("=>"), "{stderr}");
}

/// Silences from the CLI land in the silences file and are listed; a
/// silence in force at the incident's event time mutes its notifications,
/// and a firing critical alert inhibits the same model's warnings.
#[test]
fn silences_and_inhibition() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("silences.jsonl");
    let out = run_ok(
        infermon()
            .args(["silence", "add", "--matcher", "model=ads-ctr", "--matcher"])
            .arg("alertname=!error_rate_high")
            .args([
                "--duration",
                "2h",
                "--comment",
                "promo week (jane)",
                "--file",
            ])
            .arg(&file),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("silenced until"));
    let ls = run_ok(infermon().args(["silence", "ls", "--file"]).arg(&file));
    let table = String::from_utf8_lossy(&ls.stdout);
    assert!(
        table.contains("active") && table.contains("model=ads-ctr") && table.contains("promo week"),
        "{table}"
    );
    let bad = infermon()
        .args([
            "silence",
            "add",
            "--matcher",
            "oops",
            "--duration",
            "1h",
            "--file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"oops\" is not NAME=VALUE"));

    // The error burst (2025-11-20 14:12) silenced in the config for its hour.
    let rec = recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("error-burst"))
        .unwrap();
    let replay = |toml: &str| {
        let config = dir.path().join("c.toml");
        std::fs::write(&config, toml).unwrap();
        let alerts = dir.path().join("a.jsonl");
        let out = run_ok(
            infermon()
                .arg("--config")
                .arg(&config)
                .args(["replay", "--offline", "--quiet"])
                .arg(&rec)
                .arg("--metrics-out")
                .arg(dir.path().join("m.lp"))
                .arg("--alerts-out")
                .arg(&alerts),
        );
        let names: Vec<String> = std::fs::read_to_string(&alerts)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {}",
                    v["labels"]["alertname"].as_str().unwrap(),
                    v["status"].as_str().unwrap()
                )
            })
            .collect();
        (names, String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (plain, summary) = replay("");
    assert!(
        plain.contains(&"error_rate_high firing".to_string()),
        "{plain:?}"
    );
    // The slow timeouts' latency warning is inhibited by the critical burst.
    assert!(
        !plain
            .iter()
            .any(|n| n.starts_with("latency_p99_regression")),
        "{plain:?}"
    );
    assert!(summary.contains("inhibited"), "{summary}");
    let (silenced, summary) = replay(
        "[[alerts.silences]]\nmatchers = { model = \"recsys-ranker\" }\nstarts_at = \"2025-11-20T14:00:00Z\"\nends_at = \"2025-11-20T15:00:00Z\"\ncomment = \"planned GPU maintenance\"\n",
    );
    assert!(silenced.is_empty(), "{silenced:?}");
    assert!(summary.contains("silenced"), "{summary}");
    let (no_inhibit, _) = replay("[alerts]\ninhibit = false\n");
    assert!(
        no_inhibit
            .iter()
            .any(|n| n.starts_with("latency_p99_regression")),
        "{no_inhibit:?}"
    );
}
