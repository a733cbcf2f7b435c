//! Serving models the way a worker does, with no Kafka in sight: the
//! versions of a model directory and the rollback pin ([`versions`]), one
//! served model with its stable version, canary, background loading and
//! request queue ([`model`]), its settings ([`config`]), and the commands
//! that roll versions back ([`control`]).

pub mod config;
pub mod control;
pub mod model;
pub mod versions;

use std::path::PathBuf;

pub use config::ModelConfig;
pub use control::{ControlCommand, RollbackRules, commands_for_alerts};
pub use model::{Change, ServedModel, routes_to_canary};
pub use versions::{PIN_FILE, highest_version, rollback, wanted_version};

use crate::LoadError;

/// Why a model version could not be found, pinned or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The model directory cannot be read.
    #[error("model dir {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The rollback pin cannot be written.
    #[error("writing {path}: {source}")]
    Pin {
        /// The pin file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No `<version>/model.onnx` in the directory.
    #[error("no <version>/model.onnx under {dir}")]
    NoVersion {
        /// The directory.
        dir: PathBuf,
    },
    /// Versions are numbered directories.
    #[error("version {version:?} is not a number")]
    NotANumber {
        /// The version named.
        version: String,
    },
    /// Nothing to roll back to.
    #[error("no version before {version} in {dir}")]
    NoEarlier {
        /// The version served.
        version: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The version's spec or ONNX model is unusable.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The background loader thread died.
    #[error("the loader of version {version} stopped without a result")]
    LoaderStopped {
        /// The version it was loading.
        version: String,
    },
    /// The background loader thread could not start.
    #[error("starting a loader thread: {0}")]
    Thread(std::io::Error),
}
