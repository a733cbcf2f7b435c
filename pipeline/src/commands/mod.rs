//! One module per `infermon` subcommand: its command-line arguments and the
//! wiring of sources, the shared topology and sinks. Only this layer (and
//! `main`) sees the whole [`crate::config::Config`]; the components below it
//! take their own section.

pub mod generate;
pub mod merge;
pub mod model;
pub mod monitor;
pub mod profile;
pub mod record;
pub mod replay;
pub mod report;
pub mod silence;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// A flag SIGTERM and SIGINT set: long-running loops stop when it is.
///
/// # Errors
/// The signal handlers cannot be registered.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}
