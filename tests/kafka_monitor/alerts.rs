//! Alerts from the monitor: webhooks through kill -9, a real Alertmanager routing, silencing and resolving.

use super::*;

/// `(alertname, status)` of each alert in every body the receiver took.
fn routed(log: &std::sync::Mutex<Vec<crate::webhook_delivery::Received>>) -> Vec<(String, String)> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["labels"]["alertname"].as_str().unwrap().to_string(),
                        a["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `(firing, resolved)` counts of `alertname` over every delivered body.
fn delivered(
    log: &std::sync::Mutex<Vec<crate::webhook_delivery::Received>>,
    alertname: &str,
) -> (usize, usize) {
    let alerts = routed(log);
    let count = |status: &str| {
        alerts
            .iter()
            .filter(|(a, s)| a == alertname && s == status)
            .count()
    };
    (count("firing"), count("resolved"))
}

/// The error-burst recording cut six minutes into its incident (the
/// documented one, recordings/incidents.json: 8 % errors on recsys-ranker
/// from 1763649360000 for 9 minutes).
fn error_burst_halves() -> (Vec<String>, usize) {
    let lines = recording_lines("error-burst");
    let incident_start = 1_763_649_360_000i64;
    let ts = |l: &String| {
        serde_json::from_str::<Value>(l).unwrap()["ts"]
            .as_i64()
            .unwrap()
    };
    let cut = lines
        .iter()
        .position(|l| ts(l) >= incident_start + 6 * 60_000)
        .unwrap();
    (lines, cut)
}

#[test]
fn kill_9_during_a_firing_incident_sends_one_firing_and_one_resolved() {
    let setup = Setup::new("alertkill");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = crate::webhook_delivery::receiver(listener, Vec::new());
    let webhook = format!(
        "[[alerts.webhooks]]\nname = \"oncall\"\nurl = \"http://{addr}/alerts\"\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\ntimeout = \"2s\"\n\n"
    );
    let config = setup.config("monitor.toml", &(webhook + &setup.monitor_toml("a")));
    let (lines, cut) = error_burst_halves();
    setup.produce(&config, &lines[..cut]);
    let monitor = Monitor::start(&config, setup.path("monitor-1.log"));
    monitor.wait_for(
        Duration::from_secs(120),
        "the firing at the receiver",
        |_| delivered(&received, "error_rate_high").0 >= 1,
    );
    monitor.kill9();

    // The incident ends while the monitor is down; the restart re-reads
    // from the committed offsets, windows of the firing included.
    setup.produce(&config, &lines[cut..]);
    let monitor = Monitor::start(&config, setup.path("monitor-2.log"));
    monitor.wait_for(
        Duration::from_secs(180),
        "the resolve at the receiver",
        |_| delivered(&received, "error_rate_high").1 >= 1,
    );
    let log = monitor.log_text();
    assert!(monitor.terminate().success());
    assert!(log.contains("alert state restored"), "{}", tail(&log, 20));
    assert_eq!(
        delivered(&received, "error_rate_high"),
        (1, 1),
        "one firing and one resolved, no more, no less"
    );
    // The alerts log holds the same story once.
    let journal = std::fs::read_to_string(setup.path("alerts-a.jsonl")).unwrap();
    let statuses: Vec<String> = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["labels"]["alertname"] == "error_rate_high")
        .map(|v| v["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"], "{journal}");
}

/// Wait until the receiver got `error_rate_high` with `status`.
fn wait_routed(
    log: &std::sync::Mutex<Vec<crate::webhook_delivery::Received>>,
    status: &str,
    timeout: Duration,
) {
    let want = ("error_rate_high".to_string(), status.to_string());
    let until = Instant::now() + timeout;
    while !routed(log).contains(&want) {
        assert!(
            Instant::now() < until,
            "no {status} routed: {:?}",
            routed(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn error_rate_high(alerts: &[Value]) -> Option<&Value> {
    alerts.iter().find(|a| {
        a["labels"]["alertname"] == "error_rate_high" && a["labels"]["model"] == "recsys-ranker"
    })
}

fn alertmanager_toml(am: &Alertmanager) -> String {
    format!(
        "[[alerts.alertmanagers]]\nname = \"sre\"\nurls = [{:?}]\nresend_delay = \"1s\"\ngenerator_url = \"https://grafana.example/d/infermon?var-model={{model}}\"\ninitial_backoff = \"100ms\"\n\n",
        am.url
    )
}

#[test]
fn alerts_go_to_a_real_alertmanager_which_routes_silences_and_resolves_them() {
    let setup = Setup::new("am");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let received = crate::webhook_delivery::receiver(listener.try_clone().unwrap(), Vec::new());
    let am = Alertmanager::start(
        setup.dir.path(),
        &format!("url: http://{}/alerts", listener.local_addr().unwrap()),
    );
    let config = setup.config(
        "monitor.toml",
        &(alertmanager_toml(&am) + &setup.monitor_toml("a")),
    );
    let (lines, cut) = error_burst_halves();
    setup.produce(&config, &lines[..cut]);
    let monitor = Monitor::start(&config, setup.path("monitor.log"));

    // Alertmanager holds the alert with infermon's labels and annotations.
    let alerts = am.wait_for("active error_rate_high", Duration::from_secs(120), |a| {
        error_rate_high(a).is_some_and(|a| a["status"]["state"] == "active")
    });
    let alert = error_rate_high(&alerts).unwrap();
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["model_version"], "7");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("recsys-ranker"),
        "{alert}"
    );
    assert_eq!(alert["startsAt"], "2025-11-20T14:37:00.000Z", "{alert}");
    assert_eq!(
        alert["generatorURL"],
        "https://grafana.example/d/infermon?var-model=recsys-ranker"
    );
    // ...and routes it (its own grouping) to the receiver.
    wait_routed(&received, "firing", Duration::from_secs(30));

    // A silence made through Alertmanager's API mutes it; deleting it
    // brings it back.
    let silence = serde_json::json!({
        "matchers": [{"name": "alertname", "value": "error_rate_high", "isRegex": false, "isEqual": true}],
        "startsAt": "2020-01-01T00:00:00Z", "endsAt": "2099-01-01T00:00:00Z",
        "createdBy": "test", "comment": "maintenance"
    });
    let created: Value = serde_json::from_str(
        &ureq::post(&format!("{}/api/v2/silences", am.url))
            .set("Content-Type", "application/json")
            .send_string(&silence.to_string())
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let id = created["silenceID"].as_str().unwrap().to_string();
    am.wait_for("suppressed alert", Duration::from_secs(20), |a| {
        error_rate_high(a).is_some_and(|a| {
            a["status"]["state"] == "suppressed" && a["status"]["silencedBy"][0] == id.as_str()
        })
    });
    ureq::delete(&format!("{}/api/v2/silence/{id}", am.url))
        .call()
        .unwrap();
    am.wait_for("active alert again", Duration::from_secs(20), |a| {
        error_rate_high(a).is_some_and(|a| a["status"]["state"] == "active")
    });

    // A restart (a deploy) while it fires: the restarted monitor goes on
    // re-sending it, so Alertmanager never lets it expire (endsAt is 4 s
    // ahead; wait past that).
    assert!(monitor.terminate().success());
    let monitor = Monitor::start(&config, setup.path("monitor-2.log"));
    std::thread::sleep(Duration::from_secs(6));
    let alerts = am.alerts();
    let alert = error_rate_high(&alerts).expect("still held by Alertmanager after the restart");
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(
        routed(&received)
            .iter()
            .filter(|(a, s)| a == "error_rate_high" && s == "resolved")
            .count(),
        0,
        "nothing resolved it during the restart"
    );

    // The incident ends: infermon resolves it, Alertmanager tells the receiver.
    setup.produce(&config, &lines[cut..]);
    wait_routed(&received, "resolved", Duration::from_secs(120));
    assert!(
        error_rate_high(&am.alerts()).is_none(),
        "resolved alerts leave Alertmanager's list"
    );
    assert!(monitor.terminate().success());
}

#[test]
fn alertmanager_resolves_the_alerts_of_a_killed_monitor_at_their_ends_at() {
    let setup = Setup::new("amkill");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let received = crate::webhook_delivery::receiver(listener.try_clone().unwrap(), Vec::new());
    let am = Alertmanager::start(
        setup.dir.path(),
        &format!("url: http://{}/alerts", listener.local_addr().unwrap()),
    );
    // Two members of one HA cluster (not peered here): each gets every alert.
    let other = tempfile::tempdir().unwrap();
    let am2 = Alertmanager::start(
        other.path(),
        &format!("url: http://{}/alerts", listener.local_addr().unwrap()),
    );
    let toml = alertmanager_toml(&am).replace(
        &format!("urls = [{:?}]", am.url),
        &format!("urls = [{:?}, {:?}]", am.url, am2.url),
    );
    assert!(toml.contains(&am2.url), "{toml}");
    let config = setup.config("monitor.toml", &(toml + &setup.monitor_toml("a")));
    let (lines, cut) = error_burst_halves();
    setup.produce(&config, &lines[..cut]);
    let monitor = Monitor::start(&config, setup.path("monitor.log"));
    let alerts = am.wait_for("active error_rate_high", Duration::from_secs(120), |a| {
        error_rate_high(a).is_some_and(|a| a["status"]["state"] == "active")
    });
    // Re-sent every second, so endsAt stays about four seconds ahead.
    let ends_at = error_rate_high(&alerts).unwrap()["endsAt"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_secs(3));
    let later = am.alerts();
    assert!(
        error_rate_high(&later).unwrap()["endsAt"].as_str().unwrap() > ends_at.as_str(),
        "not re-sent: {ends_at} then {later:#?}"
    );
    am2.wait_for(
        "the alert on the second member",
        Duration::from_secs(30),
        |a| error_rate_high(a).is_some_and(|a| a["status"]["state"] == "active"),
    );
    monitor.kill9();
    // The last endsAt Alertmanager got (re-sent every second until the kill).
    let last = am.alerts();
    let last_ends_at = error_rate_high(&last).unwrap()["endsAt"]
        .as_str()
        .unwrap()
        .to_string();
    am.wait_for(
        "the alert gone after its endsAt",
        Duration::from_secs(60),
        |a| error_rate_high(a).is_none(),
    );
    let ends_at = humantime::parse_rfc3339_weak(&last_ends_at).unwrap();
    assert!(
        std::time::SystemTime::now() >= ends_at,
        "resolved before its endsAt {last_ends_at}"
    );
    wait_routed(&received, "resolved", Duration::from_secs(30));
}
