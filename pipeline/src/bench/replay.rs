//! `infermon bench`: offline replay throughput side by side with a bare
//! `serde_json` parse of the same file, plus the two JSON → Arrow decoders
//! we could use, all in one run (this box is shared and noisy: only ratios
//! measured together mean anything).

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow_json_decoder::ReaderBuilder;
use infermon_schemas::{Decoded, PredictionBatchBuilder, TopicNames, decode_recorded_line};

use crate::config::Config;
use crate::replay::{ReplayOptions, replay};
use crate::sinks::Sinks;
use crate::sinks::alerts_file::AlertsFile;
use crate::sinks::line_protocol_file::LineProtocolFile;
use crate::sinks::rejects_file::RejectsFile;

mod arrow_json_decoder {
    pub use arrow::json::ReaderBuilder;
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A recorded traffic file.
    pub file: PathBuf,
    /// Rounds per variant.
    pub rounds: usize,
}

fn open(path: &Path) -> io::Result<Box<dyn BufRead + Send>> {
    infermon_schemas::recording::open(path)
}

fn for_each_line(path: &Path, mut f: impl FnMut(&[u8])) -> io::Result<u64> {
    let mut reader = open(path)?;
    let mut line = Vec::with_capacity(4096);
    let mut n = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(n);
        }
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        if !bytes.is_empty() {
            f(bytes);
            n += 1;
        }
    }
}

/// Read + decompress + `serde_json::from_slice::<Value>` per line.
fn bare_parse(path: &Path) -> anyhow::Result<u64> {
    let mut ok = 0u64;
    for_each_line(path, |b| {
        ok += serde_json::from_slice::<serde_json::Value>(b).is_ok() as u64;
    })?;
    Ok(ok)
}

/// Our decoder: validation + typed events + Arrow builder, one thread.
fn typed_to_arrow(path: &Path, topics: &TopicNames) -> anyhow::Result<u64> {
    let mut builder = PredictionBatchBuilder::new(&[]);
    let mut ok = 0u64;
    let mut rows = 0;
    for_each_line(path, |b| {
        if let Ok(e) = decode_recorded_line(b, topics) {
            ok += 1;
            if let Decoded::Prediction(p) = &e {
                builder.push(p);
                rows += 1;
                if rows == 4096 {
                    std::hint::black_box(builder.finish());
                    rows = 0;
                }
            }
        }
    })?;
    std::hint::black_box(builder.finish());
    Ok(ok)
}

/// arrow-json's tape decoder into an equivalent (all-nullable) schema;
/// no validation messages, no per-topic dispatch.
fn arrow_json(path: &Path) -> anyhow::Result<u64> {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    let timings = Fields::from(
        ["queue", "preprocess", "inference", "postprocess", "total"]
            .map(|s| f(s, DataType::Float64))
            .to_vec(),
    );
    let schema = Arc::new(Schema::new(vec![
        f("topic", DataType::Utf8),
        f("request_id", DataType::Utf8),
        f("ts", DataType::Int64),
        f("model", DataType::Utf8),
        f("model_version", DataType::Utf8),
        f("status", DataType::Utf8),
        f("batch_size", DataType::UInt32),
        f("score", DataType::Float64),
        f("timings_ms", DataType::Struct(timings)),
    ]));
    let mut decoder = ReaderBuilder::new(schema)
        .with_batch_size(4096)
        .build_decoder()?;
    let mut reader = open(path)?;
    let mut rows = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = decoder.decode(buf)?;
        reader.consume(n);
        if decoder.len() >= 4096
            && let Some(b) = decoder.flush()?
        {
            rows += b.num_rows() as u64;
        }
    }
    if let Some(b) = decoder.flush()? {
        rows += b.num_rows() as u64;
    }
    Ok(rows)
}

/// Run every variant `rounds` times, interleaved, and tabulate medians.
pub async fn run_bench(config: &Config, opts: &BenchOptions) -> anyhow::Result<String> {
    let names = [
        "bare serde_json::Value parse",
        "decode → Arrow (infermon, 1 thread)",
        "arrow-json decoder (no validation)",
        "offline replay (whole pipeline)",
    ];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut events = [0u64; 4];
    for _ in 0..opts.rounds.max(1) {
        for (i, times) in secs.iter_mut().enumerate() {
            let t = Instant::now();
            events[i] = match i {
                0 => bare_parse(&opts.file)?,
                1 => typed_to_arrow(&opts.file, &config.topics)?,
                2 => arrow_json(&opts.file)?,
                _ => {
                    let file = LineProtocolFile::new(Box::new(io::sink()));
                    let mut sinks = Sinks::of(vec![Box::new(file)]);
                    let mut rejects = RejectsFile::new(Path::new("/dev/null"));
                    let mut alerts = AlertsFile::create(Path::new("/dev/null"))?;
                    let r = replay(
                        config,
                        &ReplayOptions {
                            files: vec![opts.file.clone()],
                            progress: false,
                            send: None,
                        },
                        &mut sinks,
                        &mut rejects,
                        &mut alerts,
                    )
                    .await?;
                    r.total_events()
                }
            };
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = secs.iter_mut().map(median).collect();
    let base = events[0] as f64 / medians[0];
    let mut out = format!(
        "file: {} ({} lines), {} rounds, median of each\n\n{:<38} {:>10} {:>12} {:>8}\n",
        opts.file.display(),
        events[0],
        opts.rounds,
        "variant",
        "seconds",
        "events/s",
        "ratio"
    );
    for (i, name) in names.iter().enumerate() {
        let rate = events[i] as f64 / medians[i];
        out.push_str(&format!(
            "{name:<38} {:>10.3} {:>12.0} {:>7.2}x\n",
            medians[i],
            rate,
            rate / base
        ));
    }
    Ok(out)
}
