//! `infermon generate`: recorded traffic with documented incidents.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use infermon_replay_data::{GenerateOptions, Scenario};

use crate::generate::{write_bundled, write_recording, write_requests};

/// Generate recorded traffic with documented incidents.
#[derive(clap::Args)]
pub struct Args {
    /// Scenario: latency-regression, error-burst, input-shift,
    /// feature-null, gradient-explosion, day, realistic-day, quiet-days,
    /// ranked-search, broken-order or ranked-canary.
    #[arg(long, default_value = "day")]
    scenario: String,
    /// Output file (.zst to compress).
    #[arg(long, required_unless_present = "bundled")]
    out: Option<PathBuf>,
    /// Length, e.g. "30m", "24h" (default: the scenario's bundled length).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Multiply request rates (e.g. 4 for a ~1.1M-event day).
    #[arg(long, default_value_t = 1.0)]
    rate_scale: f64,
    /// RNG seed (default: the bundled recording's).
    #[arg(long)]
    seed: Option<u64>,
    /// zstd level for .zst output.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Regenerate every bundled recording and incidents.json into DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    bundled: Option<PathBuf>,
    /// Write scoring requests for real workers (ctr-ranker features,
    /// query-encoder texts; the scenario's input incident) instead of
    /// predictions: see replay-data/record-live.sh.
    #[arg(long, conflicts_with = "bundled")]
    requests: bool,
}

/// Run it.
///
/// # Errors
/// An unknown scenario, or the output cannot be written.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = args.bundled {
        return write_bundled(&dir);
    }
    let scenario = Scenario::from_name(&args.scenario)
        .with_context(|| format!("unknown scenario {:?}", args.scenario))?;
    let mut opts = GenerateOptions::bundled(scenario);
    opts.rate_scale = args.rate_scale;
    if let Some(d) = args.duration {
        opts.duration_s = d.as_secs();
    }
    if let Some(s) = args.seed {
        opts.seed = s;
    }
    let out = args.out.expect("clap requires --out without --bundled");
    if args.requests {
        let stats = write_requests(&opts, &out, args.zstd_level)?;
        println!(
            "{}: {} requests ({} ctr-ranker, {} query-encoder)",
            out.display(),
            stats.ctr + stats.text,
            stats.ctr,
            stats.text
        );
        return Ok(());
    }
    let stats = write_recording(&opts, &out, args.zstd_level)?;
    println!(
        "{}: {} lines ({} predictions, {} feedback, {} training)",
        out.display(),
        stats.lines,
        stats.predictions,
        stats.feedback,
        stats.training
    );
    for i in opts.incidents() {
        println!(
            "  incident {:?} on {} {}: {}..{} ms; alert {}",
            i.name, i.model, i.series, i.start_ms, i.end_ms, i.alert
        );
    }
    Ok(())
}
