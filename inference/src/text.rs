//! A text model: a sentence encoder such as all-MiniLM-L6-v2. The request's
//! `text` is tokenised with the model's own `tokenizer.json` (the
//! `tokenizers` crate, so ids equal Hugging Face's), run as int64
//! ids / mask / types, mean-pooled over real tokens and L2-normalised, the
//! way sentence-transformers pools this model. The score is the cosine to a
//! fixed reference query, so drift monitoring sees one scalar per request.

use std::path::Path;

use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::spec::{EncodeError, SpecError, TensorDef};

#[derive(Debug, Clone, Deserialize)]
struct TokenizerDef {
    file: String,
    max_tokens: usize,
    #[serde(default)]
    pad_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
struct ScoreDef {
    reference_query: String,
}

#[derive(Debug, Clone, Deserialize)]
struct TextSpecFile {
    model: String,
    tokenizer: TokenizerDef,
    inputs: Vec<TensorDef>,
    outputs: Vec<TensorDef>,
    score: ScoreDef,
}

/// The committed description of a text model (`feature_spec.json` with
/// `"kind": "text"`): tokenizer limits, tensor names, reference query.
#[derive(Debug, Clone)]
pub struct TextSpec {
    /// Model name the spec is for.
    pub model: String,
    /// The tokenizer file inside each version directory.
    pub tokenizer_file: String,
    /// Longest accepted text in tokens, counting [CLS] and [SEP]; longer
    /// texts are rejected, never silently truncated.
    pub max_tokens: usize,
    pad_id: i64,
    /// Input names: ids, attention mask, and (optional) token types.
    inputs: Vec<String>,
    /// Output holding token embeddings [batch, sequence, dim].
    pub output: String,
    /// The query whose cosine is the score.
    pub reference_query: String,
}

impl TextSpec {
    /// Parse a text spec; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SpecError> {
        let err = |message: String| SpecError::new(path, message);
        let f: TextSpecFile = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        if !(2..=3).contains(&f.inputs.len()) {
            return Err(err(format!(
                "a text model has 2 or 3 inputs (ids, mask, types), not {}",
                f.inputs.len()
            )));
        }
        let output = f
            .outputs
            .first()
            .ok_or_else(|| err("no outputs".into()))?
            .name
            .clone();
        Ok(Self {
            model: f.model,
            tokenizer_file: f.tokenizer.file,
            max_tokens: f.tokenizer.max_tokens,
            pad_id: f.tokenizer.pad_id,
            inputs: f.inputs.into_iter().map(|t| t.name).collect(),
            output,
            reference_query: f.score.reference_query,
        })
    }
}

/// One version's tokenizer plus the spec: text in, token ids out.
pub struct TextEncoder {
    spec: TextSpec,
    tokenizer: Tokenizer,
}

/// Token ids of a batch, padded to its longest row.
#[derive(Debug, Clone, Default)]
pub struct TokenBatch {
    /// Rows.
    pub rows: usize,
    /// Positions per row (the longest row).
    pub seq: usize,
    /// Token ids, row-major, padded with the pad id.
    pub ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<i64>,
    /// Token types: all 0 (one segment).
    pub types: Vec<i64>,
}

impl TextEncoder {
    /// Load the tokenizer of the version in `version_dir`. Padding and
    /// truncation set in the file are switched off: batches are padded to
    /// their longest row and long texts are rejected by [`Self::tokenize`].
    pub fn load(spec: TextSpec, version_dir: &Path) -> Result<Self, SpecError> {
        let path = version_dir.join(&spec.tokenizer_file);
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| SpecError::new(&path, e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| SpecError::new(&path, e))?;
        Ok(Self { spec, tokenizer })
    }

    /// The spec this encoder follows.
    pub fn spec(&self) -> &TextSpec {
        &self.spec
    }

    /// Token ids of `text` with [CLS]/[SEP]; missing, blank and too long
    /// texts are errors that say so.
    pub fn tokenize(&self, text: Option<&str>) -> Result<Vec<u32>, EncodeError> {
        let text = text
            .filter(|t| !t.trim().is_empty())
            .ok_or(EncodeError::TextMissing)?;
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        let ids = encoding.get_ids();
        if ids.len() > self.spec.max_tokens {
            return Err(EncodeError::TextTooLong {
                tokens: ids.len(),
                max: self.spec.max_tokens,
            });
        }
        Ok(ids.to_vec())
    }

    /// Pad tokenised rows into one batch.
    pub fn batch(&self, rows: &[Vec<u32>]) -> TokenBatch {
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut b = TokenBatch {
            rows: rows.len(),
            seq,
            ids: vec![self.spec.pad_id; rows.len() * seq],
            mask: vec![0; rows.len() * seq],
            types: vec![0; rows.len() * seq],
        };
        for (r, row) in rows.iter().enumerate() {
            for (p, &id) in row.iter().enumerate() {
                b.ids[r * seq + p] = i64::from(id);
                b.mask[r * seq + p] = 1;
            }
        }
        b
    }

    /// The model's inputs for `batch`, by name, borrowed from it.
    pub fn inputs<'b>(&'b self, batch: &'b TokenBatch) -> Vec<(&'b str, &'b [i64])> {
        let data = [&batch.ids, &batch.mask, &batch.types];
        self.spec
            .inputs
            .iter()
            .zip(data)
            .map(|(name, d)| (name.as_str(), d.as_slice()))
            .collect()
    }
}

/// Sentence embeddings from token embeddings `hidden` ([rows, seq, dim],
/// row-major): the mean over positions with mask 1 (accumulated in f64),
/// then L2-normalised (`x / max(‖x‖, 1e-12)`).
pub fn mean_pool_normalized(batch: &TokenBatch, hidden: &[f32], dim: usize) -> Vec<Vec<f64>> {
    (0..batch.rows)
        .map(|r| {
            let mut sum = vec![0f64; dim];
            let mut count = 0f64;
            for p in 0..batch.seq {
                if batch.mask[r * batch.seq + p] == 0 {
                    continue;
                }
                count += 1.0;
                let at = (r * batch.seq + p) * dim;
                for (s, &h) in sum.iter_mut().zip(&hidden[at..at + dim]) {
                    *s += f64::from(h);
                }
            }
            let count = count.max(1e-9);
            sum.iter_mut().for_each(|s| *s /= count);
            let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            sum.iter_mut().for_each(|s| *s /= norm);
            sum
        })
        .collect()
}

/// Cosine of two normalised embeddings.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        let batch = TokenBatch {
            rows: 2,
            seq: 2,
            ids: vec![1, 2, 3, 0],
            mask: vec![1, 1, 1, 0],
            types: vec![0; 4],
        };
        // dim 2: row 0 tokens (1,0),(3,4) → mean (2,2); row 1 token (0,5), pad (100,100)
        let hidden = [1.0, 0.0, 3.0, 4.0, 0.0, 5.0, 100.0, 100.0];
        let e = mean_pool_normalized(&batch, &hidden, 2);
        let s = 0.5f64.sqrt();
        assert!((e[0][0] - s).abs() < 1e-12 && (e[0][1] - s).abs() < 1e-12);
        assert_eq!(e[1], vec![0.0, 1.0]);
        assert!((dot(&e[0], &e[1]) - s).abs() < 1e-12);
    }
}
