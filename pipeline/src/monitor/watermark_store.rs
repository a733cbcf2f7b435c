//! The acknowledged watermark of each partition, kept in the state
//! directory beside the offset commit.
//!
//! The same value rides in each commit's metadata, which is what a monitor
//! on another host reads after a rebalance; brokers that do not keep commit
//! metadata (Tansu, some Kafka-compatible services) lose it, and then this
//! file — one per partition, so monitors sharing a directory never write
//! the same file — is what a restarted monitor goes by.

use std::path::{Path, PathBuf};

use crate::sources::offsets::TopicPartition;

/// Per-partition watermark files under `<state_dir>/watermarks/<group>/`.
#[derive(Debug, Clone)]
pub struct WatermarkStore {
    dir: PathBuf,
}

impl WatermarkStore {
    /// The store of consumer group `group`.
    pub fn new(state_dir: &Path, group: &str) -> Self {
        Self {
            dir: state_dir.join("watermarks").join(sanitize(group)),
        }
    }

    fn path(&self, (topic, partition): &TopicPartition) -> PathBuf {
        self.dir.join(format!("{}-{partition}", sanitize(topic)))
    }

    /// The watermark last saved for `tp`.
    pub fn load(&self, tp: &TopicPartition) -> Option<i64> {
        std::fs::read_to_string(self.path(tp))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Save each partition's watermark (atomically, file by file).
    pub fn save(&self, watermarks: &[(TopicPartition, i64)]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for (tp, wm) in watermarks {
            let path = self.path(tp);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, wm.to_string())?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let s = WatermarkStore::new(dir.path(), "g/1");
        let tp = ("inference.predictions".to_string(), 3);
        assert_eq!(s.load(&tp), None);
        s.save(&[(tp.clone(), 1_763_645_760_000)]).unwrap();
        s.save(&[(("other".into(), 0), -5)]).unwrap();
        assert_eq!(s.load(&tp), Some(1_763_645_760_000));
        assert_eq!(s.load(&("other".into(), 0)), Some(-5));
    }
}
