//! Custom window metrics as SQL: planned once, run per window, including
//! our own aggregates through DataFusion's partial/final (state/merge) path.

use std::time::Duration;

use infermon_operators::{SqlMetricConfig, SqlMetrics, WindowConfig, WindowEngine};
use infermon_schemas::{
    FieldValue, PredictionBatchBuilder, PredictionEvent, Status, Timings, prediction_schema,
};

fn event(model: &str, ts: i64, score: f64, total: f64) -> PredictionEvent {
    PredictionEvent {
        ranking: None,
        request_id: format!("r-{ts}"),
        ts,
        model: model.into(),
        model_version: "1".into(),
        worker: None,
        device: None,
        status: Status::Ok,
        error: None,
        batch_size: None,
        timings_ms: Timings {
            total,
            ..Default::default()
        },
        score: Some(score),
        features: Default::default(),
        segment: Default::default(),
    }
}

#[tokio::test]
async fn sql_metric_runs_per_window_over_that_windows_rows() {
    let cfg = WindowConfig {
        size: Duration::from_secs(60),
        ..Default::default()
    };
    let sql = SqlMetrics::new(
        &[
            SqlMetricConfig {
                measurement: "score_stats".into(),
                query: "SELECT model, avg(score) AS mean_score, count(*) AS n FROM window GROUP BY model ORDER BY model".into(),
            },
            SqlMetricConfig {
                measurement: "sql_latency".into(),
                query: "SELECT model, get_field(latency_summary(total_ms), 'p99') AS p99 FROM window GROUP BY model".into(),
            },
        ],
        prediction_schema(&[]),
        60_000,
    )
    .await
    .unwrap();
    let mut engine = WindowEngine::new(&cfg, true).unwrap();
    let input = engine.add_input(0);
    let mut b = PredictionBatchBuilder::new(&[]);
    for i in 0..100 {
        b.push(&event("a", 1_000 + i, 0.1, 1.0 + i as f64));
        b.push(&event("b", 2_000 + i, 0.3, 2.0));
    }
    b.push(&event("a", 61_000, 0.9, 1.0)); // next window
    engine.push_predictions(input, &b.finish(), 0).unwrap();
    let mut windows = engine.flush();
    assert_eq!(windows.len(), 2);

    let first = &mut windows[0];
    let points = sql
        .evaluate(first.end, std::mem::take(&mut first.batches))
        .await
        .unwrap();
    let stats: Vec<_> = points
        .iter()
        .filter(|p| p.measurement == "score_stats")
        .collect();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].tag_value("model"), Some("a"));
    assert_eq!(stats[0].field_value("n"), Some(&FieldValue::Int(100)));
    match stats[0].field_value("mean_score") {
        Some(FieldValue::Float(x)) => assert!((x - 0.1).abs() < 1e-12, "{x}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(stats[0].timestamp_ns, 60_000 * 1_000_000);

    // The SQL latency_summary agrees with the engine's own accumulator.
    let engine_p99 = first
        .points()
        .unwrap()
        .into_iter()
        .find(|p| p.measurement == "latency" && p.tag_value("model") == Some("a"));
    let sql_p99 = points
        .iter()
        .find(|p| p.measurement == "sql_latency" && p.tag_value("model") == Some("a"));
    assert_eq!(
        sql_p99.and_then(|p| p.field_value("p99")),
        engine_p99.as_ref().and_then(|p| p.field_value("p99"))
    );

    let second = &mut windows[1];
    let points = sql
        .evaluate(second.end, std::mem::take(&mut second.batches))
        .await
        .unwrap();
    let stats: Vec<_> = points
        .iter()
        .filter(|p| p.measurement == "score_stats")
        .collect();
    assert_eq!(stats.len(), 1, "only model a has rows in the second window");
    assert_eq!(stats[0].field_value("n"), Some(&FieldValue::Int(1)));
}

#[tokio::test]
async fn a_bad_query_fails_at_start_naming_the_metric() {
    let err = SqlMetrics::new(
        &[SqlMetricConfig {
            measurement: "broken".into(),
            query: "SELECT no_such_column FROM window".into(),
        }],
        prediction_schema(&[]),
        60_000,
    )
    .await
    .err()
    .expect("planning fails");
    let msg = err.to_string();
    assert!(
        msg.starts_with("custom metric \"broken\":") && msg.contains("no_such_column"),
        "{msg}"
    );
}
