//! A bounded on-disk queue of line-protocol segments in front of a remote
//! sink, drained in order by one writer thread.
//!
//! Every batch of points is first a file here, so a sink outage costs disk,
//! not memory, and a restart sends what an earlier run left behind. Each
//! segment carries the watermark its points were emitted at; when the writer
//! has delivered it, that watermark is *acknowledged* — the Kafka source may
//! then commit offsets up to it. When the spool holds `max_bytes`, the
//! source pauses (backpressure) instead of dropping points.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::retry::Backoff;
use crate::retry::Outcome;

/// A remote store that takes line protocol (InfluxDB v1 or v2 write API).
pub trait LineWriter: Send + 'static {
    /// One attempt to write `body` (newline-separated lines).
    fn write(&mut self, body: &[u8]) -> Outcome;
}

/// Counters of a spool, shared with /metrics.
#[derive(Debug)]
pub struct SpoolStats {
    /// Bytes waiting on disk.
    pub bytes: AtomicU64,
    /// Requests the server acknowledged.
    pub requests: AtomicU64,
    /// Lines the server acknowledged.
    pub lines: AtomicU64,
    /// Failed attempts that will be retried.
    pub retries: AtomicU64,
    /// Lines refused for good (see the rejects log).
    pub rejected_lines: AtomicU64,
    /// Sum of successful request latencies, microseconds.
    pub write_micros: AtomicU64,
    /// The last segment delivered: (its sequence number + 1, the watermark
    /// it was pushed at); (0, `i64::MIN`) before any.
    pub delivered: Mutex<(u64, i64)>,
}

impl SpoolStats {
    /// The watermark of the last delivered segment, if it is segment `since`
    /// or later (segments before that belong to an earlier window state,
    /// e.g. before a rebalance, and acknowledge nothing of the current one).
    pub fn acked_since(&self, since: u64) -> Option<i64> {
        let (next, watermark) = *self.delivered.lock().expect("delivered lock");
        (next > since).then_some(watermark)
    }
}

impl Default for SpoolStats {
    fn default() -> Self {
        Self {
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rejected_lines: AtomicU64::new(0),
            write_micros: AtomicU64::new(0),
            delivered: Mutex::new((0, i64::MIN)),
        }
    }
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    watermark: i64,
}

#[derive(Debug, Default)]
struct Queue {
    segments: VecDeque<Segment>,
    next_seq: u64,
    closing: bool,
}

struct Shared {
    dir: PathBuf,
    queue: Mutex<Queue>,
    ready: Condvar,
    stats: Arc<SpoolStats>,
    stop_now: AtomicBool,
}

/// Called with each batch of refused lines and the server's reason.
pub type RejectHook = Box<dyn FnMut(&str, &[u8]) + Send>;

/// The spool and its writer thread.
pub struct Spool {
    shared: Arc<Shared>,
    max_bytes: u64,
    writer: Option<JoinHandle<()>>,
}

impl Spool {
    /// Open (or create) the spool at `dir`, queue the segments an earlier run
    /// left there, and start the writer. Bodies sent are at most
    /// `batch_lines` lines.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        batch_lines: usize,
        backoff: Backoff,
        writer: impl LineWriter,
        on_reject: RejectHook,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("spool {}: {e}", dir.display())))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some((seq, watermark)) = parse_name(&path) else {
                continue;
            };
            let bytes = fs::metadata(&path)?.len();
            found.push((
                seq,
                Segment {
                    seq,
                    path,
                    bytes,
                    watermark,
                },
            ));
        }
        found.sort_by_key(|(seq, _)| *seq);
        let stats = Arc::new(SpoolStats::default());
        let mut queue = Queue {
            next_seq: found.last().map_or(0, |(s, _)| s + 1),
            ..Queue::default()
        };
        for (_, s) in found {
            stats.bytes.fetch_add(s.bytes, Ordering::Relaxed);
            queue.segments.push_back(s);
        }
        if !queue.segments.is_empty() {
            tracing::info!(
                spool = %dir.display(),
                segments = queue.segments.len(),
                "sending points an earlier run left in the spool"
            );
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            queue: Mutex::new(queue),
            ready: Condvar::new(),
            stats,
            stop_now: AtomicBool::new(false),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("spool {}", dir.display()))
            .spawn(move || drain(s, writer, batch_lines.max(1), backoff, on_reject))?;
        Ok(Self {
            shared,
            max_bytes,
            writer: Some(handle),
        })
    }

    /// Counters (shared with the writer).
    pub fn stats(&self) -> Arc<SpoolStats> {
        self.shared.stats.clone()
    }

    /// True when the spool holds its maximum: the source should pause.
    pub fn is_full(&self) -> bool {
        self.shared.stats.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// The sequence number the next pushed segment gets.
    pub fn next_seq(&self) -> u64 {
        self.shared.queue.lock().expect("spool lock").next_seq
    }

    /// Queue `body` (complete lines) emitted at `watermark`. An empty body
    /// still acknowledges the watermark once everything before it is sent.
    pub fn push(&self, body: &[u8], watermark: i64) -> io::Result<()> {
        let mut q = self.shared.queue.lock().expect("spool lock");
        let seq = q.next_seq;
        q.next_seq += 1;
        let path = self.shared.dir.join(format!("{seq:016}_{watermark}.lp"));
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, body)?;
        fs::rename(&tmp, &path)?;
        let bytes = body.len() as u64;
        self.shared.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        q.segments.push_back(Segment {
            seq,
            path,
            bytes,
            watermark,
        });
        self.shared.ready.notify_all();
        Ok(())
    }

    /// Stop: wait up to `deadline` for the writer to send everything, then
    /// leave the rest on disk for the next run. Returns the bytes left.
    pub fn close(mut self, deadline: Duration) -> u64 {
        {
            let mut q = self.shared.queue.lock().expect("spool lock");
            q.closing = true;
            self.shared.ready.notify_all();
        }
        let until = Instant::now() + deadline;
        while Instant::now() < until && self.writer.as_ref().is_some_and(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shared.stop_now.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        self.shared.stats.bytes.load(Ordering::Relaxed)
    }
}

fn parse_name(path: &Path) -> Option<(u64, i64)> {
    if path.extension()? != "lp" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let (seq, watermark) = stem.split_once('_')?;
    Some((seq.parse().ok()?, watermark.parse().ok()?))
}

/// The writer thread: oldest segment first, retried until delivered or
/// refused, then the next.
fn drain(
    shared: Arc<Shared>,
    mut writer: impl LineWriter,
    batch_lines: usize,
    backoff: Backoff,
    mut on_reject: RejectHook,
) {
    let stats = &shared.stats;
    loop {
        let (seq, path, bytes, watermark) = {
            let mut q = shared.queue.lock().expect("spool lock");
            loop {
                if shared.stop_now.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(s) = q.segments.front() {
                    break (s.seq, s.path.clone(), s.bytes, s.watermark);
                }
                if q.closing {
                    return;
                }
                q = shared.ready.wait(q).expect("spool lock");
            }
        };
        let body = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(segment = %path.display(), error = %e, "spool segment unreadable; skipped");
                Vec::new()
            }
        };
        for chunk in chunks(&body, batch_lines) {
            let lines = count_lines(chunk);
            let mut delays = backoff.delays();
            loop {
                let started = Instant::now();
                match writer.write(chunk) {
                    Outcome::Done => {
                        stats.requests.fetch_add(1, Ordering::Relaxed);
                        stats.lines.fetch_add(lines, Ordering::Relaxed);
                        stats
                            .write_micros
                            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        break;
                    }
                    // Refused for good: to the rejects log with the
                    // server's message, and the spool moves on.
                    Outcome::Reject(reason) => {
                        stats.rejected_lines.fetch_add(lines, Ordering::Relaxed);
                        tracing::warn!(%reason, lines, "points refused by the server; written to the rejects log");
                        on_reject(&reason, chunk);
                        break;
                    }
                    Outcome::Retry { reason, after } => {
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        let wait = backoff.wait(&mut delays, after);
                        tracing::warn!(%reason, retry_in_ms = wait.as_millis() as u64, "write failed; will retry");
                        if sleep_unless_stopped(&shared, wait) {
                            return; // points stay on disk for the next run
                        }
                    }
                }
            }
        }
        if let Err(e) = fs::remove_file(&path) {
            tracing::error!(segment = %path.display(), error = %e, "could not remove a sent spool segment");
        }
        let mut q = shared.queue.lock().expect("spool lock");
        q.segments.pop_front();
        stats.bytes.fetch_sub(bytes, Ordering::Relaxed);
        *stats.delivered.lock().expect("delivered lock") = (seq + 1, watermark);
    }
}

/// Sleep `d`, waking early when the spool is told to stop now; true if so.
fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stop_now.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    shared.stop_now.load(Ordering::Relaxed)
}

/// Full jitter on the upper half: between d/2 and d.
fn count_lines(body: &[u8]) -> u64 {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64
}

/// `body` cut at line ends into pieces of at most `lines` lines.
fn chunks(body: &[u8], lines: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut n = 0;
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' {
            n += 1;
            if n == lines {
                out.push(&body[start..=i]);
                start = i + 1;
                n = 0;
            }
        }
    }
    if start < body.len() {
        out.push(&body[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Fails the first `fail` attempts, refuses bodies containing "bad",
    /// records what it wrote.
    struct Flaky {
        fail: usize,
        written: mpsc::Sender<String>,
    }

    impl LineWriter for Flaky {
        fn write(&mut self, body: &[u8]) -> Outcome {
            let text = String::from_utf8_lossy(body).into_owned();
            if self.fail > 0 {
                self.fail -= 1;
                return Outcome::retry("503");
            }
            if text.contains("bad") {
                return Outcome::Reject("400 unable to parse".into());
            }
            self.written.send(text).unwrap();
            Outcome::Done
        }
    }

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        }
    }

    #[test]
    fn delivers_in_order_through_failures_and_acknowledges_watermarks() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let (rtx, rrx) = mpsc::channel();
        let spool = Spool::open(
            dir.path(),
            1 << 20,
            2,
            backoff(),
            Flaky {
                fail: 3,
                written: tx,
            },
            Box::new(move |reason, body| {
                rtx.send((reason.to_string(), body.len())).unwrap();
            }),
        )
        .unwrap();
        spool.push(b"a 1\nb 2\nc 3\n", 60).unwrap();
        spool.push(b"bad 4\n", 120).unwrap();
        spool.push(b"d 5\n", 180).unwrap();
        let left = spool.close(Duration::from_secs(5));
        assert_eq!(left, 0);
        let got: Vec<String> = rx.try_iter().collect();
        assert_eq!(got, ["a 1\nb 2\n", "c 3\n", "d 5\n"]);
        let rejected: Vec<_> = rrx.try_iter().collect();
        assert_eq!(rejected, [("400 unable to parse".to_string(), 6)]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn segments_survive_a_stop_and_are_sent_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel();
        // A server that never answers well: nothing is delivered.
        let spool = Spool::open(
            dir.path(),
            10,
            100,
            backoff(),
            Flaky {
                fail: usize::MAX,
                written: tx,
            },
            Box::new(|_, _| {}),
        )
        .unwrap();
        spool.push(b"x 1\ny 2\n", 60).unwrap();
        assert!(!spool.is_full());
        spool.push(b"z 3\n", 120).unwrap();
        assert!(spool.is_full(), "12 bytes >= max 10");
        assert_eq!(spool.stats().acked_since(0), None);
        assert_eq!(spool.close(Duration::from_millis(50)), 12);

        let (tx, rx) = mpsc::channel();
        let spool = Spool::open(
            dir.path(),
            10,
            100,
            backoff(),
            Flaky {
                fail: 0,
                written: tx,
            },
            Box::new(|_, _| {}),
        )
        .unwrap();
        let stats = spool.stats();
        assert_eq!(spool.close(Duration::from_secs(5)), 0);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["x 1\ny 2\n", "z 3\n"]);
        assert_eq!(stats.acked_since(0), Some(120));
        // Segments of an earlier generation acknowledge nothing after it.
        assert_eq!(stats.acked_since(2), None);
    }

    #[test]
    fn chunks_cut_at_line_ends() {
        assert_eq!(chunks(b"a\nb\nc", 2), vec![&b"a\nb\n"[..], &b"c"[..]]);
        assert!(chunks(b"", 2).is_empty());
    }
}
