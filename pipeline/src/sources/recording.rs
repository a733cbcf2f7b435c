//! Recorded traffic files (JSON Lines, optionally zstd) as a source of
//! decoded, Arrow-batched events (decoded by [`crate::decode::file`]).
//!
//! Each file is read and decoded on its own thread (decoding is the costly
//! half of a replay, so it overlaps with the window operators), and handed
//! over in batches through a small bounded channel.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread;

use infermon_operators::WindowConfig;
use infermon_schemas::{TopicNames, recording};

use crate::decode::file::{DecodedBatch, decode_loop};

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
