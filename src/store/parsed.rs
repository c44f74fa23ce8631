//! The parsed records a store keeps in memory, a bounded number of them, so that warm hits
//! parse no JSON; and the small bodies held beside them within a budget. A clock hand
//! gives the room of entries not looked up since its last visit to new ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::format::files::Stamp;
use crate::format::layout::Hash32;
use crate::format::record::Entry;

/// While a store is the only one open on its directory, a body held in memory is served
/// without looking at the disk for this long after its record and content were last found
/// unchanged there (two `stat`s); with another store open on it, they are looked at on every
/// hit. A store opened meanwhile is noticed within this time too.
pub(crate) const RECHECK_AFTER: Duration = Duration::from_millis(100);

/// The parsed form of one record.
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

/// A parsed record as the store holds it: the entry, the stamp of the file it was parsed
/// from, and its body when that is held in memory.
pub(crate) struct HeldEntry {
    pub(crate) entry: Arc<Entry>,
    pub(crate) stamp: Stamp,
    pub(crate) body: Option<Bytes>,
    /// Its record and content were found unchanged on disk less than [`RECHECK_AFTER`] ago.
    pub(crate) checked: bool,
}

/// Parsed records by key hash, at most `limit` of them, and their bodies within a budget.
#[derive(Debug)]
pub(crate) struct ParsedRecords {
    of: HashMap<Hash32, Parsed>,
    count: usize,
    limit: usize,
    /// Bytes of bodies held in memory, and how many may be.
    body_bytes: usize,
    body_budget: usize,
    /// Keys with a parsed entry, in the order a clock hand visits them to make room: an
    /// entry looked up since the last visit is passed over once (second chance), so the
    /// entries in use stay parsed and the others give way.
    clock: VecDeque<Hash32>,
}

impl ParsedRecords {
    pub(crate) fn new(limit: usize, body_budget: usize) -> Self {
        ParsedRecords {
            of: HashMap::new(),
            count: 0,
            limit,
            body_bytes: 0,
            body_budget,
            clock: VecDeque::new(),
        }
    }

    /// The parsed record of `key`, when one is held; it counts as looked up.
    pub(crate) fn get(&mut self, key: Hash32) -> Option<HeldEntry> {
        let parsed = self.of.get_mut(&key)?;
        parsed.used = true;
        Some(HeldEntry {
            entry: Arc::clone(&parsed.entry),
            stamp: parsed.stamp,
            body: parsed.body.clone(),
            checked: parsed
                .checked
                .is_some_and(|at| at.elapsed() < RECHECK_AFTER),
        })
    }

    /// The entry of `key`, when one is held (it does not count as looked up).
    pub(crate) fn entry(&self, key: &Hash32) -> Option<Arc<Entry>> {
        self.of.get(key).map(|p| Arc::clone(&p.entry))
    }

    /// Notes that the record of `key`, stamped `stamp`, and its content were just found
    /// unchanged on disk.
    pub(crate) fn checked(&mut self, key: Hash32, stamp: Stamp) {
        if let Some(parsed) = self.of.get_mut(&key)
            && parsed.stamp == stamp
        {
            parsed.checked = Some(Instant::now());
        }
    }

    /// Holds a parsed entry's body in memory, making room in the budget if it can. `stamp`
    /// is the record file's, as the body was read: a newer record gets no stale body;
    /// `length` is the content's the index names for `key`.
    pub(crate) fn keep_body(
        &mut self,
        key: Hash32,
        stamp: Stamp,
        body: &Bytes,
        length: Option<u64>,
    ) {
        if body.len() > self.body_budget {
            return;
        }
        self.make_room(body.len(), false);
        if let Some(parsed) = self.of.get_mut(&key)
            && self.body_bytes + body.len() <= self.body_budget
            && parsed.body.is_none()
            && parsed.stamp == stamp
            && length == Some(body.len() as u64)
        {
            self.body_bytes += body.len();
            parsed.body = Some(body.clone());
        }
    }

    /// Holds `entry` as the parsed form of a record just stored under `key`.
    pub(crate) fn insert(&mut self, key: Hash32, entry: Arc<Entry>, stamp: Stamp) {
        self.hold(key, entry, stamp, false);
    }

    /// Keeps the parsed form of a record just read from disk, making room for it when the
    /// limit is reached; it counts as looked up.
    pub(crate) fn remember(&mut self, key: Hash32, entry: &Arc<Entry>, stamp: Stamp) {
        if let Some(parsed) = self.of.get_mut(&key) {
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
        self.hold(key, Arc::clone(entry), stamp, true);
    }

    fn hold(&mut self, key: Hash32, entry: Arc<Entry>, stamp: Stamp, used: bool) {
        if self.limit == 0 {
            return;
        }
        self.make_room(0, true);
        self.count += 1;
        let parsed = Parsed {
            entry,
            stamp,
            body: None,
            checked: None,
            used,
        };
        self.of.insert(key, parsed);
        self.wind(key);
    }

    /// Moves the clock hand until there is room for one more parsed entry (`entry`) and for
    /// `body` more bytes of bodies, dropping the parsed forms (and bodies) of entries not
    /// looked up since its last visit. The records stay indexed; only memory is given back.
    fn make_room(&mut self, body: usize, entry: bool) {
        let over = |held: &Self| {
            (entry && held.count >= held.limit) || held.body_bytes + body > held.body_budget
        };
        while over(self) {
            let Some(key) = self.clock.pop_front() else {
                return;
            };
            let Some(parsed) = self.of.get_mut(&key) else {
                continue;
            };
            if std::mem::take(&mut parsed.used) {
                self.clock.push_back(key);
                continue;
            }
            self.forget(key);
        }
    }

    /// Counts a newly parsed entry of `key` on the clock, keeping the clock's queue from
    /// growing past the entries it holds when keys are overwritten over and over.
    fn wind(&mut self, key: Hash32) {
        self.clock.push_back(key);
        if self.clock.len() > 2 * self.limit + 64 {
            let mut seen = std::collections::HashSet::with_capacity(self.count);
            let of = &self.of;
            self.clock.retain(|k| of.contains_key(k) && seen.insert(*k));
        }
    }

    /// Drops the parsed form of `key`, and its body.
    pub(crate) fn forget(&mut self, key: Hash32) {
        if let Some(parsed) = self.of.remove(&key) {
            self.count -= 1;
            if let Some(body) = &parsed.body {
                self.body_bytes -= body.len();
            }
        }
    }

    /// Drops the bodies held of the keys `damaged` names (their content turned out damaged).
    pub(crate) fn forget_bodies(&mut self, damaged: impl Fn(&Hash32) -> bool) {
        for (key, parsed) in self.of.iter_mut() {
            if damaged(key)
                && let Some(body) = parsed.body.take()
            {
                self.body_bytes -= body.len();
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.of.clear();
        self.count = 0;
        self.body_bytes = 0;
        self.clock.clear();
    }

    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (self.count, self.body_bytes, self.clock.len())
    }
}

#[cfg(test)]
pub(in crate::store) mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// An entry of `body` (its digest and length), for the store's tests.
    pub(in crate::store) fn entry(body: &[u8]) -> Arc<Entry> {
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
            tags: Default::default(),
        })
    }

    #[test]
    fn bodies_stay_within_their_budget() {
        let mut held = ParsedRecords::new(10, 8);
        let stamp = Stamp::default();
        let [a, b, c] = [b"a", b"b", b"c"].map(|k| Hash32::of(k));
        held.insert(a, entry(b"12345"), stamp);
        held.insert(b, entry(b"67890"), stamp);
        held.keep_body(a, stamp, &Bytes::from_static(b"12345"), Some(5));
        held.keep_body(b, stamp, &Bytes::from_static(b"67890"), Some(5));
        assert!(held.counts().1 <= 8);
        assert!(
            held.get(b).is_some_and(|k| k.body.is_some()),
            "the newest is kept"
        );
        // A body larger than the whole budget is never kept, nor one of another length
        // than the content the index names.
        held.insert(c, entry(b"0123456789"), stamp);
        held.keep_body(c, stamp, &Bytes::from_static(b"0123456789"), Some(10));
        assert!(held.get(c).is_some_and(|k| k.body.is_none()));
        held.keep_body(c, stamp, &Bytes::from_static(b"0123"), Some(10));
        assert!(held.get(c).is_some_and(|k| k.body.is_none()));
    }

    #[test]
    fn overwriting_one_key_again_and_again_keeps_the_clock_small() {
        let mut held = ParsedRecords::new(4, 0);
        let a = Hash32::of(b"a");
        for _ in 0..10_000 {
            // As the index overwrites a record: the old parsed form goes, the new comes.
            held.forget(a);
            held.insert(a, entry(b"x"), Stamp::default());
        }
        assert!(held.counts().2 <= 2 * 4 + 64 + 1);
        assert_eq!(held.counts().0, 1);
    }
}
