//! Replays of request traces through the store's eviction policy and admission (the same
//! `Policy` and `Admission` the store's index runs, over a `Table` of sizes instead of
//! files), for the eviction benchmark (`examples/eviction.rs`). Not a public API; built only
//! with the `replay` feature.

use crate::eviction::{self, Admission, Eviction, MinUses, Policy, Table};
use crate::format::layout::Hash32;

/// A store bounded to `max_bytes`, fed one request at a time. Time is one millisecond per
/// request, so every request has its own place in the order.
pub struct Replay {
    policy: Box<dyn Policy>,
    admission: MinUses,
    table: Table,
    max_bytes: u64,
    now: u64,
    bytes_written: u64,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.table.len())
            .finish()
    }
}

impl Replay {
    pub fn new(eviction: Eviction, min_uses: u8, max_bytes: u64) -> Self {
        Replay {
            policy: eviction::policy(eviction),
            admission: MinUses::new(min_uses),
            table: Table::default(),
            max_bytes,
            now: 1_780_000_000_000,
            bytes_written: 0,
        }
    }

    /// A request for object `id` of `size` bytes: a hit, or a miss that stores the object
    /// (when admitted) and evicts as the store does after a commit. Returns whether it hit.
    pub fn request(&mut self, id: u64, size: u64) -> bool {
        self.now += 1;
        let key = Hash32::of(&id.to_le_bytes());
        let entries = self.table.len();
        if let Some(used) = self.table.used(key) {
            let (used, _) = self.policy.touch(used, self.now, entries);
            self.table.set_used(key, used);
            return true;
        }
        let known = self.policy.remembers(&key);
        if self.admission.admits(key, known, entries) {
            let used = self.policy.enter(key, None, self.now, false, entries);
            self.table.insert(key, used, size);
            self.bytes_written += size;
            self.table
                .evict(&mut *self.policy, Some(self.max_bytes), None, self.now);
        }
        false
    }

    /// Bytes of bodies written to disk so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Bytes of content stored now.
    pub fn stored_bytes(&self) -> u64 {
        self.table.bytes()
    }
}
