//! `infermon worker` against the real broker: requests in → one prediction
//! per request out, scores equal Python onnxruntime's on the same inputs
//! (`inference/scripts/testdata`, made by `score_reference.py`), timings
//! consistent, bad requests as error events or in the DLQ with a reason.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use crate::support::{create_topics, infermon, repo, required_env, unique_id};

fn jsonl(name: &str) -> Vec<Value> {
    let path = repo().join("inference/scripts/testdata").join(name);
    std::io::BufReader::new(std::fs::File::open(path).unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn requests_in_predictions_out_scored_like_python_onnxruntime() {
    let brokers = required_env("INFERMON_TEST_KAFKA_BROKERS");
    required_env("ORT_DYLIB_PATH");
    let id = unique_id("w");
    let names = [
        format!("t{id}.requests"),
        format!("t{id}.predictions"),
        format!("t{id}.dlq"),
    ];
    create_topics(&brokers, &[(&names[0], 2), (&names[1], 2), (&names[2], 2)]);

    // The reference requests (5 scorable, 3 with bad features, 1 unknown
    // model) and one message that is not JSON.
    let requests = jsonl("ctr_requests.jsonl");
    let expected: BTreeMap<String, Value> = jsonl("ctr_expected_v1.jsonl")
        .into_iter()
        .map(|v| (v["request_id"].as_str().unwrap().to_string(), v))
        .collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for r in &requests {
        let body = r.to_string();
        let key = r["request_id"].as_str().unwrap().to_string();
        producer
            .send(BaseRecord::to(&names[0]).key(&key).payload(&body))
            .unwrap();
    }
    producer
        .send(
            BaseRecord::<str, str>::to(&names[0])
                .key("r-bad")
                .payload("{not json"),
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[topics]\nrequests = {:?}\npredictions = {:?}\ndlq = {:?}\n\n\
             [kafka]\nbrokers = {brokers:?}\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\n\
             [worker]\nid = \"test-worker/0\"\ngroup_id = \"g{id}\"\n\n\
             [[worker.models]]\nname = \"ctr-ranker\"\ndir = {:?}\nversion = \"1\"\nmax_batch = 4\nmax_delay = \"20ms\"\ndevice = \"cuda:0\"\n",
            names[0],
            names[1],
            names[2],
            repo().join("inference/models/ctr-ranker"),
        ),
    )
    .unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = infermon()
        .arg("--config")
        .arg(&config)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("reader{id}"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&names[1], &names[2]]).unwrap();
    let mut predictions: BTreeMap<String, (Option<String>, Value)> = BTreeMap::new();
    let mut dlq = Vec::new();
    let until = Instant::now() + Duration::from_secs(90);
    while (predictions.len() < requests.len() || dlq.is_empty()) && Instant::now() < until {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        if m.topic() == names[2] {
            let reason = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "infermon-error"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            dlq.push((m.payload().unwrap().to_vec(), reason));
            continue;
        }
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let rid = v["request_id"].as_str().unwrap().to_string();
        assert!(
            predictions.insert(rid.clone(), (key, v)).is_none(),
            "two predictions for {rid}"
        );
    }
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let status = worker.wait().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "worker exited with {status}:\n{log_text}");
    assert_eq!(
        predictions.len(),
        requests.len(),
        "one prediction per request:\n{log_text}"
    );

    let mut scored = 0;
    for (rid, (key, p)) in &predictions {
        let want = &expected[rid];
        assert_eq!(key.as_deref(), p["model"].as_str(), "{rid}: keyed by model");
        let t = &p["timings_ms"];
        let total = t["total"].as_f64().unwrap();
        if let Some(score) = want.get("score").and_then(Value::as_f64) {
            assert_eq!(p["status"], "ok", "{rid}: {p}");
            assert_eq!(p["model_version"], "1");
            assert_eq!(p["worker"], "test-worker/0");
            // cuda:0 was asked for: it runs there, or on the CPU after a
            // warning (this box's ONNX Runtime has no CUDA provider).
            assert!(
                p["device"] == "cuda:0" || (p["device"] == "cpu" && log_text.contains("using cpu")),
                "{rid}: device {} without a fallback warning:\n{log_text}",
                p["device"]
            );
            let got = p["score"].as_f64().unwrap();
            assert!(
                (got - score).abs() <= 1e-6,
                "{rid}: {got} vs python {score}"
            );
            let stages: f64 = ["queue", "preprocess", "inference", "postprocess"]
                .iter()
                .map(|s| t[s].as_f64().unwrap())
                .sum();
            assert!(
                total >= stages - 1e-3,
                "{rid}: total {total} < stages {stages}"
            );
            assert!(t["inference"].as_f64().unwrap() > 0.0);
            assert!((1..=4).contains(&p["batch_size"].as_u64().unwrap()));
            scored += 1;
        } else {
            assert_eq!(p["status"], "error", "{rid}: {p}");
            let field = want["error"].as_str().unwrap().split('`').nth(1).unwrap();
            let why = p["error"].as_str().unwrap();
            assert!(why.contains(field), "{rid}: {why:?} should name {field}");
            assert!(total >= 0.0);
        }
    }
    assert_eq!(scored, 5);
    assert_eq!(dlq.len(), 1, "the message that is not JSON");
    assert_eq!(dlq[0].0, b"{not json");
    assert!(
        dlq[0].1.as_deref().is_some_and(|r| r.contains("JSON")),
        "{:?}",
        dlq[0].1
    );
}

#[test]
fn a_new_model_version_is_swapped_in_under_load_without_losing_a_request() {
    let brokers = required_env("INFERMON_TEST_KAFKA_BROKERS");
    required_env("ORT_DYLIB_PATH");
    let id = unique_id("hr");
    let names = [
        format!("t{id}.requests"),
        format!("t{id}.predictions"),
        format!("t{id}.dlq"),
    ];
    create_topics(&brokers, &[(&names[0], 2), (&names[1], 2), (&names[2], 2)]);

    // A model directory with version 1 only; version 2 arrives mid-stream.
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("ctr-ranker");
    let src = repo().join("inference/models/ctr-ranker");
    std::fs::create_dir_all(models.join("1")).unwrap();
    std::fs::copy(
        src.join("feature_spec.json"),
        models.join("feature_spec.json"),
    )
    .unwrap();
    std::fs::copy(src.join("1/model.onnx"), models.join("1/model.onnx")).unwrap();

    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[topics]\nrequests = {:?}\npredictions = {:?}\ndlq = {:?}\n\n\
             [kafka]\nbrokers = {brokers:?}\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\n\
             [worker]\ngroup_id = \"g{id}\"\nreload_interval = \"200ms\"\n\n\
             [[worker.models]]\nname = \"ctr-ranker\"\ndir = {models:?}\nmax_batch = 16\nmax_delay = \"5ms\"\n",
            names[0], names[1], names[2],
        ),
    )
    .unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = infermon()
        .arg("--config")
        .arg(&config)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // Scorable reference requests, cycled under fresh ids, ~500/s.
    let scorable: Vec<Value> = jsonl("ctr_requests.jsonl")
        .into_iter()
        .zip(jsonl("ctr_expected_v1.jsonl"))
        .filter(|(_, e)| e.get("score").is_some())
        .map(|(r, _)| r)
        .collect();
    let expected: BTreeMap<(String, String), f64> = ["1", "2"]
        .iter()
        .flat_map(|v| {
            jsonl(&format!("ctr_expected_v{v}.jsonl"))
                .into_iter()
                .filter_map(move |e| {
                    Some((
                        (v.to_string(), e["request_id"].as_str()?.to_string()),
                        e.get("score")?.as_f64()?,
                    ))
                })
        })
        .collect();
    let total = 1500;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("reader{id}"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&names[1]]).unwrap();
    let mut got: BTreeMap<String, Value> = BTreeMap::new();
    let read = |got: &mut BTreeMap<String, Value>| {
        while let Some(m) = consumer.poll(Duration::from_millis(1)) {
            let v: Value = serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap();
            let rid = v["request_id"].as_str().unwrap().to_string();
            assert!(
                got.insert(rid.clone(), v).is_none(),
                "two predictions for {rid}"
            );
        }
    };
    for i in 0..total {
        let mut r = scorable[i % scorable.len()].clone();
        let base = r["request_id"].as_str().unwrap().to_string();
        r["request_id"] = Value::from(format!("hr-{i}-{base}"));
        let body = r.to_string();
        producer
            .send(
                BaseRecord::<str, str>::to(&names[0])
                    .key(&base)
                    .payload(&body),
            )
            .unwrap();
        producer.poll(Duration::ZERO);
        if i == 299 {
            // Let the worker join and serve the first 300 with version 1.
            producer.flush(Duration::from_secs(10)).unwrap();
            let until = Instant::now() + Duration::from_secs(60);
            while got.len() < 300 && Instant::now() < until {
                read(&mut got);
            }
            assert_eq!(got.len(), 300, "the worker did not start serving");
        }
        if i == 600 {
            // Version 2 appears the way a deploy writes it: complete, then renamed.
            let tmp = models.join(".2.tmp");
            std::fs::create_dir_all(&tmp).unwrap();
            std::fs::copy(src.join("2/model.onnx"), tmp.join("model.onnx")).unwrap();
            std::fs::rename(&tmp, models.join("2")).unwrap();
        }
        if i == 1100 {
            // Roll back on command: every worker goes back to version 1.
            let out = crate::support::run_ok(
                infermon().args(["model", "rollback", "--dir"]).arg(&models),
            );
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("from version 2 to 1"), "{said}");
        }
        std::thread::sleep(Duration::from_millis(2));
        read(&mut got);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while got.len() < total && Instant::now() < until {
        read(&mut got);
    }
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(worker.wait().unwrap().success());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(got.len(), total, "one prediction per request:\n{log_text}");
    assert!(
        log_text.contains("new model version swapped in"),
        "{log_text}"
    );
    let mut per_version: BTreeMap<String, usize> = BTreeMap::new();
    for (rid, p) in &got {
        assert_eq!(p["status"], "ok", "{rid} failed during the swap: {p}");
        let version = p["model_version"].as_str().unwrap().to_string();
        let base = rid.rsplit('-').take(2).collect::<Vec<_>>();
        let base = format!("{}-{}", base[1], base[0]);
        let want = expected[&(version.clone(), base)];
        let score = p["score"].as_f64().unwrap();
        assert!(
            (score - want).abs() <= 1e-6,
            "{rid} v{version}: {score} vs python {want}"
        );
        *per_version.entry(version).or_default() += 1;
    }
    assert_eq!(
        per_version.len(),
        2,
        "both versions served: {per_version:?}"
    );
    // Version 2 served after the swap, version 1 again after the rollback
    // (requests sent 400 ms and more after it).
    let version_of = |i: usize| {
        got.iter()
            .find(|(rid, _)| rid.starts_with(&format!("hr-{i}-")))
            .map(|(_, p)| p["model_version"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(
        (700..1100).any(|i| version_of(i) == "2"),
        "version 2 never served"
    );
    for i in 1300..total {
        assert_eq!(version_of(i), "1", "request {i} after the rollback");
    }
    assert!(log_text.contains("from=2 to=1"), "{log_text}");
}
