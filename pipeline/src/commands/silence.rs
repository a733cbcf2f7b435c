//! `infermon silence`: add and list silences.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use infermon_operators::alerts::Silence;
use infermon_operators::alerts::policy::silences_table;

use crate::alerts::silences_file::{append_silence, read_silences_file};
use crate::config::Config;

/// Silences: label matchers that mute notifications until they expire.
#[derive(Subcommand)]
pub enum Args {
    /// Add a silence (appended to the silences file).
    Add {
        /// Label matcher NAME=VALUE, or NAME=!VALUE for "not"; repeatable.
        #[arg(long = "matcher", required = true, value_parser = parse_matcher)]
        matchers: Vec<(String, String)>,
        /// How long from now, e.g. "2h".
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Who and why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Silences file (default: `[alerts] silences_file`).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List the silences of the silences file.
    Ls {
        /// Silences file (default: `[alerts] silences_file`).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn parse_matcher(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

fn silences_file(config: &Config, file: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    file.or_else(|| config.alerts.silences_file.clone())
        .context("no silences file: pass --file or set [alerts] silences_file")
}

/// Run it.
///
/// # Errors
/// No silences file, or one that cannot be read or written.
pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    match args {
        Args::Add {
            matchers,
            duration,
            comment,
            file,
        } => {
            let path = silences_file(config, file)?;
            let now = SystemTime::now();
            let silence = Silence {
                matchers: matchers.into_iter().collect(),
                starts_at: Some(humantime::format_rfc3339_seconds(now).to_string()),
                ends_at: humantime::format_rfc3339_seconds(now + duration).to_string(),
                comment,
            };
            append_silence(&path, &silence).map_err(anyhow::Error::msg)?;
            println!("silenced until {} ({})", silence.ends_at, path.display());
        }
        Args::Ls { file } => {
            let path = silences_file(config, file)?;
            let all = read_silences_file(&path).map_err(anyhow::Error::msg)?;
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            print!("{}", silences_table(&all, now_ms));
        }
    }
    Ok(())
}
