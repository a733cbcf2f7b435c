//! The model side checked against Python references, linked into one
//! binary.

mod common;
mod ctr_reference;
mod minilm_reference;
