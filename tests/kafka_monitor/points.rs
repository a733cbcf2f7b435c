//! Every window reaches the sinks once: the monitor equals the offline replay in InfluxDB v1 and v2, through kill -9, a sink outage and a second monitor.

use super::*;

fn typed(v: &str) -> Value {
    if let Some(i) = v.strip_suffix('i') {
        return Value::from(i.parse::<i64>().unwrap());
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::from(v.parse::<f64>().unwrap()),
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
        _ => a == b,
    }
}

/// (measurement, tags, ts_ns) of a point.
type PointKey = (String, Vec<(String, String)>, i64);

fn key(l: &Line) -> PointKey {
    let mut tags: Vec<_> = l
        .tags
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .cloned()
        .collect();
    tags.sort();
    (l.measurement.clone(), tags, l.ts_ns)
}

/// Every point of `measurements` in an InfluxDB 1.x database, with fields
/// told from tags by `tag_keys`.
fn influx_v1_points(
    url: &str,
    db: &str,
    expected: &[Line],
) -> BTreeMap<PointKey, BTreeMap<String, Value>> {
    let mut tag_keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in expected {
        let e = tag_keys.entry(&l.measurement).or_default();
        for (k, _) in &l.tags {
            if !e.contains(&k.as_str()) {
                e.push(k);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (m, tags) in &tag_keys {
        let resp: Value = serde_json::from_str(
            &ureq::get(&format!("{url}/query"))
                .query("db", db)
                .query("epoch", "ns")
                .query("q", &format!("SELECT * FROM \"{m}\""))
                .call()
                .unwrap()
                .into_string()
                .unwrap(),
        )
        .unwrap();
        let Some(series) = resp["results"][0]["series"].as_array() else {
            continue;
        };
        for s in series {
            let cols: Vec<&str> = s["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            for row in s["values"].as_array().unwrap() {
                let row = row.as_array().unwrap();
                let mut t = Vec::new();
                let mut fields = BTreeMap::new();
                let mut ts = 0;
                for (c, v) in cols.iter().zip(row) {
                    if *c == "time" {
                        ts = v.as_i64().unwrap();
                    } else if v.is_null() {
                    } else if tags.contains(c) {
                        t.push((c.to_string(), v.as_str().unwrap().to_string()));
                    } else {
                        fields.insert(c.to_string(), v.clone());
                    }
                }
                t.sort();
                out.insert((m.to_string(), t, ts), fields);
            }
        }
    }
    out
}

/// Every expected point is in the database with the same fields, and the
/// database has no window the offline replay does not.
pub(super) fn assert_influx_v1_matches(url: &str, db: &str, expected: &[Line], what: &str) {
    let got = influx_v1_points(url, db, expected);
    let mut missing = Vec::new();
    let mut differ = Vec::new();
    for l in expected {
        let k = key(l);
        match got.get(&k) {
            None => missing.push(k),
            Some(fields) => {
                for (f, v) in &l.fields {
                    let want = typed(v);
                    if !fields.get(f).is_some_and(|g| same_value(g, &want)) {
                        differ.push(format!(
                            "{k:?} {f}: offline {want}, influx {:?}",
                            fields.get(f)
                        ));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} of {} offline points missing in InfluxDB, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        differ.is_empty(),
        "{what}: {} field values differ, e.g. {:#?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    let newest = expected.iter().map(|l| l.ts_ns).max().unwrap();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| k.2 <= newest && !expected.iter().any(|l| key(l) == **k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "{what}: points the offline replay does not have: {extra:?}"
    );
}

#[test]
fn monitor_writes_what_the_offline_replay_writes_to_influxdb_v1_and_v2() {
    let setup = Setup::new("same");
    let (v1_url, db) = setup.influx_v1_db();
    let vm = required_env("INFERMON_TEST_VM_URL");
    let sinks = format!(
        "[[influxdb]]\nname = \"victoria\"\nurl = {vm:?}\napi = \"v2\"\norg = \"infermon\"\nbucket = \"b{}\"\n\n\
         [[influxdb]]\nname = \"influx1\"\nurl = {v1_url:?}\napi = \"v1\"\ndb = {db:?}\n\n",
        setup.id
    );
    let config = setup.config("monitor.toml", &(sinks + &setup.monitor_toml("a")));
    let lines = recording_lines("latency-regression");
    let (expected, last) = expected_points(&setup, &config, &lines);
    assert!(expected.len() > 1000, "{} points", expected.len());

    setup.produce(&config, &lines);
    let monitor = Monitor::start(&config, setup.path("monitor.log"));
    monitor.wait_acked(last, Duration::from_secs(120));
    let consumed = monitor.metric("infermon_consumed_messages_total", &[]);
    let windows = monitor.metric("infermon_windows_emitted_total", &[]);
    let alerts_fired = monitor.metric(
        "infermon_alert_notifications_total",
        &["alertname=\"latency_p99_regression\"", "status=\"firing\""],
    );
    let status = monitor.terminate();
    assert!(status.success(), "monitor exited with {status}");

    // Predictions and feedback were consumed (requests are not monitored).
    let events = lines
        .iter()
        .filter(|l| !l.contains("\"inference.requests\""))
        .count();
    assert_eq!(consumed as usize, events);
    assert!(windows >= 59.0, "{windows} windows");
    assert_eq!(alerts_fired, 1.0, "the documented incident fires once");

    assert_influx_v1_matches(&v1_url, &db, &expected, "InfluxDB 1.6 (v1 API)");

    // VictoriaMetrics stores `<measurement>_<field>{tags}`, booleans as 1/0,
    // and keeps 12 significant decimal digits of a float.
    let from = expected.iter().map(|l| l.ts_ns).min().unwrap() / 1_000_000;
    let to = expected.iter().map(|l| l.ts_ns).max().unwrap() / 1_000_000;
    let mut got: BTreeMap<PointKey, f64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let numeric_fields: usize = expected.iter().map(|l| l.fields.len()).sum();
    while got.len() < numeric_fields && Instant::now() < deadline {
        got.clear();
        let body = ureq::post(&format!("{vm}/api/v1/export"))
            .send_form(&[
                (
                    "match[]",
                    "{__name__=~\"(latency|throughput|drift|quality)_.*\"}",
                ),
                ("start", &(from / 1000).to_string()),
                ("end", &(to / 1000 + 1).to_string()),
            ])
            .unwrap()
            .into_string()
            .unwrap();
        for l in body.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            let mut labels: Vec<(String, String)> = v["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            labels.sort();
            let name = labels
                .iter()
                .find(|(k, _)| k == "__name__")
                .unwrap()
                .1
                .clone();
            labels.retain(|(k, _)| k != "__name__");
            for (ts, value) in v["timestamps"]
                .as_array()
                .unwrap()
                .iter()
                .zip(v["values"].as_array().unwrap())
            {
                got.insert(
                    (name.clone(), labels.clone(), ts.as_i64().unwrap()),
                    value.as_f64().unwrap(),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut differ = Vec::new();
    for l in &expected {
        let (m, tags, ts) = key(l);
        for (f, v) in &l.fields {
            let want = match typed(v) {
                Value::Bool(b) => f64::from(u8::from(b)),
                other => other.as_f64().unwrap(),
            };
            let k = (format!("{m}_{f}"), tags.clone(), ts / 1_000_000);
            match got.get(&k) {
                Some(g) if *g == want || (g - want).abs() <= 1e-11 * want.abs() => {}
                g => differ.push(format!("{k:?}: offline {want}, victoria {g:?}")),
            }
        }
    }
    assert!(
        differ.is_empty(),
        "VictoriaMetrics (v2 API): {} of {numeric_fields} values missing or different, e.g. {:#?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
}

fn v1_sink(url: &str, db: &str) -> String {
    format!(
        "[[influxdb]]\nname = \"influx1\"\nurl = {url:?}\napi = \"v1\"\ndb = {db:?}\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\n\n"
    )
}

#[test]
fn kill_9_mid_stream_and_restart_lose_and_change_no_window() {
    let setup = Setup::new("kill");
    let (url, db) = setup.influx_v1_db();
    let config = setup.config(
        "monitor.toml",
        &(v1_sink(&url, &db) + &setup.monitor_toml("a")),
    );
    let lines = recording_lines("error-burst");
    let (expected, last) = expected_points(&setup, &config, &lines);

    // The first half of the stream, and a monitor killed while it has
    // windows open and offsets pinned.
    let half = lines.len() / 2;
    setup.produce(&config, &lines[..half]);
    let monitor = Monitor::start(&config, setup.path("monitor-1.log"));
    let some = first_ts(&lines) + 15 * 60_000;
    monitor.wait_committed(some, Duration::from_secs(90));
    monitor.kill9();

    // The rest arrives while it is down; the restart resumes from the
    // committed offsets and skips the windows already written.
    setup.produce(&config, &lines[half..]);
    let monitor = Monitor::start(&config, setup.path("monitor-2.log"));
    monitor.wait_acked(last, Duration::from_secs(120));
    let consumed = monitor.metric("infermon_consumed_messages_total", &[]);
    let log = monitor.log_text();
    assert!(monitor.terminate().success());
    let events = lines
        .iter()
        .filter(|l| !l.contains("\"inference.requests\""))
        .count();
    assert!(
        (consumed as usize) < events,
        "the restart re-read everything ({consumed} of {events}): offsets were not committed"
    );
    assert!(
        log.contains("floors={(\""),
        "the restart found no committed watermark:\n{}",
        tail(&log, 20)
    );
    assert_influx_v1_matches(&url, &db, &expected, "after kill -9 and restart");
}

/// A private VictoriaMetrics the test can stop and start.
struct Victoria {
    process: Option<Process>,
    port: u16,
    dir: PathBuf,
}

impl Victoria {
    fn start(port: u16, dir: PathBuf) -> Self {
        let mut v = Self {
            process: None,
            port,
            dir,
        };
        v.up();
        v
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let mut process = Process::spawn(
            "victoria-metrics",
            Command::new("/usr/bin/victoria-metrics")
                .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                .arg(format!("-storageDataPath={}", self.dir.display()))
                .args([
                    "-retentionPeriod=100y",
                    "-search.latencyOffset=0s",
                    "-search.disableCache",
                ])
                .stderr(Stdio::null()),
            None,
        );
        process.wait_ready(&format!("{}/health", self.url()), Duration::from_secs(30));
        self.process = Some(process);
    }

    /// Stop it (SIGTERM, which persists what it acknowledged; SIGKILL
    /// loses its last seconds of writes) and wait until it is gone: from
    /// then on connections are refused.
    fn down(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
        }
    }

    /// Samples per metric name.
    fn counts(&self, from_ms: i64, to_ms: i64) -> BTreeMap<String, usize> {
        ureq::post(&format!("{}/internal/force_flush", self.url()))
            .call()
            .ok();
        let body = ureq::post(&format!("{}/api/v1/export", self.url()))
            .send_form(&[
                ("match[]", "{__name__=~\".+\"}"),
                ("start", &(from_ms / 1000).to_string()),
                ("end", &(to_ms / 1000 + 1).to_string()),
            ])
            .unwrap()
            .into_string()
            .unwrap();
        let mut out = BTreeMap::new();
        for l in body.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            let name = v["metric"]["__name__"].as_str().unwrap().to_string();
            *out.entry(name).or_default() += v["values"].as_array().unwrap().len();
        }
        out
    }
}

#[test]
fn influxdb_outage_spools_pauses_and_then_delivers_every_point() {
    let setup = Setup::new("outage");
    let mut victoria = Victoria::start(free_port(), setup.path("victoria"));
    // A small spool, so the outage fills it and consumption pauses.
    let sink = format!(
        "[[influxdb]]\nname = \"victoria\"\nurl = {:?}\napi = \"v2\"\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\nspool_max_bytes = 100000\n\n",
        victoria.url()
    );
    let config = setup.config("monitor.toml", &(sink + &setup.monitor_toml("a")));
    let lines = recording_lines("input-shift");
    let (expected, last) = expected_points(&setup, &config, &lines);

    let half = lines.len() / 3;
    setup.produce(&config, &lines[..half]);
    let monitor = Monitor::start(&config, setup.path("monitor.log"));
    monitor.wait_acked(first_ts(&lines) + 10 * 60_000, Duration::from_secs(90));

    victoria.down();
    setup.produce(&config, &lines[half..]);
    monitor.wait_for(
        Duration::from_secs(90),
        "retries, a non-empty spool and backpressure",
        |m| {
            m.metric("infermon_sink_retries_total", &[]) > 0.0
                && m.metric("infermon_spool_bytes", &[]) > 0.0
                && m.metric("infermon_backpressure", &[]) == 1.0
        },
    );
    let (code, _) = monitor.get("/readyz").unwrap();
    assert_eq!(code, 503, "not ready while paused on a full spool");
    assert!(
        monitor.metric("infermon_acked_watermark_seconds", &[]) * 1000.0 < last as f64,
        "nothing can be acknowledged while the server is down"
    );

    victoria.up();
    monitor.wait_acked(last, Duration::from_secs(120));
    monitor.wait_for(Duration::from_secs(10), "an empty spool", |m| {
        m.metric("infermon_spool_bytes", &[]) == 0.0
    });
    assert_eq!(monitor.get("/readyz").unwrap().0, 200);
    assert!(monitor.terminate().success());

    // Every point arrived: samples per `<measurement>_<field>` as offline.
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for l in &expected {
        for (f, _) in &l.fields {
            *want.entry(format!("{}_{f}", l.measurement)).or_default() += 1;
        }
    }
    let from = expected.iter().map(|l| l.ts_ns).min().unwrap() / 1_000_000;
    let to = expected.iter().map(|l| l.ts_ns).max().unwrap() / 1_000_000;
    let mut got = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        got = victoria.counts(from, to);
        got.retain(|k, _| !k.starts_with("alerts_"));
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(got, want, "samples per measurement_field");
}

#[test]
fn two_monitors_share_the_partitions_and_one_killed_loses_nothing() {
    let setup = Setup::new("pair");
    let (url, db) = setup.influx_v1_db();
    // One references directory (same host), a spool each.
    let state = setup.path("shared-state");
    let instance = |name: &str| {
        let sink = v1_sink(&url, &db).replace(
            "\n\n",
            &format!(
                "\nspool_dir = {:?}\n\n",
                setup.path(&format!("spool-{name}"))
            ),
        );
        let mut toml = sink + &setup.monitor_toml(name);
        toml = toml.replace(
            &format!("state_dir = {:?}", setup.path(&format!("state-{name}"))),
            &format!("state_dir = {state:?}"),
        );
        setup.config(&format!("monitor-{name}.toml"), &toml)
    };
    let (config_a, config_b) = (instance("a"), instance("b"));
    let lines = recording_lines("feature-null");
    let (expected, last) = expected_points(&setup, &config_a, &lines);
    // Feedback is keyed by request_id, so labels and their predictions can
    // be read by different monitors: quality needs one monitor (README).
    let expected: Vec<Line> = expected
        .into_iter()
        .filter(|l| l.measurement != "quality")
        .collect();
    let last = last.min(expected.iter().map(|l| l.ts_ns / 1_000_000).max().unwrap());

    let a = Monitor::start(&config_a, setup.path("a.log"));
    let b = Monitor::start(&config_b, setup.path("b.log"));
    for m in [&a, &b] {
        m.wait_for(Duration::from_secs(60), "partitions", |m| {
            m.get("/readyz").is_some_and(|(c, _)| c == 200)
        });
    }
    let half = lines.len() / 2;
    setup.produce(&config_a, &lines[..half]);
    a.wait_for(Duration::from_secs(90), "a consuming", |m| {
        m.metric("infermon_consumed_messages_total", &[]) > 0.0
    });
    b.wait_for(Duration::from_secs(90), "b consuming", |m| {
        m.metric("infermon_consumed_messages_total", &[]) > 0.0
    });
    std::thread::sleep(Duration::from_secs(3));
    let full_before = full_assignments(&b);
    a.kill9();

    setup.produce(&config_a, &lines[half..]);
    b.wait_for(
        Duration::from_secs(120),
        "b to take over all 12 partitions",
        |m| full_assignments(m) > full_before,
    );
    b.wait_for(Duration::from_secs(60), "b consuming again", |m| {
        m.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    b.wait_acked(last, Duration::from_secs(120));
    assert!(b.terminate().success());
    assert_influx_v1_matches(&url, &db, &expected, "two monitors, one killed");
}

/// How often the monitor logged an assignment of all 12 test partitions.
fn full_assignments(m: &Monitor) -> usize {
    m.log_text()
        .lines()
        .filter(|l| l.contains("partitions assigned") && l.matches("(\"t").count() == 12)
        .count()
}

/// `[monitor] threads` spreads the window shards over threads: two
/// monitors (own consumer groups) reading the same topics with 1 and with 2
/// threads write the same points, byte for byte after sorting.
#[test]
fn a_monitor_with_two_threads_writes_what_one_thread_writes() {
    let setup = Setup::new("threads");
    let lines = recording_lines("input-shift");
    let base = setup.config("produce.toml", "");
    let (_, last) = expected_points(&setup, &base, &lines);
    setup.produce(&base, &lines);
    let mut outputs = Vec::new();
    for threads in [1, 2] {
        let extra = format!(
            "{}threads = {threads}\n",
            setup.monitor_toml(&format!("t{threads}"))
        );
        let config = setup.config(&format!("monitor-{threads}.toml"), &extra);
        // Each monitor reads everything: a consumer group of its own.
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("group_id = \"g{}\"", setup.id),
            &format!("group_id = \"g{}-t{threads}\"", setup.id),
        );
        std::fs::write(&config, text).unwrap();
        let monitor = Monitor::start(&config, setup.path(&format!("monitor-{threads}.log")));
        monitor.wait_acked(last, Duration::from_secs(120));
        assert!(monitor.terminate().success());
        let text = std::fs::read_to_string(setup.path(&format!("metrics-t{threads}.lp"))).unwrap();
        // Alert evaluations ride on whichever windows a poll closed
        // together; the points themselves must not differ.
        let mut written: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("alerts,"))
            .map(str::to_string)
            .collect();
        written.sort();
        outputs.push(written);
    }
    let expected_windows = outputs[0]
        .iter()
        .filter(|l| l.starts_with("throughput,"))
        .count();
    assert!(
        expected_windows > 50,
        "{expected_windows} throughput points"
    );
    assert!(outputs[0].iter().any(|l| l.starts_with("drift,")));
    assert!(outputs[0].iter().any(|l| l.starts_with("quality,")));
    assert_eq!(
        outputs[0].len(),
        outputs[1].len(),
        "as many points with 2 threads"
    );
    let differ: Vec<_> = outputs[0]
        .iter()
        .zip(&outputs[1])
        .filter(|(a, b)| a != b)
        .take(3)
        .collect();
    assert!(differ.is_empty(), "1 vs 2 threads: {differ:#?}");
}
