//! Points as InfluxDB line protocol in a file (`--metrics-out`), the
//! default sink when no InfluxDB is configured.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use super::Sink;

/// Appends line protocol to a file ([`super::Sinks`] encodes it).
pub struct LineProtocolFile {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The watermark of the last push, flushed (the file's acknowledgement).
    acked: i64,
    /// The path, as logs and the replay's summary name the sink.
    name: String,
}

impl LineProtocolFile {
    /// Create (truncate) `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut out = Self::new(Box::new(file));
        out.name = path.display().to_string();
        Ok(out)
    }

    /// Write to any writer (benchmarks use `io::sink()`).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            acked: i64::MIN,
            name: "file".into(),
        }
    }
}

impl Sink for LineProtocolFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn push(&mut self, lines: &[u8], watermark: i64) -> io::Result<()> {
        self.out.write_all(lines)?;
        self.out.flush()?;
        self.acked = self.acked.max(watermark);
        Ok(())
    }

    fn acked(&self) -> i64 {
        self.acked
    }

    fn new_generation(&mut self) {
        self.acked = i64::MIN;
    }

    fn close(mut self: Box<Self>, _deadline: Duration) -> u64 {
        if let Err(e) = self.out.flush() {
            tracing::error!(error = %e, "line-protocol file: the last points could not be written");
        }
        0
    }
}
