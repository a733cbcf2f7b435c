//! Fixture helpers shared by the reference tests.

use std::io::BufRead;
use std::path::PathBuf;

use infermon_schemas::{Decoded, RequestEvent, TopicKind, decode_event};
use serde_json::Value;

/// What to do when ONNX Runtime is not found.
pub const ORT_HINT: &str = "ONNX Runtime not loaded: run `eval \"$(.ci/services.sh env)\"` (or .ci/run) to set ORT_DYLIB_PATH";

/// The inference crate's directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A JSON-lines fixture from scripts/testdata.
pub fn jsonl(name: &str) -> Vec<Value> {
    let f = std::fs::File::open(dir().join("scripts/testdata").join(name)).unwrap();
    std::io::BufReader::new(f)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// A fixture of requests, decoded as the worker decodes them.
pub fn requests(name: &str) -> Vec<RequestEvent> {
    jsonl(name)
        .iter()
        .map(
            |v| match decode_event(TopicKind::Requests, v.to_string().as_bytes()) {
                Ok(Decoded::Request(r)) => r,
                other => panic!("{v}: {other:?}"),
            },
        )
        .collect()
}
