//! Entries as a plain map of stamps and sizes, with no files: what replays run a policy
//! over (`replay.rs`), and what the policies' tests use.

use std::collections::HashMap;

use super::{Entries, Goal, Place, Policy};
use crate::format::layout::Hash32;

/// Keys with their stamps and sizes.
#[derive(Debug, Default)]
pub(crate) struct Table {
    entries: HashMap<Hash32, (Place, u64)>,
    bytes: u64,
}

impl Table {
    /// Enters `key` with `used` and `length` bytes (replacing what it held).
    pub(crate) fn insert(&mut self, key: Hash32, used: Place, length: u64) {
        if let Some((_, old)) = self.entries.insert(key, (used, length)) {
            self.bytes -= old;
        }
        self.bytes += length;
    }

    /// The stamp of `key`, when it is held.
    pub(crate) fn used(&self, key: Hash32) -> Option<Place> {
        self.entries.get(&key).map(|(used, _)| *used)
    }

    /// Stamps `key` anew, when it is held.
    pub(crate) fn set_used(&mut self, key: Hash32, used: Place) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.0 = used;
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many keys are held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Evicts with `policy` as a store bounded to `max_bytes` and `max_entries` does;
    /// returns the keys evicted, in order.
    pub(crate) fn evict(
        &mut self,
        policy: &mut dyn Policy,
        max_bytes: Option<u64>,
        max_entries: Option<usize>,
        now: u64,
    ) -> Vec<Hash32> {
        let Some((over, goal)) = super::over(max_bytes, max_entries, self.bytes, self.len()) else {
            return Vec::new();
        };
        let mut evicting = Evicting {
            table: self,
            goal,
            evicted: Vec::new(),
        };
        policy.evict(&mut evicting, over, now);
        evicting.evicted
    }
}

/// A table as a policy evicts from it.
struct Evicting<'a> {
    table: &'a mut Table,
    goal: Goal,
    evicted: Vec<Hash32>,
}

impl Entries for Evicting<'_> {
    fn list(&self) -> Vec<(Hash32, Place, u64)> {
        let entries = &self.table.entries;
        entries.iter().map(|(k, (u, l))| (*k, *u, *l)).collect()
    }

    fn used(&self, key: Hash32) -> Option<Place> {
        self.table.used(key)
    }

    fn set_used(&mut self, key: Hash32, used: Place) {
        self.table.set_used(key, used);
    }

    fn remove(&mut self, key: Hash32) {
        if let Some((_, length)) = self.table.entries.remove(&key) {
            self.table.bytes -= length;
            self.evicted.push(key);
        }
    }

    fn done(&self) -> bool {
        self.goal.reached(self.table.bytes, self.table.len())
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}
