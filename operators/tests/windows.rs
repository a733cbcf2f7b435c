//! Window engine behaviour: event time, watermarks, late data, idle keys,
//! hopping windows and end-of-input flush.

use std::time::Duration;

use infermon_operators::{ClosedWindow, WindowConfig, WindowEngine};
use infermon_schemas::{
    FieldValue, Point, PredictionBatchBuilder, PredictionEvent, Status, Timings,
};

fn event(model: &str, ts: i64, total: f64) -> PredictionEvent {
    PredictionEvent {
        ranking: None,
        request_id: format!("r-{ts}"),
        ts,
        model: model.into(),
        model_version: "1".into(),
        worker: None,
        device: None,
        status: if total < 0.0 {
            Status::Error
        } else {
            Status::Ok
        },
        error: None,
        batch_size: Some(4),
        timings_ms: Timings {
            total: total.abs(),
            ..Default::default()
        },
        score: Some(0.5),
        features: Default::default(),
        segment: [("surface".to_string(), "search".to_string())].into(),
    }
}

fn batch(events: &[PredictionEvent], keys: &[String]) -> arrow::array::RecordBatch {
    let mut b = PredictionBatchBuilder::new(keys);
    events.iter().for_each(|e| b.push(e));
    b.finish()
}

fn config() -> WindowConfig {
    WindowConfig {
        size: Duration::from_secs(60),
        allowed_lateness: Duration::from_secs(10),
        ..Default::default()
    }
}

fn points(windows: Vec<ClosedWindow>) -> Vec<Point> {
    windows
        .into_iter()
        .flat_map(|mut w| w.points().unwrap())
        .collect()
}

fn int(p: &Point, f: &str) -> i64 {
    match p.field_value(f) {
        Some(FieldValue::Int(i)) => *i,
        other => panic!("{f}: {other:?}"),
    }
}

fn find<'a>(ps: &'a [Point], measurement: &str, model: &str, ts_ms: i64) -> Option<&'a Point> {
    ps.iter().find(|p| {
        p.measurement == measurement
            && p.tag_value("model") == Some(model)
            && p.timestamp_ns == ts_ms * 1_000_000
            && p.tag_value("stage").is_none_or(|s| s == "total")
    })
}

#[test]
fn out_of_order_within_lateness_is_on_time_and_later_is_counted_late() {
    let mut e = WindowEngine::new(&config(), false).unwrap();
    let input = e.add_input(0);
    // Window [0, 60s): events out of order, the 55 s one arrives after 65 s.
    let b1 = batch(
        &[
            event("m", 10_000, 1.0),
            event("m", 65_000, 2.0),
            event("m", 55_000, 3.0),
        ],
        &[],
    );
    e.push_predictions(input, &b1, 0).unwrap();
    assert!(e.fire(0).is_empty(), "watermark 55 s has not passed 60 s");
    // 71 s moves the watermark to 61 s: [0,60) closes; a 59 s event is late.
    let b2 = batch(&[event("m", 71_000, 4.0), event("m", 59_000, 5.0)], &[]);
    e.push_predictions(input, &b2, 0).unwrap();
    let closed = e.fire(0);
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].start, closed[0].end), (0, 60_000));
    let ps = points(closed);
    let t = find(&ps, "throughput", "m", 60_000).unwrap();
    assert_eq!(int(t, "requests"), 2, "10 s and 55 s, not the late 59 s");
    let late = find(&ps, "late_events", "m", 60_000).expect("late count reported");
    assert_eq!(int(late, "count"), 1);
    assert_eq!(e.series_stats()[0].1.late, 1);
    assert_eq!(e.series_stats()[0].1.events, 5);

    let rest = points(e.flush());
    let t = find(&rest, "throughput", "m", 120_000).unwrap();
    assert_eq!(
        int(t, "requests"),
        2,
        "65 s and 71 s flushed at end of input"
    );
    assert_eq!(e.open_windows(), 0);
}

#[test]
fn lateness_is_judged_per_row_not_per_batch() {
    // The same rows in one batch or in five give the same result.
    let rows = [
        event("m", 1_000, 1.0),
        event("m", 80_000, 1.0),
        event("m", 30_000, 1.0), // late: watermark is 70 s once 80 s was seen
        event("m", 75_000, 1.0),
        event("m", 130_000, 1.0),
    ];
    let run = |chunk: usize| {
        let mut e = WindowEngine::new(&config(), false).unwrap();
        let input = e.add_input(0);
        let mut out = Vec::new();
        for c in rows.chunks(chunk) {
            e.push_predictions(input, &batch(c, &[]), 0).unwrap();
            out.extend(points(e.fire(0)));
        }
        out.extend(points(e.flush()));
        (out, e.series_stats()[0].1.late)
    };
    let (one, late_one) = run(5);
    let (many, late_many) = run(1);
    assert_eq!(late_one, 1);
    assert_eq!(late_many, 1);
    let requests = |ps: &[Point]| {
        ps.iter()
            .filter(|p| p.measurement == "throughput")
            .map(|p| (p.timestamp_ns, int(p, "requests")))
            .collect::<Vec<_>>()
    };
    assert_eq!(requests(&one), requests(&many));
}

#[test]
fn an_idle_key_does_not_hold_windows_open() {
    let mut e = WindowEngine::new(&config(), false).unwrap();
    let input = e.add_input(0);
    e.push_predictions(
        input,
        &batch(
            &[event("quiet", 5_000, 1.0), event("busy", 6_000, 1.0)],
            &[],
        ),
        0,
    )
    .unwrap();
    // Only "busy" keeps sending; "quiet"'s window still closes on time.
    e.push_predictions(input, &batch(&[event("busy", 75_000, 1.0)], &[]), 0)
        .unwrap();
    let ps = points(e.fire(0));
    assert!(find(&ps, "throughput", "quiet", 60_000).is_some());
    assert!(find(&ps, "throughput", "busy", 60_000).is_some());
}

#[test]
fn watermark_is_the_minimum_across_inputs_and_idle_inputs_are_ignored() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_secs(30);
    let mut e = WindowEngine::new(&cfg, false).unwrap();
    let a = e.add_input(0);
    let b = e.add_input(0);
    e.push_predictions(
        a,
        &batch(&[event("m", 5_000, 1.0), event("m", 200_000, 1.0)], &[]),
        0,
    )
    .unwrap();
    assert!(
        e.fire(0).is_empty(),
        "b has delivered nothing: it may still send old events"
    );
    e.push_predictions(b, &batch(&[event("m", 50_000, 1.0)], &[]), 1_000)
        .unwrap();
    assert!(e.fire(1_000).is_empty(), "b is at 50 s: watermark 40 s");
    e.push_predictions(b, &batch(&[event("m", 71_000, 1.0)], &[]), 2_000)
        .unwrap();
    let closed = e.fire(2_000);
    assert_eq!(closed.iter().map(|w| w.end).collect::<Vec<_>>(), [60_000]);
    // b goes silent for longer than the idle timeout: a alone drives it.
    let closed = e.fire(40_000);
    assert_eq!(
        closed.iter().map(|w| w.end).collect::<Vec<_>>(),
        [120_000],
        "watermark 190 s closes [60,120); [180,240) stays open"
    );
}

#[test]
fn hopping_windows_count_each_event_size_over_slide_times() {
    let mut cfg = config();
    cfg.slide = Some(Duration::from_secs(20));
    let mut e = WindowEngine::new(&cfg, false).unwrap();
    let input = e.add_input(0);
    e.push_predictions(
        input,
        &batch(&[event("m", 65_000, 1.0), event("m", 66_000, -1.0)], &[]),
        0,
    )
    .unwrap();
    let ps = points(e.flush());
    let ends: Vec<i64> = ps
        .iter()
        .filter(|p| p.measurement == "throughput")
        .map(|p| p.timestamp_ns / 1_000_000)
        .collect();
    assert_eq!(ends, [80_000, 100_000, 120_000]);
    for p in ps.iter().filter(|p| p.measurement == "throughput") {
        assert_eq!(int(p, "requests"), 2);
        assert_eq!(int(p, "errors"), 1);
        assert_eq!(p.field_value("error_rate"), Some(&FieldValue::Float(0.5)));
        assert_eq!(p.field_value("rps"), Some(&FieldValue::Float(2.0 / 60.0)));
        assert_eq!(
            p.field_value("mean_batch_size"),
            Some(&FieldValue::Float(4.0))
        );
    }
}

#[test]
fn each_segment_key_is_a_dimension_of_its_own() {
    let mut cfg = config();
    cfg.segment_keys = vec!["surface".into(), "site".into()];
    cfg.max_segment_values = 2;
    let mut e = WindowEngine::new(&cfg, false).unwrap();
    let input = e.add_input(0);
    let mut ads = event("m", 2_000, 1.0);
    ads.segment.insert("surface".into(), "ads".into());
    ads.segment.insert("site".into(), "mx".into());
    let mut email = event("m", 3_000, 1.0);
    email.segment.insert("surface".into(), "email".into());
    email.status = Status::Error;
    e.push_predictions(
        input,
        &batch(&[event("m", 1_000, 1.0), ads, email], &cfg.segment_keys),
        0,
    )
    .unwrap();
    let ps = points(e.flush());
    let throughput: Vec<String> = ps
        .iter()
        .filter(|p| p.measurement == "throughput")
        .map(|p| {
            let mut line = String::new();
            p.write_line_protocol(&mut line);
            line.split(' ').next().unwrap().to_string()
        })
        .collect();
    // The whole version, then one series per value of each key on its own
    // (no site x surface cross product); a third surface is `__other__`.
    assert_eq!(
        throughput,
        [
            "throughput,model=m,model_version=1",
            "throughput,model=m,model_version=1,dimension=site,site=mx",
            "throughput,model=m,model_version=1,dimension=surface,surface=__other__",
            "throughput,model=m,model_version=1,dimension=surface,surface=ads",
            "throughput,model=m,model_version=1,dimension=surface,surface=search",
        ],
        "{ps:#?}"
    );
    // A segment's point carries the counts of the rest of its version.
    let other = ps
        .iter()
        .find(|p| p.measurement == "throughput" && p.tag_value("surface") == Some("__other__"))
        .unwrap();
    assert_eq!(other.field_value("requests"), Some(&FieldValue::Int(1)));
    assert_eq!(other.field_value("errors"), Some(&FieldValue::Int(1)));
    assert_eq!(
        other.field_value("rest_requests"),
        Some(&FieldValue::Int(2))
    );
    assert_eq!(other.field_value("rest_errors"), Some(&FieldValue::Int(0)));
    // Every event counts once in the version's totals.
    let stats = e.series_stats();
    let whole = stats.iter().find(|(k, _)| k.segments.is_empty()).unwrap();
    assert_eq!(whole.1.events, 3);
}
