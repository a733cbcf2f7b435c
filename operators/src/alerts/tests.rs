//! State machine tests: pure logic, points in, notifications out.

use std::time::Duration;

use infermon_schemas::{FieldValue, Point};

use super::*;

const MIN: i64 = 60_000;

fn rule(extra: &str) -> RuleConfig {
    toml::from_str(&format!(
        r#"
        name = "errors"
        measurement = "throughput"
        field = "error_rate"
        op = ">="
        threshold = 0.02
        severity = "critical"
        summary = "{{model}} error rate {{value}}"
        {extra}
    "#
    ))
    .unwrap()
}

fn engine(rules: Vec<RuleConfig>) -> AlertEngine {
    AlertEngine::new(
        rules,
        Flapping {
            window: Duration::from_secs(30 * 60),
            limit: 4,
        },
    )
}

fn point(minute: i64, rate: f64) -> Point {
    Point::new("throughput", minute * MIN)
        .tag("model", "m")
        .tag("model_version", "1")
        .field("error_rate", FieldValue::Float(rate))
}

/// Feed one window per rate (minute 1, 2, ...), ticking after each; the
/// (minute, status) of every notification.
fn run(engine: &mut AlertEngine, rates: &[Option<f64>]) -> Vec<(i64, &'static str)> {
    let mut out = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let minute = i as i64 + 1;
        let mut n = match rate {
            Some(r) => engine.observe(&[point(minute, *r)]),
            None => Vec::new(),
        };
        n.extend(engine.tick(minute * MIN, MIN));
        out.extend(n.iter().map(|n| (n.at_ms / MIN, n.status.as_str())));
    }
    out
}

#[test]
fn default_rules_parse_and_can_be_replaced_or_turned_off() {
    let names: Vec<String> = rules_in_force(true, &[])
        .into_iter()
        .map(|r| r.name)
        .collect();
    for name in [
        "latency_p99_regression",
        "error_rate_high",
        "feature_drift",
        "null_rate_jump",
        "gradient_nonfinite",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    let mine = vec![RuleConfig {
        name: "error_rate_high".into(),
        ..rule("")
    }];
    let rules = rules_in_force(true, &mine);
    assert_eq!(
        rules.iter().filter(|r| r.name == "error_rate_high").count(),
        1
    );
    assert_eq!(rules.last().unwrap().threshold, Some(0.02));
    assert!(rules_in_force(false, &[]).is_empty());
}

#[test]
fn fires_at_once_without_for_and_resolves_when_clear() {
    let mut e = engine(vec![rule("")]);
    let got = run(&mut e, &[Some(0.0), Some(0.05), Some(0.06), Some(0.0)]);
    assert_eq!(got, vec![(2, "firing"), (4, "resolved")]);
}

#[test]
fn for_duration_needs_the_condition_to_hold_that_long() {
    let mut e = engine(vec![rule(r#"for = "2m""#)]);
    // A one-window blip never fires; three windows in a row do, at the third.
    let got = run(
        &mut e,
        &[
            Some(0.05),
            Some(0.0),
            Some(0.05),
            Some(0.05),
            Some(0.05),
            Some(0.0),
        ],
    );
    assert_eq!(got, vec![(5, "firing"), (6, "resolved")]);
}

#[test]
fn firing_starts_when_the_condition_started() {
    let mut e = engine(vec![rule(r#"for = "1m""#)]);
    let mut all = e.observe(&[point(1, 0.05)]);
    all.extend(e.observe(&[point(2, 0.05)]));
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].starts_at_ms, MIN, "pending since minute 1");
    assert_eq!(all[0].labels["alertname"], "errors");
    assert_eq!(all[0].labels["model_version"], "1");
    assert_eq!(all[0].annotations["summary"], "m error rate 0.05000");
}

#[test]
fn hysteresis_keeps_firing_between_the_bounds() {
    let mut e = engine(vec![rule("resolve_threshold = 0.01")]);
    let got = run(&mut e, &[Some(0.05), Some(0.015), Some(0.019), Some(0.005)]);
    assert_eq!(got, vec![(1, "firing"), (4, "resolved")]);
}

#[test]
fn keep_firing_for_bridges_short_gaps() {
    let mut e = engine(vec![rule(r#"keep_firing_for = "2m""#)]);
    let got = run(
        &mut e,
        &[
            Some(0.05),
            Some(0.0),
            Some(0.05),
            Some(0.0),
            Some(0.0),
            Some(0.0),
        ],
    );
    // Clear at 2 (1 min after) is bridged; clear from 4 resolves at 5.
    assert_eq!(got, vec![(1, "firing"), (5, "resolved")]);
}

#[test]
fn missing_data_keep_resolve_alert() {
    let gap = [Some(0.05), None, None, Some(0.05)];
    let mut keep = engine(vec![rule("")]);
    assert_eq!(run(&mut keep, &gap), vec![(1, "firing")]);
    let mut resolve = engine(vec![rule(r#"no_data = "resolve""#)]);
    assert_eq!(
        run(&mut resolve, &gap),
        vec![(1, "firing"), (2, "resolved"), (4, "firing")]
    );
    // no_data = alert: a firing series whose data stops keeps firing; one
    // that recovered and then goes silent fires again.
    let mut alert = engine(vec![rule(r#"no_data = "alert""#)]);
    assert_eq!(
        run(&mut alert, &[Some(0.05), Some(0.0), None]),
        vec![(1, "firing"), (2, "resolved"), (3, "firing")]
    );
}

#[test]
fn event_rules_fire_immediately_and_resolve_when_events_stop() {
    let r: RuleConfig = toml::from_str(
        r#"
        name = "nan"
        measurement = "gradient_anomalies"
        field = "step"
        where = { kind = "nonfinite" }
        op = ">="
        threshold = 0.0
        events = true
        keep_firing_for = "2m"
        severity = "critical"
        summary = "{run_id} step {value}"
    "#,
    )
    .unwrap();
    let mut e = engine(vec![r]);
    let anomaly = |ts: i64, kind: &str| {
        Point::new("gradient_anomalies", ts)
            .tag("model", "m")
            .tag("run_id", "r1")
            .tag("kind", kind)
            .field("step", FieldValue::Int(ts / 1000))
    };
    assert!(
        e.observe(&[anomaly(30_000, "spike")]).is_empty(),
        "filtered"
    );
    let n = e.observe(&[anomaly(30_500, "nonfinite"), anomaly(31_500, "nonfinite")]);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].starts_at_ms, 30_500);
    assert_eq!(n[0].annotations["summary"], "r1 step 30.00");
    // The window the anomaly fell in does not count as "no event".
    assert!(e.tick(MIN, MIN).is_empty());
    // keep_firing_for (2 min) counts from the last event, at 31.5 s.
    assert!(e.tick(2 * MIN, MIN).is_empty());
    let resolved = e.tick(3 * MIN, MIN);
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].status, AlertStatus::Resolved);
    assert_eq!(resolved[0].ends_at_ms, Some(3 * MIN));
}

#[test]
fn baseline_rule_judges_a_new_version_against_the_old() {
    let r: RuleConfig = toml::from_str(
        r#"
        name = "slow"
        measurement = "latency"
        field = "p99"
        op = ">"
        threshold = 20.0
        baseline = { over = "1h", factor = 2.0, min_values = 3 }
        severity = "warning"
        summary = "{model_version}"
    "#,
    )
    .unwrap();
    let mut e = engine(vec![r]);
    let p = |minute: i64, version: &str, p99: f64| {
        Point::new("latency", minute * MIN)
            .tag("model", "m")
            .tag("model_version", version)
            .field("p99", FieldValue::Float(p99))
    };
    let mut n = Vec::new();
    for m in 1..=10 {
        n.extend(e.observe(&[p(m, "3", 10.0 + (m % 3) as f64)]));
    }
    assert!(n.is_empty(), "steady v3 never fires");
    // v4 at 50 ms: far above 2 x v3's median (11 ms) and above 20 ms.
    n.extend(e.observe(&[p(11, "4", 50.0)]));
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].labels["model_version"], "4");
    // Its values stay out of the baseline: still firing an hour later...
    for m in 12..60 {
        assert!(e.observe(&[p(m, "4", 50.0)]).is_empty());
    }
    // ...and it resolves when v4 gets fast again.
    let r = e.observe(&[p(60, "4", 12.0)]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, AlertStatus::Resolved);
}

#[test]
fn flapping_sends_one_notice_then_holds_back_until_stable() {
    let mut e = engine(vec![rule("")]);
    let flappy: Vec<Option<f64>> = (0..12)
        .map(|i| Some(if i % 2 == 0 { 0.05 } else { 0.0 }))
        .collect();
    let got = run(&mut e, &flappy);
    // limit 4: four changes go out, the fifth says "flapping", then quiet.
    assert_eq!(got.len(), 5, "{got:?}");
    // Stable for 30 minutes (firing throughout), then one change goes out again.
    let mut rest: Vec<Option<f64>> = vec![Some(0.05); 40];
    rest.push(Some(0.0));
    let mut all = flappy.clone();
    all.extend(rest);
    let mut e = engine(vec![rule("")]);
    let got = run(&mut e, &all);
    assert_eq!(got.last(), Some(&(53, "resolved")), "{got:?}");
}

#[test]
fn flapping_notice_is_annotated() {
    let mut e = engine(vec![rule("")]);
    let mut notes = Vec::new();
    for m in 1..=6 {
        let rate = if m % 2 == 1 { 0.05 } else { 0.0 };
        notes.extend(e.observe(&[point(m, rate)]));
    }
    assert_eq!(notes.len(), 5);
    assert!(notes[4].annotations.contains_key("flapping"));
    assert!(!notes[3].annotations.contains_key("flapping"));
}

#[test]
fn a_reprocessed_window_never_notifies_twice() {
    let mut e = engine(vec![rule("")]);
    let first = e.observe(&[point(1, 0.05)]);
    assert_eq!(first.len(), 1);
    // The same window again (a restart re-reading it), then an older one.
    assert!(e.observe(&[point(1, 0.05)]).is_empty());
    assert!(
        e.observe(&[point(1, 0.0)]).is_empty(),
        "nor resolves from it"
    );
    assert_eq!(e.replayed(), 2);
    // The next window is judged as usual.
    let next = e.observe(&[point(2, 0.0)]);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].status, AlertStatus::Resolved);
    assert_ne!(first[0].idempotency_key(), next[0].idempotency_key());
}

/// Every notification of a run as (minute, status, startsAt minute,
/// endsAt minute).
fn run_full(engine: &mut AlertEngine, rates: &[Option<f64>]) -> Vec<Notification> {
    let mut out = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let minute = i as i64 + 1;
        if let Some(r) = rate {
            out.extend(engine.observe(&[point(minute, *r)]));
        }
        out.extend(engine.tick(minute * MIN, MIN));
    }
    out
}

#[test]
fn a_flapping_series_that_settles_sends_its_final_state() {
    // Bad, bad, good four times (8 changes > limit 4), then healthy: the
    // receivers must end up told "resolved", with endsAt when it resolved.
    let mut rates = Vec::new();
    for _ in 0..4 {
        rates.extend([Some(0.05), Some(0.05), Some(0.0)]);
    }
    let last_bad_resolve = rates.len() as i64; // minute 12 resolves
    rates.extend(vec![Some(0.0); 45]);
    let mut e = engine(vec![rule("")]);
    let got = run_full(&mut e, &rates);
    let last = got.last().unwrap();
    assert_eq!(last.status, AlertStatus::Resolved, "{got:#?}");
    assert_eq!(last.ends_at_ms, Some(last_bad_resolve * MIN));
    assert_eq!(
        last.at_ms,
        (last_bad_resolve + 30) * MIN,
        "one flap window later"
    );
    assert_eq!(last.starts_at_ms, 10 * MIN, "the last firing's start");
    assert!(!last.annotations.contains_key("flapping"));

    // Flapping that settles while firing sends firing, once; a rule with
    // for and another measurement behaves the same.
    let latency: RuleConfig = toml::from_str(
        r#"
        name = "slow"
        measurement = "throughput"
        field = "error_rate"
        op = ">"
        threshold = 0.5
        for = "1m"
        severity = "warning"
        summary = "s"
    "#,
    )
    .unwrap();
    let mut rates = Vec::new();
    for _ in 0..4 {
        rates.extend([Some(0.9), Some(0.9), Some(0.1)]);
    }
    // Ends bad: the held-back last change is a firing one.
    rates.extend(vec![Some(0.9); 45]);
    let mut e = engine(vec![latency]);
    let got = run_full(&mut e, &rates);
    let last = got.last().unwrap();
    assert_eq!(last.status, AlertStatus::Firing, "{got:#?}");
    assert_eq!(last.starts_at_ms, 13 * MIN, "pending since minute 13");
    assert_eq!(
        got.iter().filter(|n| n.at_ms > 20 * MIN).count(),
        1,
        "told once: {got:#?}"
    );
}

#[test]
fn windows_without_data_reset_a_pending_timer() {
    // Pending at minute 1, then 20 minutes without a point (the engine
    // still ticks: other series close windows), then breaching again.
    let mut rates = vec![Some(0.05)];
    rates.extend(vec![None; 20]);
    rates.extend([Some(0.05), Some(0.05), Some(0.05)]);
    let mut e = engine(vec![rule(r#"for = "2m""#)]);
    let got = run_full(&mut e, &rates);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0].at_ms,
        24 * MIN,
        "three windows in a row from minute 22"
    );
    assert_eq!(got[0].starts_at_ms, 22 * MIN);

    // The same when no window closes at all in the gap (the input was
    // silent): the gap between two points is missing data too.
    let mut e = engine(vec![rule(r#"for = "2m""#)]);
    assert!(e.tick(0, MIN).is_empty());
    assert!(e.observe(&[point(1, 0.05)]).is_empty());
    assert!(e.observe(&[point(21, 0.05)]).is_empty());
    assert!(e.observe(&[point(22, 0.05)]).is_empty());
    let n = e.observe(&[point(23, 0.05)]);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].starts_at_ms, 21 * MIN);

    // no_data = "alert" says missing data is the condition holding: the
    // timer runs on through the gap.
    let mut rates = vec![Some(0.05)];
    rates.extend(vec![None; 3]);
    let mut e = engine(vec![rule(
        r#"for = "2m"
        no_data = "alert""#,
    )]);
    let got = run_full(&mut e, &rates);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].starts_at_ms, MIN);
}

/// A journal of one alert, as the monitor reads it back at start-up.
fn journal(
    labels: &std::collections::BTreeMap<String, String>,
    status: AlertStatus,
    starts_at_ms: i64,
    at_ms: i64,
) -> std::collections::HashMap<String, engine::Restored> {
    let restored = engine::Restored {
        labels: labels.clone(),
        annotations: Default::default(),
        status,
        starts_at_ms,
        at_ms,
    };
    [(notification::fingerprint(labels), restored)].into()
}

#[test]
fn restored_state_neither_renotifies_nor_forgets_to_resolve() {
    let labels = |model: &str| -> std::collections::BTreeMap<String, String> {
        [
            ("alertname", "errors"),
            ("model", model),
            ("model_version", "1"),
            ("severity", "critical"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
    };
    let mut e = engine(vec![rule("")]);
    e.restore(journal(&labels("m"), AlertStatus::Firing, 3 * MIN, 3 * MIN));
    // Windows re-read after the restart, and new ones still breaching.
    for m in 2..=6 {
        assert!(e.observe(&[point(m, 0.05)]).is_empty(), "minute {m}");
    }
    let n = e.observe(&[point(7, 0.0)]);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].status, AlertStatus::Resolved);
    assert_eq!(n[0].starts_at_ms, 3 * MIN);
    assert_eq!(n[0].ends_at_ms, Some(7 * MIN));

    // Resolved before the crash: the re-read breaching windows up to the
    // resolve do not fire again; a new breach later does.
    let mut e = engine(vec![rule("")]);
    e.restore(journal(
        &labels("m"),
        AlertStatus::Resolved,
        3 * MIN,
        5 * MIN,
    ));
    for m in 3..=5 {
        assert!(e.observe(&[point(m, 0.05)]).is_empty(), "minute {m}");
    }
    assert_eq!(e.replayed(), 3);
    assert_eq!(e.observe(&[point(6, 0.0)]).len(), 0);
    assert_eq!(e.observe(&[point(8, 0.05)]).len(), 1);
}

#[test]
fn a_restored_firing_alert_resolves_even_if_its_series_never_comes_back() {
    let r: RuleConfig = toml::from_str(
        r#"
        name = "nan"
        measurement = "gradient_anomalies"
        field = "step"
        op = ">="
        threshold = 0.0
        events = true
        keep_firing_for = "2m"
        severity = "critical"
        labels = { team = "ml" }
        summary = "{run_id}"
    "#,
    )
    .unwrap();
    let labels: std::collections::BTreeMap<String, String> = [
        ("alertname", "nan"),
        ("model", "m"),
        ("run_id", "r1"),
        ("kind", "nonfinite"),
        ("severity", "critical"),
        ("team", "ml"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let mut e = engine(vec![r]);
    e.restore(journal(&labels, AlertStatus::Firing, 30_500, 30_500));
    // No anomaly comes again: the event rule's quiet resolves it after
    // keep_firing_for, with the labels it fired with.
    assert!(e.tick(MIN, MIN).is_empty());
    assert!(e.tick(2 * MIN, MIN).is_empty());
    let n = e.tick(3 * MIN, MIN);
    assert_eq!(n.len(), 1, "{n:#?}");
    assert_eq!(n[0].status, AlertStatus::Resolved);
    assert_eq!(n[0].labels, labels);
    assert_eq!(n[0].starts_at_ms, 30_500);
}
