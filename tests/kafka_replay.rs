//! `infermon replay --to-kafka` against the real broker started by
//! `.ci/run`: every recorded event arrives on its topic, keyed as the
//! contract says, with the recording's `topic` field stripped.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::Value;

use crate::support::{create_topics, infermon, recordings, required_env, run_ok, unique_id};

#[test]
fn recorded_events_arrive_on_their_topics_with_contract_keys() {
    let brokers = required_env("INFERMON_TEST_KAFKA_BROKERS");
    // Topics of our own, so parallel tests and reruns do not interfere.
    let suffix = unique_id("");
    let topic = |base: &str| format!("t{suffix}.{base}");
    let names = [
        ("requests", topic("requests")),
        ("predictions", topic("predictions")),
        ("feedback", topic("feedback")),
        ("training", topic("training")),
    ];
    let partitions: Vec<(&str, i32)> = names.iter().map(|(_, t)| (t.as_str(), 4)).collect();
    create_topics(&brokers, &partitions);

    // The recording, re-labelled with our topic names.
    let dir = tempfile::tempdir().unwrap();
    let rec = recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("gradient-explosion"))
        .unwrap();
    let mut expected: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut relabelled = String::new();
    for line in infermon_schemas::recording::open(&rec).unwrap().lines() {
        let mut v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let base = match v["topic"].as_str().unwrap() {
            "inference.requests" => "requests",
            "inference.predictions" => "predictions",
            "inference.feedback" => "feedback",
            "training.telemetry" => "training",
            other => panic!("unexpected topic {other}"),
        };
        let ours = names.iter().find(|(b, _)| *b == base).unwrap();
        v["topic"] = Value::String(ours.1.clone());
        relabelled.push_str(&v.to_string());
        relabelled.push('\n');
        v.as_object_mut().unwrap().remove("topic");
        expected.entry(ours.1.clone()).or_default().push(v);
    }
    // One line that is not an event: skipped and counted, not fatal.
    relabelled.push_str("{\"topic\": \"nowhere\", \"x\": 1}\n");
    let file = dir.path().join("rec.jsonl");
    std::fs::write(&file, relabelled).unwrap();
    let config = dir.path().join("infermon.toml");
    let mut toml = String::from("[topics]\n");
    for (base, name) in &names {
        toml.push_str(&format!("{base} = {name:?}\n"));
    }
    std::fs::write(&config, toml).unwrap();

    let out = run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .arg("replay")
            .arg(&file)
            .args(["--to-kafka", &brokers, "--speed", "0"]),
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("skipped 1 lines"), "{summary}");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("g{suffix}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topics: Vec<&str> = expected.keys().map(String::as_str).collect();
    consumer.subscribe(&topics).unwrap();
    let want: usize = expected.values().map(Vec::len).sum();
    let mut got: BTreeMap<String, Vec<(Option<String>, Value)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while got.values().map(Vec::len).sum::<usize>() < want && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.unwrap();
            let key = m.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
            let value: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            got.entry(m.topic().to_string())
                .or_default()
                .push((key, value));
        }
    }
    for (topic, events) in &expected {
        let received = got.get(topic).map_or(&[][..], Vec::as_slice);
        assert_eq!(received.len(), events.len(), "{topic}");
        let key_field = if topic.ends_with("predictions") {
            "model"
        } else if topic.ends_with("training") {
            "run_id"
        } else {
            "request_id"
        };
        for (key, value) in received {
            assert!(value.get("topic").is_none(), "topic field left in {value}");
            assert_eq!(key.as_deref(), value[key_field].as_str(), "{topic} key");
        }
        // Same events, whatever the partition interleaving.
        let mut a: Vec<String> = events.iter().map(Value::to_string).collect();
        let mut b: Vec<String> = received.iter().map(|(_, v)| v.to_string()).collect();
        a.sort();
        b.sort();
        assert!(a == b, "{topic}: events differ");
    }
}
