//! Bad messages go to the DLQ with their reasons, and the stream goes on.

use super::*;

#[test]
fn poison_messages_go_to_the_dlq_with_reasons_and_the_stream_goes_on() {
    let setup = Setup::new("dlq");
    let config = setup.config("monitor.toml", &setup.monitor_toml("a"));
    let predictions = &setup.topics["predictions"];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let good = |ts: i64, id: &str| {
        serde_json::json!({
            "request_id": id, "ts": ts, "model": "m", "model_version": "1",
            "worker": "w", "device": "cpu", "status": "ok", "batch_size": 1,
            "score": 0.5,
            "timings_ms": {"queue": 1.0, "preprocess": 1.0, "inference": 1.0, "postprocess": 1.0, "total": 4.0}
        })
        .to_string()
    };
    let big = format!(
        "{{\"request_id\": \"r-big\", \"pad\": \"{}\"}}",
        "x".repeat(900 * 1024)
    );
    let training_event = serde_json::json!({
        "run_id": "run-1", "model": "m", "step": 1, "ts": 1_763_643_600_000i64,
        "loss": 0.5, "grad_norm": 1.0, "lr": 0.001
    })
    .to_string();
    let poison: Vec<(&str, String)> = vec![
        ("invalid JSON", "{\"request_id\": \"r-1\", ".to_string()),
        (
            "wrong types",
            good(1_763_643_600_000, "r-2").replace("\"ts\":1763643600000", "\"ts\":\"yesterday\""),
        ),
        ("900 KB value", big),
        ("empty value", String::new()),
        ("wrong topic schema", training_event),
    ];
    assert!(poison[1].1.contains("yesterday"), "{}", poison[1].1);
    let base = 1_763_643_600_000i64;
    let mut sent_good = 0;
    for i in 0..50 {
        let body = good(base + i * 1000, &format!("r-ok-{i}"));
        producer
            .send(BaseRecord::to(predictions).key("m").payload(&body))
            .unwrap();
        sent_good += 1;
        if i % 10 == 5 {
            let (_, bad) = &poison[(i / 10) as usize];
            producer
                .send(BaseRecord::to(predictions).key("m").payload(bad.as_bytes()))
                .unwrap();
        }
    }
    // An event from a producer whose clock is six hours fast.
    let future = good(infermon::telemetry::now_ms() + 6 * 3_600_000, "r-future");
    producer
        .send(BaseRecord::to(predictions).key("m").payload(&future))
        .unwrap();
    // One more good event two minutes later closes the first window.
    let body = good(base + 200_000, "r-ok-late");
    producer
        .send(BaseRecord::to(predictions).key("m").payload(&body))
        .unwrap();
    sent_good += 1;
    producer.flush(Duration::from_secs(10)).unwrap();

    let monitor = Monitor::start(&config, setup.path("monitor.log"));
    monitor.wait_for(Duration::from_secs(90), "6 DLQ'd and 51 consumed", |m| {
        m.metric("infermon_dlq_messages_total", &[]) >= 6.0
            && m.metric("infermon_consumed_messages_total", &[]) >= (sent_good + 6) as f64
    });
    let by_reason =
        |r: &str| monitor.metric("infermon_dlq_messages_total", &[&format!("reason=\"{r}\"")]);
    let metrics = monitor.get("/metrics").unwrap().1;
    assert_eq!(by_reason("empty"), 1.0, "{metrics}");
    assert_eq!(by_reason("too_large"), 1.0, "{metrics}");
    assert_eq!(by_reason("invalid_json"), 1.0, "{metrics}");
    assert_eq!(by_reason("implausible_ts"), 1.0, "{metrics}");
    // Windows still close: the first minute's 50 good events are counted.
    monitor.wait_acked(base + 60_000, Duration::from_secs(30));
    let status = monitor.terminate();
    assert!(status.success());
    let lp = std::fs::read_to_string(setup.path("metrics-a.lp")).unwrap();
    let throughput: Vec<Line> = parse_lines(&lp)
        .into_iter()
        .filter(|l| l.measurement == "throughput" && l.ts_ns == (base + 60_000) * 1_000_000)
        .collect();
    assert_eq!(throughput.len(), 1, "{lp}");
    assert_eq!(throughput[0].float("requests"), Some(50.0), "{lp}");

    // The DLQ holds the original bytes with the contract's headers.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", format!("dlq-reader-{}", setup.id))
        .set("auto.offset.reset", "earliest")
        .set("fetch.message.max.bytes", "2000000")
        .create()
        .unwrap();
    consumer.subscribe(&[&setup.topics["dlq"]]).unwrap();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while got.len() < 6 && Instant::now() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.unwrap();
            let mut headers = BTreeMap::new();
            for h in m.headers().unwrap().iter() {
                headers.insert(
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                );
            }
            got.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    assert_eq!(got.len(), 6, "DLQ messages");
    let mut poison = poison;
    poison.push(("future-dated", future));
    for (what, bad) in &poison {
        let (_, headers) = got
            .iter()
            .find(|(payload, _)| payload == bad.as_bytes())
            .unwrap_or_else(|| panic!("{what}: not in the DLQ byte for byte"));
        assert_eq!(headers["infermon-source-topic"], *predictions, "{what}");
        assert!(
            headers["infermon-source-partition"].parse::<i32>().is_ok(),
            "{what}"
        );
        assert!(
            headers["infermon-source-offset"].parse::<i64>().is_ok(),
            "{what}"
        );
        let reason = &headers["infermon-error"];
        let names = match *what {
            "invalid JSON" => "JSON",
            "wrong types" => "ts",
            "900 KB value" => "max_event_bytes",
            "empty value" => "empty",
            "future-dated" => "ahead of the wall clock",
            _ => "missing field",
        };
        assert!(
            reason.contains(names),
            "{what}: reason {reason:?} should name {names}"
        );
    }
}

/// Messages on `topic` (read from the start by a fresh group).
fn count_messages(setup: &Setup, topic: &str, want: usize, timeout: Duration) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", format!("count-{}-{topic}", setup.id))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let (mut n, until) = (0, Instant::now() + timeout);
    while n < want && Instant::now() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            m.unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn a_burst_of_bad_messages_larger_than_the_dlq_queue_loses_nothing() {
    let setup = Setup::new("dlqburst");
    // The DLQ producer's local queue holds 20 messages; 400 bad ones arrive
    // at once. Lines before the first table land in [kafka.properties].
    let config = setup.config(
        "monitor.toml",
        &format!(
            "\"queue.buffering.max.messages\" = \"20\"\n\n{}",
            setup.monitor_toml("a")
        ),
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .create()
        .unwrap();
    let predictions = &setup.topics["predictions"];
    const BAD: usize = 400;
    for i in 0..BAD {
        let body = format!("{{\"request_id\": \"r-{i}\", broken");
        loop {
            match producer.send(BaseRecord::to(predictions).key("m").payload(&body)) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let monitor = Monitor::start(&config, setup.path("monitor.log"));
    monitor.wait_for(
        Duration::from_secs(90),
        "every bad message in the DLQ",
        |m| m.metric("infermon_dlq_messages_total", &[]) >= BAD as f64,
    );
    assert!(
        monitor.get("/healthz").is_some_and(|(c, _)| c == 200),
        "the monitor stopped:\n{}",
        tail(&monitor.log_text(), 20)
    );
    assert!(monitor.terminate().success());
    assert_eq!(
        count_messages(
            &setup,
            &setup.topics["dlq"],
            BAD + 1,
            Duration::from_secs(30)
        ),
        BAD
    );
}
