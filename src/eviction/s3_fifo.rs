//! S3-FIFO ([`Eviction::S3Fifo`](super::Eviction::S3Fifo)): a small queue that new entries
//! enter, a main queue for those used again, and a ghost queue of keys the small queue let
//! go.

use std::collections::VecDeque;

use super::{Entries, Fingerprints, Over, Place, Policy, ShareClimber};
use crate::format::layout::Hash32;

/// An entry in the small queue moves to the main queue at its end when it was looked up at
/// least this often since it was stored (1 measured better than 2 with
/// `examples/eviction.rs`).
pub(crate) const PROMOTE_AT: u8 = 1;

/// The small queue's share is tuned every this many requests per entry stored.
const CLIMB_SAMPLE_PER_ENTRY: u64 = 2;

/// S3-FIFO: an entry's stamp is when it entered its queue, with its uses since (0 to 3)
/// and whether that queue is the main one.
#[derive(Debug, Default)]
pub(crate) struct S3Fifo {
    /// Keys evicted from the small queue, for a while.
    ghost: Fingerprints,
    /// The small queue's share of the store (in bytes, or in entries for a store bounded
    /// only in entries).
    climber: ShareClimber,
}

impl S3Fifo {
    fn sample(entries: usize) -> u64 {
        (entries.max(1024) as u64).saturating_mul(CLIMB_SAMPLE_PER_ENTRY)
    }
}

impl Policy for S3Fifo {
    /// A record replacing one keeps its place as a use of it; one read in from disk (it
    /// survived before) or remembered by the ghost goes into the main queue, any other into
    /// the small queue.
    fn enter(
        &mut self,
        key: Hash32,
        old: Option<Place>,
        at: u64,
        read_in: bool,
        entries: usize,
    ) -> Place {
        match old {
            Some(old) => old.with_freq(old.freq() + 1),
            None if read_in => Place::new(at, true),
            None => {
                self.climber.record(false, Self::sample(entries));
                let remembered = self.ghost.count(&key) > 0;
                if remembered {
                    self.ghost.take(&key);
                }
                Place::new(at, remembered)
            }
        }
    }

    /// Logs the first use since the entry entered its queue or was passed over.
    fn touch(&mut self, used: Place, now: u64, entries: usize) -> (Place, Option<u64>) {
        self.climber.record(true, Self::sample(entries));
        (
            used.with_freq(used.freq() + 1),
            (used.freq() == 0).then_some(now),
        )
    }

    fn logged_use(&self, used: Place, at: u64) -> Place {
        if at > used.at() {
            used.with_freq(1)
        } else {
            used
        }
    }

    fn use_to_keep(&self, used: Place, now: u64) -> Option<u64> {
        (used.freq() > 0).then_some(now)
    }

    fn remembers(&self, key: &Hash32) -> bool {
        self.ghost.count(key) > 0
    }

    /// Goes through the small and main queues in the order of each entry's time, taking
    /// from the small queue while it holds more than its share of the bound the store is
    /// over.
    fn evict(&mut self, entries: &mut dyn Entries, over: Over, now: u64) {
        let mut small = Vec::new();
        let mut main = Vec::new();
        let mut small_bytes = 0;
        for (key, used, length) in entries.list() {
            if used.main() {
                main.push((used.at(), key, length));
            } else {
                small_bytes += length;
                small.push((used.at(), key, length));
            }
        }
        small.sort_unstable();
        main.sort_unstable();
        let mut small: VecDeque<(Hash32, u64)> =
            small.into_iter().map(|(_, k, l)| (k, l)).collect();
        let mut main: VecDeque<Hash32> = main.into_iter().map(|(_, k, _)| k).collect();
        let share = self.climber.share();
        let small_full = |bytes: u64, count: usize| {
            let of = |used: f64, max: Option<f64>| max.is_some_and(|max| used >= max * share);
            of(bytes as f64, over.bytes.map(|m| m as f64))
                || of(count as f64, over.entries.map(|m| m as f64))
        };
        self.climber.filled();
        while !entries.done() {
            let from_small =
                !small.is_empty() && (main.is_empty() || small_full(small_bytes, small.len()));
            let (key, length) = if from_small {
                small.pop_front().expect("not empty")
            } else {
                match main.pop_front() {
                    Some(key) => (key, 0),
                    None => break,
                }
            };
            let Some(used) = entries.used(key) else {
                continue;
            };
            if from_small {
                small_bytes -= length;
                if used.freq() >= PROMOTE_AT {
                    entries.set_used(key, Place::new(now, true));
                    main.push_back(key);
                    continue;
                }
                self.ghost.fit(entries.len());
                self.ghost.add(&key);
            } else if used.freq() > 0 {
                entries.set_used(key, used.with_freq(used.freq() - 1).with_at(now));
                main.push_back(key);
                continue;
            }
            entries.remove(key);
        }
    }

    fn clear(&mut self) {
        self.ghost.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Lru, Table};
    use super::*;

    const AT: u64 = 1_780_000_000_000;

    fn key(i: u32) -> Hash32 {
        Hash32::of(&i.to_le_bytes())
    }

    /// `n` entries of 100 bytes, keys `0..n`, stored one millisecond apart from [`AT`], as
    /// read in at open (main queue) or new (small queue).
    fn filled(policy: &mut dyn Policy, n: u32, read_in: bool) -> Table {
        let mut table = Table::default();
        for i in 0..n {
            let used = policy.enter(key(i), None, AT + u64::from(i), read_in, table.len());
            table.insert(key(i), used, 100);
        }
        table
    }

    #[test]
    fn s3_fifo_keeps_what_is_used_through_a_scan_and_lru_does_not() {
        let policies: [(&str, Box<dyn Policy>); 2] = [
            ("lru", Box::new(Lru)),
            ("s3-fifo", Box::new(S3Fifo::default())),
        ];
        for (name, mut policy) in policies {
            // 100 entries of 100 bytes, bounded to 100: the first 50 looked up twice.
            let mut table = Table::default();
            let mut now = AT;
            let add = |table: &mut Table, policy: &mut dyn Policy, i: u32, now: &mut u64| {
                *now += 1;
                let used = policy.enter(key(i), None, *now, false, table.len());
                table.insert(key(i), used, 100);
                table.evict(policy, Some(100 * 100), None, *now);
            };
            for i in 0..50 {
                add(&mut table, &mut *policy, i, &mut now);
                now += 1;
                for _ in 0..2 {
                    let used = table.used(key(i)).expect("not evicted below the bound");
                    let (used, _) = policy.touch(used, now, table.len());
                    table.set_used(key(i), used);
                }
            }
            // A scan: 200 objects requested once.
            for i in 1000..1200 {
                add(&mut table, &mut *policy, i, &mut now);
            }
            let kept = (0..50).filter(|&i| table.used(key(i)).is_some()).count();
            match name {
                "lru" => assert_eq!(kept, 0, "LRU lets the scan push them all out"),
                _ => assert_eq!(kept, 50, "S3-FIFO keeps every one"),
            }
            assert!(table.bytes() <= 100 * 100);
        }
    }

    #[test]
    fn s3_fifo_brings_an_entry_back_into_the_main_queue_when_its_ghost_is_remembered() {
        let mut fifo = S3Fifo::default();
        // Room enough that no other key evicted here takes key 0's cell (the cells are
        // picked by a hash seeded at random: in 1 024 of them, one run in 200 would).
        fifo.ghost.fit(1 << 20);
        let mut table = filled(&mut fifo, 10, false);
        let evicted = table.evict(&mut fifo, Some(500), None, AT + 100);
        assert_eq!(
            evicted,
            (0..10).map(key).take(evicted.len()).collect::<Vec<_>>(),
            "in order"
        );
        assert!(fifo.remembers(&key(0)));
        let used = fifo.enter(key(0), None, AT + 101, false, table.len());
        assert!(used.main(), "back into main");
        assert!(!fifo.remembers(&key(0)));
    }

    #[test]
    fn s3_fifo_main_queue_gives_a_used_entry_another_round() {
        let mut fifo = S3Fifo::default();
        let mut table = filled(&mut fifo, 10, true);
        let (used, _) = fifo.touch(table.used(key(0)).unwrap(), AT + 50, 10);
        table.set_used(key(0), used);
        let evicted = table.evict(&mut fifo, Some(900), None, AT + 100);
        assert_eq!(
            evicted,
            vec![key(1), key(2)],
            "0 was used: 1 and 2 go first"
        );
        let used = table.used(key(0)).unwrap();
        assert_eq!(
            (used.freq(), used.at()),
            (0, AT + 100),
            "at the main queue's head"
        );
    }

    #[test]
    fn s3_fifo_logs_the_first_use_since_an_entry_entered_its_queue() {
        let mut fifo = S3Fifo::default();
        let used = fifo.enter(key(0), None, AT, false, 0);
        let (used, log) = fifo.touch(used, AT + 1, 1);
        assert!(log.is_some());
        let (used, log) = fifo.touch(used, AT + 2, 1);
        assert!(log.is_none());
        assert!(
            fifo.use_to_keep(used, AT + 3).is_some(),
            "a used entry is kept in the log"
        );
        // Read in again after a restart, the logged use counts once.
        let read_in = fifo.enter(key(0), None, 0, true, 0);
        assert_eq!(fifo.logged_use(read_in, 1).freq(), 1);
    }
}
