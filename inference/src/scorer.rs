//! One servable model version of either kind — tabular (a feature spec) or
//! text (a tokenizer and a sentence encoder) — behind the three stages the
//! worker times: prepare (preprocess), infer, finish (postprocess).
//!
//! A model directory holds `feature_spec.json` (its `"kind"` says which)
//! and one sub-directory per version with `model.onnx` (and, for text
//! models, the tokenizer file).

use std::path::Path;

use infermon_schemas::RequestEvent;
use ort::environment::Environment;

use crate::runtime::{Model, RuntimeError, SessionOptions};
use crate::spec::{EncodeError, FeatureSpec, SpecError};
use crate::text::{TextEncoder, TextSpec, TokenBatch, dot, mean_pool_normalized};

/// Why a model version cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `feature_spec.json` or the tokenizer is unusable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// ONNX Runtime refused the model or a warm-up run failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The model-specific half of a scorer.
enum Kind {
    Tabular(FeatureSpec),
    Text {
        /// Boxed: a tokenizer is large, a tabular spec small.
        encoder: Box<TextEncoder>,
        /// Normalised embedding of the spec's reference query.
        reference: Vec<f64>,
    },
}

/// A loaded, warmed-up model version.
pub struct Scorer {
    kind: Kind,
    model: Model,
    version: String,
}

/// A batch after preprocessing: per request whether it could be encoded,
/// and the model input of those that could (in order).
pub struct Prepared {
    /// One entry per request of the batch.
    pub outcome: Vec<Result<(), EncodeError>>,
    input: Input,
}

enum Input {
    Rows { rows: usize, data: Vec<f32> },
    Tokens(TokenBatch),
}

impl Prepared {
    /// Requests that will be run.
    pub fn good(&self) -> usize {
        self.outcome.iter().filter(|r| r.is_ok()).count()
    }

    /// Each request's score, or why it has none: an encoding error stays
    /// with its request; a failed run (`scores` is `Err`) fails every
    /// encodable one. `scores` holds one score per encodable request.
    pub fn per_request(self, scores: Result<Vec<f64>, String>) -> Vec<Result<f64, String>> {
        let mut next = scores.map(Vec::into_iter);
        self.outcome
            .into_iter()
            .map(|o| {
                o.map_err(|e| e.to_string())?;
                match &mut next {
                    Ok(it) => it.next().ok_or_else(|| "missing score".to_string()),
                    Err(e) => Err(e.clone()),
                }
            })
            .collect()
    }
}

/// What the session returned, before postprocessing.
pub struct Raw {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Read the model kind from `feature_spec.json` in `dir`.
fn read_spec(dir: &Path) -> Result<(std::path::PathBuf, String, String), SpecError> {
    let path = dir.join("feature_spec.json");
    let text = std::fs::read_to_string(&path).map_err(|e| SpecError::new(&path, e))?;
    let kind = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .unwrap_or_else(|| "tabular".into());
    Ok((path, text, kind))
}

impl Scorer {
    /// Load `dir/<version>/model.onnx` (and its tokenizer for a text
    /// model), then warm it up with one run so the first real batch does
    /// not pay for ONNX Runtime's lazy initialisation.
    pub fn load(
        env: &Environment,
        dir: &Path,
        version: &str,
        opts: &SessionOptions,
    ) -> Result<Self, LoadError> {
        let (spec_path, spec_text, kind) = read_spec(dir)?;
        let version_dir = dir.join(version);
        let model = Model::load(env, &version_dir.join("model.onnx"), opts)?;
        let kind = match kind.as_str() {
            "text" => {
                let spec = TextSpec::parse(&spec_path, &spec_text)?;
                let encoder = TextEncoder::load(spec, &version_dir)?;
                Kind::Text {
                    encoder: Box::new(encoder),
                    reference: Vec::new(),
                }
            }
            "tabular" => Kind::Tabular(FeatureSpec::parse(&spec_path, &spec_text)?),
            other => {
                return Err(SpecError::new(
                    &spec_path,
                    format!("unknown kind `{other}` (tabular or text)"),
                )
                .into());
            }
        };
        let mut scorer = Self {
            kind,
            model,
            version: version.to_string(),
        };
        scorer.warm_up()?;
        Ok(scorer)
    }

    /// The version served.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where it runs (`cpu` or `cuda:N`).
    pub fn device(&self) -> &str {
        &self.model.device
    }

    /// The model name its spec is for.
    pub fn model_name(&self) -> &str {
        match &self.kind {
            Kind::Tabular(spec) => &spec.model,
            Kind::Text { encoder, .. } => &encoder.spec().model,
        }
    }

    /// One run on a neutral input; for a text model this is the reference
    /// query, whose embedding the scores are measured against.
    fn warm_up(&mut self) -> Result<(), RuntimeError> {
        match &self.kind {
            Kind::Tabular(spec) => {
                let width = spec.width();
                let p = Prepared {
                    outcome: vec![Ok(())],
                    input: Input::Rows {
                        rows: 1,
                        data: vec![0.0; width],
                    },
                };
                self.infer(&p)?;
            }
            Kind::Text { encoder, .. } => {
                let query = encoder.spec().reference_query.clone();
                let ids = encoder
                    .tokenize(Some(&query))
                    .map_err(|e| RuntimeError::Run(format!("reference query: {e}")))?;
                let batch = encoder.batch(&[ids]);
                let p = Prepared {
                    outcome: vec![Ok(())],
                    input: Input::Tokens(batch),
                };
                let raw = self.infer(&p)?;
                let embedding = self.embeddings(&p, &raw)?.remove(0);
                if let Kind::Text { reference, .. } = &mut self.kind {
                    *reference = embedding;
                }
            }
        }
        Ok(())
    }

    /// Preprocess: encode every request (features or text); failures are
    /// kept per request and leave the rest of the batch unaffected.
    pub fn prepare<'a>(&self, requests: impl Iterator<Item = &'a RequestEvent>) -> Prepared {
        match &self.kind {
            Kind::Tabular(spec) => {
                let mut data = Vec::new();
                let outcome: Vec<_> = requests
                    .map(|r| spec.encode(&r.features, &mut data))
                    .collect();
                let rows = data.len() / spec.width().max(1);
                Prepared {
                    outcome,
                    input: Input::Rows { rows, data },
                }
            }
            Kind::Text { encoder, .. } => {
                let mut rows = Vec::new();
                let outcome = requests
                    .map(|r| {
                        encoder
                            .tokenize(r.text.as_deref())
                            .map(|ids| rows.push(ids))
                    })
                    .collect();
                Prepared {
                    outcome,
                    input: Input::Tokens(encoder.batch(&rows)),
                }
            }
        }
    }

    /// Run the session on the encodable requests of `p`.
    pub fn infer(&mut self, p: &Prepared) -> Result<Raw, RuntimeError> {
        match (&self.kind, &p.input) {
            (Kind::Tabular(spec), Input::Rows { rows, data }) => {
                let out =
                    self.model
                        .run_f32(&spec.input, *rows, spec.width(), data, &spec.output)?;
                Ok(Raw {
                    shape: vec![*rows],
                    data: out,
                })
            }
            (Kind::Text { encoder, .. }, Input::Tokens(batch)) => {
                let (shape, data) = self.model.run_i64(
                    [batch.rows, batch.seq],
                    &encoder.inputs(batch),
                    &encoder.spec().output,
                )?;
                Ok(Raw { shape, data })
            }
            _ => Err(RuntimeError::Run(
                "prepared input of the other model kind".into(),
            )),
        }
    }

    fn embeddings(&self, p: &Prepared, raw: &Raw) -> Result<Vec<Vec<f64>>, RuntimeError> {
        let Input::Tokens(batch) = &p.input else {
            return Err(RuntimeError::Run("not a text batch".into()));
        };
        match raw.shape.as_slice() {
            [b, s, dim] if *b == batch.rows && *s == batch.seq => {
                Ok(mean_pool_normalized(batch, &raw.data, *dim))
            }
            other => Err(RuntimeError::Run(format!(
                "output shape {other:?} for a batch of {} × {}",
                batch.rows, batch.seq
            ))),
        }
    }

    /// Postprocess: one score per encodable request, in order.
    pub fn finish(&self, p: &Prepared, raw: Raw) -> Result<Vec<f64>, RuntimeError> {
        match &self.kind {
            Kind::Tabular(_) => {
                let rows = raw.shape[0];
                if raw.data.len() != rows {
                    return Err(RuntimeError::Run(format!(
                        "{} scores for {rows} rows",
                        raw.data.len()
                    )));
                }
                Ok(raw.data.into_iter().map(f64::from).collect())
            }
            Kind::Text { reference, .. } => Ok(self
                .embeddings(p, &raw)?
                .iter()
                .map(|e| dot(e, reference))
                .collect()),
        }
    }

    /// prepare → infer → finish in one call (tests, benchmarks).
    pub fn score<'a>(
        &mut self,
        requests: impl Iterator<Item = &'a RequestEvent>,
    ) -> Vec<Result<f64, String>> {
        let p = self.prepare(requests);
        let scores = if p.good() > 0 {
            self.infer(&p).and_then(|raw| self.finish(&p, raw))
        } else {
            Ok(Vec::new())
        };
        p.per_request(scores.map_err(|e| e.to_string()))
    }
}
