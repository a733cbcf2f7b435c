//! Per-feature state found by name, by row position first: rows of one
//! model list their features in the same order, so a string compare with
//! the feature last seen at that position usually replaces a hash lookup.
//! Shared by the window counts and the reference builder.

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
