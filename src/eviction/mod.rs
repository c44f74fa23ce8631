//! What a bounded store evicts, and what it stores at all. The index holds one stamp per
//! entry ([`Place`]) and asks a [`Policy`] where an entry enters the order, what a lookup
//! changes and which entries go when the store is over its bounds ([`Entries`] is how a
//! policy sees them); an [`Admission`] decides whether a fetched response is stored at all.
//! The policies are [`Lru`] and [`S3Fifo`] (with its [`ShareClimber`] and ghost queue, a
//! [`Fingerprints`] table); admission is [`MinUses`]. A new policy is a file here implementing
//! [`Policy`], a variant of [`Eviction`] and a line in [`policy`]; `replay.rs` runs it over
//! traces (`examples/eviction.rs`) through `Table`.

mod admission;
mod climber;
mod fingerprints;
mod lru;
mod s3_fifo;
#[cfg(any(test, feature = "replay"))]
mod table;

pub(crate) use admission::{Admission, MinUses};
pub(crate) use climber::ShareClimber;
pub(crate) use fingerprints::Fingerprints;
pub(crate) use lru::Lru;
pub(crate) use s3_fifo::S3Fifo;
#[cfg(any(test, feature = "replay"))]
pub(crate) use table::Table;

use crate::format::layout::Hash32;

/// The order in which a store bounded by [`max_size`] or [`max_entries`] evicts entries.
///
/// [`max_size`]: crate::StreamingManagerBuilder::max_size
/// [`max_entries`]: crate::StreamingManagerBuilder::max_entries
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Eviction {
    /// Least recently used first, as nginx and Varnish do. Objects requested once (a crawler
    /// walking the site, a scan) push out popular ones.
    Lru,
    /// S3-FIFO (Yang et al., SOSP 2023): a new entry goes into a small queue (a tenth of
    /// the store to start with); if it is looked up again before it reaches the queue's end
    /// it moves to the main queue, else it is evicted and its key remembered a while, so
    /// that it goes straight to the main queue when it is stored again. The main queue
    /// evicts in the order entries entered it, giving an entry looked up since then another
    /// round. Objects requested once leave early; popular objects stay. The small queue's
    /// share is tuned by hill climbing on the hit ratio (1% to 80%), so that a load where
    /// only recency counts is served about as well as by LRU.
    #[default]
    S3Fifo,
}

/// An entry's place in the eviction order, packed in 8 bytes: a time in milliseconds since
/// the epoch (LRU: the last use; S3-FIFO: when it entered its queue), S3-FIFO's count of
/// uses since (0 to 3), whether it is in the main queue, and whether a use of it was
/// written to the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place(u64);

const AT_BITS: u32 = 48;
const AT_MASK: u64 = (1 << AT_BITS) - 1;
const FREQ_SHIFT: u32 = AT_BITS;
const FREQ_MASK: u64 = 0b11 << FREQ_SHIFT;
const MAIN: u64 = 1 << (AT_BITS + 2);
const LOGGED: u64 = 1 << (AT_BITS + 3);

impl Place {
    pub(crate) fn new(at: u64, main: bool) -> Self {
        Place((at & AT_MASK) | if main { MAIN } else { 0 })
    }

    /// The packed bits, for the index snapshot.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn from_raw(raw: u64) -> Self {
        Place(raw)
    }

    pub(crate) fn at(self) -> u64 {
        self.0 & AT_MASK
    }

    pub(crate) fn freq(self) -> u8 {
        ((self.0 & FREQ_MASK) >> FREQ_SHIFT) as u8
    }

    pub(crate) fn main(self) -> bool {
        self.0 & MAIN != 0
    }

    pub(crate) fn with_at(self, at: u64) -> Self {
        Place((self.0 & !AT_MASK) | (at & AT_MASK))
    }

    pub(crate) fn logged(self) -> bool {
        self.0 & LOGGED != 0
    }

    pub(crate) fn with_logged(self) -> Self {
        Place(self.0 | LOGGED)
    }

    pub(crate) fn with_freq(self, freq: u8) -> Self {
        let freq = u64::from(freq.min(3)) << FREQ_SHIFT;
        Place((self.0 & !FREQ_MASK) | freq)
    }
}

/// The policy a store runs for `eviction`.
pub(crate) fn policy(eviction: Eviction) -> Box<dyn Policy> {
    match eviction {
        Eviction::Lru => Box::new(Lru),
        Eviction::S3Fifo => Box::new(S3Fifo::default()),
    }
}

/// An eviction policy: where an entry enters the order, what a lookup changes, and which
/// entries go when the store is over its bounds. Its state beside the stamps (a ghost
/// queue, a tuned share) is its own.
pub(crate) trait Policy: std::fmt::Debug + Send {
    /// The stamp of an entry stored under `key` at `at` (ms): `old` is the stamp of the
    /// entry it replaces, `read_in` whether it was found on disk when the store opened;
    /// `entries` the store holds (besides it).
    fn enter(
        &mut self,
        key: Hash32,
        old: Option<Place>,
        at: u64,
        read_in: bool,
        entries: usize,
    ) -> Place;
    /// A lookup of an entry stamped `used`, at `now`: its new stamp, and the time to write
    /// to the access log when the use is one to keep across a restart.
    fn touch(&mut self, used: Place, now: u64, entries: usize) -> (Place, Option<u64>);
    /// An entry's stamp once a use at `at`, read from the access log at open, is counted.
    fn logged_use(&self, used: Place, at: u64) -> Place;
    /// The use of an entry to keep when the access log is rewritten short, if any.
    fn use_to_keep(&self, used: Place, now: u64) -> Option<u64>;
    /// Whether `key` was evicted lately: a response fetched for it is admitted.
    fn remembers(&self, key: &Hash32) -> bool;
    /// Removes entries in the policy's order until `entries` says it is done; `over` is the
    /// bound the store is over.
    fn evict(&mut self, entries: &mut dyn Entries, over: Over, now: u64);
    /// Forgets what it remembers of keys (the store was cleared).
    fn clear(&mut self);
}

/// The entries a policy evicts from, as the index shows them.
pub(crate) trait Entries {
    /// Every entry: its key, its stamp, and the bytes of its content.
    fn list(&self) -> Vec<(Hash32, Place, u64)>;
    /// The stamp of `key`'s entry, while it is there.
    fn used(&self, key: Hash32) -> Option<Place>;
    /// Stamps `key`'s entry anew (it was passed over).
    fn set_used(&mut self, key: Hash32, used: Place);
    /// Evicts `key`'s entry.
    fn remove(&mut self, key: Hash32);
    /// Whether enough was evicted.
    fn done(&self) -> bool;
    /// How many entries there are.
    fn len(&self) -> usize;
}

/// The bounds a store is over, each `Some(bound)` when it is over it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Over {
    pub(crate) bytes: Option<u64>,
    pub(crate) entries: Option<usize>,
}

/// What eviction goes down to once a store is over a bound: 90% of each bound, so that it
/// runs in batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    bytes: Option<u64>,
    entries: Option<usize>,
}

impl Goal {
    /// Whether a store holding `bytes` in `entries` is within the goal.
    pub(crate) fn reached(&self, bytes: u64, entries: usize) -> bool {
        self.bytes.is_none_or(|goal| bytes <= goal)
            && self.entries.is_none_or(|goal| entries <= goal)
    }
}

/// The bounds a store holding `bytes` in `entries` is over, and the goal of its eviction;
/// `None` when it is within both `max_bytes` and `max_entries`.
pub(crate) fn over(
    max_bytes: Option<u64>,
    max_entries: Option<usize>,
    bytes: u64,
    entries: usize,
) -> Option<(Over, Goal)> {
    let over = Over {
        bytes: max_bytes.filter(|&max| bytes > max),
        entries: max_entries.filter(|&max| entries > max),
    };
    if over.bytes.is_none() && over.entries.is_none() {
        return None;
    }
    let goal = Goal {
        bytes: max_bytes.map(|max| max - max / 10),
        entries: max_entries.map(|max| max - max / 10),
    };
    Some((over, goal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_keeps_its_fields_apart() {
        let at = 1_780_000_000_000;
        let used = Place::new(at, false).with_freq(2);
        assert_eq!((used.at(), used.freq(), used.main()), (at, 2, false));
        let used = used.with_freq(9).with_at(at + 5);
        assert_eq!((used.at(), used.freq(), used.main()), (at + 5, 3, false));
        assert!(Place::new(at, true).main());
        let logged = used.with_logged();
        assert!(logged.logged() && !used.logged());
        assert_eq!(
            (logged.at(), logged.freq(), logged.main()),
            (at + 5, 3, false)
        );
    }
}
