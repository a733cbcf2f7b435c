//! Recorded lines → events: decoded one by one, event times checked with
//! the input's own progress (an implausible jump is held until the input
//! confirms or refutes it), batched every [`BATCH_LINES`] lines.

use std::io::{self, BufRead};
use std::sync::mpsc::SyncSender;

use infermon_operators::event_time::{JUMP_CONFIRMATION, REASON_CODE as EVENT_TIME};
use infermon_operators::{Check, WindowConfig};
use infermon_schemas::{Decoded, TopicNames, decode_recorded};

use super::{Events, EventsBuilder};

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
    /// The accepted events, in file order.
    pub events: Events,
    /// Lines that failed to decode.
    pub rejects: Vec<Reject>,
}

/// A decoded line waiting for the input to show whether its event time,
/// far ahead of the rest, is real (see [`infermon_operators::event_time`]).
struct Held {
    line: u64,
    bytes: Vec<u8>,
    event: Decoded,
}

/// Read `reader` to its end, sending a batch every [`BATCH_LINES`] lines.
pub fn decode_loop(
    mut reader: Box<dyn BufRead + Send>,
    topics: TopicNames,
    window: &WindowConfig,
    tx: SyncSender<io::Result<DecodedBatch>>,
) {
    let mut builder = EventsBuilder::new(&window.segment_keys);
    let mut guard = window.event_time_guard();
    let mut held: Vec<Held> = Vec::new();
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    loop {
        let mut rejects = Vec::new();
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
            let event = match decode_recorded(bytes, &topics) {
                Ok(event) => event,
                Err(e) => {
                    rejects.push(reject(line_no, bytes, e.to_string(), e.reason()));
                    continue;
                }
            };
            match guard.check(event.ts(), None) {
                Check::Accept => {
                    // Back in line: whatever was held ahead was an outlier.
                    for h in held.drain(..) {
                        let reason = guard.ahead_reason(h.event.ts());
                        rejects.push(reject(h.line, &h.bytes, reason, EVENT_TIME));
                    }
                    builder.add(event);
                }
                Check::Reject(reason) => {
                    rejects.push(reject(line_no, bytes, reason, EVENT_TIME));
                }
                Check::Ahead => {
                    held.push(Held {
                        line: line_no,
                        bytes: bytes.to_vec(),
                        event: event.into_owned(),
                    });
                    if held.len() >= JUMP_CONFIRMATION {
                        settle(&mut held, &mut guard, &mut rejects, &mut builder);
                    }
                }
            }
        }
        if eof {
            if guard.has_progress() {
                // A jump the input never confirmed: outliers.
                for h in held.drain(..) {
                    let reason = guard.ahead_reason(h.event.ts());
                    rejects.push(reject(h.line, &h.bytes, reason, EVENT_TIME));
                }
            } else {
                // A short input: its events are all there is to judge by.
                settle(&mut held, &mut guard, &mut rejects, &mut builder);
            }
        }
        let events = builder.finish();
        let empty = lines == 0 && events.counts.iter().all(|n| *n == 0);
        if !empty && tx.send(Ok(DecodedBatch { events, rejects })).is_err() {
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
    rejects: &mut Vec<Reject>,
    builder: &mut EventsBuilder,
) {
    let times: Vec<i64> = held.iter().map(|h| h.event.ts()).collect();
    let keep = guard.settle(&times);
    for (h, keep) in held.drain(..).zip(keep) {
        if keep {
            builder.add(h.event.borrowed());
        } else {
            let reason = guard.ahead_reason(h.event.ts());
            rejects.push(reject(h.line, &h.bytes, reason, EVENT_TIME));
        }
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
