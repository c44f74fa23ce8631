//! A small table of key fingerprints that remembers keys for a while: keys recently evicted
//! (S3-FIFO's ghost queue) or missed once (admission on a later request, see `min_uses`).

use crate::format::layout::Hash32;
use crate::format::layout::KeyHash;

/// A direct-mapped table of key fingerprints with a small count each (4 bytes a key): a key
/// lands in the cell its hash picks and replaces whatever was there, so it is remembered
/// until enough other keys have passed. A lookup that finds another key's fingerprint
/// errs once in 2^28 (12-bit fingerprints let about one crawl of 300 URLs in a hundred
/// store one of them under `min_uses(2)`). Cells are picked by a keyed hash, so that a
/// client cannot aim its keys at another's cell.
#[derive(Debug, Default)]
pub(crate) struct Fingerprints {
    cells: Vec<u32>,
    hash: KeyHash,
}

const COUNT_MASK: u32 = 0xf;

impl Fingerprints {
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
    fn recent_counts_keys_until_others_take_their_cell() {
        let mut recent = Fingerprints::default();
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
