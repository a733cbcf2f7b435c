//! `infermon profile`: drift reference profiles from recorded traffic.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::Config;
use crate::references::profile_recordings;

/// Build drift reference profiles (one per model) from recorded traffic,
/// for `[drift.reference_files]`.
#[derive(clap::Args)]
pub struct Args {
    /// Recorded traffic files (JSON Lines, optionally .zst).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output JSON (an object keyed by model).
    #[arg(long)]
    out: PathBuf,
}

/// Run it.
///
/// # Errors
/// Unreadable recordings, or the output cannot be written.
pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let profiles = profile_recordings(config.profile_settings(), &args.files)?;
    let json = serde_json::to_string_pretty(&profiles)?;
    std::fs::write(&args.out, json).with_context(|| format!("writing {}", args.out.display()))?;
    for (model, p) in &profiles {
        println!(
            "{model} (newest version {}): {} features",
            p.model_version,
            p.features.len()
        );
    }
    println!("profiles: {}", args.out.display());
    Ok(())
}
