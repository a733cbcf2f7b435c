//! A tabular model's feature spec (`feature_spec.json` beside the model):
//! which request features become which columns of the input tensor, so the
//! worker encodes exactly as the training script did.

use std::collections::BTreeMap;
use std::path::Path;

use infermon_schemas::Feature;
use serde::Deserialize;

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

/// The type of a present feature, as error messages name it.
fn type_name(f: &Feature) -> &'static str {
    match f {
        Feature::Number(x) if x.fract() == 0.0 => "int",
        Feature::Number(_) => "float",
        Feature::Category(_) => "str",
        Feature::Null => "null",
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

impl SpecError {
    /// `message` about the spec (or tokenizer) file at `path`.
    pub fn new(path: &Path, message: impl std::fmt::Display) -> Self {
        Self {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
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

/// A named tensor of the model (`inputs` / `outputs` of a spec file).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TensorDef {
    pub(crate) name: String,
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

impl FeatureSpec {
    /// Parse a tabular spec; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SpecError> {
        let err = |message: String| SpecError::new(path, message);
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

    /// Append one request's row to `out` (row-major); on error nothing is
    /// appended.
    pub fn encode(
        &self,
        features: &BTreeMap<String, Feature>,
        out: &mut Vec<f32>,
    ) -> Result<(), EncodeError> {
        let get = |name: &str| features.get(name).filter(|f| **f != Feature::Null);
        for (name, is_string) in &self.required {
            let v = get(name).ok_or_else(|| EncodeError::Missing(name.clone()))?;
            let ok = matches!(
                (is_string, v),
                (true, Feature::Category(_)) | (false, Feature::Number(_))
            );
            if !ok {
                return Err(EncodeError::Type {
                    name: name.clone(),
                    expected: if *is_string { "a string" } else { "a number" },
                    got: type_name(v),
                });
            }
        }
        let start = out.len();
        for c in &self.columns {
            match c.value(get) {
                Ok(x) => out.push(x),
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Encode {
    /// This column's value, given the request's present features.
    fn value<'a>(&self, get: impl Fn(&str) -> Option<&'a Feature>) -> Result<f32, EncodeError> {
        let wrong = |name: &str, expected, f: &Feature| EncodeError::Type {
            name: name.to_string(),
            expected,
            got: type_name(f),
        };
        Ok(match self {
            Encode::Number { feature, default } => match (get(feature), default) {
                (Some(Feature::Number(x)), _) if x.is_finite() => *x as f32,
                (Some(Feature::Number(_)), _) => {
                    return Err(EncodeError::NotFinite(feature.clone()));
                }
                (Some(f), _) => return Err(wrong(feature, "a number", f)),
                (None, Some(d)) => *d as f32,
                (None, None) => return Err(EncodeError::Missing(feature.clone())),
            },
            Encode::IsNull { feature } => f32::from(u8::from(get(feature).is_none())),
            Encode::OneHot { feature, value } => match get(feature) {
                Some(Feature::Category(s)) => f32::from(u8::from(s == value)),
                Some(f) => return Err(wrong(feature, "a string", f)),
                None => 0.0,
            },
        })
    }
}
