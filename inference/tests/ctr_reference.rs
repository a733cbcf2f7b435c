//! The CTR model scored through our feature spec and ONNX Runtime equals
//! Python onnxruntime on the same requests (fixtures made by
//! `inference/scripts/score_reference.py`, see inference/scripts/README.md),
//! one by one and in one batch; bad features fail naming the feature.

use std::io::BufRead;
use std::path::PathBuf;

use infermon_inference::{FeatureSpec, Model, ort_environment};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn jsonl(name: &str) -> Vec<Value> {
    let f = std::fs::File::open(dir().join("scripts/testdata").join(name)).unwrap();
    std::io::BufReader::new(f)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn scores_equal_python_onnxruntime_per_request_and_batched() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: run `eval \"$(.ci/services.sh env)\"` (or .ci/run)"
    );
    let env = ort_environment(None).unwrap();
    let spec = FeatureSpec::load(&dir().join("models/ctr-ranker/feature_spec.json")).unwrap();
    let requests = jsonl("ctr_requests.jsonl");
    for version in ["1", "2"] {
        let expected = jsonl(&format!("ctr_expected_v{version}.jsonl"));
        let path = dir()
            .join("models/ctr-ranker")
            .join(version)
            .join("model.onnx");
        let mut model = Model::load(env, &path, &spec.input, &spec.output, 1, "cpu").unwrap();
        let mut batch = Vec::new();
        let mut batch_ids = Vec::new();
        let mut checked = 0;
        for (req, want) in requests.iter().zip(&expected) {
            assert_eq!(req["request_id"], want["request_id"]);
            let mut row = Vec::new();
            let result = if req["model"] != spec.model.as_str() {
                Err(format!(
                    "model `{}`: this spec is for `{}`",
                    req["model"].as_str().unwrap(),
                    spec.model
                ))
            } else {
                spec.encode(req["features"].as_object().unwrap(), &mut row)
                    .map_err(|e| e.to_string())
            };
            match (result, want.get("score").and_then(Value::as_f64)) {
                (Ok(()), Some(score)) => {
                    let got = model.score(1, spec.width(), row.clone()).unwrap()[0];
                    assert!(
                        (f64::from(got) - score).abs() <= 1e-6,
                        "v{version} {}: {got} vs python {score}",
                        req["request_id"]
                    );
                    batch.extend(row);
                    batch_ids.push(score);
                    checked += 1;
                }
                (Err(e), None) => {
                    let want_err = want["error"].as_str().unwrap();
                    // The same field is named as in the Python reference.
                    let field = want_err.split('`').nth(1).unwrap();
                    assert!(e.contains(field), "{e} vs python: {want_err}");
                }
                (got, want) => panic!("{}: ours {got:?}, python {want:?}", req["request_id"]),
            }
        }
        assert!(checked >= 3, "only {checked} scored requests");
        let scores = model.score(batch_ids.len(), spec.width(), batch).unwrap();
        for (got, want) in scores.iter().zip(&batch_ids) {
            assert!(
                (f64::from(*got) - want).abs() <= 1e-6,
                "batched: {got} vs {want}"
            );
        }
    }
}
