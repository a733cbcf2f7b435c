//! Answering a batch: preprocess, run and postprocess on a [`Scorer`],
//! each stage timed on the monotonic clock, then one PredictionEvent per
//! request. Lives here (an optimised crate) because it is the worker's
//! per-request hot path.

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

/// A number in [0, 1) from `key` and `salt`, the same in every worker of
/// every build: FNV-1a over the salt and the key, then a splitmix64
/// finaliser so similar ids spread evenly. (Not `DefaultHasher`, whose
/// algorithm may change between Rust releases and would then route a
/// request differently on workers built apart.)
pub fn unit_hash(key: &str, salt: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.to_le_bytes().iter().chain(key.as_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
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
        ranking: None,
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
    for ((req, arrived), result) in batch.into_iter().zip(prepared.per_request(scores)) {
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
                ranking: None,
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

#[cfg(test)]
mod tests {
    use super::unit_hash;

    /// Routing must not change between builds: these values come from an
    /// independent Python implementation of the same FNV-1a + splitmix64
    /// (`(h >> 11) / 2**53`).
    #[test]
    fn unit_hash_is_stable_across_builds() {
        assert_eq!(unit_hash("r-1", 0), 0.30226811728292047);
        assert_eq!(unit_hash("q-000000001", 0x63616e617279), 0.4647798544136257);
        assert_eq!(unit_hash("bench-42", 0x73616d706c65), 0.9115360198533341);
    }
}
