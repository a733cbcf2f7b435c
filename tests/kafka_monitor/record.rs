//! `infermon record` writes what the topics hold to a replayable file.

use super::*;

#[test]
fn record_writes_a_replayable_file_of_what_the_topics_hold() {
    let setup = Setup::new("record");
    let config = setup.config("monitor.toml", "");
    let lines = recording_lines("gradient-explosion");
    let lines = &lines[..3000.min(lines.len())];
    setup.produce(&config, lines);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .create()
        .unwrap();
    producer
        .send(BaseRecord::<str, str>::to(&setup.topics["predictions"]).payload("not json"))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let out = setup.path("recorded");
    let topics: Vec<&str> = ["requests", "predictions", "feedback", "training"]
        .iter()
        .map(|b| setup.topics[b].as_str())
        .collect();
    let stdout = run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .arg("record")
            .arg("--topics")
            .args(&topics)
            .arg("--out")
            .arg(&out)
            .args(["--from-beginning", "--idle", "5s"]),
    );
    let summary = String::from_utf8_lossy(&stdout.stdout);
    assert!(summary.contains("1 messages skipped"), "{summary}");
    let file = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut got: Vec<String> = infermon_schemas::recording::open(&file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(&l.unwrap())
                .unwrap()
                .to_string()
        })
        .collect();
    let mut want: Vec<String> = setup
        .relabel(lines)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap().to_string())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "recorded events differ from the produced ones");

    // And it replays: the offline replay reads it without a reject.
    let rejects = setup.path("rejects.jsonl");
    run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet"])
            .arg(&file)
            .arg("--metrics-out")
            .arg(setup.path("replayed.lp"))
            .arg("--alerts-out")
            .arg(setup.path("replayed-alerts.jsonl"))
            .arg("--rejects-out")
            .arg(&rejects),
    );
    assert!(!rejects.exists(), "the recording has rejects");
}
