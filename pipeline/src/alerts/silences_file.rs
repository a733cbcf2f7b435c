//! The silences file `infermon silence add` appends to and the monitor and
//! replays read at start-up: one [`Silence`] per JSON line.

use std::path::Path;

use infermon_operators::alerts::Silence;

/// Silences from a JSON-lines file (one [`Silence`] per line); a missing
/// file means none.
pub fn read_silences_file(path: &Path) -> Result<Vec<Silence>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let s: Silence = serde_json::from_str(l)
                .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
            s.validate()?;
            Ok(s)
        })
        .collect()
}

/// Append a silence to the file.
pub fn append_silence(path: &Path, s: &Silence) -> Result<(), String> {
    use std::io::Write as _;
    s.validate()?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let line = serde_json::to_string(s).map_err(|e| e.to_string())?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence(matchers: &[(&str, &str)], ends_at: &str) -> Silence {
        Silence {
            matchers: matchers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts_at: None,
            ends_at: ends_at.into(),
            comment: String::new(),
        }
    }

    #[test]
    fn silences_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silences.jsonl");
        assert!(read_silences_file(&path).unwrap().is_empty());
        let s = silence(&[("model", "m")], "2030-01-01T00:00:00Z");
        append_silence(&path, &s).unwrap();
        append_silence(&path, &s).unwrap();
        assert_eq!(read_silences_file(&path).unwrap(), vec![s.clone(), s]);
        std::fs::write(&path, "{not json}\n").unwrap();
        let err = read_silences_file(&path).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
