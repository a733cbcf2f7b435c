//! `infermon generate`: write recorded traffic with documented incidents.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use infermon_replay_data::{
    GenerateOptions, GenerateStats, RequestStats, Scenario, generate, generate_requests,
};
use infermon_schemas::recording::RecordingWriter;
use serde::Serialize;

/// Write one recording to `path` (zstd-compressed when it ends in `.zst`).
pub fn write_recording(
    opts: &GenerateOptions,
    path: &Path,
    zstd_level: i32,
) -> anyhow::Result<GenerateStats> {
    write_with(path, zstd_level, |out| generate(opts, out))
}

/// Write the scoring requests of `opts` (for real workers) to `path`.
pub fn write_requests(
    opts: &GenerateOptions,
    path: &Path,
    zstd_level: i32,
) -> anyhow::Result<RequestStats> {
    write_with(path, zstd_level, |out| generate_requests(opts, out))
}

/// Open `path` (zstd-compressed when it ends in `.zst`), let `write` fill
/// it, and make sure it is complete on disk.
fn write_with<T>(
    path: &Path,
    zstd_level: i32,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<T>,
) -> anyhow::Result<T> {
    let mut out = RecordingWriter::create(path, zstd_level)?;
    let stats = write(&mut out)?;
    out.finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(stats)
}

#[derive(Serialize)]
struct IncidentRecord {
    file: String,
    scenario: String,
    name: &'static str,
    model: &'static str,
    series: &'static str,
    start_ms: i64,
    end_ms: i64,
    what: &'static str,
    alert: &'static str,
}

/// Write every bundled recording (not `day`) and `incidents.json` to `dir`.
pub fn write_bundled(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut incidents = Vec::new();
    for scenario in Scenario::ALL.into_iter().filter(|s| s.is_bundled()) {
        let opts = GenerateOptions::bundled(scenario);
        let name = format!("{}.jsonl.zst", scenario.name());
        let stats = write_recording(&opts, &dir.join(&name), 19)?;
        println!(
            "{name}: {} lines ({} predictions, {} feedback, {} training)",
            stats.lines, stats.predictions, stats.feedback, stats.training
        );
        for i in opts.incidents() {
            incidents.push(IncidentRecord {
                file: name.clone(),
                scenario: scenario.name().into(),
                name: i.name,
                model: i.model,
                series: i.series,
                start_ms: i.start_ms,
                end_ms: i.end_ms,
                what: i.what,
                alert: i.alert,
            });
        }
    }
    let path = dir.join("incidents.json");
    std::fs::write(&path, serde_json::to_string_pretty(&incidents)? + "\n")?;
    println!("{}: {} incidents", path.display(), incidents.len());
    Ok(())
}
