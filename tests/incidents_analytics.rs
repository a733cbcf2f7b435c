//! The drift, null-feature and gradient incidents of the bundled recordings,
//! seen by the analytic operators on built-in defaults: each is flagged in
//! the window where it starts, and nothing is flagged anywhere else (the
//! quiet model and every pre-incident window included).

use crate::support::{Line, infermon, parse_lines, recordings, repo, run_ok};

fn incident(name: &str) -> (i64, i64) {
    let text =
        std::fs::read_to_string(repo().join("replay-data/recordings/incidents.json")).unwrap();
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let i = all.iter().find(|i| i["name"] == name).unwrap();
    (
        i["start_ms"].as_i64().unwrap(),
        i["end_ms"].as_i64().unwrap(),
    )
}

/// Every bundled file in one replay, on built-in defaults: each model
/// version's first 30 minutes are its reference.
fn replay_all() -> Vec<Line> {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.lp");
    run_ok(
        infermon()
            .arg("replay")
            .args(recordings())
            .args(["--offline", "--quiet", "--metrics-out"])
            .arg(&metrics),
    );
    parse_lines(&std::fs::read_to_string(&metrics).unwrap())
}

fn end_ms(l: &Line) -> i64 {
    l.ts_ns / 1_000_000
}

fn drifted(l: &Line) -> bool {
    l.fields.iter().any(|(k, v)| k == "drifted" && v == "true")
}

/// The window that contains `start` ends at the next whole minute.
fn first_window_end(start: i64) -> i64 {
    start - start.rem_euclid(60_000) + 60_000
}

#[test]
fn bundled_incidents_are_flagged_where_they_start_and_nowhere_else() {
    let lines = replay_all();
    let drift: Vec<&Line> = lines.iter().filter(|l| l.measurement == "drift").collect();
    assert!(drift.len() > 1000, "{} drift points", drift.len());

    let (shift_start, shift_end) = incident("input distribution shift");
    let (null_start, null_end) = incident("feature going null");
    let in_incident = |l: &Line| {
        let (s, e) = if l.tag("feature") == Some("user_ctr_7d") {
            (null_start, null_end)
        } else {
            (shift_start, shift_end)
        };
        l.tag("model") == Some("ads-ctr") && end_ms(l) > s && end_ms(l) <= e + 60_000
    };

    // Input shift: price and category drift in the window where it starts.
    for feature in ["price", "category"] {
        let at_start = drift
            .iter()
            .find(|l| {
                l.tag("model") == Some("ads-ctr")
                    && l.tag("feature") == Some(feature)
                    && end_ms(l) == first_window_end(shift_start)
            })
            .unwrap_or_else(|| panic!("no drift point for ads-ctr {feature} at the shift"));
        assert!(
            drifted(at_start),
            "{feature} not drifted at the shift: {at_start:?}"
        );
    }
    // Null feature: user_ctr_7d's null rate jumps in the window where it starts.
    let at_null = drift
        .iter()
        .find(|l| {
            l.tag("model") == Some("ads-ctr")
                && l.tag("feature") == Some("user_ctr_7d")
                && end_ms(l) == first_window_end(null_start)
        })
        .expect("a drift point for user_ctr_7d at the outage");
    assert!(drifted(at_null), "{at_null:?}");
    assert!(at_null.float("null_rate").unwrap() > 0.2, "{at_null:?}");

    // Nothing else drifts: not the quiet model, not before the incidents.
    let false_alarms: Vec<String> = drift
        .iter()
        .filter(|l| drifted(l) && !in_incident(l))
        .map(|l| {
            format!(
                "{} {} {} at {}",
                l.tag("model").unwrap(),
                l.tag("model_version").unwrap(),
                l.tag("feature").unwrap(),
                end_ms(l)
            )
        })
        .collect();
    assert!(
        false_alarms.is_empty(),
        "drift outside incidents: {false_alarms:#?}"
    );
    assert!(
        drift
            .iter()
            .any(|l| l.tag("model") == Some("query-encoder") && l.tag("feature") == Some("score")),
        "the quiet model's score is monitored"
    );

    // Gradients: non-finite steps and anomalies in the window where the
    // explosion starts, none before it.
    let (grad_start, _) = incident("gradient explosion with non-finite steps");
    let gradients: Vec<&Line> = lines
        .iter()
        .filter(|l| l.measurement == "gradients")
        .collect();
    assert!(
        gradients.len() >= 10,
        "{} gradients points",
        gradients.len()
    );
    for g in &gradients {
        let anomalies = g.float("anomalies").unwrap();
        if end_ms(g) <= grad_start - grad_start.rem_euclid(60_000) {
            assert_eq!(anomalies, 0.0, "anomaly before the explosion: {g:?}");
        }
        if end_ms(g) == first_window_end(grad_start) {
            assert!(anomalies > 0.0, "{g:?}");
            assert!(g.float("nonfinite").unwrap() > 0.0, "{g:?}");
        }
    }
    let kinds: Vec<&str> = lines
        .iter()
        .filter(|l| l.measurement == "gradient_anomalies")
        .map(|l| l.tag("kind").unwrap())
        .collect();
    for kind in ["nonfinite", "spike"] {
        assert!(kinds.contains(&kind), "no {kind} anomaly in {kinds:?}");
    }
    let first_anomaly = lines
        .iter()
        .filter(|l| l.measurement == "gradient_anomalies")
        .map(end_ms)
        .min()
        .unwrap();
    assert!(
        first_anomaly >= grad_start && first_anomaly < grad_start + 60_000,
        "first anomaly at {first_anomaly}, incident starts {grad_start}"
    );
}

#[test]
fn quality_is_reported_for_the_labelled_models() {
    let lines = replay_all();
    let quality: Vec<&Line> = lines
        .iter()
        .filter(|l| l.measurement == "quality")
        .collect();
    for model in ["ctr-ranker", "recsys-ranker", "ads-ctr"] {
        let q: Vec<&&Line> = quality
            .iter()
            .filter(|l| l.tag("model") == Some(model))
            .collect();
        // One per window and version (each model is in one or two files).
        assert!(q.len() >= 25, "{model}: {} quality points", q.len());
        // The generator's clicks are Bernoulli(score): calibrated on average.
        let mean_cal = q
            .iter()
            .map(|l| l.float("calibration").unwrap_or(0.0))
            .sum::<f64>()
            / q.len() as f64;
        assert!(
            (0.7..1.4).contains(&mean_cal),
            "{model}: calibration {mean_cal}"
        );
    }
}
