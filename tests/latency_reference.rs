//! Windowed latency percentiles against numpy on the same raw events.
//!
//! `tests/reference/latency_quantiles.py` computes exact per-window
//! quantiles (numpy `method="lower"`, the rank convention our sketch
//! documents) straight from the recording; ours must be within the sketch's
//! 1% relative error, with counts, means and maxima equal.

use std::collections::HashMap;
use std::process::Command;

use crate::support::{infermon, parse_lines, repo, required_env, run_ok};

#[test]
fn windowed_percentiles_match_numpy() {
    let python = required_env("INFERMON_TEST_PYTHON");
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    run_ok(
        infermon()
            .args([
                "generate",
                "--scenario",
                "latency-regression",
                "--duration",
                "20m",
                "--out",
            ])
            .arg(&rec),
    );
    let metrics = dir.path().join("m.lp");
    run_ok(
        infermon()
            .args(["replay", "--offline", "--quiet"])
            .arg(&rec)
            .arg("--metrics-out")
            .arg(&metrics),
    );
    let ours = parse_lines(&std::fs::read_to_string(&metrics).unwrap());

    let out = run_ok(
        Command::new(&python)
            .arg(repo().join("tests/reference/latency_quantiles.py"))
            .arg(&rec),
    );
    let reference: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let by_key: HashMap<(String, String, String, i64), &serde_json::Value> = reference
        .iter()
        .map(|r| {
            (
                (
                    r["model"].as_str().unwrap().to_string(),
                    r["model_version"].as_str().unwrap().to_string(),
                    r["stage"].as_str().unwrap().to_string(),
                    r["window_end_ms"].as_i64().unwrap(),
                ),
                r,
            )
        })
        .collect();

    let (mut compared, mut skipped_late) = (0, 0);
    for l in ours.iter().filter(|l| l.measurement == "latency") {
        let key = (
            l.tag("model").unwrap().to_string(),
            l.tag("model_version").unwrap().to_string(),
            l.tag("stage").unwrap().to_string(),
            l.ts_ns / 1_000_000,
        );
        let r = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("no reference for {key:?}"));
        let count = l.float("count").unwrap();
        if count != r["count"].as_f64().unwrap() {
            // A late event was (rightly) left out of this window; numpy saw it.
            skipped_late += 1;
            continue;
        }
        compared += 1;
        assert_eq!(l.float("max"), r["max"].as_f64(), "{key:?}");
        let mean = r["mean"].as_f64().unwrap();
        assert!(
            (l.float("mean").unwrap() - mean).abs() <= 1e-9 * mean.max(1.0),
            "{key:?}"
        );
        for q in ["p50", "p90", "p95", "p99", "p999"] {
            let exact = r[q].as_f64().unwrap();
            let got = l.float(q).unwrap();
            let rel = (got - exact).abs() / exact;
            assert!(
                rel <= 0.01 + 1e-12,
                "{key:?} {q}: ours {got}, numpy {exact}, rel err {rel}"
            );
        }
    }
    assert!(compared >= 100, "compared {compared} windows");
    // Each late event can touch at most one window of each of its 5 stages.
    let late: f64 = ours
        .iter()
        .filter(|l| l.measurement == "late_events")
        .map(|l| l.float("count").unwrap())
        .sum();
    assert!(
        skipped_late as f64 <= 5.0 * late,
        "{skipped_late} windows differ in count but only {late} late events"
    );
}
