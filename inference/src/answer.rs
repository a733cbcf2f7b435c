//! Answering a batch: preprocess, run and postprocess on a [`Scorer`],
//! each stage timed on the monotonic clock, then one PredictionEvent per
//! request. Lives here (an optimised crate) because it is the worker's
//! per-request hot path.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use infermon_schemas::{PredictionEvent, RequestEvent, Status, Timings};

use crate::Scorer;

/// A request waiting for its batch, with when the worker read it.
pub type Queued = (RequestEvent, Instant);

/// Salt of the feature-sampling hash.
pub const SAMPLE_SALT: u64 = 0x73616d706c65;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A number in [0, 1) from `key` and `salt`, the same in every worker.
pub fn unit_hash(key: &str, salt: u64) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    key.hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// An error answer to `req`.
pub fn error_event(
    req: &RequestEvent,
    version: &str,
    worker: &str,
    why: &str,
    arrived: Instant,
) -> PredictionEvent {
    PredictionEvent {
        request_id: req.request_id.clone(),
        ts: req.ts,
        model: req.model.clone(),
        model_version: version.to_string(),
        worker: Some(worker.to_string()),
        device: None,
        status: Status::Error,
        error: Some(why.to_string()),
        batch_size: None,
        timings_ms: Timings {
            total: ms(arrived.elapsed()),
            ..Timings::default()
        },
        score: None,
        features: req.features.clone(),
        segment: req.segment.clone(),
    }
}

/// Preprocess, run and postprocess one batch on `scorer`, timing each
/// stage on the monotonic clock; one event per request, in order.
pub fn score(
    scorer: &mut Scorer,
    batch: Vec<Queued>,
    worker: &str,
    feature_sample: f64,
    out: &mut Vec<PredictionEvent>,
) {
    let started = Instant::now();
    let prepared = scorer.prepare(batch.iter().map(|(r, _)| r));
    let good = prepared.good();
    let preprocessed = Instant::now();
    let raw = if good > 0 {
        Some(scorer.infer(&prepared))
    } else {
        None
    };
    let inferred = Instant::now();
    let scores = match raw {
        Some(Ok(raw)) => scorer.finish(&prepared, raw).map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e.to_string()),
        None => Ok(Vec::new()),
    };
    let done = Instant::now();
    let timings = |arrived: Instant| Timings {
        queue: Some(ms(started.saturating_duration_since(arrived))),
        preprocess: Some(ms(preprocessed - started)),
        inference: Some(ms(inferred - preprocessed)),
        postprocess: Some(ms(done - inferred)),
        total: ms(done.saturating_duration_since(arrived)),
    };
    let mut next = 0;
    for ((req, arrived), outcome) in batch.into_iter().zip(prepared.outcome) {
        let result = outcome
            .map_err(|e| e.to_string())
            .and_then(|()| match &scores {
                Ok(v) => {
                    next += 1;
                    Ok(v[next - 1])
                }
                Err(e) => Err(e.clone()),
            });
        let keep_features =
            feature_sample >= 1.0 || unit_hash(&req.request_id, SAMPLE_SALT) < feature_sample;
        let mut event = match result {
            Ok(score) => PredictionEvent {
                request_id: req.request_id,
                ts: req.ts,
                model: req.model,
                model_version: scorer.version().to_string(),
                worker: Some(worker.to_string()),
                device: Some(scorer.device().to_string()),
                status: Status::Ok,
                error: None,
                batch_size: Some(good as u32),
                timings_ms: Timings::default(),
                score: Some(score),
                features: req.features,
                segment: req.segment,
            },
            Err(why) => {
                let mut e = error_event(&req, scorer.version(), worker, &why, arrived);
                e.device = Some(scorer.device().to_string());
                e
            }
        };
        if !keep_features {
            event.features.clear();
        }
        event.timings_ms = timings(arrived);
        out.push(event);
    }
}
