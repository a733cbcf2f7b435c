//! The scale-out: predictions keyed by `request_id` on a 12-partition
//! topic (co-partitioned with feedback), read by 3 partial monitors (one
//! consumer group) that publish each partition's closed windows, and 1
//! merge stage that adds them up and is the only writer. Its points equal
//! the offline replay's; a partial monitor or the merge stage killed with
//! SIGKILL and restarted loses and double-counts no window.

use super::*;
use crate::kafka_monitor::points::assert_influx_v1_matches;

const PARTITIONS: i32 = 12;

/// A 12-partition setup whose producers key predictions by request id.
fn setup(name: &str) -> Setup {
    let mut s = Setup::with_partitions(name, PARTITIONS);
    s.topics_extra = "prediction_key = \"request_id\"\n".into();
    s
}

/// Drift references given by file (the scale-out never freezes one from a
/// partition's share): per model, its first 2,000 recorded predictions.
fn reference_files(setup: &Setup, lines: &[String]) -> String {
    let mut by_model: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["topic"] == "inference.predictions" {
            let model = v["model"].as_str().unwrap().to_string();
            let refs = by_model.entry(model).or_default();
            if refs.len() < 2_000 {
                refs.push(l);
            }
        }
    }
    let mut toml = String::from("[drift.reference_files]\n");
    for (model, refs) in by_model {
        let path = setup.path(&format!("reference-{model}.jsonl"));
        let refs: Vec<String> = refs.into_iter().cloned().collect();
        std::fs::write(&path, setup.relabel(&refs)).unwrap();
        toml.push_str(&format!("{model:?} = {path:?}\n"));
    }
    toml
}

/// The role's config: its own group (partials share one), port and files.
fn role_config(setup: &Setup, base: &str, role: &str, instance: &str) -> PathBuf {
    let extra = format!(
        "{base}{}role = \"{role}\"\nthreads = 1\n",
        setup.monitor_toml(instance)
    );
    let config = setup.config(&format!("{instance}.toml"), &extra);
    let group = match role {
        "merge" => format!("g{}-merge", setup.id),
        _ => format!("g{}-partial", setup.id),
    };
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("group_id = \"g{}\"", setup.id),
        &format!("group_id = {group:?}"),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The final watermark of the scale-out once every message is read: each
/// source partition closes windows up to its own newest event time minus
/// the lateness, and the merge waits for the slowest. Read back from the
/// topics (the producer's partitioner decides where each event went).
fn final_watermark(setup: &Setup, events: usize) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", format!("maxts-{}", setup.id))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topics = ["predictions", "feedback", "training"].map(|t| setup.topics[t].as_str());
    consumer.subscribe(&topics).unwrap();
    let mut max: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut n, until) = (0, Instant::now() + Duration::from_secs(60));
    while n < events && Instant::now() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.unwrap();
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let ts = v["ts"].as_i64().unwrap();
            let e = max.entry(m.partition()).or_insert(ts);
            *e = (*e).max(ts);
            n += 1;
        }
    }
    assert_eq!(n, events, "every produced event read back");
    assert_eq!(max.len(), PARTITIONS as usize, "every partition has data");
    max.values().min().unwrap() - LATENESS_MS
}

/// Firing notifications per alert name in an offline metrics file, up to
/// `watermark`.
fn offline_firing(setup: &Setup, watermark: i64) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(setup.path("offline.lp")).unwrap();
    let mut out = BTreeMap::new();
    for l in parse_lines(&text) {
        if l.measurement == "alerts"
            && l.fields
                .iter()
                .any(|(k, v)| k == "state" && v == "\"firing\"")
            && l.ts_ns / 1_000_000 <= watermark
        {
            *out.entry(l.tag("alertname").unwrap().to_string())
                .or_default() += 1;
        }
    }
    out
}

struct Stage {
    config: PathBuf,
    monitor: Option<Monitor>,
    runs: usize,
}

impl Stage {
    fn new(setup: &Setup, base: &str, role: &str, instance: &str) -> Self {
        Self {
            config: role_config(setup, base, role, instance),
            monitor: None,
            runs: 0,
        }
    }

    fn start(&mut self, setup: &Setup) {
        self.runs += 1;
        let name = self
            .config
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let log = setup.path(&format!("{name}-{}.log", self.runs));
        self.monitor = Some(Monitor::start(&self.config, log));
    }

    fn get(&self) -> &Monitor {
        self.monitor.as_ref().unwrap()
    }
}

/// What one scale-out run checks: the merge stage wrote the offline
/// replay's points up to the final watermark, and fired what it fired.
struct Run {
    setup: Setup,
    url: String,
    db: String,
    lines: Vec<String>,
    base: String,
}

impl Run {
    fn new(name: &str, lines: Vec<String>) -> Self {
        let setup = setup(name);
        let (url, db) = setup.influx_v1_db();
        let base = format!(
            "[[influxdb]]\nname = \"influx1\"\nurl = {url:?}\napi = \"v1\"\ndb = {db:?}\nlinger = \"100ms\"\n\n{}",
            reference_files(&setup, &lines)
        );
        Self {
            setup,
            url,
            db,
            lines,
            base,
        }
    }

    fn stage(&self, role: &str, instance: &str) -> Stage {
        Stage::new(&self.setup, &self.base, role, instance)
    }

    fn events(&self, lines: &[String]) -> usize {
        lines
            .iter()
            .filter(|l| !l.contains("\"inference.requests\""))
            .count()
    }

    /// The offline points up to the final watermark, the newest watermark
    /// the merge must acknowledge, and the final watermark.
    fn expected(&self, config: &Path) -> (Vec<Line>, i64, i64) {
        let watermark = final_watermark(&self.setup, self.events(&self.lines));
        let (expected, last) = expected_points_until(&self.setup, config, &self.lines, watermark);
        (expected, last, watermark)
    }
}

const RECORDINGS: [&str; 5] = [
    "latency-regression",
    "error-burst",
    "input-shift",
    "feature-null",
    "gradient-explosion",
];

/// 3 partial monitors and `merges` merge stages (one group; the partials
/// topic then has 4 partitions, keyed by model) over `lines`: together the
/// merge stages write the offline replay's points (each of `measurements`
/// among them) and fire what it fires, nothing else.
fn golden(name: &str, lines: Vec<String>, measurements: &[&str], merges: usize) {
    let mut run = Run::new(name, lines);
    if merges > 1 {
        let topic = format!("{}4", run.setup.topics["partials"]);
        create_topics(&run.setup.brokers, &[(topic.as_str(), 4)]);
        run.setup.topics.insert("partials", topic);
    }
    let mut stages: Vec<Stage> = (0..merges)
        .map(|i| run.stage("merge", &format!("merge{i}")))
        .collect();
    let mut partials: Vec<Stage> = (0..3)
        .map(|i| run.stage("partial", &format!("partial{i}")))
        .collect();
    run.setup.produce(&stages[0].config, &run.lines);
    let (expected, last, watermark) = run.expected(&stages[0].config);
    assert!(expected.len() > 300, "{name}: {} points", expected.len());
    for m in measurements {
        assert!(
            expected.iter().any(|l| l.measurement == *m),
            "{name}: the offline replay has no {m} points"
        );
    }
    for m in &mut stages {
        m.start(&run.setup);
    }
    for p in &mut partials {
        p.start(&run.setup);
    }
    for m in &stages {
        m.get().wait_acked(last, Duration::from_secs(240));
    }
    let firing = offline_firing(&run.setup, watermark);
    assert!(!firing.is_empty(), "{name}: no documented alert");
    let fired = |labels: &[&str]| -> f64 {
        stages
            .iter()
            .map(|m| m.get().metric("infermon_alert_notifications_total", labels))
            .sum()
    };
    for (alertname, n) in &firing {
        let got = fired(&[&format!("alertname=\"{alertname}\""), "status=\"firing\""]);
        assert_eq!(
            got as usize, *n,
            "{name}: {alertname} fired {got} times, offline {n}"
        );
    }
    let all = fired(&["status=\"firing\""]);
    assert_eq!(
        all as usize,
        firing.values().sum::<usize>(),
        "{name}: nothing else fires"
    );
    for p in partials {
        assert!(p.monitor.unwrap().terminate().success());
    }
    for m in stages {
        assert!(m.monitor.unwrap().terminate().success());
    }
    assert_influx_v1_matches(
        &run.url,
        &run.db,
        &expected,
        &format!("{name}: 3 partial monitors + {merges} merge stage(s)"),
    );
}

#[test]
fn three_partial_monitors_and_a_merge_stage_write_what_the_offline_replay_writes() {
    // All bundled recordings in one stream. Each numbers its requests from
    // 1: the ids get the recording's name, as real ids are unique.
    let lines: Vec<String> = RECORDINGS
        .iter()
        .flat_map(|r| {
            recording_lines(r).into_iter().map(move |l| {
                let mut v: Value = serde_json::from_str(&l).unwrap();
                if let Some(id) = v["request_id"].as_str() {
                    v["request_id"] = Value::String(format!("{r}-{id}"));
                }
                v.to_string()
            })
        })
        .collect();
    let all = ["latency", "throughput", "drift", "quality", "gradients"];
    golden("scale", lines.clone(), &all, 1);
    // Two merge stages in one group split the partials topic's partitions:
    // each owns whole models, and between them nothing is missing.
    golden("scale2", lines, &all, 2);
}

#[test]
fn each_bundled_recording_alone_through_the_scale_out_equals_the_offline_replay() {
    for r in RECORDINGS {
        let name = format!("scale-{}", r.split('-').next().unwrap());
        golden(&name, recording_lines(r), &["latency", "throughput"], 1);
    }
}

/// Half the stream, a stage killed with SIGKILL once some windows are
/// written, the rest of the stream, the stage restarted: the points equal
/// the offline replay's (none missing, none counted twice).
fn kill_9_and_restart(name: &str, victim: &str) {
    let run = Run::new(name, recording_lines("error-burst"));
    let mut merge = run.stage("merge", "merge");
    let mut partials: Vec<Stage> = (0..3)
        .map(|i| run.stage("partial", &format!("partial{i}")))
        .collect();
    let half = run.lines.len() / 2;
    run.setup.produce(&merge.config, &run.lines[..half]);
    merge.start(&run.setup);
    for p in &mut partials {
        p.start(&run.setup);
    }
    let some = first_ts(&run.lines) + 15 * 60_000;
    merge.get().wait_committed(some, Duration::from_secs(120));
    let stage = match victim {
        "merge" => &mut merge,
        _ => &mut partials[1],
    };
    stage.monitor.take().unwrap().kill9();
    run.setup.produce(&merge.config, &run.lines[half..]);
    let stage = match victim {
        "merge" => &mut merge,
        _ => &mut partials[1],
    };
    stage.start(&run.setup);
    let (expected, last, _) = run.expected(&merge.config);
    merge.get().wait_acked(last, Duration::from_secs(240));
    // The restarted stage went on from what was committed, not from the
    // start.
    let log = match victim {
        "merge" => merge.get().log_text(),
        _ => partials[1].get().log_text(),
    };
    let resumed = match victim {
        "merge" => {
            log.contains("merge state rebuilt") && !log.contains("floor=-9223372036854775808")
        }
        _ => log.contains("floors={(\""),
    };
    assert!(
        resumed,
        "the restarted {victim} found no committed watermark:\n{}",
        tail(&log, 20)
    );
    for p in partials {
        assert!(p.monitor.unwrap().terminate().success());
    }
    assert!(merge.monitor.take().unwrap().terminate().success());
    assert_influx_v1_matches(
        &run.url,
        &run.db,
        &expected,
        &format!("after kill -9 of the {victim} and a restart"),
    );
}

#[test]
fn a_partial_monitor_killed_and_restarted_loses_and_doubles_no_window() {
    kill_9_and_restart("killpartial", "partial");
}

#[test]
fn the_merge_stage_killed_and_restarted_loses_and_doubles_no_window() {
    kill_9_and_restart("killmerge", "merge");
}

/// Partials carry window state, not rows: a custom SQL metric cannot run
/// in the scale-out, and each stage says so at start-up, naming it.
#[test]
fn a_custom_sql_metric_is_refused_by_both_stages_naming_it() {
    let setup = setup("sqlrefused");
    let sql = "[[sql_metrics]]\nmeasurement = \"score_by_site\"\nquery = \"SELECT model, avg(score) AS mean_score FROM window GROUP BY model\"\n\n";
    for role in ["partial", "merge"] {
        let config = role_config(&setup, sql, role, role);
        let out = infermon()
            .arg("--config")
            .arg(&config)
            .arg("monitor")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role} started with a SQL metric");
        assert!(
            stderr.contains("\"score_by_site\"") && stderr.contains("scale-out"),
            "{role}: {stderr}"
        );
    }
}
