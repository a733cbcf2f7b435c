//! One model as a worker serves it: the stable version, an optional canary
//! taking a share of the requests, the queue of requests waiting for the
//! next batch, and the version changes (new version, canary promotion,
//! rollback) that happen between two batches so no request is dropped.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use infermon_schemas::PredictionEvent;

use super::config::ModelConfig;
use super::{ServingError, versions};
use crate::answer::{Queued, error_event, score, unit_hash};
use crate::{Environment, LoadError, Scorer};

/// A version being loaded and warmed up on its own thread, so serving
/// goes on meanwhile (a large model takes seconds).
struct Loading {
    version: String,
    done: mpsc::Receiver<Result<Scorer, LoadError>>,
}

/// A new version serving a share of the requests.
struct Canary {
    scorer: Scorer,
    since: Instant,
}

/// A model being served.
pub struct ServedModel {
    /// Its configuration.
    pub cfg: ModelConfig,
    stable: Scorer,
    canary: Option<Canary>,
    loading: Option<Loading>,
    /// Requests waiting for the next batch, oldest first.
    pub queue: Vec<Queued>,
}

/// A version change, for the log and the control topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// All requests now go to `to`.
    Swapped {
        /// Version served before.
        from: String,
        /// Version served now.
        to: String,
    },
    /// `version` serves `percent` % of the requests.
    CanaryStarted {
        /// The canary.
        version: String,
        /// Its share.
        percent: f64,
    },
    /// The canary serves everything now.
    Promoted {
        /// The canary, now stable.
        version: String,
    },
    /// `from` was rolled back; `to` serves everything.
    RolledBack {
        /// The version taken out.
        from: String,
        /// The version serving now.
        to: String,
    },
}

const CANARY_SALT: u64 = 0x63616e617279;
#[cfg(test)]
const SAMPLE_SALT: u64 = crate::answer::SAMPLE_SALT;

/// Whether a canary serving `percent` % takes this request (the same
/// answer in every worker of the same build).
pub fn routes_to_canary(request_id: &str, percent: f64) -> bool {
    unit_hash(request_id, CANARY_SALT) * 100.0 < percent
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl ServedModel {
    /// Load the configured (or wanted) version.
    pub fn load(env: &Environment, cfg: &ModelConfig) -> Result<Self, ServingError> {
        let version = match &cfg.version {
            Some(v) => v.clone(),
            None => versions::wanted_version(&cfg.dir)?,
        };
        let stable = Scorer::load(env, &cfg.dir, &version, &cfg.session_options())?;
        Ok(Self {
            cfg: cfg.clone(),
            stable,
            canary: None,
            loading: None,
            queue: Vec::new(),
        })
    }

    /// The stable version.
    pub fn version(&self) -> &str {
        self.stable.version()
    }

    /// The canary's version, if one runs.
    pub fn canary_version(&self) -> Option<&str> {
        self.canary.as_ref().map(|c| c.scorer.version())
    }

    /// The newest version serving any request (the canary, else stable):
    /// the one a rollback takes out.
    pub fn newest_version(&self) -> &str {
        self.canary_version().unwrap_or(self.version())
    }

    /// Where the stable version runs.
    pub fn device(&self) -> &str {
        self.stable.device()
    }

    /// Follow the model directory: a new version is loaded and warmed up on
    /// a thread of its own (serving goes on), then — at a later call —
    /// becomes the canary (with `canary_percent` > 0) or serves everything;
    /// a pin to an older version (a rollback) is followed the same way; a
    /// canary old enough is promoted. Models with a configured `version`
    /// never change. A version that fails to load leaves the current ones
    /// serving (the error is returned for the log; the next call retries).
    pub fn refresh(&mut self, env: &'static Environment) -> Result<Option<Change>, ServingError> {
        if self.cfg.version.is_some() {
            return Ok(None);
        }
        let wanted = versions::wanted_version(&self.cfg.dir)?;
        if wanted == self.version() {
            self.loading = None;
            return Ok(self.canary.take().map(|c| Change::RolledBack {
                from: c.scorer.version().to_string(),
                to: wanted,
            }));
        }
        if self.canary_version() == Some(wanted.as_str()) {
            self.loading = None;
            let canary = self.canary.as_ref().expect("checked above");
            if canary.since.elapsed() < self.cfg.canary_duration {
                return Ok(None);
            }
            let canary = self.canary.take().expect("checked above");
            self.stable = canary.scorer;
            return Ok(Some(Change::Promoted { version: wanted }));
        }
        let Some(scorer) = self.loaded(env, &wanted)? else {
            return Ok(None);
        };
        let pinned = versions::pinned_version(&self.cfg.dir).is_some();
        if self.cfg.canary_percent > 0.0 && !pinned && versions::is_newer(&wanted, self.version()) {
            self.canary = Some(Canary {
                scorer,
                since: Instant::now(),
            });
            return Ok(Some(Change::CanaryStarted {
                version: wanted,
                percent: self.cfg.canary_percent,
            }));
        }
        let from = self.newest_version().to_string();
        self.canary = None;
        self.stable = scorer;
        Ok(Some(Change::Swapped { from, to: wanted }))
    }

    /// Whether a version is being loaded in the background.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// `version`, loaded and warmed up, once its loader thread is done;
    /// starts that thread on the first call.
    fn loaded(
        &mut self,
        env: &'static Environment,
        version: &str,
    ) -> Result<Option<Scorer>, ServingError> {
        if let Some(l) = &self.loading
            && l.version == version
        {
            return match l.done.try_recv() {
                Ok(result) => {
                    self.loading = None;
                    Ok(Some(result?))
                }
                Err(mpsc::TryRecvError::Empty) => Ok(None),
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.loading = None;
                    Err(ServingError::LoaderStopped {
                        version: version.into(),
                    })
                }
            };
        }
        let (tx, done) = mpsc::channel();
        let (dir, opts, v) = (
            self.cfg.dir.clone(),
            self.cfg.session_options(),
            version.to_string(),
        );
        std::thread::Builder::new()
            .name(format!("load-{}-{version}", self.cfg.name))
            .spawn(move || {
                let _ = tx.send(Scorer::load(env, &dir, &v, &opts));
            })
            .map_err(ServingError::Thread)?;
        self.loading = Some(Loading {
            version: version.to_string(),
            done,
        });
        Ok(None)
    }

    /// Roll back the newest version if it is `from` (any when `None`): a
    /// canary is dropped, else the version before the stable one is loaded.
    /// The directory is pinned, so other workers sharing it and restarts
    /// serve the same. Returns `None` when `from` is not served (the
    /// rollback already happened here, or is about another version).
    pub fn rollback(
        &mut self,
        env: &Environment,
        from: Option<&str>,
    ) -> Result<Option<Change>, ServingError> {
        if from.is_some_and(|f| f != self.newest_version()) {
            return Ok(None);
        }
        if let Some(c) = self.canary.take() {
            versions::pin(&self.cfg.dir, self.version())?;
            return Ok(Some(Change::RolledBack {
                from: c.scorer.version().to_string(),
                to: self.version().to_string(),
            }));
        }
        let previous = versions::previous_version(&self.cfg.dir, self.version())?;
        let scorer = Scorer::load(env, &self.cfg.dir, &previous, &self.cfg.session_options())?;
        versions::pin(&self.cfg.dir, &previous)?;
        let from = std::mem::replace(&mut self.stable, scorer);
        Ok(Some(Change::RolledBack {
            from: from.version().to_string(),
            to: previous,
        }))
    }

    /// How long until the oldest queued request's batch must run.
    pub fn deadline(&self) -> Option<Duration> {
        self.queue
            .first()
            .map(|(_, t)| self.cfg.max_delay.saturating_sub(t.elapsed()))
    }

    /// A full batch is queued, or the oldest request waited `max_delay`.
    pub fn due(&self) -> bool {
        self.queue.len() >= self.cfg.max_batch || self.deadline() == Some(Duration::ZERO)
    }

    /// Take one batch off the queue and answer it: one event per request,
    /// in order (canary requests after the stable ones).
    pub fn answer_batch(&mut self, worker: &str, out: &mut Vec<PredictionEvent>) {
        let n = self.queue.len().min(self.cfg.max_batch);
        let batch: Vec<Queued> = self.queue.drain(..n).collect();
        let started = Instant::now();
        let (mut to_stable, mut to_canary) = (Vec::new(), Vec::new());
        for (req, arrived) in batch {
            let waited = started.duration_since(arrived);
            if waited > self.cfg.timeout {
                let why = format!(
                    "timed out: waited {:.1} ms in the worker (timeout {} ms)",
                    ms(waited),
                    self.cfg.timeout.as_millis()
                );
                let mut e = error_event(&req, self.version(), worker, &why, arrived);
                e.device = Some(self.device().to_string());
                out.push(e);
            } else if self.canary.is_some()
                && routes_to_canary(&req.request_id, self.cfg.canary_percent)
            {
                to_canary.push((req, arrived));
            } else {
                to_stable.push((req, arrived));
            }
        }
        let sample = self.cfg.feature_sample;
        if !to_stable.is_empty() {
            score(&mut self.stable, to_stable, worker, sample, out);
        }
        if let Some(c) = &mut self.canary
            && !to_canary.is_empty()
        {
            score(&mut c.scorer, to_canary, worker, sample, out);
        }
    }

    /// Answer everything queued (shutdown).
    pub fn drain(&mut self, worker: &str, out: &mut Vec<PredictionEvent>) {
        while !self.queue.is_empty() {
            self.answer_batch(worker, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ort_environment;
    use infermon_schemas::{Feature, RequestEvent, Status};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    fn ctr_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ctr-ranker")
    }

    /// Refresh until a version change lands (or nothing is loading).
    fn settle(s: &mut ServedModel) -> Option<Change> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let change = s.refresh(env()).unwrap();
            if change.is_some() || !s.is_loading() || Instant::now() > until {
                return change;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn env() -> &'static Environment {
        ort_environment(None).expect("ORT_DYLIB_PATH: run `eval \"$(.ci/services.sh env)\"`")
    }

    fn request(i: usize) -> RequestEvent {
        RequestEvent {
            request_id: format!("r-{i}"),
            ts: 1_763_800_000_000 + i as i64,
            model: "ctr-ranker".into(),
            segment: BTreeMap::new(),
            features: BTreeMap::from([
                ("price".to_string(), Feature::Number(10.0 + i as f64)),
                ("user_ctr_7d".to_string(), Feature::Number(0.02)),
                ("item_popularity".to_string(), Feature::Number(100.0)),
                ("category".to_string(), Feature::Category("home".into())),
                ("device".to_string(), Feature::Category("app".into())),
            ]),
            text: None,
        }
    }

    /// A copy of the CTR model directory with the given versions.
    fn model_dir(versions: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(
            ctr_dir().join("feature_spec.json"),
            d.path().join("feature_spec.json"),
        )
        .unwrap();
        for v in versions {
            std::fs::create_dir_all(d.path().join(v)).unwrap();
            std::fs::copy(
                ctr_dir().join(v).join("model.onnx"),
                d.path().join(v).join("model.onnx"),
            )
            .unwrap();
        }
        d
    }

    #[test]
    fn late_requests_time_out_and_the_rest_is_scored() {
        let mut cfg = ModelConfig::new("ctr-ranker", ctr_dir());
        cfg.version = Some("1".into());
        cfg.timeout = Duration::from_millis(50);
        let mut s = ServedModel::load(env(), &cfg).unwrap();
        let now = Instant::now();
        s.queue.push((request(0), now - Duration::from_millis(80)));
        s.queue.push((request(1), now));
        let mut out = Vec::new();
        s.answer_batch("w", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].status, Status::Error);
        let why = out[0].error.as_deref().unwrap();
        assert!(
            why.starts_with("timed out: waited") && why.contains("timeout 50 ms"),
            "{why}"
        );
        assert_eq!(out[1].status, Status::Ok);
        assert_eq!(out[1].batch_size, Some(1));
    }

    #[test]
    fn a_version_that_cannot_run_is_refused_at_load() {
        // A spec one column short of what the model takes: ONNX Runtime
        // refuses the input shape at run time.
        let d = model_dir(&["1"]);
        let path = d.path().join("feature_spec.json");
        let mut spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        spec["columns"].as_array_mut().unwrap().pop();
        std::fs::write(&path, spec.to_string()).unwrap();
        let cfg = ModelConfig::new("ctr-ranker", d.path().to_path_buf());
        // Warm-up runs the model, so the broken spec already fails to load.
        let err = ServedModel::load(env(), &cfg)
            .err()
            .expect("a model that cannot run must not load");
        assert!(format!("{err:#}").contains("inference failed"), "{err:#}");
    }

    #[test]
    fn a_failing_run_answers_its_batch_with_errors_and_the_next_batch_is_scored() {
        // MiniLM with the spec's token limit lifted past the model's 512
        // positions: a long text makes ONNX Runtime fail the whole run.
        let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inference/models/minilm");
        assert!(
            minilm.join("1/model.onnx").exists(),
            "MiniLM is not installed: bash inference/scripts/install_minilm.sh"
        );
        let d = tempfile::tempdir().unwrap();
        let mut spec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(minilm.join("feature_spec.json")).unwrap(),
        )
        .unwrap();
        spec["tokenizer"]["max_tokens"] = 5000.into();
        std::fs::write(d.path().join("feature_spec.json"), spec.to_string()).unwrap();
        std::fs::create_dir_all(d.path().join("1")).unwrap();
        for f in ["model.onnx", "tokenizer.json"] {
            std::os::unix::fs::symlink(minilm.join("1").join(f), d.path().join("1").join(f))
                .unwrap();
        }
        let mut cfg = ModelConfig::new("query-encoder", d.path().to_path_buf());
        cfg.max_batch = 2;
        let mut s = ServedModel::load(env(), &cfg).unwrap();
        let text = |i: usize, t: &str| {
            let mut r = request(i);
            r.model = "query-encoder".into();
            r.features.clear();
            r.text = Some(t.into());
            r
        };
        let now = Instant::now();
        s.queue.push((text(0, &"shoes ".repeat(700)), now));
        s.queue.push((text(1, "running shoes"), now));
        s.queue.push((text(2, "running shoes"), now));
        let mut out = Vec::new();
        s.answer_batch("w", &mut out);
        assert_eq!(
            out.len(),
            2,
            "the failed batch is answered, request by request"
        );
        for p in &out {
            assert_eq!(p.status, Status::Error);
            let why = p.error.as_deref().unwrap();
            assert!(why.starts_with("inference failed"), "{why}");
        }
        s.answer_batch("w", &mut out);
        assert_eq!(out[2].status, Status::Ok, "{:?}", out[2].error);
        assert!((out[2].score.unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_canary_serves_its_share_until_rolled_back_and_features_are_sampled() {
        let d = model_dir(&["1"]);
        let mut cfg = ModelConfig::new("ctr-ranker", d.path().to_path_buf());
        cfg.canary_percent = 25.0;
        cfg.feature_sample = 0.5;
        cfg.max_batch = 400;
        let mut s = ServedModel::load(env(), &cfg).unwrap();
        assert_eq!(s.refresh(env()).unwrap(), None);
        std::fs::create_dir_all(d.path().join("2")).unwrap();
        std::fs::copy(
            ctr_dir().join("2/model.onnx"),
            d.path().join("2/model.onnx"),
        )
        .unwrap();
        // Version 2 loads on its own thread; version 1 serves meanwhile.
        assert_eq!(s.refresh(env()).unwrap(), None);
        assert!(s.is_loading());
        s.queue.push((request(9999), Instant::now()));
        let mut meanwhile = Vec::new();
        s.answer_batch("w", &mut meanwhile);
        assert_eq!(meanwhile[0].model_version, "1");
        assert_eq!(
            settle(&mut s),
            Some(Change::CanaryStarted {
                version: "2".into(),
                percent: 25.0
            })
        );
        let now = Instant::now();
        s.queue.extend((0..400).map(|i| (request(i), now)));
        let mut out = Vec::new();
        s.answer_batch("w", &mut out);
        assert_eq!(out.len(), 400);
        let on_canary: Vec<_> = out.iter().filter(|p| p.model_version == "2").collect();
        let share = on_canary.len() as f64 / 400.0;
        assert!((0.17..0.33).contains(&share), "canary share {share}");
        // The same request always lands on the same version.
        for p in &out {
            let canary = routes_to_canary(&p.request_id, 25.0);
            assert_eq!(p.model_version == "2", canary, "{}", p.request_id);
            assert_eq!(p.status, Status::Ok);
        }
        let with_features = out.iter().filter(|p| !p.features.is_empty()).count();
        assert!(
            (150..250).contains(&with_features),
            "{with_features} of 400 kept features"
        );

        // A rollback naming another version is not for us; naming the canary drops it.
        assert_eq!(s.rollback(env(), Some("1")).unwrap(), None);
        assert_eq!(
            s.rollback(env(), Some("2")).unwrap(),
            Some(Change::RolledBack {
                from: "2".into(),
                to: "1".into()
            })
        );
        assert_eq!(versions::pinned_version(d.path()).as_deref(), Some("1"));
        assert_eq!(settle(&mut s), None, "the pin keeps version 1");
        s.queue
            .extend((0..50).map(|i| (request(i), Instant::now())));
        out.clear();
        s.answer_batch("w", &mut out);
        assert!(out.iter().all(|p| p.model_version == "1"));
        // Released: version 2 becomes a canary again, then is promoted.
        std::fs::remove_file(d.path().join(versions::PIN_FILE)).unwrap();
        s.cfg.canary_duration = Duration::ZERO;
        assert!(matches!(settle(&mut s), Some(Change::CanaryStarted { .. })));
        assert_eq!(
            settle(&mut s),
            Some(Change::Promoted {
                version: "2".into()
            })
        );
        assert_eq!(s.version(), "2");
        // A rollback of the stable version loads the one before it.
        assert_eq!(
            s.rollback(env(), None).unwrap(),
            Some(Change::RolledBack {
                from: "2".into(),
                to: "1".into()
            })
        );
        assert_eq!(s.version(), "1");
    }

    #[test]
    fn unit_hash_is_uniform_enough_and_salted() {
        let n = 20_000;
        let below = (0..n)
            .filter(|i| unit_hash(&format!("r-{i}"), CANARY_SALT) < 0.3)
            .count();
        let share = below as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.02, "{share}");
        assert_ne!(unit_hash("r-1", CANARY_SALT), unit_hash("r-1", SAMPLE_SALT));
        assert_eq!(unit_hash("r-1", CANARY_SALT), unit_hash("r-1", CANARY_SALT));
    }
}
