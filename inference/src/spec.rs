//! A tabular model's feature spec (`feature_spec.json` beside the model):
//! which request features become which columns of the input tensor, so the
//! worker encodes exactly as the training script did.

use std::collections::BTreeMap;
use std::path::Path;

use infermon_schemas::Feature;
use serde::Deserialize;
use serde_json::Value;

/// Why a request's features cannot be encoded; the text names the feature
/// (it becomes the DLQ reason or the error event's message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// A required feature is missing or null.
    #[error("feature `{0}`: missing")]
    Missing(String),
    /// Wrong JSON type.
    #[error("feature `{name}`: expected {expected}, got {got}")]
    Type {
        /// Feature name.
        name: String,
        /// "a number" or "a string".
        expected: &'static str,
        /// The JSON type found.
        got: &'static str,
    },
    /// NaN or infinite.
    #[error("feature `{0}`: not a finite number")]
    NotFinite(String),
    /// A text model's request has no usable text.
    #[error("`text`: missing or empty")]
    TextMissing,
    /// A text longer than the model takes (never silently truncated).
    #[error("`text`: too long ({tokens} tokens > {max})")]
    TextTooLong {
        /// Tokens of the text, counting [CLS] and [SEP].
        tokens: usize,
        /// The model's limit.
        max: usize,
    },
    /// The tokenizer refused the text.
    #[error("`text`: {0}")]
    Tokenizer(String),
}

/// One feature value as the encoder sees it, whatever the request's
/// representation (JSON or decoded events).
#[derive(Debug, Clone, Copy)]
pub enum FeatureValue<'a> {
    /// A number.
    Number(f64),
    /// A string.
    Str(&'a str),
    /// Anything else, by its JSON type name.
    Other(&'static str),
}

impl<'a> FeatureValue<'a> {
    fn of_json(v: &'a Value) -> Option<Self> {
        match v {
            Value::Null => None,
            Value::Number(n) => Some(Self::Number(n.as_f64().unwrap_or(f64::NAN))),
            Value::String(s) => Some(Self::Str(s)),
            other => Some(Self::Other(json_type(other))),
        }
    }

    fn of_feature(f: &'a Feature) -> Option<Self> {
        match f {
            Feature::Number(x) => Some(Self::Number(*x)),
            Feature::Category(s) => Some(Self::Str(s)),
            Feature::Null => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Number(x) if x.fract() == 0.0 => "int",
            Self::Number(_) => "float",
            Self::Str(_) => "str",
            Self::Other(t) => t,
        }
    }
}

/// Why a spec file is unusable.
#[derive(Debug, thiserror::Error)]
#[error("feature spec {path}: {message}")]
pub struct SpecError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
struct FeatureDef {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
struct Column {
    feature: String,
    encode: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct TensorDef {
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct SpecFile {
    model: String,
    inputs: Vec<TensorDef>,
    outputs: Vec<TensorDef>,
    features: BTreeMap<String, FeatureDef>,
    columns: Vec<Column>,
}

/// How one column is computed.
#[derive(Debug, Clone)]
enum Encode {
    Number {
        feature: String,
        default: Option<f64>,
    },
    IsNull {
        feature: String,
    },
    OneHot {
        feature: String,
        value: String,
    },
}

/// The encoding of one tabular model.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    /// Model name the spec is for.
    pub model: String,
    /// Input tensor name ([batch, columns] float32).
    pub input: String,
    /// Output tensor holding the score ([batch] or [batch, 1] float32).
    pub output: String,
    columns: Vec<Encode>,
    /// (feature, must be a string) for every required feature.
    required: Vec<(String, bool)>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl FeatureSpec {
    /// Read `feature_spec.json`.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let err = |message: String| SpecError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(path, &text)
    }

    /// Parse a tabular spec; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SpecError> {
        let err = |message: String| SpecError {
            path: path.display().to_string(),
            message,
        };
        let f: SpecFile = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let input = f
            .inputs
            .first()
            .ok_or_else(|| err("no inputs".into()))?
            .name
            .clone();
        let output = f
            .outputs
            .first()
            .ok_or_else(|| err("no outputs".into()))?
            .name
            .clone();
        let mut columns = Vec::new();
        for c in &f.columns {
            let def = f
                .features
                .get(&c.feature)
                .ok_or_else(|| err(format!("column uses unknown feature `{}`", c.feature)))?;
            columns.push(match c.encode.as_str() {
                "number" => Encode::Number {
                    feature: c.feature.clone(),
                    default: def.default,
                },
                "is_null" => Encode::IsNull {
                    feature: c.feature.clone(),
                },
                "one_hot" => Encode::OneHot {
                    feature: c.feature.clone(),
                    value: c.value.clone().ok_or_else(|| {
                        err(format!("one_hot column of `{}` without value", c.feature))
                    })?,
                },
                other => return Err(err(format!("unknown encoding `{other}`"))),
            });
        }
        let required = f
            .features
            .iter()
            .filter(|(_, d)| d.required)
            .map(|(n, d)| (n.clone(), d.kind == "string"))
            .collect();
        Ok(Self {
            model: f.model,
            input,
            output,
            columns,
            required,
        })
    }

    /// Columns of the input tensor.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Append one request's row to `out` (row-major) from JSON features;
    /// on error nothing is appended.
    pub fn encode(
        &self,
        features: &serde_json::Map<String, Value>,
        out: &mut Vec<f32>,
    ) -> Result<(), EncodeError> {
        self.encode_with(
            |name| features.get(name).and_then(FeatureValue::of_json),
            out,
        )
    }

    /// [`Self::encode`] from a decoded request's features (no JSON round
    /// trip on the worker's hot path).
    pub fn encode_features(
        &self,
        features: &BTreeMap<String, Feature>,
        out: &mut Vec<f32>,
    ) -> Result<(), EncodeError> {
        self.encode_with(
            |name| features.get(name).and_then(FeatureValue::of_feature),
            out,
        )
    }

    /// Encode with `get` returning each present (non-null) feature.
    fn encode_with<'a>(
        &self,
        get: impl Fn(&str) -> Option<FeatureValue<'a>>,
        out: &mut Vec<f32>,
    ) -> Result<(), EncodeError> {
        for (name, is_string) in &self.required {
            let v = get(name).ok_or_else(|| EncodeError::Missing(name.clone()))?;
            let ok = matches!(
                (is_string, v),
                (true, FeatureValue::Str(_)) | (false, FeatureValue::Number(_))
            );
            if !ok {
                return Err(EncodeError::Type {
                    name: name.clone(),
                    expected: if *is_string { "a string" } else { "a number" },
                    got: v.type_name(),
                });
            }
        }
        let start = out.len();
        let fail = |out: &mut Vec<f32>, e: EncodeError| {
            out.truncate(start);
            Err(e)
        };
        for c in &self.columns {
            let x = match c {
                Encode::Number { feature, default } => match get(feature) {
                    Some(FeatureValue::Number(x)) if x.is_finite() => x as f32,
                    Some(FeatureValue::Number(_)) => {
                        return fail(out, EncodeError::NotFinite(feature.clone()));
                    }
                    Some(v) => {
                        return fail(
                            out,
                            EncodeError::Type {
                                name: feature.clone(),
                                expected: "a number",
                                got: v.type_name(),
                            },
                        );
                    }
                    None => match default {
                        Some(d) => *d as f32,
                        None => return fail(out, EncodeError::Missing(feature.clone())),
                    },
                },
                Encode::IsNull { feature } => f32::from(u8::from(get(feature).is_none())),
                Encode::OneHot { feature, value } => match get(feature) {
                    Some(FeatureValue::Str(s)) => f32::from(u8::from(s == value)),
                    Some(v) => {
                        return fail(
                            out,
                            EncodeError::Type {
                                name: feature.clone(),
                                expected: "a string",
                                got: v.type_name(),
                            },
                        );
                    }
                    None => 0.0,
                },
            };
            out.push(x);
        }
        Ok(())
    }
}
