//! The MiniLM query encoder through the `tokenizers` crate and ONNX Runtime
//! equals the Python reference (`inference/scripts/minilm_reference.py`:
//! the `tokenizers` package and onnxruntime, fixtures in
//! scripts/testdata/minilm_expected.jsonl): the same token ids, the same
//! cosine scores within 1e-6, one by one and batched; missing and too long
//! texts fail saying so.
//!
//! The model is not committed: `bash inference/scripts/install_minilm.sh`
//! (run by .ci/run) fetches it. `INFERMON_MINILM_DIR` points elsewhere.

use std::path::PathBuf;

use crate::common::{dir, jsonl, requests};
use infermon_inference::{Scorer, SessionOptions, TextEncoder, TextSpec, ort_environment};
use serde_json::Value;

fn model_dir() -> PathBuf {
    let d = std::env::var_os("INFERMON_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir().join("models/minilm"));
    assert!(
        d.join("1/model.onnx").exists() && d.join("1/tokenizer.json").exists(),
        "MiniLM is not installed in {}: run `bash inference/scripts/install_minilm.sh`",
        d.join("1").display()
    );
    d
}

#[test]
fn token_ids_equal_the_python_tokenizer() {
    let d = model_dir();
    let path = d.join("feature_spec.json");
    let spec = TextSpec::parse(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
    let encoder = TextEncoder::load(spec, &d.join("1")).unwrap();
    let mut checked = 0;
    for want in jsonl("minilm_expected.jsonl") {
        let got = encoder.tokenize(want["text"].as_str());
        match (got, want.get("ids")) {
            (Ok(ids), Some(expected)) => {
                let expected: Vec<u32> = serde_json::from_value(expected.clone()).unwrap();
                assert_eq!(ids, expected, "{}", want["text"]);
                checked += 1;
            }
            (Err(e), None) => assert_eq!(e.to_string(), want["error"].as_str().unwrap()),
            (got, _) => panic!("{}: ours {got:?}, python {want}", want["request_id"]),
        }
    }
    assert!(checked >= 9, "only {checked} texts compared");
}

#[test]
fn scores_equal_python_onnxruntime_per_request_and_batched() {
    let env = ort_environment(None).expect(crate::common::ORT_HINT);
    let mut scorer = Scorer::load(env, &model_dir(), "1", &SessionOptions::default()).unwrap();
    let requests = requests("minilm_requests.jsonl");
    let expected = jsonl("minilm_expected.jsonl");
    let one_by_one: Vec<_> = requests
        .iter()
        .map(|r| scorer.score(std::iter::once(r)).remove(0))
        .collect();
    let batched = scorer.score(requests.iter());
    let mut checked = 0;
    for (((req, single), batch), want) in requests
        .iter()
        .zip(&one_by_one)
        .zip(&batched)
        .zip(&expected)
    {
        assert_eq!(want["request_id"], req.request_id.as_str());
        match (single, want.get("score").and_then(Value::as_f64)) {
            (Ok(got), Some(score)) => {
                assert!(
                    (got - score).abs() <= 1e-6,
                    "{:?}: {got} vs python {score}",
                    req.text
                );
                let b = batch.as_ref().unwrap();
                assert!(
                    (b - score).abs() <= 1e-6,
                    "batched {:?}: {b} vs {score}",
                    req.text
                );
                checked += 1;
            }
            (Err(e), None) => {
                assert_eq!(e, want["error"].as_str().unwrap());
                assert_eq!(batch.as_ref().unwrap_err(), e);
            }
            (got, _) => panic!("{}: ours {got:?}, python {want}", req.request_id),
        }
    }
    assert!(checked >= 9, "only {checked} texts scored");
    // "running shoes" is the reference query itself.
    assert!((one_by_one[0].as_ref().unwrap() - 1.0).abs() < 1e-6);
}
