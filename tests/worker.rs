//! `infermon worker` against the real broker: requests in → one prediction
//! per request out, scores equal Python onnxruntime's on the same inputs
//! (`inference/scripts/testdata`, made by `score_reference.py`), timings
//! consistent, bad requests as error events or in the DLQ with a reason.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use crate::support::{Process, create_topics, free_port, infermon, repo, required_env, unique_id};

fn jsonl(name: &str) -> Vec<Value> {
    let path = repo().join("inference/scripts/testdata").join(name);
    std::io::BufReader::new(std::fs::File::open(path).unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// One test's topics on the test broker: requests, predictions, dlq,
/// control (in that order in `names`).
struct TestTopics {
    brokers: String,
    id: String,
    names: [String; 4],
}

impl TestTopics {
    /// Create them (the DLQ with `dlq_partitions`); ONNX Runtime must be
    /// there too.
    fn create(prefix: &str, dlq_partitions: i32) -> Self {
        let brokers = required_env("INFERMON_TEST_KAFKA_BROKERS");
        required_env("ORT_DYLIB_PATH");
        let id = unique_id(prefix);
        let names = ["requests", "predictions", "dlq", "control"].map(|t| format!("t{id}.{t}"));
        create_topics(
            &brokers,
            &[
                (&names[0], 2),
                (&names[1], 2),
                (&names[2], dlq_partitions),
                (&names[3], 1),
            ],
        );
        Self { brokers, id, names }
    }

    /// The `[topics]` section alone (for CLI commands).
    fn topics_toml(&self) -> String {
        let n = &self.names;
        format!(
            "[topics]\nrequests = {:?}\npredictions = {:?}\ndlq = {:?}\ncontrol = {:?}\n",
            n[0], n[1], n[2], n[3]
        )
    }

    /// `[topics]` and `[kafka]` of a worker config.
    fn config_head(&self) -> String {
        format!(
            "{}\n[kafka]\nbrokers = {:?}\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\n",
            self.topics_toml(),
            self.brokers
        )
    }

    fn producer(&self) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "1")
            .create()
            .unwrap()
    }

    /// A consumer reading `topics` from the beginning.
    fn reader(&self, topics: &[&str]) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("reader{}", self.id))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(topics).unwrap();
        consumer
    }
}

/// Start `infermon --config CONFIG worker`, its log in `log`.
fn spawn_worker(config: &Path, log: &Path, env: &[(&str, &str)]) -> Process {
    Process::spawn(
        "infermon worker",
        infermon()
            .arg("--config")
            .arg(config)
            .arg("worker")
            .envs(env.iter().copied()),
        Some(log.to_path_buf()),
    )
}

/// SIGTERM a worker and wait for it.
fn stop_worker(mut worker: Process) -> ExitStatus {
    worker.terminate()
}

/// The MiniLM model directory (installed by install_minilm.sh, .ci/run).
fn minilm_dir() -> std::path::PathBuf {
    let d = repo().join("inference/models/minilm");
    assert!(
        d.join("1/model.onnx").exists(),
        "MiniLM is not installed: run `bash inference/scripts/install_minilm.sh`"
    );
    d
}

#[test]
fn requests_in_predictions_out_scored_like_python_onnxruntime() {
    let setup = TestTopics::create("w", 2);
    let names = &setup.names;

    // The reference requests: for the CTR model 5 scorable, 3 with bad
    // features, 1 unknown model; for the MiniLM query encoder 9 texts, one
    // missing, one blank, one too long. And one message that is not JSON.
    let minilm = minilm_dir();
    let requests: Vec<Value> = jsonl("ctr_requests.jsonl")
        .into_iter()
        .chain(jsonl("minilm_requests.jsonl"))
        .collect();
    let expected: BTreeMap<String, Value> = jsonl("ctr_expected_v1.jsonl")
        .into_iter()
        .chain(jsonl("minilm_expected.jsonl"))
        .map(|v| (v["request_id"].as_str().unwrap().to_string(), v))
        .collect();
    let producer = setup.producer();
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
            "{}[worker]\nid = \"test-worker/0\"\ngroup_id = \"g{}\"\n\n\
             [[worker.models]]\nname = \"ctr-ranker\"\ndir = {:?}\nversion = \"1\"\nmax_batch = 4\nmax_delay = \"20ms\"\ndevice = \"cuda:0\"\n\n\
             [[worker.models]]\nname = \"query-encoder\"\ndir = {minilm:?}\nmax_batch = 8\nmax_delay = \"20ms\"\n",
            setup.config_head(),
            setup.id,
            repo().join("inference/models/ctr-ranker"),
        ),
    )
    .unwrap();
    let log = dir.path().join("worker.log");
    let worker = spawn_worker(&config, &log, &[]);

    let consumer = setup.reader(&[&names[1], &names[2]]);
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
    let status = stop_worker(worker);
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
            let max_batch = if p["model"] == "ctr-ranker" { 4 } else { 8 };
            assert!((1..=max_batch).contains(&p["batch_size"].as_u64().unwrap()));
            scored += 1;
        } else {
            assert_eq!(p["status"], "error", "{rid}: {p}");
            let want_err = want["error"].as_str().unwrap();
            let field = want_err.split('`').nth(1).unwrap();
            let why = p["error"].as_str().unwrap();
            assert!(why.contains(field), "{rid}: {why:?} should name {field}");
            if p["model"] == "query-encoder" {
                // "missing or empty" / "too long (N tokens > 128)", as in Python.
                assert_eq!(why, want_err, "{rid}");
            }
            assert!(total >= 0.0);
        }
    }
    assert_eq!(scored, 5 + 9, "5 CTR requests and 9 texts scored");
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
    let setup = TestTopics::create("hr", 2);
    let names = &setup.names;

    // A model directory with version 1 only; version 2 arrives mid-stream.
    let dir = tempfile::tempdir().unwrap();
    let models = ctr_dir_with_v1(dir.path(), "ctr-ranker");

    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "{}[worker]\ngroup_id = \"g{}\"\nreload_interval = \"200ms\"\n\n\
             [[worker.models]]\nname = \"ctr-ranker\"\ndir = {models:?}\nmax_batch = 16\nmax_delay = \"5ms\"\n",
            setup.config_head(),
            setup.id,
        ),
    )
    .unwrap();
    let log = dir.path().join("worker.log");
    let worker = spawn_worker(&config, &log, &[]);

    // Scorable reference requests, cycled under fresh ids, ~500/s.
    let (scorable, expected) = scorable_ctr_requests();
    let total = 1500;
    let producer = setup.producer();
    let consumer = setup.reader(&[&names[1]]);
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
            deploy_v2(&models);
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
    assert!(stop_worker(worker).success());
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

/// The scorable CTR reference requests, and Python's score of each by
/// (version, request id) for versions 1 and 2.
fn scorable_ctr_requests() -> (Vec<Value>, BTreeMap<(String, String), f64>) {
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
    (scorable, expected)
}

/// A copy of the CTR model directory with version 1 only.
fn ctr_dir_with_v1(parent: &std::path::Path, name: &str) -> std::path::PathBuf {
    let src = repo().join("inference/models/ctr-ranker");
    let d = parent.join(name);
    std::fs::create_dir_all(d.join("1")).unwrap();
    std::fs::copy(src.join("feature_spec.json"), d.join("feature_spec.json")).unwrap();
    std::fs::copy(src.join("1/model.onnx"), d.join("1/model.onnx")).unwrap();
    d
}

/// Deploy version 2 the way a deploy does: complete, then renamed.
fn deploy_v2(dir: &std::path::Path) {
    let tmp = dir.join(".2.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(
        repo().join("inference/models/ctr-ranker/2/model.onnx"),
        tmp.join("model.onnx"),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("2")).unwrap();
}

/// POST `body` (signed when `secret` is given); (status, response body).
/// The bearer token the first worker's `/alerts` also takes.
const HOOK_TOKEN: &str = "hook-token-for-tests";

fn post(url: &str, body: &str, secret: Option<&[u8]>) -> (u16, String) {
    let mut req = ureq::post(url).set("Content-Type", "application/json");
    if let Some(secret) = secret {
        let sig = infermon::alerts::webhook::signature(secret, body.as_bytes());
        req = req.set("X-Infermon-Signature", &sig);
    }
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// Wait until `pattern` occurs `n` times in the log at `path`.
fn wait_for_log(path: &std::path::Path, pattern: &str, n: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(pattern).count() >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "{pattern:?} not {n} times in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_canary_takes_its_share_and_a_firing_alert_rolls_it_back_on_every_worker() {
    let setup = TestTopics::create("cn", 1);
    let names = &setup.names;
    let scratch = tempfile::tempdir().unwrap();
    let secret = b"hook-secret-for-tests";

    // Two workers, each with its own copy of the model directory (as on two
    // machines): only the control topic can tell the second one to roll
    // back. Only the first one listens for alerts.
    let port = free_port();
    let mut workers = Vec::new();
    let mut dirs = Vec::new();
    let mut logs = Vec::new();
    for w in 0..2 {
        let dir = ctr_dir_with_v1(scratch.path(), &format!("models{w}"));
        let listen = if w == 0 {
            format!(
                "listen = \"127.0.0.1:{port}\"\nalert_secret_env = \"INFERMON_TEST_HOOK_SECRET\"\nalert_bearer_token_env = \"INFERMON_TEST_HOOK_TOKEN\"\n"
            )
        } else {
            String::new()
        };
        let config = scratch.path().join(format!("worker{w}.toml"));
        std::fs::write(
            &config,
            format!(
                "{}[worker]\nid = \"w{w}\"\ngroup_id = \"g{}\"\nreload_interval = \"200ms\"\n{listen}\n\
                 [[worker.models]]\nname = \"ctr-ranker\"\ndir = {dir:?}\nmax_batch = 16\nmax_delay = \"5ms\"\n\
                 canary_percent = 30\ncanary_duration = \"1h\"\nrollback_on = [\"ScoreDrift\"]\n",
                setup.config_head(),
                setup.id,
            ),
        )
        .unwrap();
        let log = scratch.path().join(format!("worker{w}.log"));
        let secret = std::str::from_utf8(secret).unwrap();
        workers.push(spawn_worker(
            &config,
            &log,
            &[
                ("INFERMON_TEST_HOOK_SECRET", secret),
                ("INFERMON_TEST_HOOK_TOKEN", HOOK_TOKEN),
            ],
        ));
        dirs.push(dir);
        logs.push(log);
    }

    let (scorable, expected) = scorable_ctr_requests();
    let producer = setup.producer();
    let consumer = setup.reader(&[&names[1], &names[3]]);
    let mut commands: Vec<Value> = Vec::new();
    // Send `n` requests of one phase; return its predictions by request id.
    let phase = |tag: &str, n: usize, commands: &mut Vec<Value>| {
        for i in 0..n {
            let mut r = scorable[i % scorable.len()].clone();
            let base = r["request_id"].as_str().unwrap().to_string();
            r["request_id"] = Value::from(format!("{tag}-{i}-{base}"));
            let body = r.to_string();
            producer
                .send(
                    BaseRecord::<str, str>::to(&names[0])
                        .key(&base)
                        .payload(&body),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let mut got: BTreeMap<String, Value> = BTreeMap::new();
        let until = Instant::now() + Duration::from_secs(60);
        while got.len() < n && Instant::now() < until {
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.unwrap();
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if m.topic() == names[3] {
                commands.push(v);
                continue;
            }
            let rid = v["request_id"].as_str().unwrap().to_string();
            assert!(rid.starts_with(tag), "{rid} arrived in phase {tag}");
            assert!(
                got.insert(rid.clone(), v).is_none(),
                "two predictions for {rid}"
            );
        }
        assert_eq!(got.len(), n, "phase {tag}: one prediction per request");
        for (rid, p) in &got {
            assert_eq!(p["status"], "ok", "{rid}: {p}");
            let version = p["model_version"].as_str().unwrap().to_string();
            let base = rid.splitn(3, '-').nth(2).unwrap().to_string();
            let want = expected[&(version.clone(), base)];
            let score = p["score"].as_f64().unwrap();
            assert!(
                (score - want).abs() <= 1e-6,
                "{rid} v{version}: {score} vs python {want}"
            );
        }
        got
    };
    let versions = |got: &BTreeMap<String, Value>| {
        got.values()
            .map(|p| p["model_version"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };

    // Version 1 only.
    let before = phase("a", 200, &mut commands);
    assert_eq!(versions(&before), ["1".to_string()].into());

    // Version 2 arrives: a canary on both workers, 30 % of the requests,
    // the same requests on either worker.
    for d in &dirs {
        deploy_v2(d);
    }
    for log in &logs {
        wait_for_log(log, "canary started", 1);
    }
    let canary = phase("b", 600, &mut commands);
    let mut on_canary = 0;
    for (rid, p) in &canary {
        let routed = infermon_inference::serving::routes_to_canary(rid, 30.0);
        assert_eq!(
            p["model_version"] == "2",
            routed,
            "{rid} served by {}",
            p["model_version"]
        );
        on_canary += usize::from(routed);
    }
    assert!(
        (120..=240).contains(&on_canary),
        "{on_canary} of 600 on the canary"
    );
    let served_by: std::collections::BTreeSet<_> = canary
        .values()
        .map(|p| p["worker"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(served_by.len(), 2, "both workers served: {served_by:?}");

    // The alert hook: refused unsigned or unparsable, ignores alerts that
    // are not in rollback_on, rolls back on a firing ScoreDrift for v2.
    let url = format!("http://127.0.0.1:{port}/alerts");
    let alert = |name: &str| {
        serde_json::json!({
            "version": "4", "status": "firing", "receiver": "rollback",
            "groupKey": "{}:{alertname=\"x\"}", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {},
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": name, "severity": "critical", "model": "ctr-ranker", "model_version": "2"},
                "annotations": {"summary": "score PSI 0.41 > 0.25", "description": ""},
                "startsAt": "2026-11-23T06:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "0123456789abcdef"
            }]
        })
        .to_string()
    };
    let (code, said) = post(&url, &alert("ScoreDrift"), None);
    assert_eq!(code, 401, "unsigned: {said}");
    let (code, said) = post(&url, "{not json", Some(secret));
    assert_eq!(code, 400, "{said}");
    assert!(said.contains("JSON"), "{said}");
    // A body over the 1 MiB limit is refused, signed or not, whatever it says.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let (code, said) = post(&url, &big, Some(secret));
    assert_eq!(code, 413, "{said}");
    assert!(said.contains("larger than 1048576 bytes"), "{said}");
    let (code, said) = post(&url, &alert("LatencyP99"), Some(secret));
    assert_eq!((code, said.trim()), (200, "{\"rollbacks\": 0}"));
    let wrong_token = ureq::post(&url)
        .set("Authorization", "Bearer not-the-token")
        .send_string(&alert("ScoreDrift"));
    assert!(
        matches!(wrong_token, Err(ureq::Error::Status(401, _))),
        "{wrong_token:?}"
    );
    // The firing alert comes through a real Alertmanager, which cannot sign
    // bodies: its webhook_config sends the bearer token instead.
    let am = crate::support::Alertmanager::start(
        scratch.path(),
        &format!(
            "url: {url}\nhttp_config:\n  authorization:\n    type: Bearer\n    credentials: {HOOK_TOKEN}"
        ),
    );
    let postable = serde_json::json!([{
        "labels": {"alertname": "ScoreDrift", "severity": "critical", "model": "ctr-ranker", "model_version": "2"},
        "annotations": {"summary": "score PSI 0.41 > 0.25"},
    }]);
    ureq::post(&format!("{}/api/v2/alerts", am.url))
        .set("Content-Type", "application/json")
        .send_string(&postable.to_string())
        .unwrap();
    for log in &logs {
        wait_for_log(log, "model version rolled back", 1);
    }
    let after = phase("c", 300, &mut commands);
    // The command was produced before phase c, but the consumer may hand
    // over all of c's predictions first: read on until it shows up.
    let until = Instant::now() + Duration::from_secs(20);
    while commands.is_empty() && Instant::now() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            if m.topic() == names[3] {
                commands.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
            }
        }
    }
    assert_eq!(
        versions(&after),
        ["1".to_string()].into(),
        "after the rollback"
    );
    for d in &dirs {
        let pin = std::fs::read_to_string(d.join(infermon::worker::PIN_FILE)).unwrap();
        assert_eq!(pin.trim(), "1", "{} pinned", d.display());
    }
    assert_eq!(
        commands.len(),
        1,
        "one command on the control topic: {commands:?}"
    );
    // What the SRE sees on the same port.
    let metrics = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for want in [
        "infermon_worker_serving{model=\"ctr-ranker\",version=\"1\",role=\"stable\"} 1",
        "infermon_worker_version_changes_total{model=\"ctr-ranker\",kind=\"canary_started\"} 1",
        "infermon_worker_version_changes_total{model=\"ctr-ranker\",kind=\"rolled_back\"} 1",
        "infermon_worker_predictions_total{model=\"ctr-ranker\",version=\"2\",status=\"ok\"}",
    ] {
        assert!(metrics.contains(want), "{want} not in /metrics:\n{metrics}");
    }
    assert!(!metrics.contains("role=\"canary\""), "{metrics}");
    // The conventions promtool checks, and a real Prometheus scraping it.
    let lint = crate::support::promtool(&["check", "metrics"], Some(&metrics));
    assert!(lint.trim().is_empty(), "promtool check metrics:\n{lint}");
    let predictions: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("infermon_worker_predictions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let prometheus = crate::support::Prometheus::start(
        scratch.path(),
        "infermon-worker",
        &format!("127.0.0.1:{port}"),
    );
    assert_eq!(
        prometheus.scraped(
            "infermon-worker",
            "sum(infermon_worker_predictions_total)",
            predictions
        ),
        Some(predictions),
        "Prometheus's view of the worker's predictions (up == 1 first)"
    );
    drop(prometheus);

    assert_eq!(commands[0]["command"], "rollback");
    assert_eq!(commands[0]["model"], "ctr-ranker");
    assert_eq!(commands[0]["from_version"], "2");
    assert!(
        commands[0]["reason"]
            .as_str()
            .unwrap()
            .contains("ScoreDrift")
    );

    // Released again, version 2 is a canary once more; `infermon model
    // rollback --model` sends the command without touching any directory.
    for d in &dirs {
        crate::support::run_ok(infermon().args(["model", "release", "--dir"]).arg(d));
    }
    for log in &logs {
        wait_for_log(log, "canary started", 2);
    }
    let cli_config = scratch.path().join("cli.toml");
    std::fs::write(&cli_config, setup.topics_toml()).unwrap();
    let out = crate::support::run_ok(infermon().arg("--config").arg(&cli_config).args([
        "model",
        "rollback",
        "--model",
        "ctr-ranker",
        "--version",
        "2",
        "--brokers",
        &setup.brokers,
    ]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rollback of ctr-ranker version 2 sent"),
        "{said}"
    );
    for log in &logs {
        wait_for_log(log, "model version rolled back", 2);
    }
    let last = phase("d", 200, &mut commands);
    assert_eq!(
        versions(&last),
        ["1".to_string()].into(),
        "after the CLI rollback"
    );

    for w in workers {
        assert!(stop_worker(w).success());
    }
}

/// The whole loop against the real broker: a worker serves a canary, the
/// monitor reads its predictions and the feedback, judges the canary worse
/// than stable on CTR (`canary_worse`), and its webhook reaches the
/// worker's alert hook, which rolls the canary back.
#[test]
fn a_canary_worse_on_ctr_is_alerted_by_the_monitor_and_rolled_back() {
    use rand::{Rng, SeedableRng};

    let setup = TestTopics::create("cw", 1);
    let names = &setup.names;
    let (feedback, training) = (
        format!("t{}.feedback", setup.id),
        format!("t{}.training", setup.id),
    );
    create_topics(&setup.brokers, &[(&feedback, 2), (&training, 1)]);
    // INFERMON_TEST_KEEP=1 keeps the logs and configs for a look.
    let scratch = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("INFERMON_TEST_KEEP").is_some())
        .tempdir()
        .unwrap();
    let secret = "canary-hook-secret";
    let hook_port = free_port();
    let dir = ctr_dir_with_v1(scratch.path(), "models");
    let worker_config = scratch.path().join("worker.toml");
    std::fs::write(
        &worker_config,
        format!(
            "{}[worker]\nid = \"w0\"\ngroup_id = \"g{}\"\nreload_interval = \"200ms\"\n\
             listen = \"127.0.0.1:{hook_port}\"\nalert_secret_env = \"INFERMON_TEST_HOOK_SECRET\"\n\n\
             [[worker.models]]\nname = \"ctr-ranker\"\ndir = {dir:?}\nmax_batch = 16\nmax_delay = \"5ms\"\n\
             canary_percent = 30\ncanary_duration = \"1h\"\nrollback_on = [\"canary_worse\"]\n",
            setup.config_head(),
            setup.id,
        ),
    )
    .unwrap();
    let worker_log = scratch.path().join("worker.log");
    let worker = spawn_worker(
        &worker_config,
        &worker_log,
        &[("INFERMON_TEST_HOOK_SECRET", secret)],
    );
    // Version 2 arrives once version 1 serves: a canary.
    wait_for_log(&worker_log, "serving group", 1);
    deploy_v2(&dir);
    wait_for_log(&worker_log, "canary started", 1);

    // The monitor: the worker's predictions and the feedback in, its
    // webhook signed with the hook's secret. Labels wait 1 s; the canary
    // is judged on 100 labels a side over its 10-minute horizon.
    let monitor_config = scratch.path().join("monitor.toml");
    std::fs::write(
        &monitor_config,
        format!(
            "[topics]\npredictions = {:?}\nfeedback = {feedback:?}\ntraining = {training:?}\ndlq = {:?}\n\n\
             [kafka]\nbrokers = {:?}\ngroup_id = \"m{}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\n\
             [window]\nallowed_lateness = \"0s\"\nidle_timeout = \"5s\"\n\n[quality]\nlabel_wait = \"1s\"\n\n\
             [monitor]\nlisten = \"127.0.0.1:{}\"\nstate_dir = {:?}\nmetrics_out = {:?}\nalerts_out = {:?}\n\n\
             [alerts.grouping]\ngroup_wait = \"0s\"\n\n\
             [[alerts.webhooks]]\nname = \"rollback\"\nurl = \"http://127.0.0.1:{hook_port}/alerts\"\n\
             secret_env = \"INFERMON_TEST_HOOK_SECRET\"\ninitial_backoff = \"100ms\"\n",
            names[1],
            names[2],
            setup.brokers,
            setup.id,
            free_port(),
            scratch.path().join("state"),
            scratch.path().join("metrics.lp"),
            scratch.path().join("alerts.jsonl"),
        ),
    )
    .unwrap();
    let monitor_log = scratch.path().join("monitor.log");
    let _monitor = Process::spawn(
        "infermon monitor",
        infermon()
            .arg("--config")
            .arg(&monitor_config)
            .arg("monitor")
            .env("INFERMON_TEST_HOOK_SECRET", secret),
        Some(monitor_log.clone()),
    );

    // Four minutes of requests an hour ago (event time), then the feedback:
    // v1's predictions are clicked 30 % of the time, the canary's 5 %.
    let (scorable, _) = scorable_ctr_requests();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now - 3_600_000 - now % 60_000;
    let producer = setup.producer();
    let send = |topic: &str, key: &str, body: &Value| {
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .key(key)
                    .payload(&body.to_string()),
            )
            .unwrap();
    };
    let n = 1200;
    for i in 0..n {
        let mut r = scorable[i % scorable.len()].clone();
        let rid = format!("cw-{i}");
        r["request_id"] = Value::from(rid.clone());
        r["ts"] = Value::from(t0 + i as i64 * 200);
        send(&names[0], &rid, &r);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let reader = setup.reader(&[&names[1], &names[3]]);
    let mut commands: Vec<Value> = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut served = BTreeMap::<String, usize>::new();
    let until = Instant::now() + Duration::from_secs(60);
    while served.values().sum::<usize>() < n && Instant::now() < until {
        let Some(m) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap();
        let p: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if m.topic() == names[3] {
            commands.push(p);
            continue;
        }
        let version = p["model_version"].as_str().unwrap().to_string();
        let ctr = if version == "2" { 0.05 } else { 0.30 };
        let label = u8::from(rng.random::<f64>() < ctr);
        let rid = p["request_id"].as_str().unwrap();
        let fb = serde_json::json!({"request_id": rid, "ts": p["ts"].as_i64().unwrap() + 1_000, "label": label});
        send(&feedback, rid, &fb);
        *served.entry(version).or_default() += 1;
    }
    assert_eq!(
        served.values().sum::<usize>(),
        n,
        "one prediction per request"
    );
    assert!(served["2"] > 250, "the canary served its share: {served:?}");
    // Later traffic on both topics moves the watermark past every window.
    for i in 0..8 {
        let mut r = scorable[i % scorable.len()].clone();
        let rid = format!("cw-late-{i}");
        r["request_id"] = Value::from(rid.clone());
        r["ts"] = Value::from(t0 + 10 * 60_000);
        send(&names[0], &rid, &r);
        let fb = serde_json::json!({"request_id": rid, "ts": t0 + 10 * 60_000, "label": 0});
        send(&feedback, &rid, &fb);
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let until = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&worker_log)
        .unwrap()
        .contains("model version rolled back")
    {
        assert!(
            Instant::now() < until,
            "no rollback; monitor log:\n{}",
            crate::support::tail(&std::fs::read_to_string(&monitor_log).unwrap(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let alerts = std::fs::read_to_string(scratch.path().join("alerts.jsonl")).unwrap();
    let canary: Vec<Value> = alerts
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|a| a["labels"]["alertname"] == "canary_worse")
        .collect();
    assert!(
        !canary.is_empty(),
        "canary_worse in the alerts log:\n{alerts}"
    );
    assert_eq!(canary[0]["labels"]["model_version"], "2");
    assert_eq!(canary[0]["labels"]["metric"], "ctr");
    let pin = std::fs::read_to_string(dir.join(infermon::worker::PIN_FILE)).unwrap();
    assert_eq!(pin.trim(), "1", "version 1 pinned after the rollback");
    let until = Instant::now() + Duration::from_secs(20);
    while commands.is_empty() {
        assert!(
            Instant::now() < until,
            "no rollback command on the control topic"
        );
        if let Some(m) = reader.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            if m.topic() == names[3] {
                commands.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
            }
        }
    }
    let command = &commands[0];
    assert_eq!(command["command"], "rollback");
    assert_eq!(command["from_version"], "2");
    assert!(
        command["reason"].as_str().unwrap().contains("canary_worse"),
        "{command}"
    );
    assert!(stop_worker(worker).success());
}
