//! Drift inside the window engine: the reference period of a version, the
//! hand-over to a new version (a bad deploy is judged against the previous
//! version's reference), small windows reported but not judged, and label
//! quality emitted only once the label wait has passed.

use std::time::Duration;

use infermon_operators::quality::Quality;
use infermon_operators::{
    ClosedWindow, DriftConfig, DriftOperator, GradientConfig, GradientMonitor, LabelJoin,
    QualityConfig, WindowConfig, WindowEngine,
};
use infermon_schemas::{
    Feature, FeedbackEvent, FieldValue, Point, PredictionBatchBuilder, PredictionEvent, Status,
    Timings,
};

const MINUTE: i64 = 60_000;

fn event(i: usize, version: &str, ts: i64, price: f64) -> PredictionEvent {
    PredictionEvent {
        ranking: None,
        request_id: format!("r-{version}-{i}"),
        ts,
        model: "m".into(),
        model_version: version.into(),
        worker: None,
        device: None,
        status: Status::Ok,
        error: None,
        batch_size: Some(1),
        timings_ms: Timings {
            total: 1.0,
            ..Default::default()
        },
        score: Some(0.1 + 0.8 * ((i * 37) % 100) as f64 / 100.0),
        features: [("price".to_string(), Feature::Number(price))].into(),
        segment: Default::default(),
    }
}

/// `per_minute` events a minute from `from` for `minutes`, prices spread
/// evenly over `[lo, lo + 10)`.
fn traffic(
    version: &str,
    from: i64,
    minutes: i64,
    per_minute: usize,
    lo: f64,
) -> Vec<PredictionEvent> {
    (0..minutes)
        .flat_map(|m| {
            (0..per_minute).map(move |i| {
                let ts = from + m * MINUTE + (i as i64 * MINUTE) / per_minute as i64;
                let price = lo + 10.0 * ((i * 7919) % per_minute) as f64 / per_minute as f64;
                event(m as usize * per_minute + i, version, ts, price)
            })
        })
        .collect()
}

fn engine(quality: QualityConfig) -> WindowEngine {
    let window = WindowConfig {
        size: Duration::from_secs(60),
        allowed_lateness: Duration::from_secs(0),
        ..Default::default()
    };
    let drift = DriftConfig {
        reference_window: Duration::from_secs(5 * 60),
        ..Default::default()
    };
    WindowEngine::new(&window, false).unwrap().with_operators(
        Some(DriftOperator::new(&drift, MINUTE, Default::default()).unwrap()),
        Some(GradientMonitor::new(GradientConfig::default())),
        Some(LabelJoin::new(quality)),
    )
}

fn run(engine: &mut WindowEngine, events: &[PredictionEvent]) -> Vec<Point> {
    let input = engine.add_input(0);
    let mut out = Vec::new();
    for chunk in events.chunks(500) {
        let mut b = PredictionBatchBuilder::new(&[]);
        chunk.iter().for_each(|e| b.push(e));
        engine.push_predictions(input, &b.finish(), 0).unwrap();
        let closed = engine.fire(0);
        out.extend(points(engine, closed));
    }
    engine.finish_input(input);
    let closed = engine.flush();
    out.extend(points(engine, closed));
    out
}

/// What the topology makes of an engine's closed windows and labels:
/// window points, `drift` and `quality` (threshold 0.5).
fn points(engine: &mut WindowEngine, closed: Vec<ClosedWindow>) -> Vec<Point> {
    let mut out = Vec::new();
    for mut w in closed {
        out.extend(w.points().unwrap());
        let drift = engine.drift_mut().unwrap();
        for (key, state) in &w.series {
            if let Some(d) = &state.drift {
                out.extend(drift.points(key, d, w.end));
            }
        }
    }
    for l in engine.take_labelled() {
        for (key, state) in &l.series {
            if let Some(q) = state.labels.as_ref().and_then(|c| Quality::of(c, 0.5)) {
                out.push(q.point(key, l.end));
            }
        }
    }
    out
}

fn drift_of<'a>(points: &'a [Point], version: &str, end: i64) -> &'a Point {
    points
        .iter()
        .find(|p| {
            p.measurement == "drift"
                && p.tag_value("model_version") == Some(version)
                && p.tag_value("feature") == Some("price")
                && p.timestamp_ns == end * 1_000_000
        })
        .unwrap_or_else(|| panic!("no price drift point for v{version} at {end}"))
}

#[test]
fn a_new_version_is_judged_against_the_previous_reference() {
    let t0 = 1_000 * MINUTE;
    // v1: 5 reference minutes, then 3 compared minutes of the same traffic.
    let mut events = traffic("1", t0, 8, 400, 0.0);
    // v2 deploys with prices shifted by half their range: no reference of
    // its own yet, so v1's applies.
    events.extend(traffic("2", t0 + 8 * MINUTE, 2, 400, 5.0));
    events.sort_by_key(|e| e.ts);
    let points = run(&mut engine(QualityConfig::default()), &events);

    // Reference minutes are reported but have nothing to compare with.
    let first = drift_of(&points, "1", t0 + MINUTE);
    assert_eq!(first.field_value("n_ref"), Some(&FieldValue::Int(0)));
    assert_eq!(first.field_value("judged"), Some(&FieldValue::Bool(false)));

    // Same traffic after the reference: judged, not drifted, n_ref = 5 min.
    let same = drift_of(&points, "1", t0 + 7 * MINUTE);
    assert_eq!(same.field_value("n_ref"), Some(&FieldValue::Int(2000)));
    assert_eq!(same.field_value("drifted"), Some(&FieldValue::Bool(false)));

    // The bad deploy drifts against v1's reference from its first window.
    let deploy = drift_of(&points, "2", t0 + 9 * MINUTE);
    assert_eq!(deploy.field_value("n_ref"), Some(&FieldValue::Int(2000)));
    assert_eq!(
        deploy.field_value("drifted"),
        Some(&FieldValue::Bool(true)),
        "{deploy:?}"
    );
}

#[test]
fn small_windows_are_reported_but_not_judged() {
    let t0 = 2_000 * MINUTE;
    let mut events = traffic("1", t0, 5, 400, 0.0);
    // 50 rows with a wild shift: too few to judge (min_samples = 200).
    events.extend(traffic("1", t0 + 5 * MINUTE, 1, 50, 100.0));
    let points = run(&mut engine(QualityConfig::default()), &events);
    let small = drift_of(&points, "1", t0 + 6 * MINUTE);
    assert_eq!(small.field_value("n_cur"), Some(&FieldValue::Int(50)));
    assert_eq!(small.field_value("judged"), Some(&FieldValue::Bool(false)));
    assert!(matches!(small.field_value("psi"), Some(FieldValue::Float(p)) if *p > 1.0));
}

#[test]
fn quality_waits_for_labels_and_keeps_the_store_bounded() {
    let t0 = 3_000 * MINUTE;
    let quality = QualityConfig {
        label_wait: Duration::from_secs(120),
        max_pending: 300,
        ..QualityConfig::default()
    };
    let mut engine = engine(quality);
    let events = traffic("1", t0, 1, 400, 0.0);
    let input = engine.add_input(0);
    let mut b = PredictionBatchBuilder::new(&[]);
    events.iter().for_each(|e| b.push(e));
    engine.push_predictions(input, &b.finish(), 0).unwrap();
    // Labels for every prediction: the first 100 were evicted (store of 300).
    let labels: Vec<FeedbackEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| FeedbackEvent {
            item_id: None,
            request_id: e.request_id.clone(),
            ts: e.ts + 1_000,
            kind: None,
            label: u8::from(i % 3 == 0),
        })
        .collect();
    engine.push_feedback(&labels);
    let stats = engine.label_stats().unwrap();
    // The 100 labels of evicted predictions wait (their prediction might
    // still come) until the label wait past them is over.
    assert_eq!(
        (stats.matched, stats.unmatched, stats.evicted),
        (300, 0, 100)
    );

    // One minute past the window: closed, but the label wait is not over.
    engine.observe(input, t0 + 2 * MINUTE, 0);
    let closed = engine.fire(0);
    assert_eq!(closed.len(), 1);
    let early = points(&mut engine, closed);
    assert!(early.iter().all(|p| p.measurement != "quality"));
    // Past end + label wait: the window's quality comes out.
    engine.observe(input, t0 + 4 * MINUTE, 0);
    let closed = engine.fire(0);
    let out = points(&mut engine, closed);
    let q = out
        .iter()
        .find(|p| p.measurement == "quality")
        .expect("quality after the label wait");
    assert_eq!(q.timestamp_ns, (t0 + MINUTE) * 1_000_000);
    assert_eq!(q.field_value("n_labeled"), Some(&FieldValue::Int(300)));
    assert_eq!(engine.label_stats().unwrap().unmatched, 100);
}
