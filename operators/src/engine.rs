//! The window engine: routes prediction rows to (window, series) state,
//! tracks the watermark, and closes windows when it passes their end.
//!
//! Windows and watermarks live here, outside DataFusion, because Kafka data
//! arrives out of order; the per-window aggregates are DataFusion
//! accumulators driven with the rows of their (window, series).

use std::collections::BTreeMap;

use foldhash::{HashMap, HashSet};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{take, take_record_batch};
use arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use infermon_schemas::batch::{ITEM_ID, LIST_ID, POSITION, STAGES, segment_column, stage_column};
use infermon_schemas::{FeedbackEvent, FieldValue, Point, TrainingEvent, prediction_schema};

use serde::{Deserialize, Serialize};

use crate::drift::{DriftOperator, DriftWindow};
use crate::gradients::{GradientAnomaly, GradientMonitor, GradientWindow};
use crate::latency::LatencyAccumulator;
use crate::quality::{LabelCounts, LabelJoin, Ranking, Scored};
use crate::throughput::ThroughputAccumulator;
use crate::watermark::{InputId, WatermarkTracker};
use crate::window::{WindowConfig, WindowConfigError, WindowSpec};

/// Errors from the engine; all mean the input batch did not match the schema.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad window settings.
    #[error(transparent)]
    Config(#[from] WindowConfigError),
    /// A batch whose columns are not the prediction schema's.
    #[error("prediction batch does not match the schema: {0}")]
    Schema(String),
    /// An accumulator failed.
    #[error("aggregate failed: {0}")]
    Aggregate(#[from] datafusion::error::DataFusionError),
    /// Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The identity of a monitored series: the tags of its points.
///
/// Every prediction counts in its (model, version) series, and, for each
/// configured segment key, in the series of that key's value alone
/// (`site=mx` across every surface): one dimension at a time, so a segment
/// is big enough to judge, and the cross-product never multiplies series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Empty for the whole model version; else one (segment key, value).
    pub segments: Vec<(String, String)>,
}

/// The tag naming a segment series' key (`dimension=site`), so rules can
/// tell segment series (`"*"`) from whole versions (`""`).
pub const DIMENSION_TAG: &str = "dimension";

/// The value standing for a segment key's values beyond
/// `max_segment_values`.
pub const OTHER_SEGMENT: &str = "__other__";

impl SeriesKey {
    /// A point of `measurement` at `ts_ms` tagged with this series.
    pub fn point(&self, measurement: &str, ts_ms: i64) -> Point {
        let mut p = Point::new(measurement, ts_ms)
            .tag("model", &self.model)
            .tag("model_version", &self.model_version);
        for (k, v) in &self.segments {
            p = p.tag(DIMENSION_TAG, k).tag(k, v);
        }
        p
    }
}

/// Running totals per series, for summaries and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesStats {
    /// Prediction events seen.
    pub events: u64,
    /// Events that arrived after at least one of their windows had closed.
    pub late: u64,
}

/// Accumulators of one series in one window.
#[derive(Debug, Clone)]
pub struct SeriesState {
    /// One latency accumulator per stage, in [`STAGES`] order.
    pub stages: [LatencyAccumulator; 5],
    /// Request and error counts.
    pub throughput: ThroughputAccumulator,
    /// Feature and score counts in the reference's bins (drift enabled).
    pub drift: Option<DriftWindow>,
}

impl SeriesState {
    /// Fold in the state of the same series and window from another
    /// partial: sketches and counters add (exact).
    pub fn merge(&mut self, other: &SeriesState) -> Result<(), EngineError> {
        for (a, b) in self.stages.iter_mut().zip(&other.stages) {
            a.merge(b)
                .map_err(|e| EngineError::Schema(format!("latency sketch: {e}")))?;
        }
        self.throughput.merge(&other.throughput);
        match (&mut self.drift, &other.drift) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.drift = Some(b.clone()),
            _ => {}
        }
        Ok(())
    }
}

/// A window whose end the watermark has passed: the state of its series,
/// final for the events this engine saw. One engine's closed window is a
/// partial; the merge stage (`Merger`) adds up the partials of a window
/// before the topology turns it into points.
#[derive(Debug)]
pub struct ClosedWindow {
    /// Inclusive start, ms.
    pub start: i64,
    /// Exclusive end, ms; the timestamp of every point of this window.
    pub end: i64,
    /// State per series, sorted by key.
    pub series: Vec<(SeriesKey, SeriesState)>,
    /// The window's rows, kept only when custom SQL metrics need them.
    pub batches: Vec<RecordBatch>,
    /// Late events counted since the previous window closed, per series.
    pub late: Vec<(SeriesKey, u64)>,
    /// Training summaries per (model, run_id).
    pub gradients: Vec<((String, String), GradientWindow)>,
}

/// The label state of one series in one window, once its label wait
/// ended: mergeable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelState {
    /// Labelled predictions (None: none labelled).
    pub labels: Option<LabelCounts>,
    /// Judged ranked lists (None: no ranked prediction).
    pub ranking: Option<Ranking>,
}

impl LabelState {
    /// Add another partial's labels of the same series and window.
    pub fn merge(&mut self, other: &LabelState) {
        match (&mut self.labels, &other.labels) {
            (Some(a), Some(b)) => a.merge(b),
            (a @ None, Some(b)) => *a = Some(b.clone()),
            _ => {}
        }
        match (&mut self.ranking, &other.ranking) {
            (Some(a), Some(b)) => a.merge(b),
            (a @ None, Some(b)) => *a = Some(b.clone()),
            _ => {}
        }
    }
}

/// The labels of one window whose label wait ended, per series sorted by
/// key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledWindow {
    /// End of the window, ms.
    pub end: i64,
    /// Label state per series.
    pub series: Vec<(SeriesKey, LabelState)>,
}

impl ClosedWindow {
    /// The contract's `latency` and `throughput` points, `late_events` and
    /// `gradients`.
    pub fn points(&mut self) -> Result<Vec<Point>, EngineError> {
        let mut out = Vec::new();
        for (key, state) in &mut self.series {
            for (stage, acc) in STAGES.iter().zip(&mut state.stages) {
                if acc.sketch().count() == 0 {
                    continue;
                }
                let mut p = key.point("latency", self.end).tag("stage", *stage);
                p.fields = struct_fields(&acc.evaluate()?);
                out.push(p);
            }
            let mut p = key.point("throughput", self.end);
            p.fields = struct_fields(&state.throughput.evaluate()?);
            out.push(p);
        }
        for (key, n) in &self.late {
            out.push(
                key.point("late_events", self.end)
                    .field("count", FieldValue::Int(*n as i64)),
            );
        }
        for ((model, run_id), g) in &self.gradients {
            out.push(g.point(model, run_id, self.end));
        }
        add_rest_of_model(&mut out);
        Ok(out)
    }
}

/// Segment `throughput` points get the counts of the rest of their model
/// version (`rest_requests`, `rest_errors`), so a rule can test a segment
/// against the rest.
fn add_rest_of_model(points: &mut [Point]) {
    let count = |p: &Point, f: &str| match p.field_value(f) {
        Some(FieldValue::Int(n)) => *n,
        _ => 0,
    };
    let version = |p: &Point| {
        (
            p.tag_value("model").unwrap_or_default().to_string(),
            p.tag_value("model_version").unwrap_or_default().to_string(),
        )
    };
    let whole: HashMap<(String, String), (i64, i64)> = points
        .iter()
        .filter(|p| p.measurement == "throughput" && p.tag_value(DIMENSION_TAG).is_none())
        .map(|p| (version(p), (count(p, "requests"), count(p, "errors"))))
        .collect();
    for p in points
        .iter_mut()
        .filter(|p| p.measurement == "throughput" && p.tag_value(DIMENSION_TAG).is_some())
    {
        if let Some(&(requests, errors)) = whole.get(&version(p)) {
            let rest_requests = requests - count(p, "requests");
            let rest_errors = errors - count(p, "errors");
            p.fields
                .push(("rest_requests".into(), FieldValue::Int(rest_requests)));
            p.fields
                .push(("rest_errors".into(), FieldValue::Int(rest_errors)));
        }
    }
}

/// Flattens an accumulator's struct result into point fields (nulls skipped).
pub fn struct_fields(value: &ScalarValue) -> Vec<(String, FieldValue)> {
    let ScalarValue::Struct(s) = value else {
        return Vec::new();
    };
    s.fields()
        .iter()
        .zip(s.columns())
        .filter_map(|(f, col)| Some((f.name().clone(), field_value(col, 0)?)))
        .collect()
}

/// Row `i` of an Arrow column as a field value, if it is a number or bool.
pub fn field_value(col: &ArrayRef, i: usize) -> Option<FieldValue> {
    if col.is_null(i) {
        return None;
    }
    match ScalarValue::try_from_array(col, i).ok()? {
        ScalarValue::Int8(Some(v)) => Some(FieldValue::Int(v.into())),
        ScalarValue::Int16(Some(v)) => Some(FieldValue::Int(v.into())),
        ScalarValue::Int32(Some(v)) => Some(FieldValue::Int(v.into())),
        ScalarValue::Int64(Some(v)) => Some(FieldValue::Int(v)),
        ScalarValue::UInt8(Some(v)) => Some(FieldValue::Int(v.into())),
        ScalarValue::UInt16(Some(v)) => Some(FieldValue::Int(v.into())),
        ScalarValue::UInt32(Some(v)) => Some(FieldValue::Int(v.into())),
        ScalarValue::UInt64(Some(v)) => Some(FieldValue::Int(i64::try_from(v).ok()?)),
        ScalarValue::Float32(Some(v)) => Some(FieldValue::Float(v.into())),
        ScalarValue::Float64(Some(v)) => Some(FieldValue::Float(v)),
        ScalarValue::Boolean(Some(v)) => Some(FieldValue::Bool(v)),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct OpenWindow {
    series: HashMap<u32, SeriesState>,
    batches: Vec<RecordBatch>,
    /// Gradient summaries per (model, run_id).
    gradients: BTreeMap<(String, String), GradientWindow>,
}

/// Column positions of the prediction schema that the engine reads.
#[derive(Debug, Clone)]
struct Columns {
    request_id: usize,
    score: usize,
    model: usize,
    model_version: usize,
    status: usize,
    batch_size: usize,
    list_id: usize,
    item_id: usize,
    position: usize,
    stages: [usize; 5],
    segments: Vec<usize>,
}

impl Columns {
    fn new(schema: &SchemaRef, segment_keys: &[String]) -> Result<Self, EngineError> {
        let idx = |name: &str| {
            schema
                .index_of(name)
                .map_err(|_| EngineError::Schema(format!("missing column {name}")))
        };
        let mut stages = [0; 5];
        for (slot, stage) in stages.iter_mut().zip(STAGES) {
            *slot = idx(&stage_column(stage))?;
        }
        Ok(Self {
            request_id: idx("request_id")?,
            score: idx("score")?,
            model: idx("model")?,
            model_version: idx("model_version")?,
            status: idx("status")?,
            batch_size: idx("batch_size")?,
            list_id: idx(LIST_ID)?,
            item_id: idx(ITEM_ID)?,
            position: idx(POSITION)?,
            stages,
            segments: segment_keys
                .iter()
                .map(|k| idx(&segment_column(k)))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Event-time windows over prediction batches.
pub struct WindowEngine {
    spec: WindowSpec,
    segment_keys: Vec<String>,
    /// Per segment key: the values that have a series of their own.
    segment_values: Vec<HashSet<String>>,
    max_segment_values: usize,
    /// Per (version series, segment key): each admitted value's series.
    dimension_ids: HashMap<(u32, usize), HashMap<String, u32>>,
    /// Scratch: the segment series of the current row.
    row_dims: Vec<u32>,
    columns: Columns,
    watermarks: WatermarkTracker,
    keep_batches: bool,
    series_ids: HashMap<String, u32>,
    series: Vec<SeriesKey>,
    stats: Vec<SeriesStats>,
    late_pending: BTreeMap<u32, u64>,
    open: BTreeMap<i64, OpenWindow>,
    /// Scratch: row indices per (window start, series id), reused per batch.
    groups: HashMap<(i64, u32), Vec<u32>>,
    key_buf: String,
    /// The (model, version) series of the last row: rows of one model come
    /// in runs, and a compare is cheaper than building and hashing a key.
    last_series: Option<u32>,
    drift: Option<DriftOperator>,
    gradients: Option<GradientMonitor>,
    labels: Option<LabelJoin>,
    /// This engine freezes drift references from its own rows (false when
    /// an owner feeds them to every shard, as `Shards` does).
    feeds_reference: bool,
    /// Late events of other topics (training steps whose window closed).
    late_other: u64,
    /// Label state of windows whose label wait ended, not yet taken.
    labelled: Vec<LabelledWindow>,
    /// Per input: windows ending at or before this were emitted by an earlier
    /// run (restart from a committed offset), so its rows skip them.
    floors: Vec<i64>,
}

impl WindowEngine {
    /// An engine for [`prediction_schema`]`(config.segment_keys)` batches.
    /// `keep_batches` keeps each window's rows for custom SQL metrics.
    pub fn new(config: &WindowConfig, keep_batches: bool) -> Result<Self, EngineError> {
        let schema = prediction_schema(&config.segment_keys);
        Ok(Self {
            spec: WindowSpec::new(config)?,
            segment_keys: config.segment_keys.clone(),
            segment_values: vec![HashSet::default(); config.segment_keys.len()],
            max_segment_values: config.max_segment_values,
            dimension_ids: HashMap::default(),
            row_dims: Vec::new(),
            columns: Columns::new(&schema, &config.segment_keys)?,
            watermarks: WatermarkTracker::new(
                config.allowed_lateness.as_millis() as i64,
                config.idle_timeout.as_millis() as i64,
            ),
            keep_batches,
            series_ids: HashMap::default(),
            series: Vec::new(),
            stats: Vec::new(),
            late_pending: BTreeMap::new(),
            open: BTreeMap::new(),
            groups: HashMap::default(),
            key_buf: String::new(),
            last_series: None,
            drift: None,
            gradients: None,
            labels: None,
            feeds_reference: true,
            late_other: 0,
            labelled: Vec::new(),
            floors: Vec::new(),
        })
    }

    /// Also compute drift, gradient anomalies and label quality (each when
    /// given).
    pub fn with_operators(
        mut self,
        drift: Option<DriftOperator>,
        gradients: Option<GradientMonitor>,
        labels: Option<LabelJoin>,
    ) -> Self {
        self.drift = drift;
        self.gradients = gradients;
        self.labels = labels;
        self
    }

    /// Leave freezing drift references to an owner that feeds every
    /// shard the same ones ([`DriftOperator::restore`]).
    pub(crate) fn without_reference_feed(mut self) -> Self {
        self.feeds_reference = false;
        self
    }

    /// The drift operator, when drift is computed (to keep or restore its
    /// references).
    pub fn drift_mut(&mut self) -> Option<&mut DriftOperator> {
        self.drift.as_mut()
    }

    /// Counters of the feedback join, when quality is computed.
    pub fn label_stats(&self) -> Option<crate::quality::JoinStats> {
        self.labels.as_ref().map(|l| l.stats())
    }

    /// Training steps that arrived after their window closed.
    pub fn late_training_steps(&self) -> u64 {
        self.late_other
    }

    /// Judge training steps from `input` and add them to their windows.
    /// Anomalies are returned at once, not held until a window closes.
    pub fn push_training(
        &mut self,
        input: InputId,
        events: &[TrainingEvent],
        now_ms: i64,
    ) -> Vec<GradientAnomaly> {
        let floor = self.floor(input);
        let Some(monitor) = self.gradients.as_mut() else {
            return Vec::new();
        };
        if events.is_empty() {
            return Vec::new();
        }
        let others = self.watermarks.others_bound(input, now_ms);
        let mut max_ts = self.watermarks.input_max(input).unwrap_or(i64::MIN);
        let mut watermark = self.watermarks.current();
        let mut anomalies = Vec::new();
        for e in events {
            if e.ts > max_ts {
                max_ts = e.ts;
                watermark = self.watermarks.with_input_at(others, max_ts);
            }
            let verdict = monitor.observe(e);
            let mut late = false;
            for start in self.spec.starts(e.ts) {
                if self.spec.end(start) <= floor {
                    continue;
                }
                if watermark.is_some_and(|w| self.spec.end(start) <= w) {
                    late = true;
                    continue;
                }
                self.open
                    .entry(start)
                    .or_default()
                    .gradients
                    .entry((e.model.clone(), e.run_id.clone()))
                    .or_default()
                    .record(e, &verdict);
            }
            self.late_other += u64::from(late);
            // Steps an earlier run judged (their windows are emitted) had
            // their anomalies written then.
            if e.ts >= floor {
                anomalies.extend(verdict.anomalies);
            }
        }
        self.watermarks.observe(input, max_ts, now_ms);
        anomalies
    }

    /// Join feedback labels to the predictions waiting for them.
    pub fn push_feedback<'e>(&mut self, events: impl IntoIterator<Item = &'e FeedbackEvent>) {
        if let Some(labels) = self.labels.as_mut() {
            for e in events {
                labels.add_label(&e.request_id, e.item_id.as_deref(), e.label, e.ts);
            }
        }
    }

    /// Window geometry.
    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// Register an input (file or partition) with the watermark tracker.
    pub fn add_input(&mut self, now_ms: i64) -> InputId {
        let id = self.watermarks.add_input(now_ms);
        self.floors.resize(id + 1, i64::MIN);
        id
    }

    /// Rows of `input` skip windows ending at or before `floor_ms`: an
    /// earlier run emitted those (a consumer resuming from a committed
    /// offset re-reads rows of them, which must not overwrite the complete
    /// results with partial ones). Label quality of such a window is still
    /// computed while its label wait lasts past the floor.
    pub fn set_floor(&mut self, input: InputId, floor_ms: i64) {
        self.floors[input] = floor_ms;
    }

    fn floor(&self, input: InputId) -> i64 {
        self.floors.get(input).copied().unwrap_or(i64::MIN)
    }

    /// Event time progressed on `input` without predictions (other topics).
    pub fn observe(&mut self, input: InputId, max_ts: i64, now_ms: i64) {
        self.watermarks.observe(input, max_ts, now_ms);
    }

    /// `input` has data waiting to be read (a lagging or paused
    /// partition): it must hold the watermark, however long it was silent.
    pub fn touch_input(&mut self, input: InputId, now_ms: i64) {
        self.watermarks.touch(input, now_ms);
    }

    /// The input is exhausted.
    pub fn finish_input(&mut self, input: InputId) {
        self.watermarks.finish(input);
    }

    /// Every input is finished or idle ([`WatermarkTracker::is_idle`]).
    pub fn is_idle(&self, now_ms: i64) -> bool {
        self.watermarks.is_idle(now_ms)
    }

    /// Newest event time `input` has delivered.
    pub(crate) fn input_max(&self, input: InputId) -> Option<i64> {
        self.watermarks.input_max(input)
    }

    /// The current watermark.
    pub fn watermark(&self) -> Option<i64> {
        self.watermarks.current()
    }

    /// Windows currently open (bounded by lateness and window size).
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Totals per series so far, sorted by key.
    pub fn series_stats(&self) -> Vec<(SeriesKey, SeriesStats)> {
        let mut v: Vec<_> = self
            .series
            .iter()
            .cloned()
            .zip(self.stats.clone())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Route a batch of predictions from `input` into its windows. Rows whose
    /// window already closed are counted as late for their series (and still
    /// go to any of their windows that are open).
    pub fn push_predictions(
        &mut self,
        input: InputId,
        batch: &RecordBatch,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ts = timestamps(batch)?;
        let event_max = running_max(ts, self.watermarks.input_max(input));
        let rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
        self.push_rows(input, batch, &rows, &event_max, now_ms)
    }

    /// Route `rows` of a batch of `input` into their windows, judging each
    /// row's lateness at `event_max[row]`: the newest event time of the
    /// input up to that row, over every row of the batch. Shards given
    /// disjoint rows of one batch so judge each row as one engine given the
    /// whole batch would.
    pub(crate) fn push_rows(
        &mut self,
        input: InputId,
        batch: &RecordBatch,
        rows: &[u32],
        event_max: &[i64],
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let Some(&batch_max) = event_max.last() else {
            return Ok(());
        };
        let c = self.columns.clone();
        let ts = timestamps(batch)?;
        let string_col = |i: usize| -> Result<&StringArray, EngineError> {
            batch
                .column(i)
                .as_string_opt::<i32>()
                .ok_or_else(|| EngineError::Schema(format!("column {i} must be Utf8")))
        };
        let model = string_col(c.model)?;
        let version = string_col(c.model_version)?;
        let request_id = string_col(c.request_id)?;
        let list_id = string_col(c.list_id)?;
        let item_id = string_col(c.item_id)?;
        let position = batch
            .column(c.position)
            .as_primitive_opt::<arrow::datatypes::UInt32Type>()
            .ok_or_else(|| EngineError::Schema("position must be UInt32".into()))?;
        let status = string_col(c.status)?;
        let score = batch
            .column(c.score)
            .as_primitive_opt::<arrow::datatypes::Float64Type>()
            .ok_or_else(|| EngineError::Schema("score must be Float64".into()))?;
        let mut rows_by_series: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut ends = Vec::new();
        let segments: Vec<&StringArray> = c
            .segments
            .iter()
            .map(|&i| string_col(i))
            .collect::<Result<_, _>>()?;

        // Rows are judged one by one, as if the watermark advanced after each
        // (the result does not depend on how rows were cut into batches).
        let floor = self.floor(input);
        let label_floor = floor.saturating_sub(self.labels.as_ref().map_or(0, |l| l.wait_ms()));
        let others = self.watermarks.others_bound(input, now_ms);
        let mut max_ts = self.watermarks.input_max(input).unwrap_or(i64::MIN);
        let mut watermark = self.watermarks.current();
        for g in self.groups.values_mut() {
            g.clear();
        }
        let feeds_reference = self.feeds_reference;
        for &row in rows {
            let row = row as usize;
            let t = ts.value(row);
            if event_max[row] > max_ts {
                max_ts = event_max[row];
                watermark = self.watermarks.with_input_at(others, max_ts);
            }
            let id = self.series_id(model.value(row), version.value(row), None);
            self.segment_series(id, &segments, row);
            self.stats[id as usize].events += 1;
            if self.drift.is_some() && feeds_reference {
                rows_by_series.entry(id).or_default().push(row as u32);
            }
            let mut late = false;
            ends.clear();
            for start in self.spec.starts(t) {
                let end = self.spec.end(start);
                if end <= floor {
                    if end > label_floor {
                        ends.push(end);
                    }
                    continue;
                }
                if watermark.is_some_and(|w| end <= w) {
                    late = true;
                } else {
                    self.groups.entry((start, id)).or_default().push(row as u32);
                    for &dim in &self.row_dims {
                        self.groups
                            .entry((start, dim))
                            .or_default()
                            .push(row as u32);
                    }
                    ends.push(self.spec.end(start));
                }
            }
            if let Some(labels) = self.labels.as_mut()
                && score.is_valid(row)
                && status.value(row) == "ok"
            {
                let ranked = list_id.is_valid(row) && position.is_valid(row);
                let scored = Scored {
                    request_id: request_id.value(row),
                    item_id: item_id.is_valid(row).then(|| item_id.value(row)),
                    list: ranked.then(|| (list_id.value(row), position.value(row))),
                    score: score.value(row),
                };
                labels.add_prediction(scored, id, &ends);
            }
            if late {
                self.stats[id as usize].late += 1;
                *self.late_pending.entry(id).or_default() += 1;
            }
        }

        // References first: a row past a version's reference period freezes
        // it, and the windows below then count into its bins.
        if let Some(drift) = self.drift.as_mut() {
            for (id, rows) in &rows_by_series {
                let key = &self.series[*id as usize];
                drift.feed_reference(&key.model, &key.model_version, batch, rows);
            }
        }

        let window_secs = self.spec.size_ms as f64 / 1000.0;
        let mut rows_per_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (&(start, id), rows) in &self.groups {
            if rows.is_empty() {
                continue;
            }
            let indices = UInt32Array::from(rows.clone());
            let col = |i: usize| take(batch.column(i), &indices, None);
            let window = self.open.entry(start).or_default();
            let drift = self.drift.as_ref();
            let key = &self.series[id as usize];
            let whole = key.segments.is_empty();
            let state = window.series.entry(id).or_insert_with(|| SeriesState {
                stages: Default::default(),
                throughput: ThroughputAccumulator::new(window_secs),
                // Drift is judged per model version only: per segment it
                // would multiply the cost and the chance alarms.
                drift: drift.filter(|_| whole).map(|d| d.new_window(key, start)),
            });
            if let (Some(d), Some(w)) = (drift, state.drift.as_mut()) {
                d.update(w, batch, rows);
            }
            for (acc, &i) in state.stages.iter_mut().zip(&c.stages) {
                acc.update_batch(&[col(i)?])?;
            }
            state
                .throughput
                .update_batch(&[col(c.status)?, col(c.batch_size)?])?;
            if self.keep_batches && whole {
                rows_per_window.entry(start).or_default().extend(rows);
            }
        }
        for (start, mut rows) in rows_per_window {
            rows.sort_unstable();
            let indices = UInt32Array::from(rows);
            let part = take_record_batch(batch, &indices)?;
            if let Some(w) = self.open.get_mut(&start) {
                w.batches.push(part);
            }
        }
        self.groups.retain(|_, rows| !rows.is_empty());
        self.watermarks
            .observe(input, max_ts.max(batch_max), now_ms);
        Ok(())
    }

    /// The series of (model, version), or of one segment key's value.
    fn series_id(&mut self, model: &str, version: &str, segment: Option<(usize, &str)>) -> u32 {
        if segment.is_none()
            && let Some(id) = self.last_series
            && let key = &self.series[id as usize]
            && key.model == model
            && key.model_version == version
        {
            return id;
        }
        let buf = &mut self.key_buf;
        buf.clear();
        buf.push_str(model);
        buf.push('\u{1f}');
        buf.push_str(version);
        if let Some((k, v)) = segment {
            buf.push('\u{1f}');
            buf.push_str(&self.segment_keys[k]);
            buf.push('\u{1f}');
            buf.push_str(v);
        }
        let id = match self.series_ids.get(buf.as_str()) {
            Some(&id) => id,
            None => self.new_series(model, version, segment),
        };
        if segment.is_none() {
            self.last_series = Some(id);
        }
        id
    }

    /// Register the series of (model, version), or of one segment key's
    /// value, whose key is in `key_buf`.
    fn new_series(&mut self, model: &str, version: &str, segment: Option<(usize, &str)>) -> u32 {
        let id = self.series.len() as u32;
        self.series_ids.insert(self.key_buf.clone(), id);
        self.series.push(SeriesKey {
            model: model.to_string(),
            model_version: version.to_string(),
            segments: segment
                .map(|(k, v)| (self.segment_keys[k].clone(), v.to_string()))
                .into_iter()
                .collect(),
        });
        self.stats.push(SeriesStats::default());
        id
    }

    /// The segment series of one row (whose version series is `whole`)
    /// into `row_dims`: one per configured key with a value, the first
    /// `max_segment_values` values of a key having series of their own and
    /// the rest sharing [`OTHER_SEGMENT`]. Known values cost two small
    /// lookups, no string built.
    fn segment_series(&mut self, whole: u32, segments: &[&StringArray], row: usize) {
        self.row_dims.clear();
        for (k, s) in segments.iter().enumerate() {
            if !s.is_valid(row) || s.value(row).is_empty() {
                continue;
            }
            let value = s.value(row);
            let known = self
                .dimension_ids
                .get(&(whole, k))
                .and_then(|m| m.get(value));
            if let Some(&id) = known {
                self.row_dims.push(id);
                continue;
            }
            let values = &mut self.segment_values[k];
            let admitted = values.contains(value)
                || (values.len() < self.max_segment_values && values.insert(value.to_string()));
            let key = &self.series[whole as usize];
            let (model, version) = (key.model.clone(), key.model_version.clone());
            let id = if admitted {
                let id = self.series_id(&model, &version, Some((k, value)));
                self.dimension_ids
                    .entry((whole, k))
                    .or_default()
                    .insert(value.to_string(), id);
                id
            } else {
                // Not remembered per value: their number is unbounded.
                self.series_id(&model, &version, Some((k, OTHER_SEGMENT)))
            };
            self.row_dims.push(id);
        }
    }

    /// Advance the watermark to processing time `now_ms` and return every
    /// window whose end it has passed, oldest first.
    pub fn fire(&mut self, now_ms: i64) -> Vec<ClosedWindow> {
        match self.watermarks.advance(now_ms) {
            Some(w) => self.close_until(Some(w)),
            None => Vec::new(),
        }
    }

    /// End of input: close every open window.
    pub fn flush(&mut self) -> Vec<ClosedWindow> {
        self.close_until(None)
    }

    fn close_until(&mut self, watermark: Option<i64>) -> Vec<ClosedWindow> {
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            let end = self.spec.end(start);
            if watermark.is_some_and(|w| end > w) {
                break;
            }
            let window = entry.remove();
            let mut series: Vec<_> = window
                .series
                .into_iter()
                .map(|(id, s)| (self.series[id as usize].clone(), s))
                .collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            closed.push(ClosedWindow {
                start,
                end,
                series,
                batches: window.batches,
                late: Vec::new(),
                gradients: window.gradients.into_iter().collect(),
            });
        }
        if let Some(labels) = self.labels.as_mut() {
            let series = &self.series;
            for j in labels.emit(watermark) {
                if self.labelled.last().is_none_or(|l| l.end != j.end) {
                    self.labelled.push(LabelledWindow {
                        end: j.end,
                        series: Vec::new(),
                    });
                }
                let state = LabelState {
                    labels: j.labels,
                    ranking: j.ranking,
                };
                let window = self.labelled.last_mut().expect("pushed above");
                window
                    .series
                    .push((series[j.series as usize].clone(), state));
            }
            for l in &mut self.labelled {
                l.series.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        // Late counts ride on the last window closed now; if none closed they
        // wait for the next one (or the final flush).
        if let Some(last) = closed.last_mut() {
            last.late = std::mem::take(&mut self.late_pending)
                .into_iter()
                .map(|(id, n)| (self.series[id as usize].clone(), n))
                .collect();
        }
        closed
    }

    /// Label state of the windows whose label wait ended (oldest first),
    /// taken once.
    pub fn take_labelled(&mut self) -> Vec<LabelledWindow> {
        std::mem::take(&mut self.labelled)
    }
}

/// The `ts` column of a prediction batch.
pub(crate) fn timestamps(
    batch: &RecordBatch,
) -> Result<&arrow::array::TimestampMillisecondArray, EngineError> {
    batch
        .column_by_name("ts")
        .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
        .ok_or_else(|| EngineError::Schema("ts must be a Timestamp(ms) column".into()))
}

/// The newest event time up to each row, starting from `before`.
pub(crate) fn running_max(
    ts: &arrow::array::TimestampMillisecondArray,
    before: Option<i64>,
) -> Vec<i64> {
    let mut max = before.unwrap_or(i64::MIN);
    ts.values()
        .iter()
        .map(|&t| {
            max = max.max(t);
            max
        })
        .collect()
}

/// The schema the engine expects, re-exported for callers building batches.
pub fn engine_schema(config: &WindowConfig) -> SchemaRef {
    prediction_schema(&config.segment_keys)
}
