//! `infermon model`: pin or release the version workers serve.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::sources::kafka::DeliveryCounter;
use crate::worker::{ControlCommand, PIN_FILE, publish_command, rollback};

/// Model versions served by workers: `rollback` pins a model directory to
/// the version before the current one (workers swap within their reload
/// interval), `release` removes the pin.
#[derive(Subcommand)]
pub enum Args {
    /// Serve the previous version: pin a model directory shared by the
    /// workers (`--dir`), and/or tell every worker through the control
    /// topic (`--model`, brokers from the config or `--brokers`).
    Rollback {
        /// Model directory (feature_spec.json + <version>/model.onnx).
        #[arg(long, required_unless_present = "model")]
        dir: Option<PathBuf>,
        /// Model name, to send the command on the control topic.
        #[arg(long)]
        model: Option<String>,
        /// The version to take out (default: the one `--dir` serves).
        #[arg(long)]
        version: Option<String>,
        /// Kafka brokers (default: the config's).
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Serve the highest version again.
    Release {
        /// Model directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Run it.
///
/// # Errors
/// No earlier version to roll back to, or the command cannot be published.
pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    match args {
        Args::Rollback {
            dir,
            model,
            version,
            brokers,
        } => {
            let mut from = version;
            if let Some(dir) = &dir {
                let (was, to) = rollback(dir)?;
                println!("{}: rolled back from version {was} to {to}", dir.display());
                from.get_or_insert(was);
            }
            if let Some(model) = model {
                let from = from.context(
                    "--model: name the version to take out with --version (or give --dir)",
                )?;
                let mut kafka = config.kafka.clone();
                if let Some(b) = brokers {
                    kafka.brokers = b;
                }
                let producer = kafka
                    .producer_config()?
                    .create_with_context(DeliveryCounter::default())?;
                let command =
                    ControlCommand::rollback(&model, Some(&from), "infermon model rollback");
                publish_command(&producer, &config.topics.control, &command)?;
                println!(
                    "{}: rollback of {model} version {from} sent",
                    config.topics.control
                );
            }
        }
        Args::Release { dir } => {
            let pin = dir.join(PIN_FILE);
            if pin.exists() {
                std::fs::remove_file(&pin)?;
            }
            println!("{}: serving the highest version again", dir.display());
        }
    }
    Ok(())
}
