//! Benchmarks (the `infermon-bench` binary, built with `--features bench`):
//! each times infermon against a bare baseline in the same run, so the
//! ratio survives a noisy machine. See docs/benchmarks.md.

pub mod drift;
pub mod ingest;
pub mod replay;
pub mod scale_out;
pub mod worker;
