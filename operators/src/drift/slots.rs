//! Per-feature state found by name, by row position first: rows of one
//! model list their features in the same order, so a string compare with
//! the feature last seen at that position usually replaces a hash lookup.
//! Shared by the window counts and the reference builder.

use std::ops::Range;

use arrow::array::StringArray;
use foldhash::HashMap;

/// Row positions remembered; beyond them every lookup hashes.
pub(crate) const MAX_POSITIONS: usize = 256;

/// Named values in first-seen order, with the position cache.
#[derive(Debug, Clone)]
pub(crate) struct Slots<T> {
    items: Vec<(String, T)>,
    by_name: HashMap<String, usize>,
    recent: Vec<usize>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            by_name: HashMap::default(),
            recent: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// The index of `name` (made by `make` on first sight), seen at row
    /// position `pos` (`usize::MAX`: not from a row).
    pub(crate) fn slot(&mut self, pos: usize, name: &str, make: impl FnOnce() -> T) -> usize {
        if let Some(&i) = self.recent.get(pos)
            && self.items[i].0 == name
        {
            return i;
        }
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                self.items.push((name.to_string(), make()));
                self.by_name.insert(name.to_string(), self.items.len() - 1);
                self.items.len() - 1
            }
        };
        if pos < MAX_POSITIONS {
            if self.recent.len() <= pos {
                self.recent.resize(pos + 1, i);
            }
            self.recent[pos] = i;
        }
        i
    }

    /// The value at index `i`.
    pub(crate) fn at(&mut self, i: usize) -> &mut T {
        &mut self.items[i].1
    }

    /// The value of `name`, if seen.
    pub(crate) fn get(&self, name: &str) -> Option<&T> {
        self.by_name.get(name).map(|&i| &self.items[i].1)
    }

    /// (name, value) in first-seen order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.items.iter().map(|(n, v)| (n, v))
    }

    /// The values in first-seen order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut().map(|(_, v)| v)
    }
}

/// A numeric feature map's keys (their bytes and lengths) and the slot of
/// each entry (None: not monitored). Rows of one model repeat it, so one
/// compare of a row's keys replaces a name lookup per value.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowLayout {
    bytes: Vec<u8>,
    /// Key offsets from the row's first key, `entries + 1` of them.
    offsets: Vec<i32>,
    /// Per entry of the row.
    pub(crate) slots: Vec<Option<usize>>,
}

impl RowLayout {
    /// Whether the keys of entries `range` are this layout's.
    #[inline]
    pub(crate) fn matches(&self, keys: &StringArray, range: Range<usize>) -> bool {
        let offsets = &keys.value_offsets()[range.start..=range.end];
        let base = offsets[0];
        offsets.len() == self.offsets.len()
            // Every offset, without an early exit: the loop vectorizes.
            && (offsets.iter().zip(&self.offsets)).fold(true, |same, (&o, &r)| same & (o - base == r))
            && keys.value_data()[base as usize..offsets[offsets.len() - 1] as usize] == self.bytes[..]
    }

    /// The layout of the keys of entries `range`; `slot(position in the
    /// row from 1, name)` gives each entry's slot.
    pub(crate) fn of(
        keys: &StringArray,
        range: Range<usize>,
        mut slot: impl FnMut(usize, &str) -> Option<usize>,
    ) -> Self {
        let offsets = &keys.value_offsets()[range.start..=range.end];
        let base = offsets[0];
        Self {
            bytes: keys.value_data()[base as usize..offsets[offsets.len() - 1] as usize].to_vec(),
            offsets: offsets.iter().map(|&o| o - base).collect(),
            slots: (range.clone())
                .map(|i| slot(1 + i - range.start, keys.value(i)))
                .collect(),
        }
    }
}
