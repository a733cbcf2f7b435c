//! Custom window metrics written as SQL in the config.
//!
//! Each query is planned (parsed, resolved, optimised) once at start-up
//! against a table called `window` with the prediction schema. When a window
//! closes, the table is pointed at that window's rows and the stored plan
//! runs. Result rows become points: string columns are tags, numeric and
//! boolean columns are fields, the timestamp is the window end.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{AggregateUDF, Expr, LogicalPlan, TableType};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use infermon_schemas::Point;
use serde::{Deserialize, Serialize};

use crate::engine::field_value;
use crate::latency::LatencySummary;
use crate::throughput::ThroughputSummary;

/// One custom metric: a measurement name and the query that computes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlMetricConfig {
    /// Measurement the result rows are written to.
    pub measurement: String,
    /// A query over the table `window`, e.g.
    /// `SELECT model, avg(score) AS mean_score FROM window GROUP BY model`.
    pub query: String,
}

/// Errors planning or running a custom metric; they name the metric.
#[derive(Debug, thiserror::Error)]
#[error("custom metric {measurement:?}: {source}")]
pub struct SqlMetricError {
    measurement: String,
    #[source]
    source: DataFusionError,
}

/// The `window` table: whatever rows the current window holds.
#[derive(Debug)]
struct WindowTable {
    schema: SchemaRef,
    rows: Mutex<Vec<RecordBatch>>,
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Temporary
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let rows = self.rows.lock().expect("window table lock").clone();
        MemTable::try_new(self.schema.clone(), vec![rows])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// The configured custom metrics, planned once.
pub struct SqlMetrics {
    ctx: SessionContext,
    table: Arc<WindowTable>,
    plans: Vec<(String, LogicalPlan)>,
}

impl SqlMetrics {
    /// Plan every query against `schema`. Fails at start-up, naming the
    /// metric, if a query does not parse or does not fit the schema.
    /// `latency_summary(ms)` and `throughput_summary(status, batch_size)`
    /// are available to the queries.
    pub async fn new(
        configs: &[SqlMetricConfig],
        schema: SchemaRef,
        window_ms: i64,
    ) -> Result<Self, SqlMetricError> {
        let ctx = SessionContext::new();
        ctx.register_udaf(AggregateUDF::from(LatencySummary::default()));
        ctx.register_udaf(AggregateUDF::from(ThroughputSummary::new(window_ms)));
        let table = Arc::new(WindowTable {
            schema,
            rows: Mutex::new(Vec::new()),
        });
        let wrap = |measurement: &str| {
            let measurement = measurement.to_string();
            move |source| SqlMetricError {
                measurement: measurement.clone(),
                source,
            }
        };
        ctx.register_table("window", table.clone())
            .map_err(wrap("window"))?;
        let mut plans = Vec::new();
        for c in configs {
            let df = ctx.sql(&c.query).await.map_err(wrap(&c.measurement))?;
            let plan = df.into_optimized_plan().map_err(wrap(&c.measurement))?;
            plans.push((c.measurement.clone(), plan));
        }
        Ok(Self { ctx, table, plans })
    }

    /// The measurement of the first custom metric, if any.
    pub fn first(&self) -> Option<&str> {
        self.plans.first().map(|(m, _)| m.as_str())
    }

    /// True when no custom metric is configured (the engine then need not
    /// keep rows).
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Run every metric over one window's rows; points are stamped `end_ms`.
    pub async fn evaluate(
        &self,
        end_ms: i64,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<Point>, SqlMetricError> {
        *self.table.rows.lock().expect("window table lock") = batches;
        let mut points = Vec::new();
        for (measurement, plan) in &self.plans {
            let run = async {
                let state = self.ctx.state();
                let physical = state.create_physical_plan(plan).await?;
                collect(physical, self.ctx.task_ctx()).await
            };
            let results = run.await.map_err(|source| SqlMetricError {
                measurement: measurement.clone(),
                source,
            })?;
            for batch in &results {
                rows_to_points(measurement, end_ms, batch, &mut points);
            }
        }
        self.table.rows.lock().expect("window table lock").clear();
        Ok(points)
    }
}

fn rows_to_points(measurement: &str, end_ms: i64, batch: &RecordBatch, out: &mut Vec<Point>) {
    let schema = batch.schema();
    let mut tags = Vec::new();
    let mut fields = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        match f.data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Dictionary(..) => {
                if let Ok(col) = cast(batch.column(i), &DataType::Utf8) {
                    tags.push((f.name().clone(), col));
                }
            }
            _ => fields.push((f.name().clone(), batch.column(i).clone())),
        }
    }
    for row in 0..batch.num_rows() {
        let mut p = Point::new(measurement, end_ms);
        for (name, col) in &tags {
            if col.is_valid(row) {
                p = p.tag(name, col.as_string::<i32>().value(row));
            }
        }
        for (name, col) in &fields {
            if let Some(v) = field_value(col, row) {
                p = p.field(name, v);
            }
        }
        if !p.fields.is_empty() {
            out.push(p);
        }
    }
}
