//! The recording file format `record` writes, `generate` makes and `replay`
//! and `profile` read: JSON Lines, one event per line with a `"topic"` field
//! naming the Kafka topic it travels on, zstd-compressed when the name
//! ends in `.zst`.
//!
//! This module is the one place such files are opened and written; the
//! decoding of a line is [`crate::decode_recorded_line`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::Serialize;

/// The field naming an event's topic.
pub const TOPIC_FIELD: &str = "topic";

/// Whether `path` names a recording (`.jsonl` or `.jsonl.zst`).
pub fn is_recording(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".jsonl") || name.ends_with(".jsonl.zst")
}

/// Whether `path` is zstd-compressed (ends in `.zst`).
pub fn is_compressed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// Open a recording for reading, line by line.
///
/// # Errors
/// The file cannot be opened (the error names the path) or its zstd header
/// is bad.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead + Send>> {
    open_with(path, |f| f)
}

/// [`open`], reading the file through `wrap` (e.g. a byte counter for a
/// progress bar: it sees the compressed bytes).
///
/// # Errors
/// As [`open`].
pub fn open_with<R: Read + Send + 'static>(
    path: &Path,
    wrap: impl FnOnce(File) -> R,
) -> io::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).map_err(|e| named(path, e))?;
    let inner = wrap(file);
    Ok(if is_compressed(path) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            zstd::Decoder::new(inner).map_err(|e| named(path, e))?,
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, inner))
    })
}

/// One recorded line: `{"topic": topic, ...event's fields}`.
///
/// # Panics
/// If `event` does not serialize to a JSON object (the v1 events all do).
pub fn line<T: Serialize>(topic: &str, event: &T) -> String {
    #[derive(Serialize)]
    struct Recorded<'a, T: Serialize> {
        topic: &'a str,
        #[serde(flatten)]
        event: &'a T,
    }
    serde_json::to_string(&Recorded { topic, event }).expect("events serialize to objects")
}

/// A recording being written; [`RecordingWriter::finish`] makes it complete
/// on disk (a dropped writer may leave a truncated zstd frame).
pub struct RecordingWriter {
    out: Output,
}

enum Output {
    Plain(BufWriter<File>),
    Zstd(BufWriter<zstd::Encoder<'static, File>>),
}

impl RecordingWriter {
    /// Create (truncate) `path`, compressed at `zstd_level` when it ends in
    /// `.zst`.
    ///
    /// # Errors
    /// The file cannot be created (the error names the path).
    pub fn create(path: &Path, zstd_level: i32) -> io::Result<Self> {
        let file = File::create(path).map_err(|e| named(path, e))?;
        let out = if is_compressed(path) {
            let enc = zstd::Encoder::new(file, zstd_level)?;
            Output::Zstd(BufWriter::with_capacity(1 << 20, enc))
        } else {
            Output::Plain(BufWriter::with_capacity(1 << 20, file))
        };
        Ok(Self { out })
    }

    /// Write one event of `topic`, given as a JSON object, with the topic
    /// field added (an event's own `topic` field, if it had one, is
    /// replaced).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_event(
        &mut self,
        topic: &str,
        event: serde_json::Map<String, serde_json::Value>,
    ) -> io::Result<()> {
        let mut line = serde_json::Map::with_capacity(event.len() + 1);
        line.insert(TOPIC_FIELD.into(), serde_json::Value::String(topic.into()));
        line.extend(event.into_iter().filter(|(k, _)| k != TOPIC_FIELD));
        serde_json::to_writer(&mut *self, &line)?;
        self.write_all(b"\n")
    }

    /// Flush, end the zstd frame and sync to disk.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn finish(self) -> io::Result<()> {
        match self.out {
            Output::Plain(w) => w.into_inner().map_err(|e| e.into_error())?.sync_all(),
            Output::Zstd(w) => w
                .into_inner()
                .map_err(|e| e.into_error())?
                .finish()?
                .sync_all(),
        }
    }
}

/// Raw lines (already JSON with a topic field) are written as they are.
impl Write for RecordingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.out {
            Output::Plain(w) => w.write(buf),
            Output::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Output::Plain(w) => w.flush(),
            Output::Zstd(w) => w.flush(),
        }
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_recordings_read_back_line_by_line_plain_and_zstd() {
        let dir = std::env::temp_dir().join(format!("infermon-recording-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["r.jsonl", "r.jsonl.zst"] {
            let path = dir.join(name);
            assert!(is_recording(&path));
            let mut w = RecordingWriter::create(&path, 3).unwrap();
            let event: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(r#"{"topic":"old","model":"m","ts":1}"#).unwrap();
            w.write_event("inference.predictions", event).unwrap();
            w.write_all(
                line(
                    "inference.feedback",
                    &serde_json::json!({"request_id": "r"}),
                )
                .as_bytes(),
            )
            .unwrap();
            w.write_all(b"\n").unwrap();
            w.finish().unwrap();
            let lines: Vec<String> = open(&path).unwrap().lines().map(Result::unwrap).collect();
            assert_eq!(
                lines,
                [
                    r#"{"model":"m","topic":"inference.predictions","ts":1}"#,
                    r#"{"topic":"inference.feedback","request_id":"r"}"#
                ],
                "{name}"
            );
        }
        let err = open(&dir.join("missing.jsonl")).err().unwrap().to_string();
        assert!(err.contains("missing.jsonl"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
