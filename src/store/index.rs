//! The in-memory index: which record names which content, how many records use each content
//! file, and a bounded set of parsed records so that warm hits parse no JSON.
//!
//! The disk stays the truth: the index is rebuilt from `metadata/` when the store opens (while
//! requests are served: see [`Index::loading`]), and a key the index does not know is looked up
//! on disk before it counts as a miss.

use crate::format::files::Stamp;
use crate::support::epoch_millis;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::content_ids::Contents;
use super::dense::DenseMap;
use super::policy::{Climber, Eviction, PROMOTE_AT, Recent, Used};
use std::sync::Arc;

use bytes::Bytes;

use crate::format::layout::Hash32;
use crate::format::record::Entry;

/// What the index holds of every record: 16 bytes beside its 32-byte key. A store of a
/// million records holds a million of these (the parsed form of a bounded number of them is
/// in [`Parsed`]; the content's digest and length once per content file in [`Contents`]).
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The content file's id in [`Contents`].
    content: u32,
    /// The order, in this process, in which the write that stored it started, wrapping
    /// (0 for records found on disk): an older write never replaces a newer one.
    written: u32,
    /// Its place in the eviction order.
    used: Used,
}

/// The parsed form of a record, for a bounded number of records.
#[derive(Debug)]
struct Parsed {
    entry: Arc<Entry>,
    /// The record file's, as it was parsed.
    stamp: Stamp,
    /// The whole body, for small entries while the memory budget allows.
    body: Option<Bytes>,
    /// When its record and content were last found unchanged on disk.
    checked: Option<Instant>,
    /// Looked up since the clock hand last passed: kept over entries that were not.
    used: bool,
}

/// A parsed record as the index holds it: the entry, the stamp of the file it was parsed
/// from, and its body when that is held in memory.
pub(crate) struct Known {
    pub(crate) entry: Arc<Entry>,
    pub(crate) stamp: Stamp,
    pub(crate) body: Option<Bytes>,
    /// Its record and content were found unchanged on disk less than [`RECHECK_AFTER`] ago.
    pub(crate) checked: bool,
}

/// While a store is the only one open on its directory, a body held in memory is served
/// without looking at the disk for this long after its record and content were last found
/// unchanged there (two `stat`s); with another store open on it, they are looked at on every
/// hit. A store opened meanwhile is noticed within this time too.
pub(crate) const RECHECK_AFTER: Duration = Duration::from_millis(100);

/// Key hash → record, and the content files records use.
#[derive(Debug)]
pub(crate) struct Index {
    slots: DenseMap<Slot>,
    contents: Contents,
    eviction: Eviction,
    /// S3-FIFO's ghost queue: keys evicted from the small queue, for a while.
    ghost: Recent,
    /// S3-FIFO's small queue's share of the store (in bytes, or in entries for a store
    /// bounded only in entries).
    climber: Climber,
    /// Keys missed and not stored, with how often, while a write needs `min_uses` of them.
    seen: Recent,
    min_uses: u8,
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

/// A lookup writes an entry's use to the access log at most once in each period this long
/// (milliseconds): the eviction order survives a restart to within a minute.
const LOG_USES_EVERY: u64 = 60_000;

/// The small queue's share is tuned every this many requests per entry stored.
const CLIMB_SAMPLE_PER_ENTRY: u64 = 2;

/// The admission table remembers about this many missed keys per indexed entry.
const SEEN_PER_ENTRY: usize = 4;

impl Index {
    pub(crate) fn new(parsed_limit: usize, body_budget: usize) -> Self {
        Index {
            slots: DenseMap::default(),
            contents: Contents::default(),
            eviction: Eviction::default(),
            ghost: Recent::default(),
            climber: Climber::default(),
            seen: Recent::default(),
            min_uses: 1,
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

    /// Sets the eviction policy, and how many misses of a key it takes before a write of it
    /// is admitted (1: the first).
    pub(crate) fn with_policy(mut self, eviction: Eviction, min_uses: u8) -> Self {
        self.eviction = eviction;
        self.min_uses = min_uses.max(1);
        self
    }

    /// Whether a response fetched for `key` is to be stored: always for a key stored
    /// already or with `min_uses` 1; else once `key` has missed `min_uses` times while it
    /// was remembered (its count is kept otherwise).
    pub(crate) fn admits(&mut self, key: Hash32) -> bool {
        if self.min_uses <= 1 || self.slots.contains_key(&key) || self.ghost.count(&key) > 0 {
            return true;
        }
        self.seen
            .fit(self.slots.len().saturating_mul(SEEN_PER_ENTRY));
        if self.seen.add(&key) >= self.min_uses {
            self.seen.take(&key);
            return true;
        }
        false
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

    /// Every indexed key, with the parsed entry when it is held.
    pub(crate) fn keys(&self) -> Vec<(Hash32, Option<Arc<Entry>>)> {
        self.slots
            .keys()
            .map(|key| (*key, self.parsed_of.get(key).map(|p| Arc::clone(&p.entry))))
            .collect()
    }

    /// Notes that `key` was looked up now.
    /// Returns the time to write to the access log when the use is one to keep across a
    /// restart: LRU, the first use, then the first in each minute (`LOG_USES_EVERY`), so
    /// that a hot entry costs one line a minute; S3-FIFO, the first since the entry entered
    /// its queue or was passed over.
    pub(crate) fn touch(&mut self, key: Hash32) -> Option<u64> {
        self.touch_at(key, epoch_millis(std::time::SystemTime::now()))
    }

    pub(crate) fn touch_at(&mut self, key: Hash32, now: u64) -> Option<u64> {
        let slot = self.slots.get_mut(&key)?;
        let used = slot.used;
        match self.eviction {
            Eviction::Lru => {
                slot.used = used.with_at(now).with_logged();
                let log = !used.logged() || now / LOG_USES_EVERY != used.at() / LOG_USES_EVERY;
                log.then_some(now)
            }
            Eviction::S3Fifo => {
                slot.used = used.with_freq(used.freq() + 1);
                let sample = self.climb_sample();
                self.climber.record(true, sample);
                (used.freq() == 0).then_some(now)
            }
        }
    }

    /// Takes in a use read from the access log when the store opens: LRU, the entry's last
    /// use; S3-FIFO, one use since it entered its queue.
    pub(crate) fn set_last_used(&mut self, key: Hash32, at: u64) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.used = match self.eviction {
                Eviction::Lru => slot.used.with_at(slot.used.at().max(at)),
                Eviction::S3Fifo if at > slot.used.at() => slot.used.with_freq(1),
                Eviction::S3Fifo => slot.used,
            };
        }
    }

    /// The uses to keep when the access log is rewritten short: every key's last use (LRU),
    /// or the keys used since they entered their queue (S3-FIFO).
    pub(crate) fn uses(&self) -> Vec<(Hash32, u64)> {
        let now = epoch_millis(std::time::SystemTime::now());
        self.slots
            .iter()
            .filter_map(|(k, s)| match self.eviction {
                Eviction::Lru => Some((*k, s.used.at())),
                Eviction::S3Fifo => (s.used.freq() > 0).then_some((*k, now)),
            })
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
        let over_bytes = max_bytes.is_some_and(|max| self.disk_bytes > max);
        let over_entries = max_entries.is_some_and(|max| self.slots.len() > max);
        if (!over_bytes && !over_entries) || self.is_loading() {
            return Vec::new();
        }
        let byte_goal = max_bytes.map(|max| max - max / 10);
        let entry_goal = max_entries.map(|max| max - max / 10);
        let done = |index: &Self| {
            byte_goal.is_none_or(|goal| index.disk_bytes <= goal)
                && entry_goal.is_none_or(|goal| index.slots.len() <= goal)
        };
        // Both policies go through queues in the order of each entry's time: LRU through
        // one, S3-FIFO through its small and main queues.
        let mut small = Vec::new();
        let mut main = Vec::new();
        let mut small_bytes = 0;
        for (key, slot) in self.slots.iter() {
            if self.eviction == Eviction::S3Fifo && !slot.used.main() {
                small_bytes += self.contents.length(slot.content);
                small.push((slot.used.at(), *key));
            } else {
                main.push((slot.used.at(), *key));
            }
        }
        small.sort_unstable();
        main.sort_unstable();
        let mut small: std::collections::VecDeque<Hash32> =
            small.into_iter().map(|(_, k)| k).collect();
        let mut main: std::collections::VecDeque<Hash32> =
            main.into_iter().map(|(_, k)| k).collect();
        // The small queue's share of whichever bound the store is over.
        let share = self.climber.share();
        let small_full = |bytes: u64, count: usize| {
            let of = |used: f64, max: Option<f64>| max.is_some_and(|max| used >= max * share);
            (over_bytes && of(bytes as f64, max_bytes.map(|m| m as f64)))
                || (over_entries && of(count as f64, max_entries.map(|m| m as f64)))
        };
        self.climber.filled();
        let mut evicted = Vec::new();
        while !done(self) {
            let from_small =
                !small.is_empty() && (main.is_empty() || small_full(small_bytes, small.len()));
            let queue = if from_small { &mut small } else { &mut main };
            let Some(key) = queue.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            let used = slot.used;
            match self.eviction {
                Eviction::S3Fifo if from_small => {
                    small_bytes -= self.contents.length(slot.content);
                    if used.freq() >= PROMOTE_AT {
                        slot.used = Used::new(now, true);
                        main.push_back(key);
                        continue;
                    }
                    self.ghost.fit(self.slots.len());
                    self.ghost.add(&key);
                }
                Eviction::S3Fifo if used.freq() > 0 => {
                    slot.used = used.with_freq(used.freq() - 1).with_at(now);
                    main.push_back(key);
                    continue;
                }
                _ => {}
            }
            let unused = self.remove(key);
            evicted.push((key, unused));
        }
        evicted
    }

    fn climb_sample(&self) -> u64 {
        (self.slots.len().max(1024) as u64).saturating_mul(CLIMB_SAMPLE_PER_ENTRY)
    }

    /// The parsed record for a key, when the index holds one.
    pub(crate) fn entry(&mut self, key: Hash32) -> Option<Known> {
        let parsed = self.parsed_of.get_mut(&key)?;
        parsed.used = true;
        Some(Known {
            entry: Arc::clone(&parsed.entry),
            stamp: parsed.stamp,
            body: parsed.body.clone(),
            checked: parsed
                .checked
                .is_some_and(|at| at.elapsed() < RECHECK_AFTER),
        })
    }

    /// Notes that the record of `key`, stamped `stamp`, and its content were just found
    /// unchanged on disk.
    pub(crate) fn checked(&mut self, key: Hash32, stamp: Stamp) {
        if let Some(parsed) = self.parsed_of.get_mut(&key)
            && parsed.stamp == stamp
        {
            parsed.checked = Some(Instant::now());
        }
    }

    /// Holds a parsed entry's body in memory, making room in the budget if it can. `stamp`
    /// is the record file's, as the body was read: a newer record gets no stale body.
    pub(crate) fn keep_body(&mut self, key: Hash32, stamp: Stamp, body: &Bytes) {
        if body.len() > self.body_budget {
            return;
        }
        self.make_room(body.len(), false);
        let length = self
            .slots
            .get(&key)
            .map(|slot| self.contents.length(slot.content));
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
        self.place(
            key,
            (digest, length),
            stamp,
            epoch_millis(stored_at),
            Some(entry),
            false,
        )
    }

    /// Records a key stored at `at` as [`Self::insert`] does, without its parsed form.
    #[cfg(feature = "replay")]
    pub(crate) fn store_at(
        &mut self,
        key: Hash32,
        digest: Hash32,
        length: u64,
        stamp: Stamp,
        at: u64,
    ) {
        self.place(key, (digest, length), stamp, at, None, false);
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
        self.place(key, (digest, length), Stamp::default(), 0, None, true);
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.used = Used::from_raw(used);
        }
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
            self.place(
                key,
                (digest, length),
                stamp,
                epoch_millis(stored_at),
                None,
                true,
            );
        }
    }

    /// Records `key` naming `content` (digest and length), its record stamped `stamp`,
    /// stored (or last used) at `last_used`, with its parsed form when there is one.
    fn place(
        &mut self,
        key: Hash32,
        (digest, length): (Hash32, u64),
        stamp: Stamp,
        last_used: u64,
        entry: Option<Arc<Entry>>,
        read_in: bool,
    ) -> Option<Hash32> {
        let (content, first) = self.contents.acquire(digest, length);
        if first {
            self.disk_bytes += length;
        }
        let old = self.slots.remove(&key);
        let used = self.placed(key, old.map(|old| old.used), last_used, read_in);
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
                    checked: None,
                    used: false,
                },
            );
            self.wind(key);
        }
        let slot = Slot {
            content,
            written: 0,
            used,
        };
        self.slots.insert(key, slot);
        unused
    }

    /// Where a record stored at `at` enters the eviction order: LRU, by that time; S3-FIFO,
    /// a record replacing one keeps its place as a use of it, one read in from disk (it
    /// survived before) or remembered by the ghost goes into the main queue, any other into
    /// the small queue.
    fn placed(&mut self, key: Hash32, old: Option<Used>, at: u64, read_in: bool) -> Used {
        match (self.eviction, old) {
            (Eviction::Lru, _) => Used::new(at, true),
            (Eviction::S3Fifo, Some(old)) => old.with_freq(old.freq() + 1),
            (Eviction::S3Fifo, None) if read_in => Used::new(at, true),
            (Eviction::S3Fifo, None) => {
                let sample = self.climb_sample();
                self.climber.record(false, sample);
                let remembered = self.ghost.count(&key) > 0;
                if remembered {
                    self.ghost.take(&key);
                }
                Used::new(at, remembered)
            }
        }
    }

    /// Keeps the parsed form of a record that the index already names, making room for it
    /// when the limit is reached.
    pub(crate) fn remember(&mut self, key: Hash32, entry: &Arc<Entry>, stamp: Stamp) {
        match self.slots.get(&key) {
            Some(slot) if self.contents.digest(slot.content) == entry.digest => {}
            _ => return,
        }
        if let Some(parsed) = self.parsed_of.get_mut(&key) {
            if parsed.stamp != stamp
                && let Some(body) = parsed.body.take()
            {
                self.body_bytes -= body.len();
            }
            if parsed.stamp != stamp {
                parsed.checked = None;
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
                checked: None,
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
        self.contents.clear();
        self.ghost.clear();
        self.seen.clear();
        self.parsed_of.clear();
        self.parsed = 0;
        self.body_bytes = 0;
        self.disk_bytes = 0;
        self.clock.clear();
    }

    /// Drops the bodies held in memory for content that turned out damaged.
    pub(crate) fn forget_bodies(&mut self, digest: Hash32) {
        let (slots, contents) = (&self.slots, &self.contents);
        for (key, parsed) in self.parsed_of.iter_mut() {
            if slots
                .get(key)
                .is_some_and(|s| contents.digest(s.content) == digest)
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
        let (digest, length) = self.contents.release(old.content)?;
        self.disk_bytes -= length;
        if self.is_loading() {
            // A record not read in yet may use it. (Past the bound, which only a reading
            // in that failed reaches, the orphan sweep of the next open takes it.)
            if self.released.len() < RELEASED_WHILE_LOADING {
                self.released.push(digest);
            }
            return None;
        }
        Some(digest)
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
    fn lru_logs_a_use_at_most_once_a_minute() {
        let mut index = Index::new(4, 0).with_policy(Eviction::Lru, 1);
        index.finish_loading();
        let a = Hash32::of(b"a");
        index.insert(a, entry(b"x"), stamp());
        let minute = 1_780_000_020_000 / LOG_USES_EVERY * LOG_USES_EVERY;
        assert!(
            index.touch_at(a, minute + 1).is_some(),
            "the first use is logged"
        );
        assert!(index.touch_at(a, minute + 2).is_none());
        assert!(
            index.touch_at(a, minute + 59_000).is_none(),
            "the next one in the minute is not"
        );
        assert!(
            index.touch_at(a, minute + 60_000).is_some(),
            "the next minute's is"
        );
        index.set_last_used(a, 0);
        assert_eq!(
            index.slots.get(&a).unwrap().used.at(),
            minute + 60_000,
            "an older logged use changes nothing"
        );
    }

    #[test]
    fn s3_fifo_logs_the_first_use_since_an_entry_entered_its_queue() {
        let mut index = Index::new(4, 0);
        index.finish_loading();
        let a = Hash32::of(b"a");
        index.insert(a, entry(b"x"), stamp());
        assert!(index.touch(a).is_some());
        assert!(index.touch(a).is_none());
        assert_eq!(index.uses().len(), 1, "a used entry is kept in the log");
        // Read in again after a restart, the logged use counts once.
        let mut reopened = Index::new(4, 0);
        let x = entry(b"x");
        reopened.insert_summary(a, x.digest, x.length, stamp(), UNIX_EPOCH);
        reopened.set_last_used(a, 1);
        assert_eq!(reopened.slots.get(&a).unwrap().used.freq(), 1);
    }

    /// An index of `n` entries of `size` bytes each, keys `0..n`, stored one millisecond
    /// apart from `at`.
    fn filled(eviction: Eviction, n: u32, at: u64) -> Index {
        let mut index = Index::new(0, 0).with_policy(eviction, 1);
        index.finish_loading();
        for i in 0..n {
            let body = format!("{i:>100}");
            let e = entry(body.as_bytes());
            index.place(
                key(i),
                (e.digest, e.length),
                stamp(),
                at + u64::from(i),
                None,
                true,
            );
        }
        index
    }

    fn key(i: u32) -> Hash32 {
        Hash32::of(&i.to_le_bytes())
    }

    #[test]
    fn s3_fifo_keeps_what_is_used_through_a_scan_and_lru_does_not() {
        for eviction in [Eviction::Lru, Eviction::S3Fifo] {
            let at = 1_780_000_000_000;
            // 100 entries of 100 bytes, bounded to 100: the first 50 looked up twice.
            let mut index = Index::new(0, 0).with_policy(eviction, 1);
            index.finish_loading();
            let mut now = at;
            let add = |index: &mut Index, i: u32, now: &mut u64| {
                *now += 1;
                let e = entry(format!("{i:>100}").as_bytes());
                index.insert(key(i), e, stamp());
                index.slots.get_mut(&key(i)).unwrap().used =
                    index.placed(key(i), None, *now, false);
                index.evict_at(Some(100 * 100), None, *now);
            };
            for i in 0..50 {
                add(&mut index, i, &mut now);
                now += 1;
                index.touch_at(key(i), now);
                index.touch_at(key(i), now);
            }
            // A scan: 200 objects requested once.
            for i in 1000..1200 {
                add(&mut index, i, &mut now);
            }
            let kept = (0..50)
                .filter(|&i| index.slots.contains_key(&key(i)))
                .count();
            match eviction {
                Eviction::Lru => assert_eq!(kept, 0, "LRU lets the scan push them all out"),
                Eviction::S3Fifo => assert_eq!(kept, 50, "S3-FIFO keeps every one"),
            }
            assert!(index.content_bytes() <= 100 * 100);
        }
    }

    #[test]
    fn s3_fifo_brings_an_entry_back_into_the_main_queue_when_its_ghost_is_remembered() {
        let at = 1_780_000_000_000;
        let mut index = filled(Eviction::S3Fifo, 10, at);
        // All ten were read in (main queue): make them new, in the small queue.
        for i in 0..10 {
            index.slots.get_mut(&key(i)).unwrap().used = Used::new(at + u64::from(i), false);
        }
        // Room enough that no other key evicted here takes key 0's cell (the cells are
        // picked by a hash seeded at random: in 1 024 of them, one run in 200 would).
        index.ghost.fit(1 << 20);
        let evicted = index.evict_at(Some(500), None, at + 100);
        let evicted: Vec<_> = evicted.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            evicted,
            (0..10).map(key).take(evicted.len()).collect::<Vec<_>>(),
            "in order"
        );
        assert!(index.ghost.count(&key(0)) > 0);
        let e = entry(format!("{:>100}", 0).as_bytes());
        index.insert(key(0), e, stamp());
        assert!(
            index.slots.get(&key(0)).unwrap().used.main(),
            "back into main"
        );
        assert_eq!(index.ghost.count(&key(0)), 0);
    }

    #[test]
    fn s3_fifo_main_queue_gives_a_used_entry_another_round() {
        let at = 1_780_000_000_000;
        let mut index = filled(Eviction::S3Fifo, 10, at);
        index.touch_at(key(0), at + 50);
        let evicted: Vec<_> = index
            .evict_at(Some(900), None, at + 100)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            evicted,
            vec![key(1), key(2)],
            "0 was used: 1 and 2 go first"
        );
        let used = index.slots.get(&key(0)).unwrap().used;
        assert_eq!(
            (used.freq(), used.at()),
            (0, at + 100),
            "at the main queue's head"
        );
    }

    #[test]
    fn admission_stores_a_key_on_its_second_miss() {
        let mut index = Index::new(4, 0).with_policy(Eviction::S3Fifo, 2);
        index.finish_loading();
        let a = Hash32::of(b"a");
        assert!(!index.admits(a), "first miss: counted, not stored");
        assert!(index.admits(a), "second: stored");
        index.insert(a, entry(b"x"), stamp());
        assert!(
            index.admits(a),
            "stored already: a refresh is always written"
        );
        let mut always = Index::new(4, 0);
        assert!(always.admits(Hash32::of(b"b")));
    }

    #[test]
    fn write_orders_compare_across_the_32_bit_wrap() {
        let mut index = Index::new(4, 0);
        index.finish_loading();
        let a = Hash32::of(b"a");
        index.insert(a, entry(b"x"), stamp());
        assert!(
            !index.has_newer_write(a, 5),
            "read in or never written: not newer"
        );
        index.set_written(a, u64::from(u32::MAX) + 3);
        assert!(index.has_newer_write(a, u64::from(u32::MAX) - 2));
        assert!(!index.has_newer_write(a, u64::from(u32::MAX) + 4));
        assert_eq!(std::mem::size_of::<(Hash32, Slot)>(), 48);
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
