//! `infermon replay --offline` on the bundled recordings and on bad input.

use std::io::Write;

use crate::support::{Line, infermon, parse_lines, recordings, repo, run_ok};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn incidents() -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(repo().join("replay-data/recordings/incidents.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn incident(name: &str) -> (i64, i64) {
    let i = incidents().into_iter().find(|i| i["name"] == name).unwrap();
    (
        i["start_ms"].as_i64().unwrap(),
        i["end_ms"].as_i64().unwrap(),
    )
}

fn replay_bundled() -> (Vec<Line>, String) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.lp");
    let out = run_ok(
        infermon()
            .arg("replay")
            .args(recordings())
            .args(["--offline", "--quiet", "--metrics-out"])
            .arg(&metrics),
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    (parse_lines(&text), String::from_utf8(out.stdout).unwrap())
}

fn p99s(lines: &[Line], model: &str, version: &str) -> Vec<f64> {
    lines
        .iter()
        .filter(|l| {
            l.measurement == "latency"
                && l.tag("model") == Some(model)
                && l.tag("model_version") == Some(version)
                && l.tag("stage") == Some("total")
        })
        .map(|l| l.float("p99").unwrap())
        .collect()
}

#[test]
fn bundled_recordings_show_their_incident_signatures() {
    assert_eq!(recordings().len(), 5, "bundled recordings present");
    let (lines, summary) = replay_bundled();

    // Latency regression: v4's p99 is at least 3x v3's.
    let (v3, v4) = (
        p99s(&lines, "ctr-ranker", "3"),
        p99s(&lines, "ctr-ranker", "4"),
    );
    assert!(
        v3.len() >= 10 && v4.len() >= 10,
        "{} / {} windows",
        v3.len(),
        v4.len()
    );
    let ratio = median(v4) / median(v3);
    assert!(ratio >= 3.0, "v4/v3 median p99 ratio {ratio}");

    // Error burst: error rate >= 5% inside the incident, < 2% outside.
    let (start, end) = incident("error burst");
    for l in lines
        .iter()
        .filter(|l| l.measurement == "throughput" && l.tag("model") == Some("recsys-ranker"))
    {
        let end_ms = l.ts_ns / 1_000_000;
        let rate = l.float("error_rate").unwrap();
        if end_ms > start + 60_000 && end_ms <= end {
            assert!(rate >= 0.04, "window ending {end_ms}: error rate {rate}");
        } else if end_ms <= start || end_ms > end + 60_000 {
            assert!(
                rate < 0.02,
                "quiet window ending {end_ms}: error rate {rate}"
            );
        }
    }

    // The quiet model stays quiet: p99 never more than 3x its median.
    let quiet = p99s(&lines, "query-encoder", "2");
    let m = median(quiet.clone());
    assert!(quiet.iter().all(|p| *p < 3.0 * m), "quiet p99s {quiet:?}");

    // Windows end on whole minutes (gradient anomalies and the alerts they
    // raise are events, stamped with their step's time); every latency
    // point has its fields.
    for l in lines
        .iter()
        .filter(|l| !["gradient_anomalies", "alerts"].contains(&l.measurement.as_str()))
    {
        assert_eq!(l.ts_ns % 60_000_000_000, 0, "{l:?}");
        if l.measurement == "latency" {
            for f in ["count", "mean", "p50", "p90", "p95", "p99", "p999", "max"] {
                assert!(l.float(f).is_some(), "{f} missing in {l:?}");
            }
            assert!(l.fields[0].1.ends_with('i'), "count is an integer field");
        }
    }

    // Straggling events are counted, not dropped silently.
    let late: f64 = lines
        .iter()
        .filter(|l| l.measurement == "late_events")
        .map(|l| l.float("count").unwrap())
        .sum();
    assert!(late > 0.0);
    assert!(summary.contains("p99 total ms"), "{summary}");
    assert!(summary.contains("ctr-ranker"), "{summary}");
}

#[test]
fn replay_is_deterministic() {
    let (a, _) = replay_bundled();
    let (b, _) = replay_bundled();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn bad_lines_go_to_the_rejects_file_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.jsonl");
    let good = r#"{"topic":"inference.predictions","request_id":"r1","ts":1763800000123,"model":"m","model_version":"1","status":"ok","timings_ms":{"total":3.5}}"#;
    let bad = [
        (
            r#"{"topic":"inference.predictions","request_id":"r2","ts":1763800001000,"model":"m","model_version":"1","status":"ok","timings_ms":{"total":"abc"}}"#,
            r#"timings_ms.total: expected number, got \"abc\""#,
        ),
        (
            r#"{"topic":"inference.predictions","request_id":"r3","ts":1763800001000,"model":"m","status":"ok","timings_ms":{"total":1}}"#,
            "missing field model_version",
        ),
        (
            r#"{"topic":"inference.predictions","request_id":"#,
            "not valid JSON",
        ),
        (
            r#"{"topic":"somewhere.else","request_id":"r4","ts":1}"#,
            r#"unknown topic \"somewhere.else\""#,
        ),
        (r#"[1,2,3]"#, "expected a JSON object, got an array"),
    ];
    let mut f = std::fs::File::create(&input).unwrap();
    writeln!(f, "{good}").unwrap();
    for (line, _) in &bad {
        writeln!(f, "{line}").unwrap();
    }
    writeln!(f, "{}", good.replace("r1", "r5")).unwrap();
    drop(f);

    let metrics = dir.path().join("m.lp");
    let rejects = dir.path().join("rejects.jsonl");
    let out = run_ok(
        infermon()
            .args(["replay", "--offline", "--quiet"])
            .arg(&input)
            .arg("--metrics-out")
            .arg(&metrics)
            .arg("--rejects-out")
            .arg(&rejects),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("5 rejected"), "{stdout}");

    let rejected = std::fs::read_to_string(&rejects).unwrap();
    let rows: Vec<serde_json::Value> = rejected
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), bad.len());
    for (row, (line, reason)) in rows.iter().zip(&bad) {
        assert_eq!(row["raw"], *line, "the original line is kept");
        let got = row["reason"].as_str().unwrap();
        assert!(
            got.contains(&reason.replace("\\\"", "\"")),
            "{got} vs {reason}"
        );
        assert!(row["line"].as_u64().unwrap() >= 2);
    }

    let lines = parse_lines(&std::fs::read_to_string(&metrics).unwrap());
    let t = lines
        .iter()
        .find(|l| l.measurement == "throughput")
        .expect("good lines still counted");
    assert_eq!(t.float("requests"), Some(2.0));
}

/// Replay the latency-regression recording with a config file.
fn replay_regression_with(config: &std::path::Path) -> Vec<Line> {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.lp");
    let files = recordings();
    let regression = files
        .iter()
        .find(|p| p.to_string_lossy().contains("latency-regression"))
        .unwrap();
    run_ok(
        infermon()
            .arg("--config")
            .arg(config)
            .args(["replay", "--offline", "--quiet"])
            .arg(regression)
            .arg("--metrics-out")
            .arg(&metrics),
    );
    parse_lines(&std::fs::read_to_string(&metrics).unwrap())
}

#[test]
fn custom_sql_metric_from_config_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("infermon.toml");
    std::fs::write(
        &config,
        r#"
[window]
size = "5m"

[[sql_metrics]]
measurement = "score_stats"
query = "SELECT model, model_version, avg(score) AS mean_score, count(*) AS n FROM window WHERE status = 'ok' GROUP BY model, model_version"
"#,
    )
    .unwrap();
    let lines = replay_regression_with(&config);
    let stats: Vec<_> = lines
        .iter()
        .filter(|l| l.measurement == "score_stats")
        .collect();
    assert!(!stats.is_empty());
    for s in &stats {
        assert_eq!(s.ts_ns % 300_000_000_000, 0, "5-minute windows");
        let mean = s.float("mean_score").unwrap();
        assert!((0.0..=1.0).contains(&mean), "{s:?}");
        assert!(s.fields.iter().any(|(k, v)| k == "n" && v.ends_with('i')));
    }
}

#[test]
fn a_config_typo_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[window]\nsise = \"5m\"\n").unwrap();
    let out = infermon()
        .arg("--config")
        .arg(&config)
        .args(["replay", "--offline", "--quiet"])
        .arg(&recordings()[0])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `sise`"), "{err}");
}

#[test]
fn the_example_deploy_config_works() {
    let lines = replay_regression_with(&repo().join("deploy/infermon.toml"));
    let by_surface: Vec<_> = lines
        .iter()
        .filter(|l| l.measurement == "latency_by_surface")
        .collect();
    assert!(!by_surface.is_empty());
    assert!(
        by_surface
            .iter()
            .all(|l| l.tag("surface") == Some("search"))
    );
    // The segment key is a dimension: its series carry it as a tag.
    let segment: Vec<_> = lines
        .iter()
        .filter(|l| l.measurement == "latency" && l.tag("dimension") == Some("surface"))
        .collect();
    assert!(!segment.is_empty(), "no surface series");
    assert!(
        segment.iter().all(|l| l.tag("surface") == Some("search")),
        "segment key becomes a tag"
    );
    assert!(lines.iter().any(|l| l.measurement == "score_stats"));
}
