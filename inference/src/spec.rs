//! A tabular model's feature spec (`feature_spec.json` beside the model):
//! which request features become which columns of the input tensor, so the
//! worker encodes exactly as the training script did.

use std::collections::BTreeMap;
use std::path::Path;

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
        let f: SpecFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
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
        features: &serde_json::Map<String, Value>,
        out: &mut Vec<f32>,
    ) -> Result<(), EncodeError> {
        let present = |name: &str| features.get(name).filter(|v| !v.is_null());
        for (name, is_string) in &self.required {
            let v = present(name).ok_or_else(|| EncodeError::Missing(name.clone()))?;
            let ok = if *is_string {
                v.is_string()
            } else {
                v.is_number()
            };
            if !ok {
                return Err(EncodeError::Type {
                    name: name.clone(),
                    expected: if *is_string { "a string" } else { "a number" },
                    got: json_type(v),
                });
            }
        }
        let start = out.len();
        for c in &self.columns {
            let x = match c {
                Encode::Number { feature, default } => match present(feature) {
                    Some(Value::Number(n)) => {
                        let x = n.as_f64().unwrap_or(f64::NAN);
                        if !x.is_finite() {
                            out.truncate(start);
                            return Err(EncodeError::NotFinite(feature.clone()));
                        }
                        x as f32
                    }
                    Some(v) => {
                        out.truncate(start);
                        return Err(EncodeError::Type {
                            name: feature.clone(),
                            expected: "a number",
                            got: json_type(v),
                        });
                    }
                    None => match default {
                        Some(d) => *d as f32,
                        None => {
                            out.truncate(start);
                            return Err(EncodeError::Missing(feature.clone()));
                        }
                    },
                },
                Encode::IsNull { feature } => f32::from(u8::from(present(feature).is_none())),
                Encode::OneHot { feature, value } => match present(feature) {
                    Some(Value::String(s)) => f32::from(u8::from(s == value)),
                    Some(v) => {
                        out.truncate(start);
                        return Err(EncodeError::Type {
                            name: feature.clone(),
                            expected: "a string",
                            got: json_type(v),
                        });
                    }
                    None => 0.0,
                },
            };
            out.push(x);
        }
        Ok(())
    }
}
