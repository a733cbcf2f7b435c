//! Every class of bad input gets its own clear, field-naming error.

use std::borrow::Cow;

use infermon_schemas::{
    DecodeError, Decoded, EventRef, FeatureRef, TopicKind, TopicNames, decode, decode_event,
    decode_recorded_line,
};

const GOOD: &str = r#"{"request_id": "r-8f2c", "ts": 1763800000123, "model": "ctr-ranker",
 "model_version": "3", "worker": "gpu-node-7/0", "device": "cuda:0",
 "status": "ok", "error": null, "batch_size": 32,
 "timings_ms": {"queue": 0.8, "preprocess": 0.1, "inference": 2.3,
                "postprocess": 0.05, "total": 3.3},
 "score": 0.0421,
 "features": {"price": 129.0, "user_ctr_7d": 0.031, "category": "electronics"},
 "segment": {"site": "cn", "surface": "search"}, "some_future_field": [1, 2]}"#;

fn prediction(json: &str) -> Result<Decoded, DecodeError> {
    decode_event(TopicKind::Predictions, json.as_bytes())
}

fn err(kind: TopicKind, json: &str) -> String {
    decode_event(kind, json.as_bytes())
        .expect_err("should be rejected")
        .to_string()
}

#[test]
fn contract_example_decodes() {
    let Decoded::Prediction(p) = prediction(GOOD).unwrap() else {
        panic!("not a prediction")
    };
    assert_eq!(p.model_version, "3");
    assert_eq!(p.timings_ms.total, 3.3);
    assert_eq!(p.timings_ms.queue, Some(0.8));
    assert_eq!(p.batch_size, Some(32));
    assert_eq!(p.segment["surface"], "search");
    assert_eq!(p.error, None, "null means absent");
}

#[test]
fn borrowed_decode_keeps_the_owned_maps_rules() {
    // Keys out of order and sent twice: sorted, the last value wins (what
    // the owned event's BTreeMap keeps); an escaped string is copied.
    let json = r#"{"request_id": "r\u0031", "ts": 1763800000123, "model": "m",
     "model_version": "3", "status": "ok", "timings_ms": {"total": 1},
     "features": {"b": 1, "a": "x", "b": 2, "c": null},
     "segment": {"surface": "feed", "site": "cn", "surface": "search"}}"#;
    let Ok(EventRef::Prediction(p)) = decode(TopicKind::Predictions, json.as_bytes()) else {
        panic!("not a prediction")
    };
    let names: Vec<&str> = p.features.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(p.features[1].1, FeatureRef::Number(2.0));
    assert_eq!(p.features[2].1, FeatureRef::Null);
    let segment: Vec<(&str, &str)> = (p.segment.iter())
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    assert_eq!(segment, [("site", "cn"), ("surface", "search")]);
    assert!(matches!(p.request_id, Cow::Owned(ref s) if s == "r1"));
    assert!(matches!(p.model, Cow::Borrowed("m")));
    let Ok(Decoded::Prediction(owned)) = prediction(json) else {
        panic!("not a prediction")
    };
    assert_eq!(p.clone().into_owned(), owned);
    assert_eq!(owned.borrowed(), p);
}

#[test]
fn missing_required_field_is_named() {
    let json = GOOD.replace(r#""model_version": "3","#, "");
    assert_eq!(
        err(TopicKind::Predictions, &json),
        "missing field model_version"
    );
    let json = GOOD.replace(r#""total": 3.3"#, r#""total": null"#);
    assert_eq!(
        err(TopicKind::Predictions, &json),
        "missing field timings_ms.total"
    );
}

#[test]
fn wrong_type_names_path_and_value() {
    let json = GOOD.replace(r#""total": 3.3"#, r#""total": "abc""#);
    assert_eq!(
        err(TopicKind::Predictions, &json),
        r#"timings_ms.total: expected number, got "abc""#
    );
    let json = GOOD.replace(r#""model": "ctr-ranker""#, r#""model": 7"#);
    assert_eq!(
        err(TopicKind::Predictions, &json),
        "model: expected string, got 7"
    );
    let json = GOOD.replace(r#""status": "ok""#, r#""status": "fine""#);
    assert_eq!(
        err(TopicKind::Predictions, &json),
        r#"status: expected "ok" or "error", got "fine""#
    );
    let json = GOOD.replace(r#""price": 129.0"#, r#""price": true"#);
    assert_eq!(
        err(TopicKind::Predictions, &json),
        "features.price: expected number, string or null, got true"
    );
    let json = GOOD.replace(r#""ts": 1763800000123"#, r#""ts": 1.5"#);
    assert_eq!(
        err(TopicKind::Predictions, &json),
        "ts: expected integer milliseconds since the Unix epoch, got 1.5"
    );
    let json = GOOD.replace(r#""inference": 2.3"#, r#""inference": -2.3"#);
    assert_eq!(
        err(TopicKind::Predictions, &json),
        "timings_ms.inference: expected a non-negative number of milliseconds, got -2.3"
    );
}

#[test]
fn not_json_not_object_and_empty() {
    let e = prediction(r#"{"request_id": "r-1", "ts": "#).unwrap_err();
    assert_eq!(e.reason(), "invalid_json");
    assert!(
        e.to_string()
            .starts_with("not valid JSON: EOF while parsing"),
        "{e}"
    );
    let e = prediction("[1, 2]").unwrap_err();
    assert_eq!(e.to_string(), "expected a JSON object, got an array");
    assert_eq!(prediction("  \n").unwrap_err(), DecodeError::Empty);
}

#[test]
fn feedback_label_must_be_binary() {
    let ok = r#"{"request_id": "r-8f2c", "ts": 1763800042000, "kind": "click", "label": 1}"#;
    assert!(
        matches!(decode_event(TopicKind::Feedback, ok.as_bytes()), Ok(Decoded::Feedback(f)) if f.label == 1)
    );
    assert_eq!(
        err(
            TopicKind::Feedback,
            &ok.replace(r#""label": 1"#, r#""label": 2"#)
        ),
        "label: expected 0 or 1, got 2"
    );
}

#[test]
fn training_nonfinite_spellings_are_understood() {
    let base = r#"{"run_id": "r", "model": "m", "ts": 1, "step": 7, "loss": LOSS, "grad_norm": GN, "nonfinite": 3}"#;
    for (gn, loss) in [
        ("null", "null"),
        (r#""NaN""#, r#""Infinity""#),
        ("1.5", r#""-Infinity""#),
    ] {
        let json = base.replace("GN", gn).replace("LOSS", loss);
        let Decoded::Training(t) = decode_event(TopicKind::Training, json.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.nonfinite, 3);
        assert_eq!(t.grad_norm.is_finite(), gn == "1.5", "{gn}");
        assert!(!t.loss.unwrap().is_finite(), "{loss}");
    }
    let json = base.replace("GN", r#""big""#).replace("LOSS", "1");
    assert_eq!(
        err(TopicKind::Training, &json),
        r#"grad_norm: expected number, null, "NaN" or "Infinity", got "big""#
    );
    let json = r#"{"run_id": "r", "model": "m", "ts": 1, "step": 7}"#;
    assert_eq!(err(TopicKind::Training, json), "missing field grad_norm");
}

#[test]
fn training_event_round_trips_through_its_own_serializer() {
    let json = r#"{"run_id": "r", "model": "m", "ts": 1, "step": 7, "loss": "NaN", "grad_norm": "Infinity", "nonfinite": 2}"#;
    let Decoded::Training(t) = decode_event(TopicKind::Training, json.as_bytes()).unwrap() else {
        panic!()
    };
    let written = serde_json::to_string(&t).unwrap();
    let Decoded::Training(again) = decode_event(TopicKind::Training, written.as_bytes()).unwrap()
    else {
        panic!()
    };
    assert!(again.loss.unwrap().is_nan());
    assert_eq!(again.grad_norm, f64::INFINITY);
}

#[test]
fn recorded_lines_dispatch_on_topic() {
    let topics = TopicNames::default();
    let line = GOOD.replacen('{', r#"{"topic": "inference.predictions", "#, 1);
    assert!(matches!(
        decode_recorded_line(line.as_bytes(), &topics),
        Ok(Decoded::Prediction(_))
    ));
    let line = GOOD.replacen('{', r#"{"topic": "nope", "#, 1);
    assert_eq!(
        decode_recorded_line(line.as_bytes(), &topics)
            .unwrap_err()
            .to_string(),
        r#"unknown topic "nope""#
    );
    assert_eq!(
        decode_recorded_line(GOOD.as_bytes(), &topics)
            .unwrap_err()
            .to_string(),
        "missing field topic"
    );
}

const STEP: &str = r#"{"run_id": "run-a", "model": "m", "ts": 1763800000000, "step": 80,
 "loss": 0.4, "grad_norm": 1.9, "lr": 0.001, "layer_grad_norms": {"d1": 0.8}, "nonfinite": 0}"#;

fn training(json: &str) -> Result<Decoded, DecodeError> {
    decode_event(TopicKind::Training, json.as_bytes())
}

#[test]
fn bare_nan_and_infinity_tokens_are_understood_where_non_finite_is_allowed() {
    // What Python's json.dumps writes for float("nan") / float("inf").
    for (field, token, want) in [
        (r#""grad_norm": 1.9"#, r#""grad_norm": NaN"#, "grad_norm"),
        (
            r#""grad_norm": 1.9"#,
            r#""grad_norm": Infinity"#,
            "grad_norm",
        ),
        (r#""loss": 0.4"#, r#""loss": -Infinity"#, "loss"),
        (r#""d1": 0.8"#, r#""d1": NaN"#, "layer"),
    ] {
        let json = STEP.replace(field, token);
        let Decoded::Training(t) = training(&json).unwrap_or_else(|e| panic!("{token}: {e}"))
        else {
            panic!("not training")
        };
        match want {
            "grad_norm" => assert!(!t.grad_norm.is_finite(), "{token}"),
            "loss" => assert_eq!(t.loss, Some(f64::NEG_INFINITY)),
            _ => assert!(t.layer_grad_norms["d1"].is_nan()),
        }
    }
    // Several in one line, next to strings that merely contain the words.
    let json = STEP
        .replace(r#""grad_norm": 1.9"#, r#""grad_norm":NaN"#)
        .replace(r#""loss": 0.4"#, r#""loss":Infinity"#)
        .replace(r#""run-a""#, r#""NaN Infinity run""#);
    let Decoded::Training(t) = training(&json).unwrap() else {
        panic!("not training")
    };
    assert!(t.grad_norm.is_nan() && t.loss == Some(f64::INFINITY));
    assert_eq!(t.run_id, "NaN Infinity run");
}

#[test]
fn bare_nan_tokens_elsewhere_are_refused_by_field() {
    for (from, to, reason) in [
        (
            r#""score": 0.0421"#,
            r#""score": NaN"#,
            "score: expected number, got a bare NaN token (not JSON)",
        ),
        (
            r#""total": 3.3"#,
            r#""total": Infinity"#,
            "timings_ms.total: expected number, got a bare Infinity token (not JSON)",
        ),
        (
            r#""price": 129.0"#,
            r#""price": NaN"#,
            "features.price: expected number, string or null, got a bare NaN token (not JSON)",
        ),
        (
            r#""model": "ctr-ranker""#,
            r#""model": NaN"#,
            "model: expected string, got a bare NaN token (not JSON)",
        ),
        (
            r#""site": "cn""#,
            r#""site": -Infinity"#,
            "segment.site: expected string, got a bare -Infinity token (not JSON)",
        ),
    ] {
        let json = GOOD.replace(from, to);
        assert_ne!(json, GOOD);
        assert_eq!(err(TopicKind::Predictions, &json), reason, "{to}");
    }
    // Training's strict fields too.
    let json = STEP.replace(r#""lr": 0.001"#, r#""lr": NaN"#);
    assert_eq!(
        err(TopicKind::Training, &json),
        "lr: expected number, got a bare NaN token (not JSON)"
    );
    // Where a key belongs, a token is not quoted: still not JSON.
    let json = GOOD.replace(r#""price": 129.0"#, r#"NaN: 129.0"#);
    assert!(err(TopicKind::Predictions, &json).starts_with("not valid JSON"));
    // Not a token: still invalid JSON with serde's own words.
    let json = GOOD.replace(r#""score": 0.0421"#, r#""score": Nope"#);
    assert!(err(TopicKind::Predictions, &json).starts_with("not valid JSON"));
}
