//! Recorded traffic files (JSON Lines, optionally zstd) as a source of
//! decoded, Arrow-batched events.
//!
//! Each file is read and decoded on its own thread (decoding is the costly
//! half of a replay, so it overlaps with the window operators), and handed
//! over in batches through a small bounded channel.

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use arrow::array::RecordBatch;
use infermon_operators::event_time::{JUMP_CONFIRMATION, REASON_CODE as EVENT_TIME};
use infermon_operators::{Check, WindowConfig};
use infermon_schemas::{
    Decoded, FeedbackEvent, PredictionBatchBuilder, TopicKind, TopicNames, TrainingEvent,
    decode_recorded_line, recording,
};

/// Lines per decoded batch.
pub const BATCH_LINES: usize = 4096;

/// A line that could not be decoded, with where it was and why.
#[derive(Debug, Clone)]
pub struct Reject {
    /// 1-based line number in its file.
    pub line: u64,
    /// One-line reason naming the field.
    pub reason: String,
    /// Low-cardinality reason label for counters.
    pub reason_code: &'static str,
    /// The original bytes (lossy UTF-8).
    pub raw: String,
    /// Model / version, when the bad line still names them.
    pub model: Option<(String, String)>,
}

/// One batch of decoded lines from one file.
#[derive(Debug)]
pub struct DecodedBatch {
    /// The prediction events, as an Arrow batch.
    pub predictions: RecordBatch,
    /// Feedback events (labels for the quality join), in file order.
    pub feedback: Vec<FeedbackEvent>,
    /// Training telemetry steps, in file order.
    pub training: Vec<TrainingEvent>,
    /// Events per topic kind (predictions included).
    pub events: [u64; 4],
    /// Smallest and largest event time of any decoded event.
    pub ts_range: Option<(i64, i64)>,
    /// Lines that failed to decode.
    pub rejects: Vec<Reject>,
}

/// A recorded file being read on a background thread.
pub struct RecordingSource {
    /// The file's path (for messages).
    pub path: PathBuf,
    batches: Receiver<io::Result<DecodedBatch>>,
}

impl RecordingSource {
    /// Start reading `path`: events are batched with `window`'s segment
    /// keys and event times checked by its event-time guard (implausible
    /// ones are rejects). `bytes_read` counts (compressed) bytes consumed,
    /// for progress reporting.
    pub fn open(
        path: &Path,
        topics: TopicNames,
        window: &WindowConfig,
        bytes_read: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        let reader = recording::open_with(path, |inner| CountingReader {
            inner,
            count: bytes_read,
        })?;
        let (tx, rx) = sync_channel(4);
        let window = window.clone();
        thread::Builder::new()
            .name(format!("read {}", path.display()))
            .spawn(move || decode_loop(reader, topics, &window, tx))?;
        Ok(Self {
            path: path.to_path_buf(),
            batches: rx,
        })
    }

    /// The next batch, `None` at end of file.
    pub fn next_batch(&mut self) -> Option<io::Result<DecodedBatch>> {
        self.batches.recv().ok()
    }
}

/// A decoded line waiting for the input to show whether its event time,
/// far ahead of the rest, is real (see [`infermon_operators::event_time`]).
struct Held {
    line: u64,
    bytes: Vec<u8>,
    event: Decoded,
}

fn decode_loop(
    mut reader: Box<dyn BufRead + Send>,
    topics: TopicNames,
    window: &WindowConfig,
    tx: SyncSender<io::Result<DecodedBatch>>,
) {
    let mut builder = PredictionBatchBuilder::new(&window.segment_keys);
    let mut guard = window.event_time_guard();
    let mut held: Vec<Held> = Vec::new();
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    loop {
        let mut batch = DecodedBatch {
            predictions: RecordBatch::new_empty(builder.schema().clone()),
            feedback: Vec::new(),
            training: Vec::new(),
            events: [0; 4],
            ts_range: None,
            rejects: Vec::new(),
        };
        let mut lines = 0;
        let mut eof = false;
        while lines < BATCH_LINES {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            line_no += 1;
            let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if bytes.is_empty() {
                continue; // blank lines (e.g. a trailing newline) are not events
            }
            lines += 1;
            let event = match decode_recorded_line(bytes, &topics) {
                Ok(event) => event,
                Err(e) => {
                    batch
                        .rejects
                        .push(reject(line_no, bytes, e.to_string(), e.reason()));
                    continue;
                }
            };
            match guard.check(event.ts(), None) {
                Check::Accept => {
                    // Back in line: whatever was held ahead was an outlier.
                    for h in held.drain(..) {
                        let reason = guard.ahead_reason(h.event.ts());
                        batch
                            .rejects
                            .push(reject(h.line, &h.bytes, reason, EVENT_TIME));
                    }
                    add(&mut batch, &mut builder, event);
                }
                Check::Reject(reason) => {
                    batch
                        .rejects
                        .push(reject(line_no, bytes, reason, EVENT_TIME));
                }
                Check::Ahead => {
                    held.push(Held {
                        line: line_no,
                        bytes: bytes.to_vec(),
                        event,
                    });
                    if held.len() >= JUMP_CONFIRMATION {
                        settle(&mut held, &mut guard, &mut batch, &mut builder);
                    }
                }
            }
        }
        if eof {
            if guard.has_progress() {
                // A jump the input never confirmed: outliers.
                for h in held.drain(..) {
                    let reason = guard.ahead_reason(h.event.ts());
                    batch
                        .rejects
                        .push(reject(h.line, &h.bytes, reason, EVENT_TIME));
                }
            } else {
                // A short input: its events are all there is to judge by.
                settle(&mut held, &mut guard, &mut batch, &mut builder);
            }
        }
        batch.predictions = builder.finish();
        let empty = lines == 0 && batch.events.iter().all(|n| *n == 0);
        if !empty && tx.send(Ok(batch)).is_err() {
            return; // the replay stopped listening
        }
        if eof {
            return;
        }
    }
}

/// Enough events are held to tell the input's time: those near their
/// median are kept, the others rejected.
fn settle(
    held: &mut Vec<Held>,
    guard: &mut infermon_operators::EventTimeGuard,
    batch: &mut DecodedBatch,
    builder: &mut PredictionBatchBuilder,
) {
    let times: Vec<i64> = held.iter().map(|h| h.event.ts()).collect();
    let keep = guard.settle(&times);
    for (h, keep) in held.drain(..).zip(keep) {
        if keep {
            add(batch, builder, h.event);
        } else {
            let reason = guard.ahead_reason(h.event.ts());
            batch
                .rejects
                .push(reject(h.line, &h.bytes, reason, EVENT_TIME));
        }
    }
}

/// An accepted event into the batch.
fn add(batch: &mut DecodedBatch, builder: &mut PredictionBatchBuilder, event: Decoded) {
    let ts = event.ts();
    batch.ts_range = Some(match batch.ts_range {
        None => (ts, ts),
        Some((lo, hi)) => (lo.min(ts), hi.max(ts)),
    });
    let kind = event.kind();
    batch.events[TopicKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)] += 1;
    match event {
        Decoded::Prediction(p) => builder.push(&p),
        Decoded::Feedback(f) => batch.feedback.push(f),
        Decoded::Training(t) => batch.training.push(t),
        Decoded::Request(_) => {}
    }
}

fn reject(line: u64, bytes: &[u8], reason: String, reason_code: &'static str) -> Reject {
    Reject {
        line,
        reason,
        reason_code,
        raw: String::from_utf8_lossy(bytes).into_owned(),
        model: model_of(bytes),
    }
}

/// Best effort: which model a rejected line was about, for the summary.
fn model_of(bytes: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let model = v.get("model")?.as_str()?.to_string();
    let version = v
        .get("model_version")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    Some((model, version))
}

struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
