//! The monitor's and workers' /metrics against Prometheus conventions, promtool and a real Prometheus.

use super::*;

#[test]
fn the_prometheus_rules_in_deploy_pass_promtool() {
    promtool(
        &["check", "rules", "deploy/prometheus/infermon-rules.yml"],
        None,
    );
    promtool(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        None,
    );
    let out = promtool(
        &["test", "rules", "deploy/prometheus/infermon-rules.test.yml"],
        None,
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn worker_metrics_follow_the_prometheus_conventions() {
    use std::sync::Arc;
    let m = Arc::new(infermon::worker::metrics::WorkerMetrics::default());
    let l = infermon::worker::metrics::labels;
    m.requests
        .get_or_create(&l(&[("model", "ctr-ranker")]))
        .inc();
    m.predictions
        .get_or_create(&l(&[
            ("model", "ctr-ranker"),
            ("model_version", "3"),
            ("status", "ok"),
        ]))
        .inc();
    m.batches
        .get_or_create(&l(&[("model", "ctr-ranker")]))
        .inc();
    m.queued
        .get_or_create(&l(&[("model", "ctr-ranker")]))
        .set(2);
    m.dlq.inc();
    m.delivery_failures.inc();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
    let classic = infermon::telemetry::classic_text(&text);
    let lint = promtool(&["check", "metrics"], Some(&classic));
    assert!(lint.trim().is_empty(), "{lint}\n{classic}");
    assert!(
        classic.contains("# TYPE infermon_worker_predictions_total counter"),
        "{classic}"
    );
}

#[test]
fn a_real_prometheus_scrapes_a_monitor_whose_metrics_pass_promtool() {
    let setup = Setup::new("prom");
    let config = setup.config("monitor.toml", &setup.monitor_toml("a"));
    let lines = recording_lines("error-burst");
    setup.produce(&config, &lines[..2000]);
    let monitor = Monitor::start(&config, setup.path("monitor.log"));
    monitor.wait_for(Duration::from_secs(90), "the messages consumed", |m| {
        m.metric("infermon_consumed_messages_total", &[]) >= 1500.0
    });
    std::thread::sleep(Duration::from_secs(2)); // all 2000 (requests are not read)
    let (_, text) = monitor.get("/metrics").unwrap();
    let lint = promtool(&["check", "metrics"], Some(&text));
    assert!(
        lint.trim().is_empty(),
        "promtool check metrics:\n{lint}\n{text}"
    );
    let consumed = monitor.metric("infermon_consumed_messages_total", &[]);

    let prometheus = Prometheus::start(setup.dir.path(), "infermon-monitor", &monitor.addr);
    let scraped = prometheus.scraped(
        "infermon-monitor",
        "sum(infermon_consumed_messages_total)",
        consumed,
    );
    assert_eq!(
        scraped,
        Some(consumed),
        "Prometheus's view of the counter (up == 1 first)"
    );
    assert!(monitor.terminate().success());
}
