//! The monitor's sinks and Kafka clients, reached from the other commands:
//! an offline replay writes to InfluxDB through the monitor's sink, and
//! `record` / `replay --to-kafka` build their clients from `[kafka]` like
//! the monitor does (properties applied).

use std::collections::BTreeMap;

use crate::support::{
    infermon, influx_query, parse_lines, recordings, required_env, run_ok, unique_id,
};

#[test]
fn an_offline_replay_writes_to_influxdb_1_6_the_points_it_writes_to_a_file() {
    let base = required_env("INFERMON_TEST_INFLUXDB_V1_URL");
    let db = unique_id("replay_influx").replace(['-', '.'], "_");
    influx_query(&base, "", &format!("CREATE DATABASE \"{db}\""));
    let dir = tempfile::tempdir().unwrap();
    let files = recordings();

    // The same replay to a file, for the expected counts.
    let lp = dir.path().join("metrics.lp");
    run_ok(
        infermon()
            .args(["replay", "--offline", "--quiet"])
            .args(&files)
            .arg("--metrics-out")
            .arg(&lp)
            .arg("--alerts-out")
            .arg(dir.path().join("alerts-file.jsonl")),
    );
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for l in parse_lines(&std::fs::read_to_string(&lp).unwrap()) {
        *expected.entry(l.measurement.clone()).or_default() += 1;
    }
    assert!(
        expected["throughput"] > 100 && expected["alerts"] > 0,
        "{expected:?}"
    );

    let config = dir.path().join("influx.toml");
    std::fs::write(
        &config,
        format!(
            "[[influxdb]]\nname = \"influx16\"\napi = \"v1\"\nurl = {base:?}\ndb = {db:?}\n\
             linger = \"50ms\"\n[monitor]\nstate_dir = {:?}\nrejects_out = {:?}\n",
            dir.path().join("state"),
            dir.path().join("influx-rejects.jsonl"),
        ),
    )
    .unwrap();
    let unused = dir.path().join("not-written.lp");
    let out = run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet", "--influxdb"])
            .args(&files)
            .arg("--metrics-out")
            .arg(&unused)
            .arg("--alerts-out")
            .arg(dir.path().join("alerts-influx.jsonl")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("metrics: influx16"), "{stdout}");
    assert!(!unused.exists(), "with --influxdb the file is not the sink");

    // Every point of a measurement arrived: one series key and timestamp
    // per line, so the count of one always-present field counts the points.
    for (measurement, field) in [
        ("throughput", "requests"),
        ("latency", "p99"),
        ("drift", "n_cur"),
        ("alerts", "value"),
    ] {
        let v = influx_query(
            &base,
            &db,
            &format!("SELECT count(\"{field}\") FROM \"{measurement}\""),
        );
        let got = v["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or_else(|| panic!("{measurement}: {v}"));
        assert_eq!(got, expected[measurement], "{measurement}: {v}");
    }
}

/// A config whose `[kafka] properties` point the clients at a port where
/// no broker listens: the user's properties win over `--brokers`.
fn unreachable_kafka(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("unreachable.toml");
    std::fs::write(
        &config,
        "[kafka.properties]\n\"bootstrap.servers\" = \"127.0.0.1:1\"\n\"message.timeout.ms\" = \"3000\"\n",
    )
    .unwrap();
    config
}

#[test]
fn replay_to_kafka_applies_the_kafka_properties() {
    let brokers = required_env("INFERMON_TEST_KAFKA_BROKERS");
    let dir = tempfile::tempdir().unwrap();
    let out = infermon()
        .arg("--config")
        .arg(unreachable_kafka(dir.path()))
        .args(["replay", "--speed", "0", "--to-kafka", &brokers])
        .arg(&recordings()[0])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sent despite an unreachable broker: {stderr}"
    );
    assert!(
        stderr.contains("not acknowledged") || stderr.contains("Message timed out"),
        "{stderr}"
    );
}

#[test]
fn record_applies_the_kafka_properties() {
    let brokers = required_env("INFERMON_TEST_KAFKA_BROKERS");
    let dir = tempfile::tempdir().unwrap();
    let out = infermon()
        .arg("--config")
        .arg(unreachable_kafka(dir.path()))
        .args(["record", "--brokers", &brokers, "--duration", "2s"])
        .args(["--topics", "inference.predictions", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "recorded despite an unreachable broker: {stderr}"
    );
    assert!(
        stderr.contains("metadata of topic inference.predictions"),
        "{stderr}"
    );
}
