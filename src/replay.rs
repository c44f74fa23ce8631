//! Replays of request traces through the store's index: the eviction policy and admission
//! the store runs, with sizes instead of files, for the eviction benchmark
//! (`examples/eviction.rs`). Not a public API; built only with the `replay` feature.

use crate::format::files::Stamp;
use crate::format::layout::Hash32;
use crate::store::Eviction;
use crate::store::index::Index;

/// A store's index bounded to `max_bytes`, fed one request at a time. Time is one
/// millisecond per request, so every request has its own place in the order.
pub struct Replay {
    index: Index,
    max_bytes: u64,
    now: u64,
    bytes_written: u64,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.index.len())
            .finish()
    }
}

impl Replay {
    pub fn new(eviction: Eviction, min_uses: u8, max_bytes: u64) -> Self {
        let mut index = Index::new(0, 0).with_policy(eviction, min_uses);
        index.finish_loading();
        Replay {
            index,
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
        if self.index.touch_at(key, self.now).is_some() || self.index.digest(key).is_some() {
            return true;
        }
        if self.index.admits(key) {
            let digest = Hash32::of(&[&id.to_le_bytes()[..], b"content"].concat());
            self.index
                .store_at(key, digest, size, Stamp::default(), self.now);
            self.bytes_written += size;
            self.index.evict_at(Some(self.max_bytes), None, self.now);
        }
        false
    }

    /// Bytes of bodies written to disk so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Bytes of content stored now.
    pub fn stored_bytes(&self) -> u64 {
        self.index.content_bytes()
    }
}
