//! The CTR model scored through our feature spec and ONNX Runtime equals
//! Python onnxruntime on the same requests (fixtures made by
//! `inference/scripts/score_reference.py`, see inference/scripts/README.md),
//! one by one and in one batch; bad features fail naming the feature.

use crate::common::{dir, jsonl, requests};
use infermon_inference::{Scorer, SessionOptions, ort_environment};
use serde_json::Value;

#[test]
fn scores_equal_python_onnxruntime_per_request_and_batched() {
    let env = ort_environment(None).expect(crate::common::ORT_HINT);
    let requests = requests("ctr_requests.jsonl");
    for version in ["1", "2"] {
        let expected = jsonl(&format!("ctr_expected_v{version}.jsonl"));
        let mut scorer = Scorer::load(
            env,
            &dir().join("models/ctr-ranker"),
            version,
            &SessionOptions::default(),
        )
        .unwrap();
        // The wrong-model request is the worker's business; the scorer sees
        // the rest.
        let ours: Vec<_> = requests
            .iter()
            .filter(|r| r.model == scorer.model_name())
            .collect();
        let one_by_one: Vec<_> = ours
            .iter()
            .map(|r| scorer.score(std::iter::once(*r)).remove(0))
            .collect();
        let batched = scorer.score(ours.iter().copied());
        let mut checked = 0;
        for ((req, single), batch) in ours.iter().zip(&one_by_one).zip(&batched) {
            let want = expected
                .iter()
                .find(|w| w["request_id"] == req.request_id.as_str())
                .unwrap();
            match (single, want.get("score").and_then(Value::as_f64)) {
                (Ok(got), Some(score)) => {
                    assert!(
                        (got - score).abs() <= 1e-6,
                        "v{version} {}: {got} vs python {score}",
                        req.request_id
                    );
                    let b = batch.as_ref().unwrap();
                    assert!(
                        (b - score).abs() <= 1e-6,
                        "batched {}: {b} vs {score}",
                        req.request_id
                    );
                    checked += 1;
                }
                (Err(e), None) => {
                    let want_err = want["error"].as_str().unwrap();
                    // The same field is named as in the Python reference.
                    let field = want_err.split('`').nth(1).unwrap();
                    assert!(e.contains(field), "{e} vs python: {want_err}");
                    assert_eq!(batch.as_ref().unwrap_err(), e);
                }
                (got, want) => panic!("{}: ours {got:?}, python {want:?}", req.request_id),
            }
        }
        assert!(checked >= 3, "only {checked} scored requests");
    }
}
