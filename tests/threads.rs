//! One process, all cores: `[monitor] threads` spreads the window shards
//! over threads, and the output never depends on it. The offline replay
//! of every bundled recording (and of ranked traffic, which exercises the
//! label join and ranking state across shards) writes byte-identical line
//! protocol with 1, 2 and 3 threads.

use std::path::Path;

use crate::support::{infermon, recordings, run_ok};

/// Sorted lines of the metrics a replay of `files` writes with `threads`.
fn replay_lines(dir: &Path, files: &[std::path::PathBuf], threads: usize) -> Vec<String> {
    let config = dir.join(format!("threads-{threads}.toml"));
    std::fs::write(&config, format!("[monitor]\nthreads = {threads}\n")).unwrap();
    let out = dir.join(format!("metrics-{threads}.lp"));
    run_ok(
        infermon()
            .arg("--config")
            .arg(&config)
            .args(["replay", "--offline", "--quiet"])
            .args(files)
            .arg("--metrics-out")
            .arg(&out)
            .arg("--alerts-out")
            .arg(dir.join(format!("alerts-{threads}.jsonl"))),
    );
    let mut lines: Vec<String> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn replay_output_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let ranked = dir.path().join("ranked.jsonl");
    run_ok(
        infermon()
            .args([
                "generate",
                "--scenario",
                "ranked-canary",
                "--duration",
                "30m",
            ])
            .arg("--out")
            .arg(&ranked),
    );
    let mut files = recordings();
    files.push(ranked);
    let one = replay_lines(dir.path(), &files, 1);
    assert!(one.len() > 5_000, "{} lines", one.len());
    for m in [
        "latency",
        "drift",
        "quality",
        "ranking",
        "comparison",
        "alerts",
    ] {
        assert!(
            one.iter().any(|l| l.starts_with(&format!("{m},"))),
            "no {m} points: the comparison would prove little"
        );
    }
    for threads in [2, 3] {
        let other = replay_lines(dir.path(), &files, threads);
        let differ: Vec<_> = one
            .iter()
            .zip(&other)
            .filter(|(a, b)| a != b)
            .take(3)
            .collect();
        assert!(
            one.len() == other.len() && differ.is_empty(),
            "threads = {threads}: {} lines against {}, first differences {differ:#?}",
            other.len(),
            one.len()
        );
    }
}
