//! Drift references from files: `infermon profile` builds them from recorded
//! traffic, and `[drift.reference_files]` loads them (a profile JSON, or a
//! recorded traffic file profiled on the spot).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use infermon_operators::{DriftConfig, Profile, ProfileCollector, WindowConfig, read_profile_file};
use infermon_schemas::{TopicNames, recording};

use crate::sources::recording::RecordingSource;

/// What reading recordings for a profile takes: the `[drift]` binning, the
/// topic names and the `[window]` event-time checks.
#[derive(Debug, Clone, Copy)]
pub struct ProfileSettings<'a> {
    /// `[drift]`.
    pub drift: &'a DriftConfig,
    /// `[topics]`.
    pub topics: &'a TopicNames,
    /// `[window]`.
    pub window: &'a WindowConfig,
}

/// Profiles per model built from every prediction in `files` (rejected
/// lines are skipped; `infermon replay` is the place to inspect them).
pub fn profile_recordings(
    settings: ProfileSettings<'_>,
    files: &[impl AsRef<Path>],
) -> anyhow::Result<BTreeMap<String, Profile>> {
    let mut collector = ProfileCollector::new(settings.drift)?;
    for path in files {
        let path = path.as_ref();
        let mut source = RecordingSource::open(
            path,
            settings.topics.clone(),
            settings.window,
            Arc::new(AtomicU64::new(0)),
        )?;
        while let Some(batch) = source.next_batch() {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            collector.add_batch(&batch.events.predictions);
        }
    }
    Ok(collector.finish())
}

/// The fixed references of `[drift.reference_files]`, by model.
pub fn load_references(settings: ProfileSettings<'_>) -> anyhow::Result<BTreeMap<String, Profile>> {
    let mut out = BTreeMap::new();
    for (model, path) in &settings.drift.reference_files {
        let profile = if recording::is_recording(path) {
            profile_recordings(settings, &[path])?
                .remove(model)
                .with_context(|| {
                    format!(
                        "drift reference {}: no predictions of model {model:?}",
                        path.display()
                    )
                })?
        } else {
            read_profile_file(path, model)?
        };
        tracing::info!(model, path = %path.display(), "drift reference loaded");
        out.insert(model.clone(), profile);
    }
    Ok(out)
}
