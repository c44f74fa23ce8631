//! The in-memory index: which record names which content, how many records use each content
//! file, and a bounded set of parsed records so that warm hits parse no JSON.
//!
//! The disk stays the truth: the index is rebuilt from `metadata/` when the store opens (while
//! requests are served: see [`Index::loading`]), and a key the index does not know is looked up
//! on disk before it counts as a miss.

use crate::format::files::Stamp;
use std::collections::{HashMap, HashSet, VecDeque};

use super::dense::DenseMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::format::layout::Hash32;
use crate::format::record::Entry;

/// What the index holds of every record. Kept small: a store of a million records holds a
/// million of these (the parsed form of a bounded number of them is in [`Parsed`]).
#[derive(Debug)]
struct Slot {
    digest: Hash32,
    length: u64,
    /// When the entry was last stored or looked up (milliseconds since the epoch): the
    /// order in which entries are evicted when the store is over its size.
    last_used: u64,
    /// The order, in this process, in which the write that stored it started (0 for
    /// records found on disk): an older write never replaces a newer one.
    written: u64,
    /// When a use of the entry was last written to the access log (0: never).
    logged: u64,
}

/// The parsed form of a record, for a bounded number of records.
#[derive(Debug)]
struct Parsed {
    entry: Arc<Entry>,
    /// The record file's, as it was parsed.
    stamp: Stamp,
    /// The whole body, for small entries while the memory budget allows.
    body: Option<Bytes>,
    /// Looked up since the clock hand last passed: kept over entries that were not.
    used: bool,
}

/// A parsed record as the index holds it: the entry, the stamp of the file it was parsed
/// from, and its body when that is held in memory.
pub(crate) struct Known {
    pub(crate) entry: Arc<Entry>,
    pub(crate) stamp: Stamp,
    pub(crate) body: Option<Bytes>,
}

/// Key hash → record, and content digest → number of records using it.
#[derive(Debug)]
pub(crate) struct Index {
    slots: DenseMap<Slot>,
    refs: DenseMap<u32>,
    /// The parsed records, at most `parsed_limit` of them.
    parsed_of: HashMap<Hash32, Parsed>,
    parsed: usize,
    parsed_limit: usize,
    /// Bytes of bodies held in memory, and how many may be.
    body_bytes: usize,
    body_budget: usize,
    /// Keys with a parsed entry, in the order a clock hand visits them to make room: an
    /// entry looked up since the last visit is passed over once (second chance), so the
    /// entries in use stay parsed and the others give way.
    clock: VecDeque<Hash32>,
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

/// A lookup writes an entry's use to the access log at most this often (milliseconds): the
/// eviction order survives a restart to within a minute.
const LOG_USES_EVERY: u64 = 60_000;

/// Milliseconds since the epoch, the unit of `last_used`.
pub(crate) fn millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Index {
    pub(crate) fn new(parsed_limit: usize, body_budget: usize) -> Self {
        Index {
            slots: DenseMap::default(),
            refs: DenseMap::default(),
            parsed_of: HashMap::new(),
            parsed: 0,
            parsed_limit,
            body_bytes: 0,
            body_budget,
            clock: VecDeque::new(),
            disk_bytes: 0,
            loading: Some(HashSet::new()),
            released: Vec::new(),
        }
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
        unused.retain(|digest| self.refs(*digest) == 0);
        unused.sort_unstable();
        unused.dedup();
        unused
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
    pub(crate) fn has_newer_write(&self, key: Hash32, seq: u64) -> bool {
        self.slots.get(&key).is_some_and(|slot| slot.written > seq)
    }

    /// Notes the order of the write that stored the entry under `key`.
    pub(crate) fn set_written(&mut self, key: Hash32, seq: u64) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.written = seq;
        }
    }

    /// Every indexed key, with the parsed entry when it is held.
    pub(crate) fn keys(&self) -> Vec<(Hash32, Option<Arc<Entry>>)> {
        self.slots
            .keys()
            .map(|key| (*key, self.parsed_of.get(key).map(|p| Arc::clone(&p.entry))))
            .collect()
    }

    /// Notes that `key` was looked up now.
    /// Returns the time to write to the access log, when the entry's last logged use is
    /// older than `LOG_USES_EVERY` (so a hot entry costs one line a minute).
    pub(crate) fn touch(&mut self, key: Hash32) -> Option<u64> {
        let now = millis(std::time::SystemTime::now());
        let slot = self.slots.get_mut(&key)?;
        slot.last_used = now;
        if now.saturating_sub(slot.logged) < LOG_USES_EVERY {
            return None;
        }
        slot.logged = now;
        Some(now)
    }

    /// Takes in a use read from the access log when the store opens.
    pub(crate) fn set_last_used(&mut self, key: Hash32, at: u64) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.last_used = slot.last_used.max(at);
            slot.logged = slot.logged.max(at);
        }
    }

    /// Every key's last use, to rewrite the access log short.
    pub(crate) fn uses(&self) -> Vec<(Hash32, u64)> {
        self.slots.iter().map(|(k, s)| (*k, s.last_used)).collect()
    }

    /// Removes the least recently used records until the content they use is within
    /// `max_bytes` and they number at most `max_entries`, going down to 90% of each bound so
    /// that eviction runs in batches. Returns each evicted key with the content it leaves
    /// unused, for the caller to unlink.
    pub(crate) fn evict(
        &mut self,
        max_bytes: Option<u64>,
        max_entries: Option<usize>,
    ) -> Vec<(Hash32, Option<Hash32>)> {
        let over_bytes = max_bytes.is_some_and(|max| self.disk_bytes > max);
        let over_entries = max_entries.is_some_and(|max| self.slots.len() > max);
        if (!over_bytes && !over_entries) || self.is_loading() {
            return Vec::new();
        }
        let byte_goal = max_bytes.map(|max| max - max / 10);
        let entry_goal = max_entries.map(|max| max - max / 10);
        let mut oldest: Vec<(u64, Hash32)> =
            self.slots.iter().map(|(k, s)| (s.last_used, *k)).collect();
        oldest.sort_unstable();
        let mut evicted = Vec::new();
        for (_, key) in oldest {
            let done_bytes = byte_goal.is_none_or(|goal| self.disk_bytes <= goal);
            let done_entries = entry_goal.is_none_or(|goal| self.slots.len() <= goal);
            if done_bytes && done_entries {
                break;
            }
            let unused = self.remove(key);
            evicted.push((key, unused));
        }
        evicted
    }

    /// The parsed record for a key, when the index holds one.
    pub(crate) fn entry(&mut self, key: Hash32) -> Option<Known> {
        let parsed = self.parsed_of.get_mut(&key)?;
        parsed.used = true;
        Some(Known {
            entry: Arc::clone(&parsed.entry),
            stamp: parsed.stamp,
            body: parsed.body.clone(),
        })
    }

    /// Holds a parsed entry's body in memory, making room in the budget if it can. `stamp`
    /// is the record file's, as the body was read: a newer record gets no stale body.
    pub(crate) fn keep_body(&mut self, key: Hash32, stamp: Stamp, body: &Bytes) {
        if body.len() > self.body_budget {
            return;
        }
        self.make_room(body.len(), false);
        let length = self.slots.get(&key).map(|slot| slot.length);
        if let Some(parsed) = self.parsed_of.get_mut(&key)
            && self.body_bytes + body.len() <= self.body_budget
            && parsed.body.is_none()
            && parsed.stamp == stamp
            && length == Some(body.len() as u64)
        {
            self.body_bytes += body.len();
            parsed.body = Some(body.clone());
        }
    }

    /// Moves the clock hand until there is room for one more parsed entry (`entry`) and for
    /// `body` more bytes of bodies, dropping the parsed forms (and bodies) of entries not
    /// looked up since its last visit. The records stay indexed; only memory is given back.
    fn make_room(&mut self, body: usize, entry: bool) {
        let over = |index: &Self| {
            (entry && index.parsed >= index.parsed_limit)
                || index.body_bytes + body > index.body_budget
        };
        while over(self) {
            let Some(key) = self.clock.pop_front() else {
                return;
            };
            let Some(parsed) = self.parsed_of.get_mut(&key) else {
                continue;
            };
            if std::mem::take(&mut parsed.used) {
                self.clock.push_back(key);
                continue;
            }
            self.forget_parsed(key);
        }
    }

    /// Counts a newly parsed entry of `key` on the clock, keeping the clock's queue from
    /// growing past the entries it holds when keys are overwritten over and over.
    fn wind(&mut self, key: Hash32) {
        self.clock.push_back(key);
        if self.clock.len() > 2 * self.parsed_limit + 64 {
            let mut seen = std::collections::HashSet::with_capacity(self.parsed);
            let parsed = &self.parsed_of;
            self.clock
                .retain(|k| parsed.contains_key(k) && seen.insert(*k));
        }
    }

    /// The digest a key's record names, when the index knows the key.
    pub(crate) fn digest(&self, key: Hash32) -> Option<Hash32> {
        self.slots.get(&key).map(|slot| slot.digest)
    }

    /// How many records use a content file.
    pub(crate) fn refs(&self, digest: Hash32) -> u32 {
        self.refs.get(&digest).copied().unwrap_or(0)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Distinct content files the indexed records use.
    pub(crate) fn content_files(&self) -> usize {
        self.refs.len()
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
        self.place(key, digest, length, stamp, millis(stored_at), Some(entry))
    }

    /// Records a key whose record was read in summary by the reading-in (its parsed form
    /// comes on its first lookup), unless something newer came first ([`Self::is_newer`]).
    pub(crate) fn insert_summary(
        &mut self,
        key: Hash32,
        digest: Hash32,
        length: u64,
        stamp: Stamp,
        stored_at: std::time::SystemTime,
    ) {
        if !self.is_newer(key) {
            self.place(key, digest, length, stamp, millis(stored_at), None);
        }
    }

    fn place(
        &mut self,
        key: Hash32,
        digest: Hash32,
        length: u64,
        stamp: Stamp,
        last_used: u64,
        entry: Option<Arc<Entry>>,
    ) -> Option<Hash32> {
        let refs = self.refs.get_or_insert_with(digest, || 0);
        *refs += 1;
        if *refs == 1 {
            self.disk_bytes += length;
        }
        let old = self.slots.remove(&key);
        let unused = old.and_then(|old| self.release(key, old));
        if let Some(entry) = entry.filter(|_| self.parsed_limit > 0) {
            self.make_room(0, true);
            self.parsed += 1;
            self.parsed_of.insert(
                key,
                Parsed {
                    entry,
                    stamp,
                    body: None,
                    used: false,
                },
            );
            self.wind(key);
        }
        let slot = Slot {
            digest,
            length,
            last_used,
            written: 0,
            logged: 0,
        };
        self.slots.insert(key, slot);
        unused
    }

    /// Keeps the parsed form of a record that the index already names, making room for it
    /// when the limit is reached.
    pub(crate) fn remember(&mut self, key: Hash32, entry: &Arc<Entry>, stamp: Stamp) {
        match self.slots.get(&key) {
            Some(slot) if slot.digest == entry.digest => {}
            _ => return,
        }
        if let Some(parsed) = self.parsed_of.get_mut(&key) {
            if parsed.stamp != stamp
                && let Some(body) = parsed.body.take()
            {
                self.body_bytes -= body.len();
            }
            parsed.stamp = stamp;
            parsed.used = true;
            parsed.entry = Arc::clone(entry);
            return;
        }
        if self.parsed_limit == 0 {
            return;
        }
        self.make_room(0, true);
        self.parsed += 1;
        self.parsed_of.insert(
            key,
            Parsed {
                entry: Arc::clone(entry),
                stamp,
                body: None,
                used: true,
            },
        );
        self.wind(key);
    }

    /// Forgets `key`. Returns the digest of content no record uses any more.
    pub(crate) fn remove(&mut self, key: Hash32) -> Option<Hash32> {
        self.touched(key);
        let old = self.slots.remove(&key)?;
        self.release(key, old)
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.refs.clear();
        self.parsed_of.clear();
        self.parsed = 0;
        self.body_bytes = 0;
        self.disk_bytes = 0;
        self.clock.clear();
    }

    /// Drops the bodies held in memory for content that turned out damaged.
    pub(crate) fn forget_bodies(&mut self, digest: Hash32) {
        let slots = &self.slots;
        for (key, parsed) in self.parsed_of.iter_mut() {
            if slots.get(key).is_some_and(|s| s.digest == digest)
                && let Some(body) = parsed.body.take()
            {
                self.body_bytes -= body.len();
            }
        }
    }

    /// Drops the parsed form of `key`, and its body.
    fn forget_parsed(&mut self, key: Hash32) {
        if let Some(parsed) = self.parsed_of.remove(&key) {
            self.parsed -= 1;
            if let Some(body) = &parsed.body {
                self.body_bytes -= body.len();
            }
        }
    }

    fn release(&mut self, key: Hash32, old: Slot) -> Option<Hash32> {
        self.forget_parsed(key);
        let count = self.refs.get_mut(&old.digest)?;
        *count -= 1;
        if *count == 0 {
            self.refs.remove(&old.digest);
            self.disk_bytes -= old.length;
            if self.is_loading() {
                // A record not read in yet may use it. (Past the bound, which only a reading
                // in that failed reaches, the orphan sweep of the next open takes it.)
                if self.released.len() < RELEASED_WHILE_LOADING {
                    self.released.push(old.digest);
                }
                return None;
            }
            return Some(old.digest);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn stamp() -> Stamp {
        Stamp::default()
    }

    fn entry(body: &[u8]) -> Arc<Entry> {
        let req = http::Request::get("http://a/").body(()).unwrap();
        let res = http::Response::new(());
        Arc::new(Entry {
            key: String::new(),
            url: String::new(),
            status: http::StatusCode::OK,
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
            trailers: None,
            policy: http_cache_semantics::CachePolicy::new(&req, &res),
            digest: Hash32::of(body),
            length: body.len() as u64,
            stored_at: UNIX_EPOCH,
        })
    }

    #[test]
    fn shared_content_is_released_by_its_last_record() {
        let mut index = Index::new(10, 0);
        index.finish_loading();
        let (a, b) = (Hash32::of(b"a"), Hash32::of(b"b"));
        assert_eq!(index.insert(a, entry(b"same"), stamp()), None);
        assert_eq!(index.insert(b, entry(b"same"), stamp()), None);
        assert_eq!(index.refs(Hash32::of(b"same")), 2);
        assert_eq!(index.content_bytes(), 4);
        assert_eq!(index.remove(a), None);
        assert_eq!(index.remove(b), Some(Hash32::of(b"same")));
        assert_eq!(index.remove(b), None);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn overwrite_releases_the_old_content() {
        let mut index = Index::new(10, 0);
        index.finish_loading();
        let a = Hash32::of(b"a");
        index.insert(a, entry(b"one"), stamp());
        assert_eq!(
            index.insert(a, entry(b"two"), stamp()),
            Some(Hash32::of(b"one"))
        );
        // Overwriting with the same body keeps it.
        assert_eq!(index.insert(a, entry(b"two"), stamp()), None);
        assert_eq!(index.refs(Hash32::of(b"two")), 1);
    }

    #[test]
    fn parsed_records_stay_within_the_limit_and_the_used_ones_stay() {
        let mut index = Index::new(2, 0);
        index.finish_loading();
        let [a, b, c] = [b"a", b"b", b"c"].map(|k| Hash32::of(k));
        index.insert(a, entry(b"x"), stamp());
        index.insert(b, entry(b"y"), stamp());
        assert!(index.entry(a).is_some(), "a is looked up");
        index.insert(c, entry(b"z"), stamp());
        assert!(index.entry(b).is_none(), "b, not looked up, gave way");
        assert!(index.entry(a).is_some() && index.entry(c).is_some());
        assert_eq!(index.parsed, 2);
        // A record whose parsed form was dropped is parsed again on its next lookup.
        let y = entry(b"y");
        index.remember(b, &y, stamp());
        assert!(index.entry(b).is_some());
        assert_eq!(index.parsed, 2);
        assert_eq!(index.len(), 3, "every record stays indexed");
    }

    #[test]
    fn bodies_stay_within_their_budget() {
        let mut index = Index::new(10, 8);
        index.finish_loading();
        let [a, b] = [b"a", b"b"].map(|k| Hash32::of(k));
        index.insert(a, entry(b"12345"), stamp());
        index.insert(b, entry(b"67890"), stamp());
        index.keep_body(a, stamp(), &Bytes::from_static(b"12345"));
        index.keep_body(b, stamp(), &Bytes::from_static(b"67890"));
        assert!(index.body_bytes <= 8);
        assert!(
            index.entry(b).is_some_and(|k| k.body.is_some()),
            "the newest is kept"
        );
        // A body larger than the whole budget is never kept.
        let c = Hash32::of(b"c");
        index.insert(c, entry(b"0123456789"), stamp());
        index.keep_body(c, stamp(), &Bytes::from_static(b"0123456789"));
        assert!(index.entry(c).is_some_and(|k| k.body.is_none()));
    }

    #[test]
    fn uses_are_logged_at_most_once_a_minute() {
        let mut index = Index::new(4, 0);
        index.finish_loading();
        let a = Hash32::of(b"a");
        index.insert(a, entry(b"x"), stamp());
        assert!(index.touch(a).is_some(), "the first use is logged");
        assert!(
            index.touch(a).is_none(),
            "the next one in the minute is not"
        );
        index.slots.get_mut(&a).unwrap().logged -= LOG_USES_EVERY;
        assert!(index.touch(a).is_some(), "a minute later it is again");
        let before = index.slots.get(&a).unwrap().last_used;
        index.set_last_used(a, 0);
        assert_eq!(
            index.slots.get(&a).unwrap().last_used,
            before,
            "an older logged use changes nothing"
        );
    }

    #[test]
    fn overwriting_one_key_again_and_again_keeps_the_clock_small() {
        let mut index = Index::new(4, 0);
        index.finish_loading();
        let a = Hash32::of(b"a");
        for _ in 0..10_000 {
            index.insert(a, entry(b"x"), stamp());
        }
        assert!(index.clock.len() <= 2 * 4 + 64 + 1);
        assert_eq!(index.parsed, 1);
    }

    #[test]
    fn content_released_while_loading_is_unused_once_no_record_read_in_names_it() {
        let mut index = Index::new(10, 0);
        let (a, b, c) = (Hash32::of(b"a"), Hash32::of(b"b"), Hash32::of(b"c"));
        let (shared, alone) = (entry(b"shared"), entry(b"alone"));
        index.insert(a, Arc::clone(&shared), stamp());
        index.insert(b, Arc::clone(&alone), stamp());
        assert_eq!(index.remove(a), None);
        assert_eq!(index.remove(b), None);
        // A record read in later names `shared`: it stays.
        index.insert_summary(c, shared.digest, shared.length, stamp(), shared.stored_at);
        assert_eq!(index.finish_loading(), vec![alone.digest]);
        assert_eq!(index.refs(shared.digest), 1);
    }

    #[test]
    fn while_loading_no_content_is_released_and_newer_keys_win() {
        let mut index = Index::new(10, 0);
        let (a, b, c) = (Hash32::of(b"a"), Hash32::of(b"b"), Hash32::of(b"c"));
        let (old, new) = (entry(b"old"), entry(b"new"));
        // A write of `a` and a delete of `b` come before the reading-in gets to them.
        assert_eq!(index.insert(a, Arc::clone(&new), stamp()), None);
        assert_eq!(index.remove(b), None);
        // The last record using content leaves it on disk: another record may name it.
        assert_eq!(index.remove(a), None);
        assert_eq!(index.insert(a, Arc::clone(&new), stamp()), None);
        index.insert_summary(a, old.digest, old.length, stamp(), old.stored_at);
        index.insert_summary(b, old.digest, old.length, stamp(), old.stored_at);
        index.insert_summary(c, old.digest, old.length, stamp(), old.stored_at);
        assert_eq!(index.digest(a), Some(new.digest));
        assert_eq!(index.digest(b), None, "deleted before it was read in");
        assert_eq!(index.digest(c), Some(old.digest));
        assert_eq!(index.refs(old.digest), 1);
        assert!(
            index.evict(Some(0), Some(0)).is_empty(),
            "nothing is evicted while loading"
        );
        // `new` lost its user once, but `a` uses it again; `old` is named by `c`.
        assert_eq!(index.finish_loading(), vec![]);
        // From now on the counts are whole.
        assert_eq!(index.remove(c), Some(old.digest));
        assert_eq!(index.evict(Some(0), None), vec![(a, Some(new.digest))]);
    }
}
