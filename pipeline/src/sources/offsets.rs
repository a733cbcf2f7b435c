//! Which Kafka offset is safe to commit, per partition.
//!
//! At-least-once means the committed offset of a partition must be the
//! lowest offset whose message still contributes to a result not yet written
//! and acknowledged by every sink. Each message read is *pinned* under the
//! watermark at which its last contribution is emitted (its last window's
//! end, plus the label wait for predictions and feedback); once the sinks
//! have acknowledged everything emitted up to a watermark, the pins at or
//! below it are released. State is one entry per distinct release point
//! (open windows), never per message.

use std::collections::{BTreeMap, HashMap};

/// A (topic, partition) pair.
pub type TopicPartition = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    /// Offset after the last message read (where a consumer would go on).
    next: Option<i64>,
    /// Release watermark → lowest offset pinned under it.
    pinned: BTreeMap<i64, i64>,
}

/// Pinned offsets per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, Partition>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The message at `offset` was read; it is needed until the watermark
    /// reaches `release_at` (`None`: not needed once read, e.g. a message
    /// handed to the DLQ).
    pub fn read(&mut self, tp: &TopicPartition, offset: i64, release_at: Option<i64>) {
        self.read_all(tp, [(offset, release_at)]);
    }

    /// [`OffsetTracker::read`] for many messages of one partition (one
    /// lookup per batch, not per message).
    pub fn read_all(
        &mut self,
        tp: &TopicPartition,
        reads: impl IntoIterator<Item = (i64, Option<i64>)>,
    ) {
        let p = match self.partitions.get_mut(tp) {
            Some(p) => p,
            None => self.partitions.entry(tp.clone()).or_default(),
        };
        for (offset, release_at) in reads {
            p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
            if let Some(at) = release_at {
                let min = p.pinned.entry(at).or_insert(offset);
                *min = (*min).min(offset);
            }
        }
    }

    /// Everything emitted up to `watermark` is acknowledged by every sink:
    /// release the pins at or below it.
    pub fn release(&mut self, watermark: i64) {
        for p in self.partitions.values_mut() {
            p.pinned = p.pinned.split_off(&(watermark + 1));
        }
    }

    /// The offset to commit for each partition read so far: the lowest
    /// still pinned, else the one after the last read.
    pub fn committable(&self) -> Vec<(TopicPartition, i64)> {
        let mut out: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(tp, p)| {
                let lowest = p.pinned.values().min().copied();
                lowest.or(p.next).map(|o| (tp.clone(), o))
            })
            .collect();
        out.sort();
        out
    }

    /// Offsets pinned (distinct release points) across partitions, for
    /// metrics.
    pub fn pinned_points(&self) -> usize {
        self.partitions.values().map(|p| p.pinned.len()).sum()
    }

    /// Forget everything (the partitions were revoked).
    pub fn clear(&mut self) {
        self.partitions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("inference.predictions".into(), p)
    }

    #[test]
    fn commits_the_lowest_offset_of_an_unemitted_window() {
        let mut t = OffsetTracker::new();
        // Offsets 0..3 in the window ending at 60, 3..6 in the one ending at
        // 120, with one straggler for 60 at offset 4.
        for o in 0..3 {
            t.read(&tp(0), o, Some(60));
        }
        t.read(&tp(0), 3, Some(120));
        t.read(&tp(0), 4, Some(60));
        t.read(&tp(0), 5, Some(120));
        assert_eq!(t.committable(), vec![(tp(0), 0)]);
        // Acknowledged below 60: nothing released.
        t.release(59);
        assert_eq!(t.committable(), vec![(tp(0), 0)]);
        t.release(60);
        assert_eq!(t.committable(), vec![(tp(0), 3)]);
        t.release(120);
        assert_eq!(t.committable(), vec![(tp(0), 6)]);
        assert_eq!(t.pinned_points(), 0);
    }

    #[test]
    fn unpinned_messages_only_move_the_next_offset() {
        let mut t = OffsetTracker::new();
        t.read(&tp(1), 10, None);
        t.read(&tp(1), 11, None);
        t.read(&tp(2), 7, Some(60));
        assert_eq!(t.committable(), vec![(tp(1), 12), (tp(2), 7)]);
        t.clear();
        assert!(t.committable().is_empty());
    }
}
