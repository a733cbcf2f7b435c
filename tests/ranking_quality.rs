//! Quality the way search and recommendation teams measure it, through the
//! real binary: precision / recall / F1 at the decision threshold and the
//! ranking metrics per list against scikit-learn
//! (`tests/reference/ranking_reference.py`, run in the test); the
//! broken-order incident; canary against stable.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use infermon_replay_data::generate::GenerateOptions;
use infermon_replay_data::scenario::Scenario;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use serde_json::{Value, json};

use crate::support::{Line, infermon, parse_lines, repo, required_env, run_ok};

const WINDOW_MS: i64 = 60_000;

/// Replay `recording` offline with `config` (TOML text); the points and the
/// alerts log.
fn replay(dir: &Path, recording: &Path, config: &str) -> (Vec<Line>, Vec<Value>) {
    let config_file = dir.join("infermon.toml");
    std::fs::write(&config_file, config).unwrap();
    let (metrics, alerts) = (dir.join("m.lp"), dir.join("alerts.jsonl"));
    run_ok(
        infermon()
            .arg("--config")
            .arg(&config_file)
            .args(["replay", "--offline", "--quiet"])
            .arg(recording)
            .arg("--metrics-out")
            .arg(&metrics)
            .arg("--alerts-out")
            .arg(&alerts),
    );
    let lines = parse_lines(&std::fs::read_to_string(&metrics).unwrap());
    let log = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, log)
}

fn generate(dir: &Path, scenario: &str, duration: Option<&str>) -> std::path::PathBuf {
    let out = dir.join(format!("{scenario}.jsonl"));
    let mut cmd = infermon();
    cmd.args(["generate", "--scenario", scenario, "--out"])
        .arg(&out);
    if let Some(d) = duration {
        cmd.args(["--duration", d]);
    }
    run_ok(&mut cmd);
    out
}

fn python(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    let mut cmd = Command::new(required_env("INFERMON_TEST_PYTHON"));
    for a in args {
        cmd.arg(a);
    }
    serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap()
}

fn close(ours: Option<f64>, theirs: Option<f64>, what: &str) {
    match (ours, theirs) {
        (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-9, "{what}: ours {a} vs sklearn {b}"),
        (a, b) => assert_eq!(a, b, "{what}: present on one side only"),
    }
}

/// The points of `measurement` keyed by (window end ms, model, version).
fn by_window<'a>(lines: &'a [Line], measurement: &str) -> HashMap<(i64, String, String), &'a Line> {
    lines
        .iter()
        .filter(|l| l.measurement == measurement && l.tag("dimension").is_none())
        .map(|l| {
            let key = (
                l.ts_ns / 1_000_000,
                l.tag("model").unwrap().to_string(),
                l.tag("model_version").unwrap().to_string(),
            );
            (key, l)
        })
        .collect()
}

#[test]
fn threshold_and_ranking_metrics_equal_sklearn() {
    let dir = tempfile::tempdir().unwrap();
    let recording = generate(dir.path(), "broken-order", Some("20m"));
    // A per-model threshold (0.15) overriding the default, and cut-offs
    // other than the defaults.
    let (lines, _) = replay(
        dir.path(),
        &recording,
        "[quality]\nlabel_wait = \"2m\"\nthreshold = 0.9\nthresholds = { search-ltr = 0.15 }\nranking_k = [3, 10]\n",
    );
    let expected = python(&[
        &repo().join("tests/reference/ranking_reference.py"),
        &recording,
        &"0.15",
        &"3,10",
    ]);
    let quality = by_window(&lines, "quality");
    let ranking = by_window(&lines, "ranking");
    let position_ctr: HashMap<(i64, String), &Line> = lines
        .iter()
        .filter(|l| l.measurement == "position_ctr")
        .map(|l| {
            (
                (l.ts_ns / 1_000_000, l.tag("position").unwrap().to_string()),
                l,
            )
        })
        .collect();
    let expected = expected.as_array().unwrap();
    assert_eq!(expected.len(), 20, "20 windows of predictions");
    assert_eq!(
        quality.len(),
        expected.len(),
        "one quality point per window"
    );
    assert_eq!(
        ranking.len(),
        expected.len(),
        "one ranking point per window"
    );
    let mut compared = 0;
    for e in expected {
        let key = (
            e["end_ms"].as_i64().unwrap(),
            e["model"].as_str().unwrap().to_string(),
            e["model_version"].as_str().unwrap().to_string(),
        );
        let q = quality
            .get(&key)
            .unwrap_or_else(|| panic!("no quality point {key:?}"));
        assert_eq!(
            q.float("threshold"),
            Some(0.15),
            "the model's own threshold"
        );
        for (k, v) in e["quality"].as_object().unwrap() {
            close(q.float(k), v.as_f64(), &format!("quality.{k} at {key:?}"));
        }
        let r = ranking
            .get(&key)
            .unwrap_or_else(|| panic!("no ranking point {key:?}"));
        for (k, v) in e["ranking"].as_object().unwrap() {
            if k == "position_ctr" {
                for (pos, want) in v.as_object().unwrap() {
                    let p = position_ctr[&(key.0, pos.clone())];
                    assert_eq!(
                        p.float("impressions"),
                        want["impressions"].as_f64(),
                        "{pos}"
                    );
                    assert_eq!(p.float("clicks"), want["clicks"].as_f64(), "{pos}");
                }
                assert_eq!(
                    position_ctr.keys().filter(|(t, _)| *t == key.0).count(),
                    v.as_object().unwrap().len(),
                    "positions of {key:?}"
                );
                continue;
            }
            close(r.float(k), v.as_f64(), &format!("ranking.{k} at {key:?}"));
            compared += 1;
        }
    }
    assert!(
        compared >= 20 * 7,
        "every ranking field compared ({compared})"
    );
}

#[test]
fn broken_order_drops_ndcg_and_mrr_and_alerts_within_two_windows() {
    let dir = tempfile::tempdir().unwrap();
    let recording = generate(dir.path(), "broken-order", None);
    let (lines, log) = replay(dir.path(), &recording, "");
    let incident = &GenerateOptions::bundled(Scenario::BrokenOrder).incidents()[0];
    let start = incident.start_ms;

    // Per-window values before and during the incident.
    let mean = |measurement: &str, field: &str, during: bool| {
        let v: Vec<f64> = lines
            .iter()
            .filter(|l| l.measurement == measurement && l.tag("dimension").is_none())
            .filter(|l| (l.ts_ns / 1_000_000 > start) == during)
            .filter_map(|l| l.float(field))
            .collect();
        assert!(v.len() >= 10, "{measurement}.{field}: {} windows", v.len());
        v.iter().sum::<f64>() / v.len() as f64
    };
    let drop = |m: &str, f: &str| mean(m, f, true) / mean(m, f, false);
    let (ndcg, mrr) = (drop("ranking", "ndcg_at_10"), drop("ranking", "mrr"));
    let (score, ctr) = (drop("quality", "mean_score"), drop("quality", "ctr"));
    assert!(ndcg < 0.75 && mrr < 0.7, "NDCG@10 x{ndcg}, MRR x{mrr}");
    assert!(
        (score - 1.0).abs() < 0.03,
        "the score distribution stays: x{score}"
    );
    assert!(
        1.0 - ctr < (1.0 - ndcg) / 2.0,
        "CTR x{ctr} barely moves next to NDCG x{ndcg}"
    );

    // The documented alert within two windows, and nothing else.
    let fired: Vec<(&str, i64)> = lines
        .iter()
        .filter(|l| l.measurement == "alerts")
        .filter(|l| {
            l.fields
                .iter()
                .any(|(k, v)| k == "state" && v == "\"firing\"")
        })
        .map(|l| (l.tag("alertname").unwrap(), l.ts_ns / 1_000_000))
        .collect();
    let first_window_end = start - start.rem_euclid(WINDOW_MS) + WINDOW_MS;
    assert_eq!(fired.len(), 1, "one alert: {fired:?}");
    assert_eq!(fired[0].0, "ranking_quality_drop");
    assert!(
        (start..=first_window_end + WINDOW_MS).contains(&fired[0].1),
        "fired at {} for an incident at {start}",
        fired[0].1
    );
    assert_eq!(log[0]["labels"]["model"], "search-ltr");
    assert_eq!(log[0]["labels"]["model_version"], "5");
}

/// A canary recording: `shop-ranker` v1 serves 70 % and v2 30 % of 20
/// requests/s for 12 minutes, every prediction labelled. v2 is
/// `latency_factor` times slower and clicked at `v2_ctr` (v1: 0.10).
/// Returns the clicks and labelled predictions per (window end, version).
fn canary_recording(path: &Path, latency_factor: f64, v2_ctr: f64) -> Counts {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let latency = LogNormal::new(3.0_f64.ln(), 0.3).unwrap();
    let t0 = 1_763_700_000_000 - 1_763_700_000_000 % WINDOW_MS;
    let mut lines = Vec::new();
    let mut counts = Counts::new();
    for i in 0..12 * 60 * 20 {
        let ts = t0 + i * 50;
        let canary = rng.random::<f64>() < 0.3;
        let (version, factor, ctr) = if canary {
            ("2", latency_factor, v2_ctr)
        } else {
            ("1", 1.0, 0.10)
        };
        let rid = format!("r{i}");
        let total = latency.sample(&mut rng) * factor;
        lines.push(
            json!({"topic": "inference.predictions", "request_id": rid, "ts": ts,
            "model": "shop-ranker", "model_version": version, "status": "ok",
            "timings_ms": {"total": total}, "score": 0.10}),
        );
        let label = u8::from(rng.random::<f64>() < ctr);
        let end = ts - ts % WINDOW_MS + WINDOW_MS;
        let c = counts.entry((end, version)).or_default();
        c.0 += u64::from(label);
        c.1 += 1;
        lines.push(json!({"topic": "inference.feedback", "request_id": rid,
            "ts": ts + 5_000, "label": label}));
    }
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
    counts
}

/// (clicks, labelled) per (window end, version).
type Counts = BTreeMap<(i64, &'static str), (u64, u64)>;

/// The comparisons of v2 against v1 by metric, and the canary alerts.
fn judge_canary(
    latency_factor: f64,
    v2_ctr: f64,
) -> (BTreeMap<String, Vec<Line>>, Vec<Value>, Counts) {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("canary.jsonl");
    let counts = canary_recording(&recording, latency_factor, v2_ctr);
    let (lines, log) = replay(dir.path(), &recording, "[quality]\nlabel_wait = \"1m\"\n");
    let mut by_metric: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for l in lines.into_iter().filter(|l| l.measurement == "comparison") {
        assert_eq!(
            l.tag("model_version"),
            Some("2"),
            "the canary is the candidate"
        );
        assert_eq!(l.tag("baseline_version"), Some("1"));
        by_metric
            .entry(l.tag("metric").unwrap().to_string())
            .or_default()
            .push(l);
    }
    let canary_alerts = log
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "canary_worse" && a["status"] == "firing")
        .collect();
    (by_metric, canary_alerts, counts)
}

fn worse(l: &Line) -> bool {
    l.fields.iter().any(|(k, v)| k == "worse" && v == "true")
}

#[test]
fn an_equal_canary_is_not_flagged() {
    let (by_metric, alerts, _) = judge_canary(1.0, 0.10);
    for metric in ["latency_p99", "error_rate", "ctr", "calibration"] {
        assert_eq!(
            by_metric[metric].len(),
            12,
            "{metric} compared in each window"
        );
    }
    for (metric, lines) in &by_metric {
        assert!(
            lines.iter().all(|l| !worse(l)),
            "{metric} flagged an equal canary"
        );
    }
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn a_slower_canary_is_flagged_and_alerted() {
    let (by_metric, alerts, _) = judge_canary(1.6, 0.10);
    let flagged = by_metric["latency_p99"].iter().filter(|l| worse(l)).count();
    assert!(flagged >= 10, "{flagged} of 12 windows flagged");
    assert!(
        by_metric["ctr"].iter().all(|l| !worse(l)),
        "CTR is the same"
    );
    assert!(!alerts.is_empty(), "canary_worse fired");
    assert!(
        alerts
            .iter()
            .all(|a| a["labels"]["metric"] == "latency_p99"),
        "{alerts:?}"
    );
    assert_eq!(alerts[0]["labels"]["model_version"], "2");
}

#[test]
fn a_canary_with_fewer_clicks_is_flagged_with_scipys_pvalue() {
    let (by_metric, alerts, counts) = judge_canary(1.0, 0.06);
    let ctr = &by_metric["ctr"];
    assert!(ctr.iter().filter(|l| worse(l)).count() >= 8, "CTR flagged");
    assert!(
        by_metric["latency_p99"].iter().all(|l| !worse(l)),
        "latency is the same"
    );
    assert!(
        alerts.iter().any(|a| a["labels"]["metric"] == "ctr"),
        "{alerts:?}"
    );
    // The one-sided p-value over the trailing 10 minutes equals scipy's: a
    // 2x2 chi-square without continuity correction is the pooled z test
    // squared (and v2's CTR is the lower one).
    let tables: Vec<Value> = ctr
        .iter()
        .map(|l| {
            let end = l.ts_ns / 1_000_000;
            let trailing = |version| {
                counts
                    .range((end - 10 * WINDOW_MS + 1, "")..=(end, "~"))
                    .filter(|((_, v), _)| *v == version)
                    .fold((0, 0), |a, (_, c)| (a.0 + c.0, a.1 + c.1))
            };
            let ((cb, nb), (cc, nc)) = (trailing("1"), trailing("2"));
            let counted = (l.float("n_baseline"), l.float("n_candidate"));
            assert_eq!(counted, (Some(nb as f64), Some(nc as f64)), "at {end}");
            json!([[cb, nb - cb], [cc, nc - cc]])
        })
        .collect();
    let script = "import json, sys\nfrom scipy.stats import chi2_contingency\n\
                  t = json.load(sys.stdin)\n\
                  print(json.dumps([chi2_contingency(x, correction=False).pvalue / 2 for x in t]))";
    let mut cmd = Command::new(required_env("INFERMON_TEST_PYTHON"));
    cmd.args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(tables).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scipy: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    for (l, want) in ctr.iter().zip(scipy) {
        let ours = l.float("pvalue").unwrap();
        assert!(
            (ours - want).abs() <= 1e-9 + 1e-6 * want,
            "p-value {ours} vs scipy {want}"
        );
    }
}
