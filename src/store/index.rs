//! The in-memory index: which record names which content, how many records use each content
//! file, and each entry's place in the eviction order (decided by the store's
//! [`Policy`](crate::eviction::Policy)); the parsed form of a bounded number of records is in
//! [`ParsedRecords`].
//!
//! The disk stays the truth: the index is rebuilt from `metadata/` when the store opens (while
//! requests are served: see [`Index::loading`]), and a key the index does not know is looked up
//! on disk before it counts as a miss.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use super::content_ids::Contents;
use super::packed_map::PackedMap;
use super::parsed::{HeldEntry, ParsedRecords};
use super::tag_index::TagIndex;
use crate::eviction::{self, Admission, Entries, Eviction, Goal, MinUses, Place, Policy};
use crate::format::files::Stamp;
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::format::tags::Tags;
use crate::support::epoch_millis;

/// What the index holds of every record: 16 bytes beside its 32-byte key. A store of a
/// million records holds a million of these (the parsed form of a bounded number of them is
/// in [`ParsedRecords`]; the content's digest and length once per content file in
/// [`Contents`]).
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The content file's id in [`Contents`].
    content: u32,
    /// The order, in this process, in which the write that stored it started, wrapping
    /// (0 for records found on disk): an older write never replaces a newer one.
    written: u32,
    /// Its place in the eviction order.
    used: Place,
}

/// Key hash → record, and the content files records use.
#[derive(Debug)]
pub(crate) struct Index {
    slots: PackedMap<Slot>,
    contents: Contents,
    /// Where entries enter the eviction order, and which go.
    policy: Box<dyn Policy>,
    /// Whether a fetched response is stored at all.
    admission: Box<dyn Admission>,
    parsed: ParsedRecords,
    /// Which entries carry which tags.
    tags: TagIndex,
    /// Bytes of content the records use, each content file counted once.
    disk_bytes: u64,
    /// While the records on disk are being read in (after the store opened), the keys that
    /// lookups, writes and deletes have put in or taken out meanwhile: what they did is newer
    /// than what the reading found, which passes them over. Until the reading ends, reference
    /// counts are partial: content that loses its last known user is left on disk until then
    /// (see `released`), and nothing is evicted.
    loading: Option<HashSet<Hash32>>,
    /// Content that lost its last known user while loading: unused unless a record read in
    /// later names it.
    released: Vec<Hash32>,
}

/// The most content digests kept to be unlinked once the records are read in.
const RELEASED_WHILE_LOADING: usize = 1 << 20;

impl Index {
    pub(crate) fn new(parsed_limit: usize, body_budget: usize) -> Self {
        Index {
            slots: PackedMap::default(),
            contents: Contents::default(),
            policy: eviction::policy(Eviction::default()),
            admission: Box::new(MinUses::new(1)),
            parsed: ParsedRecords::new(parsed_limit, body_budget),
            tags: TagIndex::default(),
            disk_bytes: 0,
            loading: Some(HashSet::new()),
            released: Vec::new(),
        }
    }

    /// Sets the eviction policy, and how many misses of a key it takes before a write of it
    /// is admitted (1: the first).
    pub(crate) fn with_policy(mut self, eviction: Eviction, min_uses: u8) -> Self {
        self.policy = eviction::policy(eviction);
        self.admission = Box::new(MinUses::new(min_uses));
        self
    }

    /// Whether a response fetched for `key` is to be stored: always for a key stored
    /// already or remembered by the policy; else as the admission decides.
    pub(crate) fn admits(&mut self, key: Hash32) -> bool {
        let known = self.slots.contains_key(&key) || self.policy.remembers(&key);
        self.admission.admits(key, known, self.slots.len())
    }

    /// Whether the records on disk are still being read in.
    pub(crate) fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// The records on disk are all read in: reference counts are whole from now on. Returns
    /// the content that lost its last user while loading and that no record read in names,
    /// for the caller to unlink.
    pub(crate) fn finish_loading(&mut self) -> Vec<Hash32> {
        self.loading = None;
        let mut unused = std::mem::take(&mut self.released);
        unused.retain(|digest| self.contents.refs(digest) == 0);
        unused.sort_unstable();
        unused.dedup();
        unused
    }

    /// Notes content whose record went while loading: unlinked once the records are read
    /// in, unless one of them names it.
    pub(crate) fn unused_while_loading(&mut self, digest: Hash32) {
        if self.released.len() < RELEASED_WHILE_LOADING {
            self.released.push(digest);
        }
    }

    /// Whether the reading-in should pass over `key`: a lookup, write or delete came first.
    pub(crate) fn is_newer(&self, key: Hash32) -> bool {
        self.slots.contains_key(&key) || self.loading.as_ref().is_some_and(|t| t.contains(&key))
    }

    fn touched(&mut self, key: Hash32) {
        if let Some(touched) = &mut self.loading {
            touched.insert(key);
        }
    }

    /// Whether the entry under `key` was stored by a write that started after write `seq`.
    /// Write orders are compared wrapping, on 32 bits: writes of one key under way at once
    /// are never 2^31 writes apart.
    pub(crate) fn has_newer_write(&self, key: Hash32, seq: u64) -> bool {
        self.slots.get(&key).is_some_and(|slot| {
            slot.written != 0 && (slot.written.wrapping_sub(seq as u32) as i32) > 0
        })
    }

    /// Notes the order of the write that stored the entry under `key`.
    pub(crate) fn set_written(&mut self, key: Hash32, seq: u64) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.written = (seq as u32).max(1);
        }
    }

    /// The keys of the entries that carry any of `tags`.
    pub(crate) fn tagged<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Vec<Hash32> {
        self.tags.tagged(tags)
    }

    /// The tag index, for the snapshot and what an operator asks of an entry.
    pub(crate) fn tag_index(&self) -> &TagIndex {
        &self.tags
    }

    /// The indexed keys after `after`, the `at_most` lowest of them, in order.
    pub(crate) fn keys_after(&self, after: Option<Hash32>, at_most: usize) -> Vec<Hash32> {
        let mut keys: Vec<Hash32> = self
            .slots
            .keys()
            .filter(|key| after.is_none_or(|after| **key > after))
            .copied()
            .collect();
        if keys.len() > at_most {
            keys.select_nth_unstable(at_most);
            keys.truncate(at_most);
        }
        keys.sort_unstable();
        keys
    }

    /// Every indexed key, with the parsed entry when it is held.
    pub(crate) fn keys(&self) -> Vec<(Hash32, Option<Arc<Entry>>)> {
        self.slots
            .keys()
            .map(|key| (*key, self.parsed.entry(key)))
            .collect()
    }

    /// Notes that `key` was looked up now. Returns the time to write to the access log when
    /// the use is one to keep across a restart (as the policy decides).
    pub(crate) fn touch(&mut self, key: Hash32) -> Option<u64> {
        self.touch_at(key, epoch_millis(std::time::SystemTime::now()))
    }

    pub(crate) fn touch_at(&mut self, key: Hash32, now: u64) -> Option<u64> {
        let entries = self.slots.len();
        let slot = self.slots.get_mut(&key)?;
        let (used, log) = self.policy.touch(slot.used, now, entries);
        slot.used = used;
        log
    }

    /// Takes in a use read from the access log when the store opens.
    pub(crate) fn set_last_used(&mut self, key: Hash32, at: u64) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.used = self.policy.logged_use(slot.used, at);
        }
    }

    /// The uses to keep when the access log is rewritten short.
    pub(crate) fn uses(&self) -> Vec<(Hash32, u64)> {
        let now = epoch_millis(std::time::SystemTime::now());
        self.slots
            .iter()
            .filter_map(|(k, s)| Some((*k, self.policy.use_to_keep(s.used, now)?)))
            .collect()
    }

    /// Evicts records in the policy's order until the content they use is within
    /// `max_bytes` and they number at most `max_entries`, going down to 90% of each bound so
    /// that eviction runs in batches. Returns each evicted key with the content it leaves
    /// unused, for the caller to unlink.
    pub(crate) fn evict(
        &mut self,
        max_bytes: Option<u64>,
        max_entries: Option<usize>,
    ) -> Vec<(Hash32, Option<Hash32>)> {
        self.evict_at(
            max_bytes,
            max_entries,
            epoch_millis(std::time::SystemTime::now()),
        )
    }

    pub(crate) fn evict_at(
        &mut self,
        max_bytes: Option<u64>,
        max_entries: Option<usize>,
        now: u64,
    ) -> Vec<(Hash32, Option<Hash32>)> {
        if self.is_loading() {
            return Vec::new();
        }
        let over = eviction::over(max_bytes, max_entries, self.disk_bytes, self.slots.len());
        let Some((over, goal)) = over else {
            return Vec::new();
        };
        // The policy is taken out while it works on the index (an `Lru` holds nothing).
        let mut policy = std::mem::replace(&mut self.policy, Box::new(eviction::Lru));
        let mut evicting = Evicting {
            index: self,
            goal,
            evicted: Vec::new(),
        };
        policy.evict(&mut evicting, over, now);
        let evicted = evicting.evicted;
        self.policy = policy;
        evicted
    }

    /// The parsed record for a key, when the index holds one.
    pub(crate) fn entry(&mut self, key: Hash32) -> Option<HeldEntry> {
        self.parsed.get(key)
    }

    /// Notes that the record of `key`, stamped `stamp`, and its content were just found
    /// unchanged on disk.
    pub(crate) fn checked(&mut self, key: Hash32, stamp: Stamp) {
        self.parsed.checked(key, stamp);
    }

    /// Holds a parsed entry's body in memory, making room in the budget if it can. `stamp`
    /// is the record file's, as the body was read: a newer record gets no stale body.
    pub(crate) fn keep_body(&mut self, key: Hash32, stamp: Stamp, body: &Bytes) {
        let length = self
            .slots
            .get(&key)
            .map(|slot| self.contents.length(slot.content));
        self.parsed.keep_body(key, stamp, body, length);
    }

    /// The digest a key's record names, when the index knows the key.
    pub(crate) fn digest(&self, key: Hash32) -> Option<Hash32> {
        self.slots
            .get(&key)
            .map(|slot| self.contents.digest(slot.content))
    }

    /// How many records use a content file.
    pub(crate) fn refs(&self, digest: Hash32) -> u32 {
        self.contents.refs(&digest)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Distinct content files the indexed records use.
    pub(crate) fn content_files(&self) -> usize {
        self.contents.len()
    }

    /// Bytes of content the indexed records use, each content file counted once.
    pub(crate) fn content_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Records `entry` under `key`. Returns the digest of content no record uses any more
    /// (the replaced record's, when it was the last user), for the caller to unlink.
    pub(crate) fn insert(
        &mut self,
        key: Hash32,
        entry: Arc<Entry>,
        stamp: Stamp,
    ) -> Option<Hash32> {
        let (digest, length, stored_at) = (entry.digest, entry.length, entry.stored_at);
        self.touched(key);
        let tags = entry.tags.clone();
        self.place(
            key,
            (digest, length),
            stamp,
            epoch_millis(stored_at),
            (Some(entry), &tags),
            false,
        )
    }

    /// Every record, for the index snapshot: key, content digest and length, eviction stamp.
    pub(crate) fn saved(&self) -> impl ExactSizeIterator<Item = super::snapshot::Saved> + '_ {
        self.slots.iter().map(|(key, slot)| {
            let content = slot.content;
            let (digest, length) = (self.contents.digest(content), self.contents.length(content));
            (*key, digest, length, slot.used.raw())
        })
    }

    /// Records a key read from the index snapshot, with its place in the eviction order.
    pub(crate) fn restore(&mut self, key: Hash32, digest: Hash32, length: u64, used: u64) {
        let tags = Tags::default();
        self.place(
            key,
            (digest, length),
            Stamp::default(),
            0,
            (None, &tags),
            true,
        );
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.used = Place::from_raw(used);
        }
    }

    /// Records the tags of a key read from the index snapshot.
    pub(crate) fn restore_tags(&mut self, key: Hash32, tags: &[&str]) {
        if self.slots.contains_key(&key) {
            self.tags.set(key, tags.iter().copied());
        }
    }

    /// Records a key whose record was read in summary by the reading-in (its parsed form
    /// comes on its first lookup), unless something newer came first ([`Self::is_newer`]).
    pub(crate) fn insert_summary(
        &mut self,
        key: Hash32,
        (digest, length): (Hash32, u64),
        stamp: Stamp,
        stored_at: std::time::SystemTime,
        tags: &Tags,
    ) {
        if !self.is_newer(key) {
            self.place(
                key,
                (digest, length),
                stamp,
                epoch_millis(stored_at),
                (None, tags),
                true,
            );
        }
    }

    /// Records `key` naming `content` (digest and length), its record stamped `stamp`,
    /// stored (or last used) at `last_used`, with its parsed form when there is one, and
    /// its tags.
    fn place(
        &mut self,
        key: Hash32,
        (digest, length): (Hash32, u64),
        stamp: Stamp,
        last_used: u64,
        (entry, tags): (Option<Arc<Entry>>, &Tags),
        read_in: bool,
    ) -> Option<Hash32> {
        let (content, first) = self.contents.acquire(digest, length);
        if first {
            self.disk_bytes += length;
        }
        let old = self.slots.remove(&key);
        let entries = self.slots.len();
        let old_used = old.map(|old| old.used);
        let used = self
            .policy
            .enter(key, old_used, last_used, read_in, entries);
        let unused = old.and_then(|old| self.release(key, old));
        self.tags.set(key, tags.iter());
        if let Some(entry) = entry {
            self.parsed.insert(key, entry, stamp);
        }
        let slot = Slot {
            content,
            written: 0,
            used,
        };
        self.slots.insert(key, slot);
        unused
    }

    /// Keeps the parsed form of a record that the index already names, making room for it
    /// when the limit is reached.
    pub(crate) fn remember(&mut self, key: Hash32, entry: &Arc<Entry>, stamp: Stamp) {
        match self.slots.get(&key) {
            Some(slot) if self.contents.digest(slot.content) == entry.digest => {}
            _ => return,
        }
        self.parsed.remember(key, entry, stamp);
    }

    /// Forgets `key`. Returns the digest of content no record uses any more.
    pub(crate) fn remove(&mut self, key: Hash32) -> Option<Hash32> {
        self.touched(key);
        let old = self.slots.remove(&key)?;
        self.release(key, old)
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.contents.clear();
        self.policy.clear();
        self.admission.clear();
        self.parsed.clear();
        self.tags.clear();
        self.disk_bytes = 0;
    }

    /// Drops the bodies held in memory for content that turned out damaged.
    pub(crate) fn forget_bodies(&mut self, digest: Hash32) {
        let (slots, contents) = (&self.slots, &self.contents);
        self.parsed.forget_bodies(|key| {
            slots
                .get(key)
                .is_some_and(|s| contents.digest(s.content) == digest)
        });
    }

    fn release(&mut self, key: Hash32, old: Slot) -> Option<Hash32> {
        self.parsed.forget(key);
        self.tags.remove(key);
        let (digest, length) = self.contents.release(old.content)?;
        self.disk_bytes -= length;
        if self.is_loading() {
            // A record not read in yet may use it. (Past the bound, which only a reading
            // in that failed reaches, the orphan sweep of the next open takes it.)
            self.unused_while_loading(digest);
            return None;
        }
        Some(digest)
    }
}

/// The index as a policy evicts from it.
struct Evicting<'a> {
    index: &'a mut Index,
    goal: Goal,
    evicted: Vec<(Hash32, Option<Hash32>)>,
}

impl Entries for Evicting<'_> {
    fn list(&self) -> Vec<(Hash32, Place, u64)> {
        let Index {
            slots, contents, ..
        } = &*self.index;
        slots
            .iter()
            .map(|(key, slot)| (*key, slot.used, contents.length(slot.content)))
            .collect()
    }

    fn used(&self, key: Hash32) -> Option<Place> {
        self.index.slots.get(&key).map(|slot| slot.used)
    }

    fn set_used(&mut self, key: Hash32, used: Place) {
        if let Some(slot) = self.index.slots.get_mut(&key) {
            slot.used = used;
        }
    }

    fn remove(&mut self, key: Hash32) {
        let unused = self.index.remove(key);
        self.evicted.push((key, unused));
    }

    fn done(&self) -> bool {
        self.goal
            .reached(self.index.disk_bytes, self.index.slots.len())
    }

    fn len(&self) -> usize {
        self.index.slots.len()
    }
}

#[cfg(test)]
mod tests;
