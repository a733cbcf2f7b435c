//! The operators' integration tests, linked into one binary.

mod drift_engine;
mod sketch_accuracy;
mod sql_metrics;
mod windows;
