//! `infermon report`: the HTML report of a backtest's line protocol (and
//! alerts log). `replay --offline --report FILE` does the same at the end
//! of a replay.

use std::path::PathBuf;
use std::time::Instant;

use crate::report::{Written, write_report};

/// Write one self-contained HTML report (inline SVG charts, no network
/// needed to view it) from a line-protocol file.
#[derive(clap::Args)]
pub struct Args {
    /// Line protocol, e.g. `replay --offline`'s --metrics-out.
    metrics: PathBuf,
    /// The alerts log (`replay --alerts-out`): alert versions, features and
    /// summaries; without it the `alerts` points are used.
    #[arg(long)]
    alerts: Option<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "infermon-report.html")]
    out: PathBuf,
}

/// Run it.
///
/// # Errors
/// Unreadable input, a bad line, or the output cannot be written.
pub fn run(args: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let w = write_report(&args.metrics, args.alerts.as_deref(), &args.out)?;
    print_written(&args.out, &w, t0);
    Ok(())
}

/// One line saying what was written, how big and how fast.
pub fn print_written(out: &std::path::Path, w: &Written, t0: Instant) {
    println!(
        "report: {} ({:.1} KiB, {} models, {} alerts, {} points, {:.2} s)",
        out.display(),
        w.bytes as f64 / 1024.0,
        w.models,
        w.alerts,
        w.points,
        t0.elapsed().as_secs_f64()
    );
}
