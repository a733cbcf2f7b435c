//! Arrow schemas and the fast path from decoded events to a `RecordBatch`.
//!
//! Operators and user SQL see predictions as one flat table, one row per
//! prediction; stage timings are `<stage>_ms` columns and each configured
//! segment key is a `segment_<key>` column.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, Float64Builder, MapBuilder, MapFieldNames, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::decode::{DecodeError, EventRef, decode};
use crate::events::{FeatureRef, PredictionEvent, PredictionRef};
use crate::topics::TopicKind;

/// Latency stages, in the order of the `stage` tag values of the contract.
pub const STAGES: [&str; 5] = ["total", "queue", "preprocess", "inference", "postprocess"];

/// Column name of a stage's timing.
pub fn stage_column(stage: &str) -> String {
    format!("{stage}_ms")
}

/// Column of numeric features (and of features sent as `null`, whatever
/// their type): `Map<Utf8, Float64>`, a null value meaning a null feature.
pub const NUMERIC_FEATURES: &str = "features_num";
/// Column of categorical (string) features: `Map<Utf8, Utf8>`.
pub const CATEGORICAL_FEATURES: &str = "features_cat";

fn map_type(value: DataType) -> DataType {
    let entries = Fields::from(vec![
        Field::new("keys", DataType::Utf8, false),
        Field::new("values", value, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

fn map_names() -> MapFieldNames {
    MapFieldNames {
        entry: "entries".into(),
        key: "keys".into(),
        value: "values".into(),
    }
}

/// Column name of a segment key.
pub fn segment_column(key: &str) -> String {
    format!("segment_{key}")
}

/// Column of a ranked prediction's list (null when not ranked).
pub const LIST_ID: &str = "list_id";
/// Column of a ranked prediction's item.
pub const ITEM_ID: &str = "item_id";
/// Column of a ranked prediction's position (1 = top).
pub const POSITION: &str = "position";

/// The Arrow schema of prediction batches, given the segment keys we monitor.
pub fn prediction_schema(segment_keys: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("request_id", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("batch_size", DataType::UInt32, true),
        Field::new("score", DataType::Float64, true),
        Field::new("worker", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new(LIST_ID, DataType::Utf8, true),
        Field::new(ITEM_ID, DataType::Utf8, true),
        Field::new(POSITION, DataType::UInt32, true),
    ];
    for stage in STAGES {
        fields.push(Field::new(
            stage_column(stage),
            DataType::Float64,
            stage != "total",
        ));
    }
    for key in segment_keys {
        fields.push(Field::new(segment_column(key), DataType::Utf8, true));
    }
    fields.push(Field::new(
        NUMERIC_FEATURES,
        map_type(DataType::Float64),
        false,
    ));
    fields.push(Field::new(
        CATEGORICAL_FEATURES,
        map_type(DataType::Utf8),
        false,
    ));
    Arc::new(Schema::new(fields))
}

/// Appends predictions column by column; `finish` yields a batch and resets.
pub struct PredictionBatchBuilder {
    schema: SchemaRef,
    segment_keys: Vec<String>,
    ts: TimestampMillisecondBuilder,
    request_id: StringBuilder,
    model: StringBuilder,
    model_version: StringBuilder,
    status: StringBuilder,
    batch_size: UInt32Builder,
    score: Float64Builder,
    worker: StringBuilder,
    device: StringBuilder,
    list_id: StringBuilder,
    item_id: StringBuilder,
    position: UInt32Builder,
    stages: [Float64Builder; 5],
    segments: Vec<StringBuilder>,
    numeric: MapBuilder<StringBuilder, Float64Builder>,
    categorical: MapBuilder<StringBuilder, StringBuilder>,
}

impl PredictionBatchBuilder {
    /// A builder for [`prediction_schema`]`(segment_keys)`.
    pub fn new(segment_keys: &[String]) -> Self {
        Self {
            schema: prediction_schema(segment_keys),
            segment_keys: segment_keys.to_vec(),
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            request_id: StringBuilder::new(),
            model: StringBuilder::new(),
            model_version: StringBuilder::new(),
            status: StringBuilder::new(),
            batch_size: UInt32Builder::new(),
            score: Float64Builder::new(),
            worker: StringBuilder::new(),
            device: StringBuilder::new(),
            list_id: StringBuilder::new(),
            item_id: StringBuilder::new(),
            position: UInt32Builder::new(),
            stages: Default::default(),
            segments: segment_keys.iter().map(|_| StringBuilder::new()).collect(),
            numeric: MapBuilder::new(
                Some(map_names()),
                StringBuilder::new(),
                Float64Builder::new(),
            ),
            categorical: MapBuilder::new(
                Some(map_names()),
                StringBuilder::new(),
                StringBuilder::new(),
            ),
        }
    }

    /// The schema of the batches this builder makes.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// True when nothing was appended since the last `finish`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append one prediction.
    pub fn push(&mut self, e: &PredictionEvent) {
        self.push_ref(&e.borrowed());
    }

    /// Append one prediction as decoded (see [`PredictionRef`]).
    pub fn push_ref(&mut self, e: &PredictionRef<'_>) {
        self.ts.append_value(e.ts);
        self.request_id.append_value(&e.request_id);
        self.model.append_value(&e.model);
        self.model_version.append_value(&e.model_version);
        self.status.append_value(e.status.as_str());
        self.batch_size.append_option(e.batch_size);
        self.score.append_option(e.score);
        self.worker.append_option(e.worker.as_deref());
        self.device.append_option(e.device.as_deref());
        let ranked = e.ranking.as_ref();
        self.list_id.append_option(ranked.map(|r| &*r.0));
        self.item_id
            .append_option(ranked.and_then(|r| r.1.as_deref()));
        self.position.append_option(ranked.map(|r| r.2));
        let t = &e.timings_ms;
        let [total, queue, pre, inf, post] = &mut self.stages;
        total.append_value(t.total);
        queue.append_option(t.queue);
        pre.append_option(t.preprocess);
        inf.append_option(t.inference);
        post.append_option(t.postprocess);
        for (key, col) in self.segment_keys.iter().zip(&mut self.segments) {
            let value = e.segment.iter().find(|(k, _)| k == key);
            col.append_option(value.map(|(_, v)| v));
        }
        for (name, value) in &e.features {
            match value {
                FeatureRef::Number(v) => {
                    self.numeric.keys().append_value(name);
                    self.numeric.values().append_value(*v);
                }
                FeatureRef::Null => {
                    self.numeric.keys().append_value(name);
                    self.numeric.values().append_null();
                }
                FeatureRef::Category(c) => {
                    self.categorical.keys().append_value(name);
                    self.categorical.values().append_value(c);
                }
            }
        }
        self.numeric
            .append(true)
            .expect("keys and values appended in pairs");
        self.categorical
            .append(true)
            .expect("keys and values appended in pairs");
    }

    /// The appended rows as a batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.request_id.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.model_version.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.batch_size.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.worker.finish()),
            Arc::new(self.device.finish()),
            Arc::new(self.list_id.finish()),
            Arc::new(self.item_id.finish()),
            Arc::new(self.position.finish()),
        ];
        columns.extend(
            self.stages
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(
            self.segments
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(self.numeric.finish()));
        columns.push(Arc::new(self.categorical.finish()));
        RecordBatch::try_new(self.schema.clone(), columns)
            .expect("builder columns match prediction_schema by construction")
    }
}

/// The fast path from a slice of prediction messages (e.g. one Kafka fetch)
/// to one Arrow batch. Messages that fail validation are left out and
/// returned with their index, so the caller can dead-letter them.
pub fn decode_predictions(
    messages: &[&[u8]],
    segment_keys: &[String],
) -> (RecordBatch, Vec<(usize, DecodeError)>) {
    let mut builder = PredictionBatchBuilder::new(segment_keys);
    let mut rejects = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match decode(TopicKind::Predictions, m) {
            Ok(EventRef::Prediction(p)) => builder.push_ref(&p),
            Ok(_) => unreachable!("decode(Predictions) yields predictions"),
            Err(e) => rejects.push((i, e)),
        }
    }
    (builder.finish(), rejects)
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Float64Array};

    use super::*;

    #[test]
    fn good_messages_become_rows_and_bad_ones_are_returned() {
        let good = br#"{"request_id":"a","ts":5,"model":"m","model_version":"1","status":"ok","timings_ms":{"total":2.5,"queue":0.5},"segment":{"site":"cn"}}"#;
        let bad =
            br#"{"request_id":"b","ts":5,"model":"m","status":"ok","timings_ms":{"total":1}}"#;
        let (batch, rejects) = decode_predictions(&[good, bad, good], &["site".to_string()]);
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].0, 1);
        assert_eq!(rejects[0].1.to_string(), "missing field model_version");
        let schema = batch.schema();
        let total = batch.column(schema.index_of("total_ms").unwrap());
        let total: &Float64Array = total.as_primitive();
        assert_eq!(total.values().to_vec(), vec![2.5, 2.5]);
        let inference = batch.column(schema.index_of("inference_ms").unwrap());
        assert_eq!(inference.null_count(), 2, "absent stages are nulls");
        let site = batch.column(schema.index_of("segment_site").unwrap());
        assert_eq!(site.as_string::<i32>().value(0), "cn");
        assert_eq!(batch.schema(), prediction_schema(&["site".to_string()]));
    }
}
