//! The merge stage: adds up the partials of each window from every shard
//! (one engine over part of the stream: a thread's share of the rows, or
//! one source partition read by a partial monitor) and releases a window
//! once every shard's watermark has passed its end.
//!
//! A partial re-sent for the same (shard, window) replaces the earlier one
//! (a partial monitor restarted from its committed offsets recomputes it),
//! so at-least-once delivery of partials never counts a window twice.
//! Completeness is judged by watermarks, not by partials arriving: a shard
//! without rows in a window sends none.

use std::collections::BTreeMap;

use crate::engine::{
    ClosedWindow, EngineError, LabelState, LabelledWindow, SeriesKey, SeriesState,
};
use crate::gradients::GradientWindow;

/// How far one shard's event time has progressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardProgress {
    /// The shard's watermark (None: no event time yet; it holds the merge).
    pub watermark: Option<i64>,
    /// Idle by its engine's rules (no data for `idle_timeout`, caught up):
    /// it does not hold the merge.
    pub idle: bool,
}

/// What [`Merger::release`] hands on: merged windows oldest first, and the
/// merged labels of windows whose label wait ended.
#[derive(Debug, Default)]
pub struct Released {
    /// Merged windows whose end the merged watermark passed.
    pub windows: Vec<ClosedWindow>,
    /// Merged labels of windows whose end + label wait it passed.
    pub labelled: Vec<LabelledWindow>,
}

impl Released {
    /// True when nothing was released.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.labelled.is_empty()
    }
}

/// Partials per window and shard, and each shard's progress.
#[derive(Debug)]
pub struct Merger {
    shards: Vec<ShardProgress>,
    /// Per window end: partials by (shard, part).
    windows: Held<ClosedWindow>,
    labelled: Held<LabelledWindow>,
    label_wait_ms: i64,
    /// Windows ending at or before this were released.
    released: i64,
    /// Labels of windows ending at or before this were released.
    released_labels: i64,
    /// Partials that came after their window was released (dropped).
    late_partials: u64,
}

impl Merger {
    /// A merger of `shards` shards; labels of a window are complete
    /// `label_wait_ms` after its end.
    pub fn new(shards: usize, label_wait_ms: i64) -> Self {
        Self {
            shards: vec![ShardProgress::default(); shards],
            windows: BTreeMap::new(),
            labelled: BTreeMap::new(),
            label_wait_ms,
            released: i64::MIN,
            released_labels: i64::MIN,
            late_partials: 0,
        }
    }

    /// How many shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Partials dropped because their window had been released.
    pub fn late_partials(&self) -> u64 {
        self.late_partials
    }

    /// Windows ending at or before `floor` (and labels of windows ending
    /// `label_wait` before it) were written by an earlier run: their
    /// partials, read again, are dropped.
    pub fn set_floor(&mut self, floor: i64) {
        self.released = self.released.max(floor);
        self.released_labels = self
            .released_labels
            .max(floor.saturating_sub(self.label_wait_ms));
    }

    /// A shard's closed window; replaces an earlier partial of the same
    /// shard and window.
    pub fn add_window(&mut self, shard: usize, window: ClosedWindow) {
        self.add_window_part(shard, "", window);
    }

    /// One part of a shard's closed window (the partial stage sends one per
    /// model, so that merge consumers can own models); replaces an earlier
    /// partial of the same shard, window and part.
    pub fn add_window_part(&mut self, shard: usize, part: &str, window: ClosedWindow) {
        let (end, floor) = (window.end, self.released);
        let held = &mut self.windows;
        self.late_partials += u64::from(!hold(held, floor, (end, shard, part), window));
    }

    /// A shard's labels of a window; replaces an earlier one.
    pub fn add_labelled(&mut self, shard: usize, labelled: LabelledWindow) {
        self.add_labelled_part(shard, "", labelled);
    }

    /// One part of a shard's labels of a window (see
    /// [`Merger::add_window_part`]).
    pub fn add_labelled_part(&mut self, shard: usize, part: &str, labelled: LabelledWindow) {
        let (end, floor) = (labelled.end, self.released_labels);
        let held = &mut self.labelled;
        self.late_partials += u64::from(!hold(held, floor, (end, shard, part), labelled));
    }

    /// A shard's progress (it never goes back).
    pub fn set_progress(&mut self, shard: usize, progress: ShardProgress) {
        let p = &mut self.shards[shard];
        p.watermark = p.watermark.max(progress.watermark);
        p.idle = progress.idle;
    }

    /// The merged watermark: the lowest of the shards that are not idle
    /// (None while one of them has none); when every shard is idle, the
    /// lowest of those with a watermark. Never the highest: a quiet shard
    /// has not closed the windows past its own watermark, and releasing
    /// them would write them without its rows.
    pub fn watermark(&self) -> Option<i64> {
        let live: Vec<_> = self.shards.iter().filter(|s| !s.idle).collect();
        if live.is_empty() {
            return self.shards.iter().filter_map(|s| s.watermark).min();
        }
        live.iter()
            .map(|s| s.watermark)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
    }

    /// Windows the merged watermark has passed, merged, oldest first.
    ///
    /// # Errors
    /// Partials whose sketches do not merge (another configuration).
    pub fn release(&mut self) -> Result<Released, EngineError> {
        match self.watermark() {
            Some(w) => self.release_until(Some(w)),
            None => Ok(Released::default()),
        }
    }

    /// End of input: every window and label window held.
    ///
    /// # Errors
    /// As [`Merger::release`].
    pub fn flush(&mut self) -> Result<Released, EngineError> {
        self.release_until(None)
    }

    fn release_until(&mut self, watermark: Option<i64>) -> Result<Released, EngineError> {
        let mut out = Released::default();
        while let Some(entry) = self.windows.first_entry() {
            let end = *entry.key();
            if watermark.is_some_and(|w| end > w) {
                break;
            }
            out.windows
                .push(merge_windows(entry.remove().into_values())?);
            self.released = self.released.max(end);
        }
        while let Some(entry) = self.labelled.first_entry() {
            let end = *entry.key();
            if watermark.is_some_and(|w| end + self.label_wait_ms > w) {
                break;
            }
            out.labelled
                .push(merge_labelled(end, entry.remove().into_values()));
            self.released_labels = self.released_labels.max(end);
        }
        if let Some(w) = watermark {
            self.released = self.released.max(w);
            self.released_labels = self.released_labels.max(w - self.label_wait_ms);
        }
        Ok(out)
    }
}

/// Partials held per window end, by (shard, part).
type Held<T> = BTreeMap<i64, BTreeMap<(usize, String), T>>;

/// Hold `partial` of window `end` (replacing the same shard and part's),
/// unless windows up to `floor` were released: then false (late).
fn hold<T>(
    held: &mut Held<T>,
    floor: i64,
    (end, shard, part): (i64, usize, &str),
    partial: T,
) -> bool {
    if end <= floor {
        return false;
    }
    held.entry(end)
        .or_default()
        .insert((shard, part.to_string()), partial);
    true
}

/// One window from its partials, in shard order.
pub fn merge_windows(
    partials: impl IntoIterator<Item = ClosedWindow>,
) -> Result<ClosedWindow, EngineError> {
    let mut partials = partials.into_iter();
    let mut first = partials.next().expect("a window has at least one partial");
    let mut rest = partials.peekable();
    if rest.peek().is_none() {
        return Ok(first);
    }
    let mut series: BTreeMap<SeriesKey, SeriesState> = first.series.drain(..).collect();
    let mut late: BTreeMap<SeriesKey, u64> = first.late.drain(..).collect();
    let mut gradients: BTreeMap<(String, String), GradientWindow> =
        first.gradients.drain(..).collect();
    for p in rest {
        for (key, state) in p.series {
            match series.get_mut(&key) {
                Some(s) => s.merge(&state)?,
                None => {
                    series.insert(key, state);
                }
            }
        }
        for (key, n) in p.late {
            *late.entry(key).or_default() += n;
        }
        for (key, g) in p.gradients {
            match gradients.get_mut(&key) {
                Some(w) => w.merge(&g),
                None => {
                    gradients.insert(key, g);
                }
            }
        }
        first.batches.extend(p.batches);
    }
    first.series = series.into_iter().collect();
    first.late = late.into_iter().collect();
    first.gradients = gradients.into_iter().collect();
    Ok(first)
}

fn merge_labelled(end: i64, partials: impl Iterator<Item = LabelledWindow>) -> LabelledWindow {
    let mut series: BTreeMap<SeriesKey, LabelState> = BTreeMap::new();
    for p in partials {
        for (key, state) in p.series {
            series.entry(key).or_default().merge(&state);
        }
    }
    LabelledWindow {
        end,
        series: series.into_iter().collect(),
    }
}
