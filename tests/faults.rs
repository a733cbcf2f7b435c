//! Wrong answers on real-world inputs, one test per fault class: each test
//! writes a small recording, replays it offline, and checks the output
//! against values computed independently (scipy where a statistic is
//! involved, the generated data otherwise).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::support::{Line, infermon, parse_lines, repo, required_env, run_ok};

/// 2026-11-30T00:00:00Z, a whole minute.
const T0: i64 = 1_795_996_800_000;
const MIN: i64 = 60_000;

/// One prediction line of a recording.
fn prediction(rid: &str, ts: i64, status: &str, score: f64, features: Value) -> Value {
    json!({
        "topic": "inference.predictions", "request_id": rid, "ts": ts,
        "model": "ctr-ranker", "model_version": "1", "worker": "w-1/0",
        "device": "cpu", "status": status, "batch_size": 8,
        "timings_ms": {"queue": 1.0, "preprocess": 0.5, "inference": 3.0,
                       "postprocess": 0.5, "total": 5.0},
        "score": score, "features": features,
    })
}

/// What an offline replay wrote.
struct Replayed {
    lines: Vec<Line>,
    alerts: Vec<Value>,
    rejects: Vec<Value>,
    _dir: tempfile::TempDir,
}

impl Replayed {
    /// Points of one measurement.
    fn of<'a>(&'a self, measurement: &'a str) -> impl Iterator<Item = &'a Line> + 'a {
        self.lines
            .iter()
            .filter(move |l| l.measurement == measurement)
    }

    /// The drift point of `feature` for the window ending at `end`.
    fn drift(&self, feature: &str, end: i64) -> &Line {
        self.of("drift")
            .find(|l| l.tag("feature") == Some(feature) && l.ts_ns == end * 1_000_000)
            .unwrap_or_else(|| panic!("no drift point for {feature} at {end}"))
    }

    /// Alert names (with the `feature` label, if any) that fired.
    fn fired(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .alerts
            .iter()
            .filter(|a| a["status"] == "firing")
            .map(|a| {
                let l = &a["labels"];
                (
                    l["alertname"].as_str().unwrap().to_string(),
                    l["feature"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Replay `events` (in order) offline with `config` TOML.
fn replay(events: &[Value], config: &str) -> Replayed {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&input, text).unwrap();
    replay_file(dir, &input, config)
}

fn replay_file(dir: tempfile::TempDir, input: &std::path::Path, config: &str) -> Replayed {
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("config.toml"), config).unwrap();
    run_ok(
        infermon()
            .arg("--config")
            .arg(path("config.toml"))
            .args(["replay", "--offline", "--quiet"])
            .arg(input)
            .arg("--metrics-out")
            .arg(path("m.lp"))
            .arg("--alerts-out")
            .arg(path("a.jsonl"))
            .arg("--rejects-out")
            .arg(path("r.jsonl")),
    );
    let json_lines = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(path(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    Replayed {
        lines: parse_lines(&std::fs::read_to_string(path("m.lp")).unwrap()),
        alerts: json_lines("a.jsonl"),
        rejects: json_lines("r.jsonl"),
        _dir: dir,
    }
}

/// scipy's `ks_2samp` (D, p) for each (reference, current) pair.
fn scipy_ks(pairs: &[(Vec<f64>, Vec<f64>)]) -> Vec<(f64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let input: PathBuf = dir.path().join("pairs.json");
    std::fs::write(&input, json!({ "pairs": pairs }).to_string()).unwrap();
    let mut cmd = Command::new(required_env("INFERMON_TEST_PYTHON"));
    cmd.arg(repo().join("tests/reference/ks_reference.py"))
        .arg(&input);
    let out: Vec<Value> = serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap();
    out.iter()
        .map(|r| (r["ks"].as_f64().unwrap(), r["pvalue"].as_f64().unwrap()))
        .collect()
}

/// Rows per minute, minutes of reference, minutes compared.
const RATE: i64 = 300;
const REF_MINUTES: i64 = 5;
const CUR_MINUTES: i64 = 5;

/// Feature values per row: (name, value or None for null).
type Row = Vec<(&'static str, Option<Value>)>;

/// A recording of `REF_MINUTES` of reference rows then `CUR_MINUTES` of
/// current rows, one minute after another, with a stable score.
fn recording(
    rng: &mut ChaCha8Rng,
    reference: impl Fn(&mut ChaCha8Rng) -> Row,
    current: impl Fn(&mut ChaCha8Rng) -> Row,
) -> (Vec<Value>, Vec<Row>) {
    let mut events = Vec::new();
    let mut rows = Vec::new();
    for minute in 0..REF_MINUTES + CUR_MINUTES {
        for i in 0..RATE {
            let ts = T0 + minute * MIN + i * MIN / RATE;
            let row = if minute < REF_MINUTES {
                reference(rng)
            } else {
                current(rng)
            };
            let mut features = serde_json::Map::new();
            for (k, v) in &row {
                features.insert(k.to_string(), v.clone().unwrap_or(Value::Null));
            }
            let score = (rng.random::<f64>() * 1e4).round() / 1e4;
            events.push(prediction(
                &format!("r-{minute}-{i}"),
                ts,
                "ok",
                score,
                Value::Object(features),
            ));
            rows.push(row);
        }
    }
    (events, rows)
}

/// The numeric values of `feature` in the rows of `minutes`.
fn numbers(rows: &[Row], feature: &str, minutes: std::ops::Range<i64>) -> Vec<f64> {
    rows[(minutes.start * RATE) as usize..(minutes.end * RATE) as usize]
        .iter()
        .filter_map(|r| r.iter().find(|(k, _)| *k == feature)?.1.as_ref()?.as_f64())
        .collect()
}

const DRIFT_CONFIG: &str = "[drift]\nreference_window = \"5m\"\n";

#[test]
fn low_cardinality_and_tied_features_drift_as_scipy_says() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let pick = |rng: &mut ChaCha8Rng, p: &[f64], values: &[f64]| {
        let u: f64 = rng.random();
        let mut acc = 0.0;
        for (pi, v) in p.iter().zip(values) {
            acc += pi;
            if u < acc {
                return *v;
            }
        }
        *values.last().unwrap()
    };
    let row = |rng: &mut ChaCha8Rng, shifted: bool| -> Row {
        let flag = |rng: &mut ChaCha8Rng, p: f64| if rng.random::<f64>() < p { 1.0 } else { 0.0 };
        let spike = if rng.random::<f64>() < if shifted { 0.2 } else { 0.6 } {
            0.0
        } else {
            (rng.random::<f64>() * 1000.0).round() / 100.0 + 0.1
        };
        vec![
            (
                "is_prime_user",
                Some(json!(if shifted { 1.0 } else { 0.0 })),
            ),
            (
                "coupon_flag",
                Some(json!(flag(rng, if shifted { 0.5 } else { 0.004 }))),
            ),
            (
                "device_class",
                Some(json!(pick(
                    rng,
                    if shifted {
                        &[0.2, 0.2, 0.6]
                    } else {
                        &[0.7, 0.2, 0.1]
                    },
                    &[1.0, 2.0, 3.0]
                ))),
            ),
            ("discount", Some(json!(spike))),
            (
                "price",
                Some(json!((rng.random::<f64>() * 10000.0).round() / 100.0 + 5.0)),
            ),
            ("returning", Some(json!(flag(rng, 0.1)))),
            (
                "rating",
                Some(json!(pick(
                    rng,
                    &[0.1, 0.2, 0.3, 0.4],
                    &[2.0, 3.0, 4.0, 5.0]
                ))),
            ),
        ]
    };
    let (events, rows) = recording(&mut rng, |r| row(r, false), |r| row(r, true));
    let out = replay(&events, DRIFT_CONFIG);

    let drifting = ["coupon_flag", "device_class", "discount", "is_prime_user"];
    let steady = ["price", "rating", "returning"];
    let mut pairs = Vec::new();
    let mut keys = Vec::new();
    for feature in drifting.iter().chain(&steady) {
        let reference = numbers(&rows, feature, 0..REF_MINUTES);
        for m in REF_MINUTES..REF_MINUTES + CUR_MINUTES {
            pairs.push((reference.clone(), numbers(&rows, feature, m..m + 1)));
            keys.push((*feature, T0 + (m + 1) * MIN));
        }
    }
    let scipy = scipy_ks(&pairs);
    for ((feature, end), (d, p)) in keys.iter().zip(&scipy) {
        let point = out.drift(feature, *end);
        let ks = point.float("ks").unwrap();
        // Value bins are exact for the discrete features; `discount` is a
        // spike at 0 plus a continuous part whose quantile bins give KS at
        // the edges only (the binning error, documented in the profile).
        let tolerance = if ["discount", "price"].contains(feature) {
            0.03
        } else {
            1e-9
        };
        assert!(
            (ks - d).abs() <= tolerance,
            "{feature} at {end}: ks {ks} vs scipy {d} (±{tolerance})"
        );
        let drifted = point
            .fields
            .iter()
            .any(|(k, v)| k == "drifted" && v == "true");
        if drifting.contains(feature) {
            assert!(
                drifted,
                "{feature} at {end}: not drifted (scipy D {d}, p {p})"
            );
            assert!(
                *p < 1e-4 && point.float("ks_pvalue").unwrap() < 1e-4,
                "{feature}: p {p}"
            );
            assert!(point.float("psi").unwrap() >= 0.2, "{feature}: {point:?}");
        } else {
            assert!(!drifted, "{feature} at {end}: drifted (scipy D {d}, p {p})");
        }
    }
    let fired = out.fired();
    for feature in drifting {
        assert!(
            fired.contains(&("feature_drift".into(), feature.into())),
            "{feature} did not alert: {fired:?}"
        );
    }
    for feature in steady.iter().chain(&["score"]) {
        assert!(
            !fired.iter().any(|(_, f)| f == feature),
            "{feature} alerted: {fired:?}"
        );
    }
}

#[test]
fn values_of_the_wrong_type_are_counted_never_binned() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let wrong = ["N/A", "", "NaN", "12.5"];
    let row = |rng: &mut ChaCha8Rng, shifted: bool| -> Row {
        let price = (rng.random::<f64>() * 10000.0).round() / 100.0;
        let u: f64 = rng.random();
        // The reference already has 2 % "N/A" prices; the current windows
        // half wrong-typed ones of every kind; 5 % nulls in both.
        let price = if u < 0.05 {
            None
        } else if u < if shifted { 0.55 } else { 0.07 } {
            Some(json!(wrong[rng.random_range(0..wrong.len())]))
        } else {
            Some(json!(price))
        };
        let category = if shifted && rng.random::<f64>() < 0.3 {
            json!(rng.random_range(1..4))
        } else {
            json!(["shoes", "phones", "books"][rng.random_range(0..3)])
        };
        // Steady wrong-type share: 3 % in both.
        let qty = if rng.random::<f64>() < 0.03 {
            json!("?")
        } else {
            json!(rng.random_range(1..5))
        };
        vec![
            ("price", price),
            ("category", Some(category)),
            ("qty", Some(qty)),
        ]
    };
    let (events, rows) = recording(&mut rng, |r| row(r, false), |r| row(r, true));
    let out = replay(&events, DRIFT_CONFIG);

    let mut pairs = Vec::new();
    let reference = numbers(&rows, "price", 0..REF_MINUTES);
    for m in REF_MINUTES..REF_MINUTES + CUR_MINUTES {
        pairs.push((reference.clone(), numbers(&rows, "price", m..m + 1)));
    }
    let scipy = scipy_ks(&pairs);
    for (i, m) in (REF_MINUTES..REF_MINUTES + CUR_MINUTES).enumerate() {
        let end = T0 + (m + 1) * MIN;
        let window = &rows[(m * RATE) as usize..((m + 1) * RATE) as usize];
        let count = |feature: &str, f: &dyn Fn(&Value) -> bool| {
            window
                .iter()
                .filter(|r| {
                    r.iter()
                        .any(|(k, v)| *k == feature && v.as_ref().is_some_and(f))
                })
                .count() as f64
        };
        let nulls = window.iter().filter(|r| r[0].1.is_none()).count() as f64;
        let rate = RATE as f64;
        let price = out.drift("price", end);
        assert_eq!(
            price.float("invalid_rate"),
            Some(count("price", &Value::is_string) / rate)
        );
        let null_rate = price.float("null_rate").unwrap();
        assert!((null_rate - nulls / rate).abs() < 1e-12, "{price:?}");
        assert_eq!(
            price.float("n_cur"),
            Some(count("price", &Value::is_number))
        );
        let (d, _) = scipy[i];
        let ks = price.float("ks").unwrap();
        assert!(
            (ks - d).abs() <= 0.03,
            "price ks {ks} vs scipy on the numbers {d}"
        );
        assert!(
            price
                .fields
                .iter()
                .any(|(k, v)| k == "drifted" && v == "true")
        );

        let category = out.drift("category", end);
        assert_eq!(
            category.float("invalid_rate"),
            Some(count("category", &Value::is_number) / rate)
        );
        assert_eq!(
            category.float("n_cur"),
            Some(count("category", &Value::is_string))
        );
        assert!(
            category
                .fields
                .iter()
                .any(|(k, v)| k == "drifted" && v == "true")
        );

        let qty = out.drift("qty", end);
        assert_eq!(
            qty.float("invalid_rate"),
            Some(count("qty", &Value::is_string) / rate)
        );
        assert!(
            qty.fields
                .iter()
                .any(|(k, v)| k == "drifted" && v == "false"),
            "{qty:?}"
        );
    }
    let fired = out.fired();
    assert!(
        fired.contains(&("feature_drift".into(), "price".into())),
        "{fired:?}"
    );
    assert!(
        fired.contains(&("feature_drift".into(), "category".into())),
        "{fired:?}"
    );
    assert!(!fired.iter().any(|(_, f)| f == "qty"), "{fired:?}");
}

#[test]
fn special_characters_never_swallow_a_tag() {
    let surfaces = ["search\\", "a,b", "x y", "k=v", "p\\q", "e\\,f", "\\"];
    let features = ["ctr_7d\\", "a b", "c,d", "e=f\\"];
    let mut events = Vec::new();
    for minute in 0..4 {
        for (i, surface) in surfaces.iter().enumerate() {
            let mut f = serde_json::Map::new();
            for (j, name) in features.iter().enumerate() {
                f.insert(name.to_string(), json!(minute as f64 + j as f64 / 10.0));
            }
            let mut e = prediction(
                &format!("r-{minute}-{i}"),
                T0 + minute * MIN + i as i64,
                "ok",
                0.5,
                Value::Object(f),
            );
            e["segment"] = json!({ "surface": surface });
            events.push(e);
        }
    }
    let out = replay(
        &events,
        "[window]\nsegment_keys = [\"surface\"]\n[drift]\nreference_window = \"1m\"\nmin_samples = 1\n",
    );
    // Each surface is a segment series of its own (`dimension=surface`)
    // beside the whole version; drift is judged per version.
    let required: BTreeMap<(&str, bool), &[&str]> = [
        (
            ("latency", true),
            &["model", "model_version", "dimension", "surface", "stage"][..],
        ),
        (("latency", false), &["model", "model_version", "stage"][..]),
        (
            ("throughput", true),
            &["model", "model_version", "dimension", "surface"][..],
        ),
        (("throughput", false), &["model", "model_version"][..]),
        (("drift", false), &["model", "model_version", "feature"][..]),
    ]
    .into();
    for (&(measurement, segment), tags) in &required {
        let points: Vec<&Line> = out
            .of(measurement)
            .filter(|p| p.tag("dimension").is_some() == segment)
            .collect();
        assert!(!points.is_empty(), "no {measurement} points");
        for p in &points {
            let mut have: Vec<&str> = p.tags.iter().map(|(k, _)| k.as_str()).collect();
            have.sort();
            let mut want = tags.to_vec();
            want.sort();
            assert_eq!(have, want, "{p:?}");
            assert_eq!(p.tag("model"), Some("ctr-ranker"));
            assert_eq!(p.tag("model_version"), Some("1"));
        }
        if segment {
            let seen: std::collections::BTreeSet<&str> =
                points.iter().filter_map(|p| p.tag("surface")).collect();
            let want: std::collections::BTreeSet<&str> = surfaces.into_iter().collect();
            assert_eq!(seen, want, "{measurement}");
        }
    }
    let names: std::collections::BTreeSet<&str> =
        out.of("drift").filter_map(|p| p.tag("feature")).collect();
    for f in features {
        assert!(names.contains(f), "{f:?} not among {names:?}");
    }
}

/// 120 requests a minute for `minutes`, 10 % errors in `bad` minutes.
fn steady_traffic(minutes: std::ops::Range<i64>, bad: std::ops::Range<i64>) -> Vec<Value> {
    let mut events = Vec::new();
    for minute in minutes {
        for i in 0..120 {
            let status = if bad.contains(&minute) && i % 10 == 0 {
                "error"
            } else {
                "ok"
            };
            let ts = T0 + minute * MIN + i * 500;
            events.push(prediction(
                &format!("r-{minute}-{i}"),
                ts,
                status,
                0.3,
                json!({}),
            ));
        }
    }
    events
}

fn requests_by_window(out: &Replayed) -> BTreeMap<i64, f64> {
    out.of("throughput")
        .map(|l| (l.ts_ns / 1_000_000, l.float("requests").unwrap()))
        .collect()
}

#[test]
fn a_future_dated_event_neither_blinds_the_monitor_nor_is_lost() {
    // (how far ahead, after which minute, at which line): mid-file, as the
    // very first line, as the very last one.
    for (ahead, after_minute, at) in [
        (6 * 60 * MIN, 5, 5 * 120 + 7),
        (31 * MIN, 2, 2 * 120 + 7),
        (3 * 24 * 60 * MIN, 12, 12 * 120 + 7),
        (6 * 60 * MIN, 0, 0),
        (2 * 60 * MIN, 21, 21 * 120),
    ] {
        let mut events = steady_traffic(0..21, 10..15);
        // One event from a producer whose clock is `ahead` fast.
        let mut skewed = prediction(
            "r-skewed",
            T0 + after_minute * MIN + ahead,
            "ok",
            0.3,
            json!({}),
        );
        skewed["worker"] = json!("w-7/0");
        events.insert(at, skewed);
        let out = replay(&events, "");
        let requests = requests_by_window(&out);
        for minute in 0..21 {
            assert_eq!(
                requests.get(&(T0 + (minute + 1) * MIN)),
                Some(&120.0),
                "{ahead} ms ahead: window {minute}: {requests:?}"
            );
        }
        assert_eq!(out.rejects.len(), 1, "{:?}", out.rejects);
        let reason = out.rejects[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("ts: ") && reason.contains("ahead"),
            "{reason}"
        );
        assert!(out.rejects[0]["raw"].as_str().unwrap().contains("r-skewed"));
        assert!(
            out.fired()
                .contains(&("error_rate_high".into(), String::new())),
            "{:?}",
            out.alerts
        );
    }

    // A real jump (traffic resumes after a quiet night) is followed, and
    // nothing is rejected.
    let mut events = steady_traffic(0..5, 0..0);
    let night = 8 * 60;
    events.extend(steady_traffic(night..night + 5, night..night + 3));
    let out = replay(&events, "");
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    let requests = requests_by_window(&out);
    assert_eq!(requests.len(), 10, "{requests:?}");
    assert!(requests.values().all(|n| *n == 120.0), "{requests:?}");
}

#[test]
fn event_times_in_the_wrong_unit_are_rejected_naming_the_unit() {
    let mut events = steady_traffic(0..3, 0..0);
    let units = [
        ("seconds", (T0 + MIN) / 1000),
        ("microseconds", (T0 + MIN) * 1000),
        ("nanoseconds", (T0 + MIN) * 1_000_000),
    ];
    for (i, (_, ts)) in units.iter().enumerate() {
        events.insert(
            50 + i * 100,
            prediction(&format!("r-unit-{i}"), *ts, "ok", 0.3, json!({})),
        );
    }
    // Feedback and training events are judged too.
    events.insert(
        10,
        json!({"topic": "inference.feedback", "request_id": "r-0-1", "ts": T0 / 1000, "label": 1}),
    );
    events.insert(
        20,
        json!({"topic": "training.telemetry", "run_id": "run", "model": "ctr-ranker",
                             "ts": T0 * 1000, "step": 1, "grad_norm": 1.0}),
    );
    let out = replay(&events, "");
    assert_eq!(out.rejects.len(), 5, "{:?}", out.rejects);
    for (unit, ts) in units {
        let r = out
            .rejects
            .iter()
            .find(|r| r["raw"].as_str().unwrap().contains(&format!("\"ts\":{ts}")))
            .unwrap_or_else(|| panic!("{unit} event not rejected: {:?}", out.rejects));
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("ts: ") && reason.ends_with(&format!("it looks like {unit}")),
            "{reason}"
        );
    }
    // No point dated anywhere but the three real minutes.
    for l in &out.lines {
        let ts = l.ts_ns / 1_000_000;
        assert!((T0..=T0 + 3 * MIN).contains(&ts), "{l:?}");
    }
    let requests = requests_by_window(&out);
    assert_eq!(requests.values().sum::<f64>(), 360.0, "{requests:?}");
}

#[test]
fn a_nan_gradient_written_by_python_alerts() {
    let mut events = Vec::new();
    for step in 0..120 {
        let ts = T0 + step * 1000;
        for run in ["run-a", "run-b", "run-c"] {
            let mut e = json!({"topic": "training.telemetry", "run_id": run, "model": "ctr-ranker",
                               "ts": ts, "step": step, "loss": 0.5, "grad_norm": 1.0 + (step % 7) as f64 / 10.0,
                               "lr": 0.001, "nonfinite": 0})
            .to_string();
            if step == 80 {
                // Python's json.dumps: bare tokens; run-c in the contract's form.
                e = match run {
                    "run-a" => e
                        .replace("\"grad_norm\":1.3", "\"grad_norm\":NaN")
                        .replace("\"loss\":0.5", "\"loss\":NaN"),
                    "run-b" => e.replace("\"grad_norm\":1.3", "\"grad_norm\":Infinity"),
                    _ => e.replace("\"grad_norm\":1.3", "\"grad_norm\":\"NaN\""),
                };
                assert!(!e.contains("1.3"), "{e}");
            }
            events.push(
                serde_json::from_str::<Value>(&e).unwrap_or_else(|_| Value::String(e.clone())),
            );
        }
    }
    // A prediction with a bare NaN score is refused, naming `score`.
    let mut bad = prediction("r-nan", T0 + 5000, "ok", 0.5, json!({})).to_string();
    bad = bad.replace("\"score\":0.5", "\"score\":NaN");
    assert!(bad.contains("NaN"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let mut text: String = events
        .iter()
        .map(|e| match e {
            Value::String(raw) => format!("{raw}\n"),
            v => format!("{v}\n"),
        })
        .collect();
    text.push_str(&bad);
    text.push('\n');
    std::fs::write(&input, text).unwrap();
    let out = replay_file(dir, &input, "");

    let nonfinite: Vec<&str> = out
        .alerts
        .iter()
        .filter(|a| a["status"] == "firing" && a["labels"]["alertname"] == "gradient_nonfinite")
        .map(|a| a["labels"]["run_id"].as_str().unwrap())
        .collect();
    for run in ["run-a", "run-b", "run-c"] {
        assert!(
            nonfinite.contains(&run),
            "{run}: {nonfinite:?} {:?}",
            out.rejects
        );
    }
    assert_eq!(out.rejects.len(), 1, "{:?}", out.rejects);
    assert_eq!(
        out.rejects[0]["reason"],
        "score: expected number, got a bare NaN token (not JSON)"
    );
}

#[test]
fn a_flapping_error_rate_ends_with_its_resolve() {
    // Built-in error_rate_high: bad, bad, good four times (8 changes within
    // the 30 min flap window), then 40 healthy minutes.
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for k in 0..4 {
        bad.push(5 + 3 * k);
        bad.push(6 + 3 * k);
    }
    for minute in 0..57 {
        let errors = if bad.contains(&minute) { 10 } else { 0 };
        for i in 0..120 {
            let status = if i < errors { "error" } else { "ok" };
            events.push(prediction(
                &format!("r-{minute}-{i}"),
                T0 + minute * MIN + i * 500,
                status,
                0.3,
                json!({}),
            ));
        }
    }
    let out = replay(&events, "");
    let ours: Vec<&Value> = out
        .alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == "error_rate_high")
        .collect();
    assert!(ours.len() >= 2, "{ours:#?}");
    let last = ours.last().unwrap();
    assert_eq!(last["status"], "resolved", "{ours:#?}");
    let last_bad_end = T0 + (bad.last().unwrap() + 1) * MIN;
    let at: i64 = last["idempotencyKey"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at > last_bad_end, "{last}");
    assert_ne!(last["endsAt"], "0001-01-01T00:00:00Z");
}
