//! Model directories: `<dir>/<version>/model.onnx`, numbered versions, and
//! the `SERVE_VERSION` pin a rollback writes so every worker sharing the
//! directory (and every restart) serves the rolled-back version.

use std::path::Path;

use super::ServingError;

/// A file in a model directory naming the version every worker must serve
/// (written by a rollback, removed by `infermon model release`); without
/// it the highest version is served.
pub const PIN_FILE: &str = "SERVE_VERSION";

/// The version workers should serve from `dir`: the pinned one, else the
/// highest numbered one.
pub fn wanted_version(dir: &Path) -> Result<String, ServingError> {
    match pinned_version(dir) {
        Some(v) => Ok(v),
        None => highest_version(dir),
    }
}

/// The version pinned in `dir`, if any.
pub fn pinned_version(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(PIN_FILE))
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Pin `dir` to `version` (atomically: readers see the old or the new pin).
pub fn pin(dir: &Path, version: &str) -> Result<(), ServingError> {
    let tmp = dir.join(format!(".{PIN_FILE}.tmp"));
    let pin = dir.join(PIN_FILE);
    std::fs::write(&tmp, version)
        .and_then(|()| std::fs::rename(&tmp, &pin))
        .map_err(|source| ServingError::Pin { path: pin, source })
}

/// The numbered version below `version` in `dir`.
pub fn previous_version(dir: &Path, version: &str) -> Result<String, ServingError> {
    let now: u64 = version.parse().map_err(|_| ServingError::NotANumber {
        version: version.into(),
    })?;
    versions(dir)?
        .iter()
        .rev()
        .find(|(n, _)| *n < now)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ServingError::NoEarlier {
            version: version.into(),
            dir: dir.into(),
        })
}

/// Pin `dir` to the version before the one served now (rollback); returns
/// (from, to).
pub fn rollback(dir: &Path) -> Result<(String, String), ServingError> {
    let current = wanted_version(dir)?;
    let previous = previous_version(dir, &current)?;
    pin(dir, &previous)?;
    Ok((current, previous))
}

/// The numbered versions with a `model.onnx` under `dir`, oldest first.
pub fn versions(dir: &Path) -> Result<Vec<(u64, String)>, ServingError> {
    let mut versions: Vec<(u64, String)> = std::fs::read_dir(dir)
        .map_err(|source| ServingError::Dir {
            dir: dir.into(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.onnx").exists())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.parse::<u64>().ok().map(|n| (n, name))
        })
        .collect();
    versions.sort();
    Ok(versions)
}

/// The highest numbered version in `dir`.
pub fn highest_version(dir: &Path) -> Result<String, ServingError> {
    versions(dir)?
        .pop()
        .map(|(_, v)| v)
        .ok_or_else(|| ServingError::NoVersion { dir: dir.into() })
}

/// Whether version `a` is numbered above `b`.
pub fn is_newer(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_pins_the_previous_version_and_release_follows_the_highest() {
        let d = tempfile::tempdir().unwrap();
        for v in ["1", "3", "10"] {
            std::fs::create_dir_all(d.path().join(v)).unwrap();
            std::fs::write(d.path().join(v).join("model.onnx"), b"x").unwrap();
        }
        std::fs::create_dir_all(d.path().join("11")).unwrap(); // no model yet
        assert_eq!(wanted_version(d.path()).unwrap(), "10");
        assert_eq!(rollback(d.path()).unwrap(), ("10".into(), "3".into()));
        assert_eq!(wanted_version(d.path()).unwrap(), "3");
        assert_eq!(rollback(d.path()).unwrap(), ("3".into(), "1".into()));
        let err = rollback(d.path()).unwrap_err().to_string();
        assert!(err.contains("no version before 1"), "{err}");
        std::fs::remove_file(d.path().join(PIN_FILE)).unwrap();
        assert_eq!(wanted_version(d.path()).unwrap(), "10");
        assert!(is_newer("10", "9") && !is_newer("9", "10"));
    }
}
