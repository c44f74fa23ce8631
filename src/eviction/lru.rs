//! Least recently used first ([`Eviction::Lru`](super::Eviction::Lru)).

use super::{Entries, Over, Place, Policy};
use crate::format::layout::Hash32;

/// A lookup writes an entry's use to the access log at most once in each period this long
/// (milliseconds): the eviction order survives a restart to within a minute.
pub(crate) const LOG_USES_EVERY: u64 = 60_000;

/// LRU: an entry's stamp is its last use; the oldest goes first.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Lru;

impl Policy for Lru {
    fn enter(&mut self, _: Hash32, _: Option<Place>, at: u64, _: bool, _: usize) -> Place {
        Place::new(at, true)
    }

    /// Logs the first use, then the first in each minute ([`LOG_USES_EVERY`]), so that a hot
    /// entry costs one line a minute.
    fn touch(&mut self, used: Place, now: u64, _: usize) -> (Place, Option<u64>) {
        let log = !used.logged() || now / LOG_USES_EVERY != used.at() / LOG_USES_EVERY;
        (used.with_at(now).with_logged(), log.then_some(now))
    }

    fn logged_use(&self, used: Place, at: u64) -> Place {
        used.with_at(used.at().max(at))
    }

    fn use_to_keep(&self, used: Place, _: u64) -> Option<u64> {
        Some(used.at())
    }

    fn remembers(&self, _: &Hash32) -> bool {
        false
    }

    fn evict(&mut self, entries: &mut dyn Entries, _: Over, _: u64) {
        let mut order: Vec<(u64, Hash32)> = entries
            .list()
            .into_iter()
            .map(|(key, used, _)| (used.at(), key))
            .collect();
        order.sort_unstable();
        for (_, key) in order {
            if entries.done() {
                break;
            }
            entries.remove(key);
        }
    }

    fn clear(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_logs_a_use_at_most_once_a_minute() {
        let mut lru = Lru;
        let used = lru.enter(Hash32::of(b"a"), None, 1_780_000_000_000, false, 0);
        let minute = 1_780_000_020_000 / LOG_USES_EVERY * LOG_USES_EVERY;
        let (used, log) = lru.touch(used, minute + 1, 1);
        assert!(log.is_some(), "the first use is logged");
        let (used, log) = lru.touch(used, minute + 2, 1);
        assert!(log.is_none());
        let (used, log) = lru.touch(used, minute + 59_000, 1);
        assert!(log.is_none(), "the next one in the minute is not");
        let (used, log) = lru.touch(used, minute + 60_000, 1);
        assert!(log.is_some(), "the next minute's is");
        assert_eq!(
            lru.logged_use(used, 0).at(),
            minute + 60_000,
            "an older logged use changes nothing"
        );
    }
}
