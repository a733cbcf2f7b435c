//! The Grafana dashboards of `deploy/grafana/` against real data: the
//! bundled recordings replayed into InfluxDB 1.6, every template variable
//! expanded with what its own query returns, every panel query run as
//! Grafana would send it. And they only name what the README documents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::support::{infermon, influx_query, recordings, repo, required_env, run_ok, unique_id};

const INFLUX_UID: &str = "infermon-influxdb";
const PROM_UID: &str = "infermon-prometheus";
/// The segment keys the replay runs with, so the segment panels have data.
const SEGMENT_KEYS: [&str; 2] = ["site", "surface"];

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut v: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// measurement → documented tags and fields, from the README's table of
/// measurements (section "The contract").
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let contract = &readme[readme
        .find("## The contract")
        .expect("README: The contract")..];
    let contract = &contract[..contract[3..]
        .find("\n## ")
        .map_or(contract.len(), |i| i + 3)];
    let mut m = BTreeMap::new();
    for line in contract.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let names = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let measurement = names(cells[1]).remove(0);
        let mut known: BTreeSet<String> = names(cells[2]).into_iter().collect();
        known.extend(names(cells[3]));
        m.insert(measurement, known);
    }
    assert!(
        [
            "latency",
            "throughput",
            "drift",
            "quality",
            "gradients",
            "alerts"
        ]
        .iter()
        .all(|k| m.contains_key(*k)),
        "README's table of measurements: {m:?}"
    );
    m
}

/// A regex alternation matching exactly `values` (Grafana's expansion of a
/// multi-value variable inside `/^$var$/`).
fn alternation(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .flat_map(|c| {
                    let special = "\\.+*?()|[]{}^$/".contains(c);
                    special.then_some('\\').into_iter().chain([c])
                })
                .collect()
        })
        .collect();
    format!("({})", escaped.join("|"))
}

/// `query` with Grafana's macros and the variables' values.
fn expand(query: &str, vars: &[(String, String)], time_filter: &str) -> String {
    let mut q = query
        .replace("$timeFilter", time_filter)
        .replace("$__interval_ms", "60000")
        .replace("$__interval", "1m");
    // Longest names first, so `$model` does not eat `$model_version`.
    let mut sorted: Vec<&(String, String)> = vars.iter().collect();
    sorted.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in sorted {
        q = q
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    // A `$` left is the regex anchor of `/^...$/`, never a name.
    let unexpanded = q.match_indices('$').any(|(i, _)| {
        q[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '{')
    });
    assert!(!unexpanded, "unexpanded variable or macro in {q}");
    q
}

/// Rows of an InfluxQL answer; an error fails with the query.
fn rows(base: &str, db: &str, q: &str) -> Vec<Vec<Value>> {
    let v = influx_query(base, db, q);
    let result = &v["results"][0];
    assert!(
        result.get("error").is_none() && v.get("error").is_none(),
        "InfluxDB refused {q}: {v}"
    );
    result["series"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                .map(|r| r.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// The double-quoted identifiers of an InfluxQL query: measurement after
/// `FROM`, tags and fields elsewhere.
fn identifiers(q: &str) -> (Option<String>, Vec<String>) {
    let quoted: Vec<String> = q
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    let measurement = q
        .find("FROM \"")
        .map(|i| q[i + 6..].split('"').next().unwrap().to_string());
    let rest = quoted
        .into_iter()
        .filter(|n| Some(n) != measurement.as_ref())
        .collect();
    (measurement, rest)
}

fn check_documented(
    q: &str,
    documented: &BTreeMap<String, BTreeSet<String>>,
    problems: &mut Vec<String>,
) {
    let (measurement, names) = identifiers(q);
    let Some(measurement) = measurement else {
        problems.push(format!("no FROM \"measurement\" in {q}"));
        return;
    };
    let Some(known) = documented.get(&measurement) else {
        problems.push(format!("undocumented measurement {measurement:?} in {q}"));
        return;
    };
    for n in names {
        let segment_tag = SEGMENT_KEYS.contains(&n.as_str())
            && ["latency", "throughput"].contains(&measurement.as_str());
        if !known.contains(&n) && !segment_tag {
            problems.push(format!("{measurement}: undocumented {n:?} in {q}"));
        }
    }
}

/// Replay the bundled recordings and a ranked canary into a fresh
/// database; (start, end) of the data in ms.
fn replay_into(base: &str, db: &str, dir: &std::path::Path) -> (i64, i64) {
    influx_query(base, "", &format!("CREATE DATABASE \"{db}\""));
    let config = dir.join("influx.toml");
    std::fs::write(
        &config,
        format!(
            "[window]\nsegment_keys = {SEGMENT_KEYS:?}\n\
             [[influxdb]]\nname = \"influx16\"\napi = \"v1\"\nurl = {base:?}\ndb = {db:?}\n\
             linger = \"50ms\"\n[monitor]\nstate_dir = {:?}\nrejects_out = {:?}\n",
            dir.join("state"),
            dir.join("rejects.jsonl"),
        ),
    )
    .unwrap();
    // Ranked lists with a canary (ranking, position_ctr, comparison), half
    // an hour right after the bundled recordings.
    let ranked = dir.join("ranked-canary.jsonl");
    run_ok(
        infermon()
            .args([
                "generate",
                "--scenario",
                "ranked-canary",
                "--duration",
                "30m",
                "--out",
            ])
            .arg(&ranked),
    );
    run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet", "--influxdb"])
            .args(recordings())
            .arg(&ranked)
            .arg("--alerts-out")
            .arg(dir.join("alerts.jsonl")),
    );
    let time = |f: &str| -> i64 {
        let r = rows(
            base,
            db,
            &format!("SELECT {f}(\"requests\") FROM \"throughput\""),
        );
        r[0][0].as_i64().unwrap() / 1_000_000
    };
    (time("first"), time("last"))
}

#[test]
fn every_dashboard_panel_query_returns_data_from_a_replay_in_influxdb_1_6() {
    let base = required_env("INFERMON_TEST_INFLUXDB_V1_URL");
    let db = unique_id("grafana").replace(['-', '.'], "_");
    let dir = tempfile::tempdir().unwrap();
    let (start, end) = replay_into(&base, &db, dir.path());
    // As Grafana sends it: a range covering the data.
    let time_filter = format!(
        "time >= {}ms and time <= {}ms",
        start - 60_000,
        end + 60_000
    );
    let documented = documented();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut problems: Vec<String> = Vec::new();
    let (mut queries_run, mut prom_queries) = (0, 0);
    let all = dashboards();
    assert_eq!(all.len(), 5, "models, drift, quality, training, health");

    for (file, d) in &all {
        let mut vars: Vec<(String, String)> = Vec::new();
        for v in d["templating"]["list"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap().to_string();
            let query = v["query"].as_str().unwrap();
            match v["datasource"]["uid"].as_str() {
                Some(INFLUX_UID) => {
                    let q = expand(query, &vars, &time_filter);
                    check_documented(&q, &documented, &mut problems);
                    let values: Vec<String> = rows(&base, &db, &q)
                        .into_iter()
                        .filter_map(|r| r.get(1).and_then(Value::as_str).map(str::to_string))
                        .collect();
                    assert!(
                        !values.is_empty(),
                        "{file}: variable {name}: {q} returned nothing"
                    );
                    queries_run += 1;
                    let value = if v["multi"].as_bool() == Some(true) {
                        alternation(&values)
                    } else {
                        values[0].clone()
                    };
                    println!("{file}: ${name} = {value}");
                    vars.push((name, value));
                }
                Some(PROM_UID) => {
                    prom_queries += 1;
                    vars.push((name, ".*".into()));
                }
                other => panic!("{file}: variable {name}: unknown datasource {other:?}"),
            }
        }
        let mut queries: Vec<(String, String, &str)> = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let uid = t["datasource"]["uid"]
                    .as_str()
                    .or(p["datasource"]["uid"].as_str());
                match uid {
                    Some(INFLUX_UID) => {
                        queries.push((title.clone(), t["query"].as_str().unwrap().to_string(), ""))
                    }
                    Some(PROM_UID) => {
                        let expr = t["expr"].as_str().unwrap();
                        prom_queries += 1;
                        for metric in expr
                            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .filter(|w| w.starts_with("infermon_"))
                        {
                            if !readme.contains(&format!("`{metric}")) {
                                problems.push(format!(
                                    "{file}: {title}: metric {metric} is not in the README"
                                ));
                            }
                        }
                    }
                    other => panic!("{file}: {title}: unknown datasource {other:?}"),
                }
            }
        }
        for a in d["annotations"]["list"].as_array().unwrap() {
            if a["datasource"]["uid"].as_str() == Some(INFLUX_UID) {
                let name = a["name"].as_str().unwrap().to_string();
                queries.push((name, a["query"].as_str().unwrap().to_string(), "annotation"));
            }
        }
        for (title, query, what) in queries {
            let q = expand(&query, &vars, &time_filter);
            check_documented(&q, &documented, &mut problems);
            let rows = rows(&base, &db, &q);
            queries_run += 1;
            // Some value beside the time column: a series of nulls is empty too.
            let values = rows
                .iter()
                .filter(|r| r.iter().skip(1).any(|v| !v.is_null()))
                .count();
            if values == 0 {
                problems.push(format!("{file}: {what} {title:?} returned no data: {q}"));
            } else {
                println!("{file}: {title}: {values} rows");
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(queries_run >= 50, "{queries_run} InfluxQL queries run");
    assert!(
        prom_queries >= 15,
        "{prom_queries} Prometheus queries checked"
    );
    println!(
        "{queries_run} InfluxQL queries returned data; {prom_queries} Prometheus queries name documented metrics"
    );
}

#[test]
fn the_provisioning_files_define_the_datasources_and_the_dashboard_folder_the_dashboards_use() {
    let dir: PathBuf = repo().join("deploy/grafana/provisioning");
    let ds = std::fs::read_to_string(dir.join("datasources/infermon.yml")).unwrap();
    for needle in [
        "apiVersion: 1",
        &format!("uid: {INFLUX_UID}"),
        "type: influxdb",
        &format!("uid: {PROM_UID}"),
        "type: prometheus",
    ] {
        assert!(
            ds.contains(needle),
            "datasources/infermon.yml lacks {needle:?}"
        );
    }
    let provider = std::fs::read_to_string(dir.join("dashboards/infermon.yml")).unwrap();
    assert!(
        provider.contains("type: file") && provider.contains("path: "),
        "{provider}"
    );
    let mut uids = BTreeSet::new();
    for (file, d) in dashboards() {
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        assert!(
            d["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("infermon")),
            "{file}"
        );
        let panels = d["panels"].as_array().unwrap();
        let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "{file}: panel ids unique");
    }
}
