//! Drift and label-quality statistics against scipy / scikit-learn.
//!
//! `tests/reference/drift_reference.py` writes a reference recording and a
//! current one whose windows drift by known amounts (with feedback), then
//! computes from the raw events what infermon must report. The exact
//! functions are checked to 1e-9; the binned statistics are checked to 1e-9
//! against the same statistic over the documented bins, and against scipy's
//! unbinned values within the binning error.

use std::collections::HashMap;
use std::process::Command;

use infermon_operators::drift::stats::{chi2_homogeneity, js_distance, ks_statistic, wasserstein};
use infermon_operators::quality::{LabelCounts, Quality};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::support::{Line, infermon, parse_lines, repo, required_env, run_ok};

fn script() -> std::path::PathBuf {
    repo().join("tests/reference/drift_reference.py")
}

fn python(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<u8> {
    let mut cmd = Command::new(required_env("INFERMON_TEST_PYTHON"));
    cmd.arg(script());
    for a in args {
        cmd.arg(a);
    }
    run_ok(&mut cmd).stdout
}

fn close(ours: f64, theirs: f64, tol: f64, what: &str) {
    assert!(
        (ours - theirs).abs() <= tol,
        "{what}: ours {ours} vs reference {theirs} (tolerance {tol})"
    );
}

#[test]
fn exact_statistics_match_scipy_and_sklearn() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut samples = Vec::new();
    for case in 0..6 {
        let n = [5, 50, 400, 1000, 3000, 17][case];
        let m = [7, 50, 900, 200, 3000, 1][case];
        // Rounded values so that ties occur, as they do in real features.
        let a: Vec<f64> = (0..n)
            .map(|_| (rng.random::<f64>() * 20.0).round() / 2.0)
            .collect();
        let b: Vec<f64> = (0..m)
            .map(|_| (rng.random::<f64>() * 24.0 - 1.0).round() / 2.0)
            .collect();
        samples.push((a, b));
    }
    let counts: Vec<(Vec<f64>, Vec<f64>)> = vec![
        (vec![10.0, 20.0], vec![20.0, 10.0]),
        (vec![100.0, 0.0, 30.0, 5.0], vec![80.0, 3.0, 0.0, 9.0]),
        (vec![1.0; 10], (1..=10).map(f64::from).collect()),
        (
            vec![500.0, 300.0, 200.0, 0.0],
            vec![100.0, 250.0, 300.0, 40.0],
        ),
    ];
    let mut labelled = Vec::new();
    for n in [20, 500, 3000] {
        let scores: Vec<f64> = (0..n)
            .map(|_| (rng.random::<f64>() * 100.0).round() / 100.0)
            .collect();
        let labels: Vec<u8> = scores
            .iter()
            .map(|s| u8::from(rng.random::<f64>() < *s))
            .collect();
        labelled.push((scores, labels));
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    let body = json!({
        "samples": samples.iter().map(|(a, b)| json!({"a": a, "b": b})).collect::<Vec<_>>(),
        "counts": counts.iter().map(|(p, q)| json!({"p": p, "q": q})).collect::<Vec<_>>(),
        "labelled": labelled.iter().map(|(s, y)| json!({"scores": s, "labels": y})).collect::<Vec<_>>(),
    });
    std::fs::write(&input, body.to_string()).unwrap();
    let reference: Value = serde_json::from_slice(&python(&[&"exact", &input])).unwrap();

    for (i, (a, b)) in samples.iter().enumerate() {
        let (mut a, mut b) = (a.clone(), b.clone());
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let r = &reference["samples"][i];
        close(ks_statistic(&a, &b), r["ks"].as_f64().unwrap(), 1e-12, "ks");
        close(
            wasserstein(&a, &b),
            r["wasserstein"].as_f64().unwrap(),
            1e-9,
            "wasserstein",
        );
    }
    for (i, (p, q)) in counts.iter().enumerate() {
        close(
            js_distance(p, q),
            reference["js"][i].as_f64().unwrap(),
            1e-9,
            "js",
        );
        let c = chi2_homogeneity(p, q).unwrap();
        let r = &reference["chi2"][i];
        close(c.statistic, r["statistic"].as_f64().unwrap(), 1e-9, "chi2");
        close(c.pvalue, r["pvalue"].as_f64().unwrap(), 1e-9, "chi2 p");
        assert_eq!(c.dof, r["dof"].as_u64().unwrap());
    }
    for (i, (s, y)) in labelled.iter().enumerate() {
        let mut pairs: Vec<(f64, u8)> = s.iter().copied().zip(y.iter().copied()).collect();
        let q = Quality::of(&LabelCounts::of(&mut pairs), 0.5).unwrap();
        let r = &reference["quality"][i];
        close(q.auc.unwrap(), r["auc"].as_f64().unwrap(), 1e-9, "auc");
        close(q.logloss, r["logloss"].as_f64().unwrap(), 1e-9, "logloss");
    }
}

fn field(line: &Line, key: &str) -> Option<f64> {
    line.float(key)
}

fn bool_field(line: &Line, key: &str) -> Option<bool> {
    let v = &line.fields.iter().find(|f| f.0 == key)?.1;
    Some(v == "true")
}

/// Reference recording → `infermon profile` → replay of the current
/// recording against that profile: every drift and quality point equals the
/// reference computation.
#[test]
fn windowed_drift_and_quality_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (ref_file, cur_file) = (dir.path().join("ref.jsonl"), dir.path().join("cur.jsonl"));
    python(&[&"make", &ref_file, &cur_file]);
    let expected: Value =
        serde_json::from_slice(&python(&[&"expect", &ref_file, &cur_file])).unwrap();

    // The profile: bins placed and counted as the script does.
    let profile_file = dir.path().join("profile.json");
    run_ok(
        infermon()
            .arg("profile")
            .arg(&ref_file)
            .arg("--out")
            .arg(&profile_file),
    );
    let profile: Value =
        serde_json::from_str(&std::fs::read_to_string(&profile_file).unwrap()).unwrap();
    let ours = &profile["m"]["features"];
    for (name, theirs) in expected["profile"].as_object().unwrap() {
        let o = &ours[name];
        assert_eq!(o["type"], theirs["type"], "{name} type");
        for key in [
            "edges",
            "coarse_edges",
            "counts",
            "nulls",
            "categories",
            "min",
            "max",
        ] {
            assert_eq!(o[key], theirs[key], "profile {name}.{key}");
        }
        if theirs["type"] == "numeric" {
            close(
                o["mean"].as_f64().unwrap(),
                theirs["mean"].as_f64().unwrap(),
                1e-9,
                "mean",
            );
            close(
                o["std"].as_f64().unwrap(),
                theirs["std"].as_f64().unwrap(),
                1e-9,
                "std",
            );
        }
    }

    let config = dir.path().join("infermon.toml");
    std::fs::write(
        &config,
        format!(
            "[drift.reference_files]\nm = {:?}\n[quality]\nlabel_wait = \"1m\"\n",
            profile_file.display().to_string()
        ),
    )
    .unwrap();
    let metrics = dir.path().join("m.lp");
    run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet"])
            .arg(&cur_file)
            .arg("--metrics-out")
            .arg(&metrics),
    );
    let lines = parse_lines(&std::fs::read_to_string(&metrics).unwrap());
    check_drift(&lines, &expected["drift"]);
    check_quality(&lines, &expected["quality"]);
}

fn check_drift(lines: &[Line], expected: &Value) {
    let ours: HashMap<(i64, String), &Line> = lines
        .iter()
        .filter(|l| l.measurement == "drift")
        .map(|l| {
            (
                (l.ts_ns / 1_000_000, l.tag("feature").unwrap().to_string()),
                l,
            )
        })
        .collect();
    let expected = expected.as_array().unwrap();
    assert_eq!(
        ours.len(),
        expected.len(),
        "one drift point per window and feature"
    );
    let (mut drifted, mut max_w_gap, mut max_p_gap) = (0, 0.0f64, 0.0f64);
    for e in expected {
        let feature = e["feature"].as_str().unwrap();
        let key = (e["end_ms"].as_i64().unwrap(), feature.to_string());
        let line = ours
            .get(&key)
            .unwrap_or_else(|| panic!("no drift point for {key:?}"));
        let what = |k: &str| format!("{k} of {feature} at {}", key.0);
        for k in ["n_ref", "n_cur"] {
            assert_eq!(field(line, k), e[k].as_f64(), "{}", what(k));
        }
        for k in ["null_rate", "psi", "js", "ks", "ks_pvalue", "chi2_pvalue"] {
            match e.get(k).and_then(Value::as_f64) {
                Some(v) => close(field(line, k).unwrap_or(f64::NAN), v, 1e-9, &what(k)),
                None => assert_eq!(field(line, k), None, "{}", what(k)),
            }
        }
        if let Some(exact) = e.get("ks_exact").and_then(Value::as_f64) {
            // KS at the bin edges never exceeds the exact KS, and with 100
            // quantile bins it is short of it by at most about one bin's mass.
            let ks = field(line, "ks").unwrap();
            assert!(
                ks <= exact + 1e-12 && exact - ks < 0.015,
                "{}: {ks} vs exact {exact}",
                what("ks")
            );
            let w = field(line, "wasserstein").unwrap();
            let w_exact = e["wasserstein_exact"].as_f64().unwrap();
            max_w_gap = max_w_gap.max((w - w_exact).abs());
            // Mass is spread evenly inside each bin, which is coarsest in the
            // tails: documented error ≤ 0.03 σ + 6 % of the exact value.
            let tol = 0.03 + 0.06 * w_exact;
            assert!(
                (w - w_exact).abs() < tol,
                "{}: {w} vs scipy {w_exact}",
                what("wasserstein")
            );
            // The p-value formula (Stephens) against scipy's asymptotic
            // kstwo.sf(d, round(nm/(n+m))) on the same statistic.
            let p = field(line, "ks_pvalue").unwrap();
            let p_scipy = e["ks_pvalue_scipy_asymp"].as_f64().unwrap();
            max_p_gap = max_p_gap.max((p - p_scipy).abs());
            assert!(
                (p - p_scipy).abs() < 0.02,
                "{}: {p} vs scipy {p_scipy}",
                what("ks_pvalue")
            );
        }
        assert_eq!(
            bool_field(line, "drifted"),
            e.get("drifted").and_then(Value::as_bool),
            "{}",
            what("drifted")
        );
        drifted += usize::from(e["drifted"] == true);
    }
    // The synthetic windows do drift, and the quiet ones do not.
    assert!(drifted >= 6, "only {drifted} drifted feature-windows");
    eprintln!("binned vs scipy: max |Δ wasserstein/σ| {max_w_gap:.4}, max |Δ ks p| {max_p_gap:.4}");
}

fn check_quality(lines: &[Line], expected: &Value) {
    let ours: HashMap<i64, &Line> = lines
        .iter()
        .filter(|l| l.measurement == "quality")
        .map(|l| (l.ts_ns / 1_000_000, l))
        .collect();
    let expected = expected.as_array().unwrap();
    assert_eq!(ours.len(), expected.len(), "one quality point per window");
    for e in expected {
        let end = e["end_ms"].as_i64().unwrap();
        let line = ours[&end];
        for k in [
            "auc",
            "logloss",
            "ctr",
            "mean_score",
            "calibration",
            "n_labeled",
        ] {
            close(
                field(line, k).unwrap_or(f64::NAN),
                e[k].as_f64().unwrap(),
                1e-9,
                &format!("quality {k} at {end}"),
            );
        }
    }
}

/// A reference that cannot be used stops the run at start-up with a message
/// naming the file and the problem, never a silent fallback.
#[test]
fn bad_reference_files_and_binning_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("r.jsonl");
    std::fs::write(
        &rec,
        r#"{"topic":"inference.predictions","request_id":"a","ts":1,"model":"m","model_version":"1","status":"ok","timings_ms":{"total":1},"score":0.5,"features":{"x":1}}"#,
    )
    .unwrap();
    let profile = dir.path().join("p.json");
    run_ok(
        infermon()
            .arg("profile")
            .arg(&rec)
            .arg("--out")
            .arg(&profile),
    );
    let cases = [
        (
            format!(
                "[drift.reference_files]\nother = {:?}\n",
                profile.display().to_string()
            ),
            "no profile for model \"other\"",
        ),
        (
            "[drift.reference_files]\nm = \"/nonexistent/ref.json\"\n".to_string(),
            "/nonexistent/ref.json",
        ),
        (
            "[drift]\nbins = 100\npsi_bins = 7\n".to_string(),
            "psi_bins must divide bins",
        ),
    ];
    for (toml, expected) in cases {
        let config = dir.path().join("c.toml");
        std::fs::write(&config, &toml).unwrap();
        let out = infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet"])
            .arg(&rec)
            .arg("--metrics-out")
            .arg(dir.path().join("m.lp"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
    }
}
