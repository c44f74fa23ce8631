//! What a bounded store evicts, and what it stores at all: the eviction order's per-entry
//! stamp ([`Used`]), the policies ([`Eviction`]), and [`Recent`], a small table of key
//! fingerprints that remembers keys recently evicted (S3-FIFO's ghost queue) or missed once
//! (admission on a later request, see `min_uses`).

use super::dense::KeyHash;
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
pub(crate) struct Used(u64);

const AT_BITS: u32 = 48;
const AT_MASK: u64 = (1 << AT_BITS) - 1;
const FREQ_SHIFT: u32 = AT_BITS;
const FREQ_MASK: u64 = 0b11 << FREQ_SHIFT;
const MAIN: u64 = 1 << (AT_BITS + 2);
const LOGGED: u64 = 1 << (AT_BITS + 3);

/// An entry in S3-FIFO's small queue moves to the main queue at its end when it was looked
/// up at least this often since it was stored (1 measured better than 2 with
/// `examples/eviction.rs`).
pub(crate) const PROMOTE_AT: u8 = 1;

impl Used {
    pub(crate) fn new(at: u64, main: bool) -> Self {
        Used((at & AT_MASK) | if main { MAIN } else { 0 })
    }

    /// The packed bits, for the index snapshot.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn from_raw(raw: u64) -> Self {
        Used(raw)
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
        Used((self.0 & !AT_MASK) | (at & AT_MASK))
    }

    pub(crate) fn logged(self) -> bool {
        self.0 & LOGGED != 0
    }

    pub(crate) fn with_logged(self) -> Self {
        Used(self.0 | LOGGED)
    }

    pub(crate) fn with_freq(self, freq: u8) -> Self {
        let freq = u64::from(freq.min(3)) << FREQ_SHIFT;
        Used((self.0 & !FREQ_MASK) | freq)
    }
}

/// S3-FIFO's small queue share of the store, tuned by hill climbing on the hit ratio as
/// Caffeine tunes W-TinyLFU's window: every sample of requests, the share moves by a step;
/// while the hit ratio improves it keeps going that way, when it falls it turns back, and
/// the step shrinks as it settles (and grows again when the load changes). A step
/// multiplies or divides the share by a factor, so that it moves finely among the small
/// shares skewed loads want and still reaches the large ones of loads that want recency in
/// a few samples.
///
/// A store's hit ratio rises for a long while after it is first full, as it learns what is
/// popular, whatever the share: the climber keeps going the way it started through all of
/// that. It starts downwards, towards the small queues that skewed loads want (with
/// `examples/eviction.rs`, starting upwards took the share to 41–46% before it came back
/// down, and cost up to 0.015 of byte miss ratio at 10%); a load that wants recency turns it
/// back up once its hit ratio falls. Samples count only once the store is full.
#[derive(Debug)]
pub(crate) struct Climber {
    share: f64,
    step: f64,
    hits: u64,
    misses: u64,
    /// The hit ratio of the last sample, once one was taken on a full store.
    last_rate: Option<f64>,
    full: bool,
}

/// The share to start from, its bounds, the step to start with (in the share's natural
/// logarithm: ×1.35; 0.3 measured better than 0.5 and than steps of 6 points), how much a
/// step shrinks each sample, and the change in hit ratio past which a step starts over at
/// full size.
const SHARE: f64 = 0.1;
const SHARE_BOUNDS: (f64, f64) = (0.01, 0.8);
const STEP: f64 = 0.3;
const STEP_DECAY: f64 = 0.98;
const RESTART_AT: f64 = 0.05;

impl Default for Climber {
    fn default() -> Self {
        Climber {
            share: SHARE,
            step: -STEP,
            hits: 0,
            misses: 0,
            last_rate: None,
            full: false,
        }
    }
}

impl Climber {
    pub(crate) fn share(&self) -> f64 {
        self.share
    }

    /// Notes that the store is full (it evicts): samples count from then on.
    pub(crate) fn filled(&mut self) {
        self.full = true;
    }

    /// Counts a hit or a miss; once `sample` are counted, takes a step (after the first
    /// sample, which sets the hit ratio the next is compared with).
    pub(crate) fn record(&mut self, hit: bool, sample: u64) {
        if !self.full {
            return;
        }
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        let requests = self.hits + self.misses;
        if requests < sample {
            return;
        }
        let rate = self.hits as f64 / requests as f64;
        self.hits = 0;
        self.misses = 0;
        let Some(last_rate) = self.last_rate.replace(rate) else {
            return;
        };
        let change = rate - last_rate;
        let amount = if change >= 0.0 { self.step } else { -self.step };
        self.step = if change.abs() >= RESTART_AT {
            STEP.copysign(amount)
        } else {
            amount * STEP_DECAY
        };
        let (low, high) = SHARE_BOUNDS;
        self.share = (self.share * amount.exp()).clamp(low, high);
    }
}

/// A direct-mapped table of key fingerprints with a small count each (4 bytes a key): a key
/// lands in the cell its hash picks and replaces whatever was there, so it is remembered
/// until enough other keys have passed. A lookup that finds another key's fingerprint
/// errs once in 2^28 (12-bit fingerprints let about one crawl of 300 URLs in a hundred
/// store one of them under `min_uses(2)`). Cells are picked by a keyed hash, so that a
/// client cannot aim its keys at another's cell.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    cells: Vec<u32>,
    hash: KeyHash,
}

const COUNT_MASK: u32 = 0xf;

impl Recent {
    /// Makes room for about `keys` keys (the table only grows; growing forgets).
    pub(crate) fn fit(&mut self, keys: usize) {
        let wanted = keys.max(1024).next_power_of_two();
        if wanted > self.cells.len() {
            self.cells = vec![0; wanted];
        }
    }

    fn cell(&self, key: &Hash32) -> Option<(usize, u32)> {
        if self.cells.is_empty() {
            return None;
        }
        let hash = self.hash.of(key);
        let at = (hash as usize) & (self.cells.len() - 1);
        let tag = ((hash >> 32) as u32) & !COUNT_MASK;
        Some((at, tag))
    }

    /// How many times `key` was added since it was last taken (0: not remembered).
    pub(crate) fn count(&self, key: &Hash32) -> u8 {
        match self.cell(key) {
            Some((at, tag)) if self.cells[at] & !COUNT_MASK == tag => {
                (self.cells[at] & COUNT_MASK) as u8
            }
            _ => 0,
        }
    }

    /// Counts `key` once more, and returns its count.
    pub(crate) fn add(&mut self, key: &Hash32) -> u8 {
        let Some((at, tag)) = self.cell(key) else {
            return 0;
        };
        let count = match self.cells[at] {
            cell if cell & !COUNT_MASK == tag => ((cell & COUNT_MASK) + 1).min(COUNT_MASK),
            _ => 1,
        };
        self.cells[at] = tag | count;
        count as u8
    }

    /// Forgets `key`.
    pub(crate) fn take(&mut self, key: &Hash32) {
        if let Some((at, tag)) = self.cell(key)
            && self.cells[at] & !COUNT_MASK == tag
        {
            self.cells[at] = 0;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.cells.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_keeps_its_fields_apart() {
        let at = 1_780_000_000_000;
        let used = Used::new(at, false).with_freq(2);
        assert_eq!((used.at(), used.freq(), used.main()), (at, 2, false));
        let used = used.with_freq(9).with_at(at + 5);
        assert_eq!((used.at(), used.freq(), used.main()), (at + 5, 3, false));
        assert!(Used::new(at, true).main());
        let logged = used.with_logged();
        assert!(logged.logged() && !used.logged());
        assert_eq!(
            (logged.at(), logged.freq(), logged.main()),
            (at + 5, 3, false)
        );
    }

    /// One sample of 100 requests, `rate` of them hits.
    fn sample(climber: &mut Climber, rate: f64) {
        for n in 0..100 {
            climber.record(f64::from(n) / 100.0 < rate, 100);
        }
    }

    #[test]
    fn the_climber_goes_where_the_hit_ratio_rises() {
        // A made-up load whose hit ratio peaks with a small queue of 40 %.
        let mut climber = Climber::default();
        climber.filled();
        for _ in 0..200 {
            let best = 1.0 - (climber.share() - 0.4).abs();
            sample(&mut climber, best);
        }
        assert!((climber.share() - 0.4).abs() < 0.1, "{}", climber.share());
    }

    #[test]
    fn the_climber_waits_for_a_full_store_and_then_for_a_first_sample() {
        let mut climber = Climber::default();
        for _ in 0..50 {
            sample(&mut climber, 0.5);
        }
        assert_eq!(climber.share(), SHARE, "filling, no step");
        climber.filled();
        sample(&mut climber, 0.5);
        assert_eq!(
            climber.share(),
            SHARE,
            "the first sample sets the ratio to beat"
        );
        sample(&mut climber, 0.5);
        assert!(climber.share() < SHARE, "then a step");
    }

    #[test]
    fn a_hit_ratio_that_rises_as_the_store_learns_takes_the_share_down() {
        let mut climber = Climber::default();
        climber.filled();
        for n in 0..20 {
            sample(&mut climber, 0.3 + 0.01 * f64::from(n));
        }
        assert_eq!(climber.share(), SHARE_BOUNDS.0);
    }

    #[test]
    fn recent_counts_keys_until_others_take_their_cell() {
        let mut recent = Recent::default();
        let a = Hash32::of(b"a");
        assert_eq!(recent.add(&a), 0, "an empty table remembers nothing");
        recent.fit(4);
        assert_eq!(
            (recent.add(&a), recent.add(&a), recent.count(&a)),
            (1, 2, 2)
        );
        recent.take(&a);
        assert_eq!(recent.count(&a), 0);
        recent.add(&a);
        // Among many other keys, `a` is forgotten: its cell is taken.
        for n in 0..100_000u32 {
            recent.add(&Hash32::of(&n.to_le_bytes()));
        }
        assert_eq!(recent.count(&a), 0);
        // Most of the last 1 024 keys are still there (a direct-mapped table keeps about
        // two thirds of its size's worth).
        let kept = (100_000 - 1024..100_000u32)
            .filter(|n| recent.count(&Hash32::of(&n.to_le_bytes())) > 0)
            .count();
        assert!((500..=1024).contains(&kept), "{kept}");
    }
}
