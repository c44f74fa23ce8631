//! Whether a fetched response is stored at all: [`MinUses`], a key stored on its
//! `min_uses`-th miss (see [`StreamingManagerBuilder::min_uses`]).
//!
//! [`StreamingManagerBuilder::min_uses`]: crate::StreamingManagerBuilder::min_uses

use super::Fingerprints;
use crate::format::layout::Hash32;

/// The admission table remembers about this many missed keys per indexed entry.
const SEEN_PER_ENTRY: usize = 4;

/// Decides whether a response fetched for a key is stored, apart from the eviction order
/// (as tinyufo keeps its admission apart from its queues).
pub(crate) trait Admission: std::fmt::Debug + Send {
    /// Whether a response fetched for `key` is stored: `known` when the key is stored
    /// already or its policy remembers it; `entries` the store holds.
    fn admits(&mut self, key: Hash32, known: bool, entries: usize) -> bool;
    /// Forgets the keys it counted (the store was cleared).
    fn clear(&mut self);
}

/// A key is stored once it has missed `min_uses` times while it was remembered (1: on its
/// first miss), or at once when it is known.
#[derive(Debug)]
pub(crate) struct MinUses {
    /// Keys missed and not stored, with how often.
    seen: Fingerprints,
    min_uses: u8,
}

impl MinUses {
    pub(crate) fn new(min_uses: u8) -> Self {
        MinUses {
            seen: Fingerprints::default(),
            min_uses: min_uses.max(1),
        }
    }
}

impl Admission for MinUses {
    fn admits(&mut self, key: Hash32, known: bool, entries: usize) -> bool {
        if self.min_uses <= 1 || known {
            return true;
        }
        self.seen.fit(entries.saturating_mul(SEEN_PER_ENTRY));
        if self.seen.add(&key) >= self.min_uses {
            self.seen.take(&key);
            return true;
        }
        false
    }

    fn clear(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_stores_a_key_on_its_second_miss() {
        let mut twice = MinUses::new(2);
        let a = Hash32::of(b"a");
        assert!(
            !twice.admits(a, false, 0),
            "first miss: counted, not stored"
        );
        assert!(twice.admits(a, false, 0), "second: stored");
        assert!(!twice.admits(a, false, 1), "counted anew once stored");
        assert!(
            twice.admits(a, true, 1),
            "stored already: a refresh is always written"
        );
        assert!(MinUses::new(1).admits(Hash32::of(b"b"), false, 0));
        assert!(MinUses::new(0).admits(Hash32::of(b"b"), false, 0));
    }
}
