//! Windowed latency of one stage: count, mean, p50..p999, max.
//!
//! A DataFusion [`Accumulator`] over a `Float64` column of milliseconds, so
//! the window engine drives it per (window, series) and user SQL can call it
//! as `latency_summary(total_ms)` (DataFusion then uses `state`/`merge_batch`
//! across partitions).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::common::scalar::ScalarStructBuilder;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

use crate::sketch::LatencySketch;

/// The quantiles reported, with their field names.
pub const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
];

/// The struct type `latency_summary` returns; its field names are the
/// `latency` measurement's field names.
pub fn latency_summary_type() -> DataType {
    let mut fields = vec![
        Field::new("count", DataType::Int64, false),
        Field::new("mean", DataType::Float64, true),
    ];
    for (name, _) in QUANTILES {
        fields.push(Field::new(name, DataType::Float64, true));
    }
    fields.push(Field::new("max", DataType::Float64, true));
    DataType::Struct(Fields::from(fields))
}

/// Sketch-backed accumulator of one latency column.
#[derive(Debug, Default, Clone)]
pub struct LatencyAccumulator {
    sketch: LatencySketch,
}

impl LatencyAccumulator {
    /// The sketch so far (for summaries that want more than `evaluate`).
    pub fn sketch(&self) -> &LatencySketch {
        &self.sketch
    }

    /// An accumulator holding `sketch` (a partial's state).
    pub fn from_sketch(sketch: LatencySketch) -> Self {
        Self { sketch }
    }

    /// Fold in another accumulator's values (exact: bin counts add).
    pub fn merge(&mut self, other: &Self) -> Result<(), crate::sketch::SketchError> {
        self.sketch.merge(&other.sketch)
    }
}

impl Accumulator for LatencyAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values[0].as_primitive_opt::<Float64Type>() else {
            return exec_err!(
                "latency_summary expects Float64, got {}",
                values[0].data_type()
            );
        };
        if values.null_count() == 0 {
            values.values().iter().for_each(|v| self.sketch.add(*v));
        } else {
            values.iter().flatten().for_each(|v| self.sketch.add(v));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let s = &self.sketch;
        let n = s.count();
        let float = |v: Option<f64>| ScalarValue::Float64(v);
        let mut b = ScalarStructBuilder::new()
            .with_scalar(
                Field::new("count", DataType::Int64, false),
                ScalarValue::Int64(Some(n as i64)),
            )
            .with_scalar(
                Field::new("mean", DataType::Float64, true),
                float((n > 0).then(|| s.sum() / n as f64)),
            );
        for (name, q) in QUANTILES {
            b = b.with_scalar(
                Field::new(name, DataType::Float64, true),
                float(s.quantile(q)),
            );
        }
        b.with_scalar(Field::new("max", DataType::Float64, true), float(s.max()))
            .build()
    }

    fn size(&self) -> usize {
        // Bins dominate; a serialized size is a fair upper bound and cheap enough
        // for DataFusion's memory accounting at window granularity.
        std::mem::size_of_val(self) + 16 * 64
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.sketch.to_bytes()))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(states) = states[0].as_any().downcast_ref::<BinaryArray>() else {
            return exec_err!("latency_summary state must be Binary");
        };
        for bytes in states.iter().flatten() {
            let merged = LatencySketch::from_bytes(bytes).and_then(|o| self.sketch.merge(&o));
            if let Err(e) = merged {
                return exec_err!("latency_summary: {e}");
            }
        }
        Ok(())
    }
}

/// `latency_summary(ms)`: the [`LatencyAccumulator`] as a SQL aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LatencySummary {
    signature: Signature,
}

impl Default for LatencySummary {
    fn default() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for LatencySummary {
    fn name(&self) -> &str {
        "latency_summary"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(latency_summary_type())
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<LatencyAccumulator>::default())
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}_sketch", args.name),
            DataType::Binary,
            true,
        ))])
    }
}
