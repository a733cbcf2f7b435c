//! The HTML report (`replay --report`, `infermon report`) in a real
//! headless Chromium: it loads with no console messages, each incident of
//! the bundled recordings has its chart with its alert span, the input
//! shift names its feature first, and a day of traffic stays small and fast.
//!
//! Screenshots are kept in the temp folder and their paths printed;
//! `INFERMON_REPORT_SCREENSHOT_TO=FILE` copies the bundled recordings' one
//! there (how `docs/report.png` is made).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::support::{infermon, recordings, repo, run_ok};

/// Debian's `chromium` (installed by `.ci/run`), or `INFERMON_CHROMIUM`.
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("INFERMON_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "chromium is not installed: `bash .ci/run` installs it (apt-get install -y chromium), \
         or set INFERMON_CHROMIUM to a Chromium binary"
    );
}

/// What Chromium made of a page.
struct Loaded {
    /// The DOM after the load event.
    dom: String,
    /// Console messages (`CONSOLE` lines of Chromium's log).
    console: Vec<String>,
}

fn headless(profile: &Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// Load `page` and dump its DOM, collecting console messages.
fn load(page: &Path, profile: &Path) -> Loaded {
    let out = headless(profile)
        .arg("--dump-dom")
        .arg(url(page))
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chromium failed on {}: {stderr}",
        page.display()
    );
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Loaded {
        dom: String::from_utf8(out.stdout).unwrap(),
        console,
    }
}

/// Screenshot `page` into `png` (full width, the top `height` pixels).
fn screenshot(page: &Path, png: &Path, height: u32, profile: &Path) {
    let out = headless(profile)
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size=960,{height}"))
        .arg(url(page))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success() && png.metadata().is_ok_and(|m| m.len() > 10_000),
        "no screenshot of {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Milliseconds from inserting an iframe of `page` to its load event,
/// measured by the browser itself (Chromium's own start-up left out).
fn open_ms(page: &Path, dir: &Path, profile: &Path) -> f64 {
    let harness = dir.join("open-timer.html");
    std::fs::write(
        &harness,
        format!(
            "<!DOCTYPE html><html><body><p id=\"ms\">pending</p><script>\
             const t0 = performance.now(); const f = document.createElement('iframe');\
             f.width = 960; f.height = 2000;\
             f.onload = () => {{ document.getElementById('ms').textContent = \
             'loaded:' + (performance.now() - t0).toFixed(1); }};\
             f.src = {:?}; document.body.appendChild(f);</script></body></html>",
            url(page)
        ),
    )
    .unwrap();
    let loaded = load(&harness, profile);
    let at = loaded
        .dom
        .find("loaded:")
        .unwrap_or_else(|| panic!("the report did not finish loading: {}", loaded.dom));
    let rest = &loaded.dom[at + 7..];
    rest[..rest.find('<').unwrap()].parse().unwrap()
}

/// The report of `files` through `replay --offline --report`.
fn report_of(files: &[PathBuf], dir: &Path, name: &str) -> PathBuf {
    let html = dir.join(format!("{name}.html"));
    let out = run_ok(
        infermon()
            .args(["replay", "--offline", "--quiet"])
            .args(files)
            .arg("--metrics-out")
            .arg(dir.join(format!("{name}.lp")))
            .arg("--alerts-out")
            .arg(dir.join(format!("{name}-alerts.jsonl")))
            .arg("--report")
            .arg(&html),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("report: "), "{stdout}");
    html
}

/// The markup of the element whose tag opens with `id="ID"`.
fn element<'a>(dom: &'a str, id: &str, close: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let end = dom[at..].find(close)? + at;
    Some(&dom[at..end])
}

fn attr_i64(markup: &str, name: &str) -> i64 {
    let k = markup.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
    markup[k..k + markup[k..].find('"').unwrap()]
        .parse()
        .unwrap()
}

#[test]
fn the_console_check_sees_errors() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><script>console.error('boom'); nothing();</script></body></html>",
    )
    .unwrap();
    let loaded = load(&page, &dir.path().join("profile"));
    assert_eq!(loaded.console.len(), 2, "{:?}", loaded.console);
    assert!(loaded.console.iter().any(|l| l.contains("ReferenceError")));
}

#[test]
fn the_report_of_the_bundled_recordings_shows_each_incident_with_its_alert_span_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let html = report_of(&recordings(), dir.path(), "bundled");
    let loaded = load(&html, &profile);
    assert!(
        loaded.console.is_empty(),
        "console messages: {:?}",
        loaded.console
    );
    let dom = &loaded.dom;
    assert!(dom.contains("id=\"summary-table\""), "summary on top");
    for external in [" src=", "href=", "url(", "<link"] {
        assert!(
            !dom.contains(external),
            "the page references something ({external})"
        );
    }

    let png = dir.path().join("report-bundled.png");
    screenshot(&html, &png, 1600, &profile);
    println!("screenshot: {}", png.display());
    if let Ok(to) = std::env::var("INFERMON_REPORT_SCREENSHOT_TO") {
        std::fs::copy(&png, &to).unwrap();
        println!("screenshot copied to {to}");
    }

    let text =
        std::fs::read_to_string(repo().join("replay-data/recordings/incidents.json")).unwrap();
    let incidents: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(incidents.len(), 5);
    for i in &incidents {
        let model = i["model"].as_str().unwrap();
        let (start, end) = (
            i["start_ms"].as_i64().unwrap(),
            i["end_ms"].as_i64().unwrap(),
        );
        // The rules the incident documents: "latency_p99_regression (...)",
        // "gradient_nonfinite / gradient_explosion / ...".
        let rules: Vec<&str> = i["alert"]
            .as_str()
            .unwrap()
            .split('(')
            .next()
            .unwrap()
            .split([' ', '/'])
            .filter(|w| !w.is_empty())
            .collect();
        assert!(!rules.is_empty(), "{i}");
        let chart = match rules[0] {
            r if r.starts_with("latency") => "latency",
            r if r.starts_with("error_rate") => "errors",
            r if r.starts_with("gradient") => "gradients",
            _ => "drift",
        };
        let id = format!("chart-{model}-{chart}");
        let figure = element(dom, &id, "</figure>")
            .unwrap_or_else(|| panic!("{}: no chart {id} in the report", i["name"]));
        assert!(figure.contains("<svg"), "{id} has its SVG");
        let spans: Vec<&str> = figure
            .split("<rect class=\"alert-span\"")
            .skip(1)
            .filter(|s| {
                rules
                    .iter()
                    .any(|r| s.contains(&format!("data-alertname=\"{r}\"")))
                    && s.contains(&format!("data-model=\"{model}\""))
            })
            .collect();
        assert!(
            !spans.is_empty(),
            "{}: no span of {rules:?} on {id}",
            i["name"]
        );
        // The span is where the incident is: it starts within three
        // windows of the incident's start and covers some of it.
        assert!(
            spans.iter().any(|s| {
                let (a, b) = (attr_i64(s, "data-start-ms"), attr_i64(s, "data-end-ms"));
                a >= start - 60_000 && a <= start + 180_000 && b > a && a < end
            }),
            "{}: spans of {rules:?} on {id} not at {start}..{end}: {spans:?}",
            i["name"]
        );
        println!("{}: {} span(s) on {id}", i["name"], spans.len());
    }
    // Every incident's model has its alert timeline.
    for model in ["ctr-ranker", "recsys-ranker", "ads-ctr"] {
        let timeline = element(dom, &format!("chart-{model}-alerts"), "</figure>")
            .unwrap_or_else(|| panic!("no alert timeline for {model}"));
        assert!(timeline.contains("class=\"alert-span\""), "{model}");
    }
}

#[test]
fn the_input_shift_report_names_the_shifted_feature_first() {
    let dir = tempfile::tempdir().unwrap();
    let file = repo().join("replay-data/recordings/input-shift.jsonl.zst");
    let html = report_of(&[file], dir.path(), "input-shift");
    let loaded = load(&html, &dir.path().join("profile"));
    assert!(
        loaded.console.is_empty(),
        "console messages: {:?}",
        loaded.console
    );
    let dom = &loaded.dom;
    let summary = element(dom, "summary", "</section>").expect("summary section");
    let first = summary
        .split("<tr class=\"fired\"")
        .nth(1)
        .expect("an alert fired on the input shift");
    assert!(
        first.contains("data-alertname=\"feature_drift\""),
        "{first}"
    );
    assert!(
        first.contains("data-feature=\"price\""),
        "first row: {first}"
    );
    let drifted = element(dom, "drifted-features", "</ul>").expect("drifted features list");
    assert!(drifted.contains("ads-ctr: price, "), "{drifted}");
    let heat = element(dom, "chart-ads-ctr-drift", "</figure>").expect("heat map");
    let rows: Vec<usize> = ["price", "category", "user_ctr_7d"]
        .iter()
        .map(|f| {
            // plotters writes each text on a line of its own.
            heat.find(&format!("\n{f}\n</text>"))
                .unwrap_or_else(|| panic!("{f} row"))
        })
        .collect();
    assert!(
        rows.windows(2).all(|w| w[0] < w[1]),
        "heat map rows, most drifted first"
    );
}

#[test]
fn a_day_of_traffic_reports_in_under_2_s_and_2_mb_and_opens_in_under_1_s() {
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("day.jsonl.zst");
    run_ok(
        infermon()
            .args([
                "generate",
                "--scenario",
                "day",
                "--rate-scale",
                "0.5",
                "--out",
            ])
            .arg(&day),
    );
    let lp = dir.path().join("day.lp");
    let alerts = dir.path().join("day-alerts.jsonl");
    let out = run_ok(
        infermon()
            .args(["replay", "--offline", "--quiet"])
            .arg(&day)
            .arg("--metrics-out")
            .arg(&lp)
            .arg("--alerts-out")
            .arg(&alerts),
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    let events: u64 = summary
        .lines()
        .find_map(|l| l.split(" events (").next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("event count in {summary}"));
    assert!(events >= 1_000_000, "{events} events");
    let html = dir.path().join("day.html");
    let t0 = Instant::now();
    run_ok(
        infermon()
            .arg("report")
            .arg(&lp)
            .arg("--alerts")
            .arg(&alerts)
            .arg("--out")
            .arg(&html),
    );
    let write_s = t0.elapsed().as_secs_f64();
    let bytes = html.metadata().unwrap().len();
    let profile = dir.path().join("profile");
    let open = open_ms(&html, dir.path(), &profile);
    let loaded = load(&html, &profile);
    assert!(
        loaded.console.is_empty(),
        "console messages: {:?}",
        loaded.console
    );
    println!(
        "day report: {events} events, {} lines of line protocol, written in {write_s:.2} s \
         ({} profile), {:.2} MB, opened in Chromium in {open:.0} ms",
        std::fs::read_to_string(&lp).unwrap().lines().count(),
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        bytes as f64 / 1e6,
    );
    assert!(write_s < 2.0, "written in {write_s:.2} s");
    assert!(bytes < 2_000_000, "{bytes} bytes");
    assert!(open < 1000.0, "opened in {open} ms");
}
