//! Lines that failed to decode, kept with their reason (`--rejects-out`).
//! Created on the first reject, so a clean run leaves no empty file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sources::recording::Reject;

/// A JSON-lines file of rejected input.
pub struct RejectsFile {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    /// Rejects written.
    pub count: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    file: &'a str,
    line: u64,
    reason: &'a str,
    raw: &'a str,
}

impl RejectsFile {
    /// Rejects will go to `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            out: None,
            count: 0,
        }
    }

    /// Where the rejects go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record one reject from `file`.
    pub fn write(&mut self, file: &str, r: &Reject) -> io::Result<()> {
        if self.out.is_none() {
            let f = File::create(&self.path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
            self.out = Some(BufWriter::new(f));
        }
        let out = self.out.as_mut().expect("just created");
        serde_json::to_writer(
            &mut *out,
            &Line {
                file,
                line: r.line,
                reason: &r.reason,
                raw: &r.raw,
            },
        )?;
        out.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Flush to disk.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}
