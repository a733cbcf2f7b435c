//! Points as InfluxDB line protocol in a file (`--metrics-out`), the
//! default sink when no InfluxDB is configured.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use infermon_schemas::Point;

/// Appends points to a file, one line each.
pub struct LineProtocolFile {
    out: BufWriter<Box<dyn Write + Send>>,
    buf: String,
    /// Points written so far.
    pub points: u64,
}

impl LineProtocolFile {
    /// Create (truncate) `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self::new(Box::new(file)))
    }

    /// Write to any writer (benchmarks use `io::sink()`).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            buf: String::with_capacity(1 << 12),
            points: 0,
        }
    }

    /// Write a window's points.
    pub fn write(&mut self, points: &[Point]) -> io::Result<()> {
        self.buf.clear();
        for p in points {
            if p.write_line_protocol(&mut self.buf) {
                self.points += 1;
            }
        }
        self.out.write_all(self.buf.as_bytes())
    }

    /// Flush to disk.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
