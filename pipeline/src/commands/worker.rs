//! `infermon worker`: an inference worker until SIGTERM/SIGINT.

use crate::config::Config;

/// Run it.
///
/// # Errors
/// A model that cannot load, or Kafka clients that cannot be created.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let stop = super::stop_on_signals()?;
    crate::worker::run(&config.worker, &config.kafka, &config.topics, stop)
}
