//! Deterministic, realistic e-commerce model traffic with documented
//! incidents: owns the generator and the scenarios (what each incident is,
//! when, and which alert it must raise); writes through
//! `infermon_schemas::recording`, never reads a config or a server.
//!
//! The bundled recordings in `replay-data/recordings/` were made by this
//! crate (`infermon generate`, see `replay-data/README.md`); tests and
//! benchmarks regenerate bigger ones the same way. Same options, same seed →
//! byte-identical output.

pub mod generate;
mod ranked;
mod realistic;
pub mod requests;
pub mod scenario;

pub use generate::{GenerateOptions, GenerateStats, generate};
pub use requests::{RequestStats, generate_requests};
pub use scenario::{Incident, Scenario};
