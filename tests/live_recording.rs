//! The recordings made through real workers (`replay-data/record-live.sh`,
//! `replay-data/live/`) are what their README says: one prediction per
//! generated request, scores that the committed models really give those
//! inputs (re-scored here with ONNX Runtime, 1e-6), consistent timings;
//! and replayed offline on the built-in rules each fires its documented
//! alert within two windows of the incident — and nothing else.

use std::collections::BTreeMap;
use std::io::BufRead;

use infermon_inference::{Scorer, SessionOptions, ort_environment};
use infermon_replay_data::{GenerateOptions, Scenario, generate_requests};
use infermon_schemas::{Decoded, RequestEvent, TopicKind, decode_event};
use serde_json::Value;

use crate::support::{infermon, repo, required_env, run_ok};

const WINDOW_MS: i64 = 60_000;

/// A live recording and its documented incident.
struct Live {
    scenario: Scenario,
    /// When the incident starts (60 % into the hour).
    start_ms: i64,
    /// The alert that must fire, for ctr-ranker, and the features it names.
    alert: &'static str,
    features: &'static [&'static str],
}

const LIVE: [Live; 2] = [
    Live {
        // 2025-11-20 15:36:00 UTC
        scenario: Scenario::InputShift,
        start_ms: 1_763_652_960_000,
        alert: "feature_drift",
        features: &["price", "category", "score"],
    },
    Live {
        // 2025-11-20 16:36:00 UTC
        scenario: Scenario::FeatureNull,
        start_ms: 1_763_656_560_000,
        alert: "null_rate_jump",
        features: &["user_ctr_7d"],
    },
];

fn live_file(scenario: Scenario) -> std::path::PathBuf {
    repo().join(format!(
        "replay-data/live/{}-live.jsonl.zst",
        scenario.name()
    ))
}

fn predictions(scenario: Scenario) -> Vec<Value> {
    infermon_schemas::recording::open(&live_file(scenario))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// The requests the recording was made from, regenerated (deterministic).
fn requests(scenario: Scenario) -> BTreeMap<String, RequestEvent> {
    let mut buf = Vec::new();
    generate_requests(&GenerateOptions::bundled(scenario), &mut buf).unwrap();
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut v: Value = serde_json::from_slice(l).unwrap();
            v.as_object_mut().unwrap().remove("topic");
            match decode_event(TopicKind::Requests, v.to_string().as_bytes()) {
                Ok(Decoded::Request(r)) => (r.request_id.clone(), r),
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[test]
fn live_predictions_are_the_real_models_scores_one_per_request() {
    required_env("ORT_DYLIB_PATH");
    for live in &LIVE {
        check_real_scores(live.scenario);
    }
}

fn check_real_scores(scenario: Scenario) {
    let env = ort_environment(None).unwrap();
    let preds = predictions(scenario);
    let reqs = requests(scenario);
    assert_eq!(preds.len(), reqs.len(), "one prediction per request");
    let mut per_model: BTreeMap<String, Vec<(&RequestEvent, f64)>> = BTreeMap::new();
    for p in &preds {
        let rid = p["request_id"].as_str().unwrap();
        let req = reqs
            .get(rid)
            .unwrap_or_else(|| panic!("{rid}: no such request"));
        assert_eq!(p["model"], req.model.as_str());
        assert_eq!(p["ts"], req.ts, "{rid}: event time is the request's");
        assert_eq!(p["status"], "ok", "{rid}: {p}");
        let t = &p["timings_ms"];
        let stages: f64 = ["queue", "preprocess", "inference", "postprocess"]
            .iter()
            .map(|s| t[s].as_f64().unwrap())
            .sum();
        assert!(t["total"].as_f64().unwrap() >= stages - 1e-3, "{rid}: {t}");
        per_model
            .entry(req.model.clone())
            .or_default()
            .push((req, p["score"].as_f64().unwrap()));
    }
    let dirs = [
        ("ctr-ranker", "inference/models/ctr-ranker", "2"),
        ("query-encoder", "inference/models/minilm", "1"),
    ];
    for (model, dir, version) in dirs {
        let dir = repo().join(dir);
        assert!(
            dir.join(version).join("model.onnx").exists(),
            "{} missing (MiniLM: bash inference/scripts/install_minilm.sh)",
            dir.display()
        );
        let mut scorer = Scorer::load(env, &dir, version, &SessionOptions::default()).unwrap();
        // Every 40th prediction, re-scored in batches of 16.
        let sample: Vec<_> = per_model[model].iter().step_by(40).collect();
        assert!(sample.len() > 150, "{model}: {} sampled", sample.len());
        for chunk in sample.chunks(16) {
            let scores = scorer.score(chunk.iter().map(|(r, _)| *r));
            for ((req, recorded), ours) in chunk.iter().zip(scores) {
                let ours = ours.unwrap();
                assert!(
                    (ours - recorded).abs() <= 1e-6,
                    "{model} {}: recorded {recorded}, the model gives {ours}",
                    req.request_id
                );
            }
        }
    }
}

#[test]
fn each_live_incident_fires_its_documented_alert_and_nothing_else() {
    for live in &LIVE {
        check_alerts(live);
    }
}

fn check_alerts(live: &Live) {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    run_ok(
        infermon()
            .arg("replay")
            .arg(live_file(live.scenario))
            .args(["--offline", "--quiet", "--metrics-out"])
            .arg(dir.path().join("m.lp"))
            .arg("--alerts-out")
            .arg(&alerts),
    );
    let fired: Vec<Value> = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|a: &Value| a["status"] == "firing")
        .collect();
    let mut features = std::collections::BTreeSet::new();
    for a in &fired {
        let l = &a["labels"];
        assert_eq!(l["alertname"], live.alert, "{}: {a}", live.scenario);
        assert_eq!(
            l["model"], "ctr-ranker",
            "the quiet query encoder alerted: {a}"
        );
        let starts = a["startsAt"].as_str().unwrap();
        let ms = humantime::parse_rfc3339(starts)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (live.start_ms..=live.start_ms + 2 * WINDOW_MS).contains(&ms),
            "{}: {starts} is not within two windows of the incident",
            live.scenario
        );
        features.insert(l["feature"].as_str().unwrap().to_string());
    }
    for f in live.features {
        assert!(
            features.contains(*f),
            "{}: no {} alert for {f}: {features:?}",
            live.scenario,
            live.alert
        );
    }
}
