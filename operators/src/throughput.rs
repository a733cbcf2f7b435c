//! Windowed throughput: requests, errors, error rate, rps, mean batch size.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type, UInt32Type};
use datafusion::common::cast::as_string_array;
use datafusion::common::scalar::ScalarStructBuilder;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

/// The struct type the accumulator evaluates to; field names are the
/// `throughput` measurement's fields.
pub fn throughput_summary_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("requests", DataType::Int64, false),
        Field::new("errors", DataType::Int64, false),
        Field::new("error_rate", DataType::Float64, true),
        Field::new("rps", DataType::Float64, false),
        Field::new("mean_batch_size", DataType::Float64, true),
    ]))
}

/// Counts over `(status Utf8, batch_size UInt32)` columns.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ThroughputAccumulator {
    window_secs: f64,
    requests: i64,
    errors: i64,
    batch_size_sum: i64,
    batch_size_count: i64,
}

impl ThroughputAccumulator {
    /// `window_secs` turns the request count into a rate.
    pub fn new(window_secs: f64) -> Self {
        Self {
            window_secs,
            requests: 0,
            errors: 0,
            batch_size_sum: 0,
            batch_size_count: 0,
        }
    }

    /// Requests seen so far.
    pub fn requests(&self) -> i64 {
        self.requests
    }

    /// Failed requests so far.
    pub fn errors(&self) -> i64 {
        self.errors
    }

    /// Add another accumulator's counts.
    pub fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.batch_size_sum += other.batch_size_sum;
        self.batch_size_count += other.batch_size_count;
    }
}

impl Accumulator for ThroughputAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let status = as_string_array(&values[0])?;
        let Some(batch) = values[1].as_primitive_opt::<UInt32Type>() else {
            return exec_err!("batch_size must be UInt32, got {}", values[1].data_type());
        };
        self.requests += status.len() as i64;
        self.errors += status.iter().filter(|s| *s == Some("error")).count() as i64;
        self.batch_size_count += (batch.len() - batch.null_count()) as i64;
        self.batch_size_sum += batch.iter().flatten().map(i64::from).sum::<i64>();
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let f = |name: &str| Field::new(name, DataType::Float64, true);
        let ratio = |a: i64, b: i64| ScalarValue::Float64((b > 0).then(|| a as f64 / b as f64));
        ScalarStructBuilder::new()
            .with_scalar(
                Field::new("requests", DataType::Int64, false),
                ScalarValue::Int64(Some(self.requests)),
            )
            .with_scalar(
                Field::new("errors", DataType::Int64, false),
                ScalarValue::Int64(Some(self.errors)),
            )
            .with_scalar(f("error_rate"), ratio(self.errors, self.requests))
            .with_scalar(
                Field::new("rps", DataType::Float64, false),
                ScalarValue::Float64(Some(self.requests as f64 / self.window_secs)),
            )
            .with_scalar(
                f("mean_batch_size"),
                ratio(self.batch_size_sum, self.batch_size_count),
            )
            .build()
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok([
            self.requests,
            self.errors,
            self.batch_size_sum,
            self.batch_size_count,
        ]
        .map(|v| ScalarValue::Int64(Some(v)))
        .to_vec())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let sum = |i: usize| -> Result<i64> {
            match states[i].as_primitive_opt::<Int64Type>() {
                Some(a) => Ok(a.iter().flatten().sum()),
                None => exec_err!("throughput state {i} must be Int64"),
            }
        };
        self.requests += sum(0)?;
        self.errors += sum(1)?;
        self.batch_size_sum += sum(2)?;
        self.batch_size_count += sum(3)?;
        Ok(())
    }
}

/// `throughput_summary(status, batch_size)` as a SQL aggregate, with the
/// window length fixed at construction (it is a property of the window).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ThroughputSummary {
    signature: Signature,
    window_ms: i64,
}

impl ThroughputSummary {
    /// For windows of `window_ms`.
    pub fn new(window_ms: i64) -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::UInt32],
                Volatility::Immutable,
            ),
            window_ms,
        }
    }
}

impl AggregateUDFImpl for ThroughputSummary {
    fn name(&self) -> &str {
        "throughput_summary"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(throughput_summary_type())
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ThroughputAccumulator::new(
            self.window_ms as f64 / 1000.0,
        )))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(["requests", "errors", "batch_size_sum", "batch_size_count"]
            .map(|n| {
                Arc::new(Field::new(
                    format!("{}_{n}", args.name),
                    DataType::Int64,
                    true,
                ))
            })
            .to_vec())
    }
}
