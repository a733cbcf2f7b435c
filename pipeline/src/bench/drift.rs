//! `infermon bench-drift`: the drift operator on raw feature matrices, for
//! `tests/reference/drift_bench.py`, which times scipy (and Evidently, when
//! installed) on the same numbers in the same run and compares the values.
//!
//! Inputs are little-endian f64 matrices, row-major, `features` columns.
//! Arrow batches are built before the clock starts: what is timed is the
//! operator (reference profile, per-window counting, statistics), not I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::{
    Array, ArrayRef, Float64Builder, MapBuilder, MapFieldNames, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use infermon_operators::{DriftConfig, DriftOperator, ProfileCollector, SeriesKey};
use infermon_schemas::FieldValue;
use infermon_schemas::batch::NUMERIC_FEATURES;
use serde_json::json;

/// What to measure.
#[derive(Debug, Clone)]
pub struct DriftBenchOptions {
    /// Reference matrix (f64 LE, row-major).
    pub reference: PathBuf,
    /// Current-window matrix.
    pub current: PathBuf,
    /// Columns per row.
    pub features: usize,
    /// Rounds (the fastest is reported).
    pub rounds: usize,
}

fn read_matrix(path: &Path, features: usize) -> anyhow::Result<Vec<f64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() % (8 * features) != 0 {
        bail!(
            "{}: {} bytes is not a whole number of rows of {features} f64",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// The columns the drift operator reads, as the decoder builds them.
fn batches(values: &[f64], features: usize) -> Vec<RecordBatch> {
    let names: Vec<String> = (0..features).map(|i| format!("f{i:02}")).collect();
    let mut out = Vec::new();
    for chunk in values.chunks(8192 * features) {
        let rows = chunk.len() / features;
        let mut model = StringBuilder::new();
        let mut version = StringBuilder::new();
        let mut status = StringBuilder::new();
        let mut map = MapBuilder::new(
            Some(MapFieldNames {
                entry: "entries".into(),
                key: "keys".into(),
                value: "values".into(),
            }),
            StringBuilder::new(),
            Float64Builder::new(),
        );
        for row in chunk.chunks_exact(features) {
            model.append_value("bench");
            version.append_value("1");
            // No score: the bench is about features.
            status.append_value("error");
            for (name, &x) in names.iter().zip(row) {
                map.keys().append_value(name);
                map.values().append_value(x);
            }
            map.append(true).expect("keys and values in pairs");
        }
        let map = map.finish();
        let schema = Schema::new(vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("model_version", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new(NUMERIC_FEATURES, map.data_type().clone(), false),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(model.finish()),
            Arc::new(version.finish()),
            Arc::new(status.finish()),
            Arc::new(map),
        ];
        debug_assert_eq!(columns[0].len(), rows);
        out.push(RecordBatch::try_new(Arc::new(schema), columns).expect("consistent columns"));
    }
    out
}

/// Run the bench; returns a JSON report (timings in seconds, statistics per
/// feature).
pub fn run_drift_bench(opts: &DriftBenchOptions) -> anyhow::Result<serde_json::Value> {
    let reference = batches(&read_matrix(&opts.reference, opts.features)?, opts.features);
    let current = batches(&read_matrix(&opts.current, opts.features)?, opts.features);
    let config = DriftConfig {
        // The whole current matrix is one window: judge it.
        min_samples: 1,
        ..DriftConfig::default()
    };
    let key = SeriesKey {
        model: "bench".into(),
        model_version: "1".into(),
        segments: Vec::new(),
    };
    let (mut best_profile, mut best_window) = (f64::INFINITY, f64::INFINITY);
    let mut stats = BTreeMap::new();
    for _ in 0..opts.rounds.max(1) {
        let t = Instant::now();
        let mut collector = ProfileCollector::new(&config)?;
        for b in &reference {
            collector.add_batch(b);
        }
        let profiles = collector.finish();
        best_profile = best_profile.min(t.elapsed().as_secs_f64());

        let operator = DriftOperator::new(&config, 60_000, profiles)?;
        let t = Instant::now();
        let mut window = operator.new_window(&key, 0);
        for b in &current {
            let rows: Vec<u32> = (0..b.num_rows() as u32).collect();
            operator.update(&mut window, b, &rows);
        }
        let points = operator.points(&key, &window, 0);
        best_window = best_window.min(t.elapsed().as_secs_f64());
        stats = points
            .iter()
            .filter_map(|p| {
                let feature = p.tag_value("feature")?.to_string();
                let fields: serde_json::Map<String, serde_json::Value> = p
                    .fields
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            FieldValue::Float(x) => json!(x),
                            FieldValue::Int(i) => json!(i),
                            FieldValue::Bool(b) => json!(b),
                            FieldValue::Str(s) => json!(s),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                Some((feature, fields))
            })
            .collect();
    }
    Ok(json!({
        "reference_rows": reference.iter().map(RecordBatch::num_rows).sum::<usize>(),
        "current_rows": current.iter().map(RecordBatch::num_rows).sum::<usize>(),
        "features": opts.features,
        "profile_s": best_profile,
        "window_s": best_window,
        "stats": stats,
    }))
}
