//! Drift references frozen from live traffic, kept in the state directory so
//! a restarted monitor compares windows with the same reference instead of
//! starting a new one from whatever traffic comes next.

use std::path::{Path, PathBuf};

use anyhow::Context;
use infermon_operators::FrozenReference;

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("references")
}

/// Write each reference as `references/<model>@<version>.json`.
pub fn save(state_dir: &Path, refs: &[FrozenReference]) -> anyhow::Result<()> {
    if refs.is_empty() {
        return Ok(());
    }
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for r in refs {
        let name: String = format!("{}@{}", r.profile.model, r.profile.model_version)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{name}.json"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(r)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        tracing::info!(model = %r.profile.model, version = %r.profile.model_version, path = %path.display(), "drift reference kept");
    }
    Ok(())
}

/// Every reference an earlier run kept.
pub fn load(state_dir: &Path) -> anyhow::Result<Vec<FrozenReference>> {
    let dir = dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let r: FrozenReference = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a kept drift reference", path.display()))?;
        out.push(r);
    }
    Ok(out)
}
