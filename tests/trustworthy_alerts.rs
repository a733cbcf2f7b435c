//! The built-in rules on realistic traffic (`replay-data`'s `realistic-day`
//! and `quiet-days`, see its README): every incident of the day alerts
//! within its budget and nothing else fires, cycle, promotion and evenings
//! included; three quiet days fire nothing. The counting tests behind the
//! rules and the drift's Benjamini–Hochberg adjustment are checked against
//! scipy.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{infermon, required_env, run_ok};

const MIN: i64 = 60_000;

/// The only config: which segment keys the traffic carries (a description
/// of the data, not a tuning of the rules).
const SEGMENTS: &str = "[window]\nsegment_keys = [\"site\", \"surface\"]\n";

/// Generate `scenario` and replay it on built-in rules; the firing
/// notifications of the alerts log and the documented incidents.
fn replay(dir: &Path, scenario: &str) -> (Vec<Value>, Vec<Value>) {
    let file = dir.join(format!("{scenario}.jsonl.zst"));
    let out = run_ok(
        infermon()
            .args([
                "generate",
                "--scenario",
                scenario,
                "--zstd-level",
                "1",
                "--out",
            ])
            .arg(&file),
    );
    let incidents: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("incident \""))
        .map(|l| {
            // `incident "NAME" on MODEL SERIES: START..END ms; alert ...`
            let (name, rest) = l.split_once("\" on ").unwrap();
            let (who, rest) = rest.split_once(": ").unwrap();
            let (model, series) = who.split_once(' ').unwrap();
            let (span, _) = rest.split_once(" ms;").unwrap();
            let (start, end) = span.split_once("..").unwrap();
            json!({"name": name, "model": model, "series": series,
                   "start": start.parse::<i64>().unwrap(), "end": end.parse::<i64>().unwrap()})
        })
        .collect();
    let config = dir.join("segments.toml");
    std::fs::write(&config, SEGMENTS).unwrap();
    let alerts = dir.join(format!("{scenario}-alerts.jsonl"));
    run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet"])
            .arg(&file)
            .arg("--metrics-out")
            .arg(dir.join(format!("{scenario}.lp")))
            .arg("--alerts-out")
            .arg(&alerts),
    );
    let firing = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|a| a["status"] == "firing")
        .collect();
    (firing, incidents)
}

/// When a notification was made (its evaluation's event time, the last
/// part of its idempotency key), ms.
fn at_ms(a: &Value) -> i64 {
    let key = a["idempotencyKey"].as_str().unwrap();
    key.rsplit(':').next().unwrap().parse().unwrap()
}

/// (incident, alert, labels the alert must carry, budget from the start).
type Expected = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    i64,
);

#[test]
fn every_incident_of_a_realistic_day_alerts_in_budget_and_nothing_else_fires() {
    let dir = tempfile::tempdir().unwrap();
    let (firing, incidents) = replay(dir.path(), "realistic-day");
    assert_eq!(incidents.len(), 6, "{incidents:?}");
    let expected: [Expected; 6] = [
        (
            "one site slow",
            "latency_p99_regression",
            &[("dimension", "site"), ("site", "mx")],
            5 * MIN,
        ),
        (
            "broken calibration",
            "calibration_over_predicts",
            &[("model_version", "6")],
            90 * MIN,
        ),
        // A creep to 2x over five hours must alert before it doubles.
        ("slow latency creep", "latency_p99_creep", &[], 5 * 60 * MIN),
        (
            "one surface failing",
            "segment_error_rate",
            &[("dimension", "surface"), ("surface", "email")],
            20 * MIN,
        ),
        (
            "errors on a low-traffic model",
            "error_rate_high",
            &[("model_version", "2")],
            5 * MIN,
        ),
        (
            "repeated gradient spikes",
            "gradient_spikes",
            &[("run_id", "online-ft-home-feed")],
            5 * MIN,
        ),
    ];
    for (name, alert, labels, budget) in expected {
        let i = incidents.iter().find(|i| i["name"] == name).unwrap();
        let start = i["start"].as_i64().unwrap();
        let hit = firing.iter().find(|a| {
            a["labels"]["alertname"] == alert
                && a["labels"]["model"] == i["model"]
                && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
                && at_ms(a) >= start
        });
        let hit =
            hit.unwrap_or_else(|| panic!("{name}: no {alert} {labels:?}; fired: {firing:#?}"));
        let late = at_ms(hit) - start;
        assert!(
            late <= budget,
            "{name}: {alert} {} min after the start, budget {} min",
            late / MIN,
            budget / MIN
        );
    }
    // Nothing else: each firing belongs to an incident of its model, while
    // it lasts (plus the rules' windows to notice and 10 minutes).
    for a in &firing {
        let t = at_ms(a);
        let explained = incidents.iter().any(|i| {
            i["model"] == a["labels"]["model"]
                && t >= i["start"].as_i64().unwrap()
                && t <= i["end"].as_i64().unwrap() + 10 * MIN
        });
        assert!(explained, "fired outside every incident: {a:#}");
    }
}

#[test]
fn three_quiet_days_fire_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (firing, incidents) = replay(dir.path(), "quiet-days");
    assert!(incidents.is_empty());
    assert!(
        firing.is_empty(),
        "false alarms on quiet traffic: {firing:#?}"
    );
}

/// The rules' tests against scipy on the same counts.
#[test]
fn counting_tests_equal_scipy() {
    use infermon_operators::alerts::horizon::{
        binomial_upper_tail, calibration_z, normal_cdf, two_proportion_z,
    };
    let binomial = [
        (0u64, 60u64, 0.01),
        (3, 60, 0.01),
        (18, 60, 0.01),
        (22, 293, 0.01),
        (40, 5000, 0.01),
        (900, 1000, 0.5),
    ];
    let proportions = [
        (30.0, 300.0, 5.0, 4700.0),
        (3.0, 29.0, 4.0, 450.0),
        (10.0, 100.0, 100.0, 1000.0),
    ];
    let calibration = [
        (108.0, 216.0, 207.0),
        (150.0, 149.0, 140.0),
        (0.0, 12.0, 11.5),
    ];
    let script = r#"
import json, sys
from scipy import stats
q = json.load(sys.stdin)
out = {
  "binomial": [stats.binom.sf(k - 1, n, p) if k > 0 else 1.0 for k, n, p in q["binomial"]],
  # statsmodels' proportions_ztest (pooled) computed by hand
  "two_proportion": [],
  "calibration": [],
}
for k1, n1, k2, n2 in q["two_proportion"]:
    p = (k1 + k2) / (n1 + n2)
    z = (k1 / n1 - k2 / n2) / (p * (1 - p) * (1 / n1 + 1 / n2)) ** 0.5
    out["two_proportion"].append([z, stats.norm.sf(z)])
out["bh"] = list(stats.false_discovery_control(q["bh"], method="bh"))
for o, e, v in q["calibration"]:
    z = (o - e) / v ** 0.5
    out["calibration"].append([z, 2 * stats.norm.sf(abs(z))])
print(json.dumps(out))
"#;
    let bh = [1e-12, 0.03, 2e-5, 0.5, 1e-4, 0.04, 0.9, 3e-5];
    let query = json!({"binomial": binomial, "two_proportion": proportions,
                       "calibration": calibration, "bh": bh});
    let python = required_env("INFERMON_TEST_PYTHON");
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(query.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scipy reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-300) + 1e-15;
    for ((k, n, p), w) in binomial.iter().zip(want["binomial"].as_array().unwrap()) {
        let got = binomial_upper_tail(*k, *n, *p);
        let w = w.as_f64().unwrap();
        assert!(
            (got - w).abs() <= 1e-7 * w.max(1e-300),
            "binomial {k}/{n} p0={p}: {got} vs scipy {w}"
        );
    }
    for ((k1, n1, k2, n2), w) in proportions
        .iter()
        .zip(want["two_proportion"].as_array().unwrap())
    {
        let z = two_proportion_z(*k1, *n1, *k2, *n2).unwrap();
        assert!(close(z, w[0].as_f64().unwrap()), "z {z} vs {w}");
        let p = normal_cdf(-z);
        assert!((p - w[1].as_f64().unwrap()).abs() < 1e-12, "p {p} vs {w}");
    }
    let adjusted = infermon_operators::drift::benjamini_hochberg(&bh);
    for (got, w) in adjusted.iter().zip(want["bh"].as_array().unwrap()) {
        let w = w.as_f64().unwrap();
        assert!(close(*got, w), "BH {adjusted:?} vs scipy {}", want["bh"]);
    }
    for ((o, e, v), w) in calibration
        .iter()
        .zip(want["calibration"].as_array().unwrap())
    {
        let z = calibration_z(*o, *e, *v).unwrap();
        assert!(close(z, w[0].as_f64().unwrap()), "z {z} vs {w}");
        let p = 2.0 * normal_cdf(-z.abs());
        assert!((p - w[1].as_f64().unwrap()).abs() < 1e-12, "p {p} vs {w}");
    }
}
