//! [`PackedMap`]: a map from SHA-256 key hashes to small values, for what a store keeps of
//! every record. A `HashMap<Hash32, V>` sizes its table to a power of two above its length
//! divided by 7/8, so at a million records it holds two million buckets of key and value;
//! this keeps the pairs packed in a vector and only 4-byte positions in the table.

use hashbrown::HashTable;

use crate::format::layout::{Hash32, KeyHash};

/// A map from 32-byte hashes to values, kept in one vector with 4-byte positions.
pub(crate) struct PackedMap<V> {
    items: Vec<(Hash32, V)>,
    positions: HashTable<u32>,
    hash: KeyHash,
}

impl<V> Default for PackedMap<V> {
    fn default() -> Self {
        PackedMap {
            items: Vec::new(),
            positions: HashTable::new(),
            hash: KeyHash::default(),
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for PackedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMap")
            .field("len", &self.items.len())
            .finish()
    }
}

impl<V> PackedMap<V> {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    fn position(&self, key: &Hash32) -> Option<usize> {
        let items = &self.items;
        self.positions
            .find(self.hash.of(key), |&i| items[i as usize].0 == *key)
            .map(|&i| i as usize)
    }

    pub(crate) fn get(&self, key: &Hash32) -> Option<&V> {
        self.position(key).map(|i| &self.items[i].1)
    }

    pub(crate) fn get_mut(&mut self, key: &Hash32) -> Option<&mut V> {
        self.position(key).map(|i| &mut self.items[i].1)
    }

    pub(crate) fn contains_key(&self, key: &Hash32) -> bool {
        self.position(key).is_some()
    }

    /// Inserts `value` under `key`, returning the value it replaces.
    pub(crate) fn insert(&mut self, key: Hash32, value: V) -> Option<V> {
        match self.position(&key) {
            Some(at) => Some(std::mem::replace(&mut self.items[at].1, value)),
            None => {
                self.push(key, value);
                None
            }
        }
    }

    fn push(&mut self, key: Hash32, value: V) -> usize {
        let at = self.items.len();
        self.items.push((key, value));
        let (items, hash) = (&self.items, &self.hash);
        let index = u32::try_from(at).expect("fewer than 2^32 records");
        self.positions
            .insert_unique(hash.of(&key), index, |&i| hash.of(&items[i as usize].0));
        at
    }

    pub(crate) fn remove(&mut self, key: &Hash32) -> Option<V> {
        let items = &self.items;
        let found = self
            .positions
            .find_entry(self.hash.of(key), |&i| items[i as usize].0 == *key)
            .ok()?;
        let (at, _) = found.remove();
        let at = at as usize;
        let last = self.items.len() - 1;
        if at != last {
            // The last pair moves into the hole: its position follows it.
            let moved = self.hash.of(&self.items[last].0);
            let position = self
                .positions
                .find_mut(moved, |&i| i as usize == last)
                .expect("every pair has a position");
            *position = at as u32;
        }
        Some(self.items.swap_remove(at).1)
    }

    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (&Hash32, &V)> {
        self.items.iter().map(|(key, value)| (key, value))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Hash32> {
        self.items.iter().map(|(key, _)| key)
    }

    pub(crate) fn clear(&mut self) {
        self.items = Vec::new();
        self.positions = HashTable::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_ground_to_share_their_low_bits_are_spread_over_the_table() {
        // What a client grinding URLs would get: key hashes whose first 8 bytes agree in
        // their low 32 bits, the rest as SHA-256 makes it. Unkeyed, every one of them would
        // start its probe in the same place of a table of up to 2^32 positions.
        let hash = KeyHash::default();
        let ground: Vec<Hash32> = (0..4096u64)
            .map(|n| {
                let mut key = Hash32::of(&n.to_le_bytes());
                key.0[..4].fill(0);
                key
            })
            .collect();
        let places: std::collections::HashSet<u64> =
            ground.iter().map(|key| hash.of(key) & 0xffff).collect();
        assert!(places.len() > 3500, "{} places of 65 536", places.len());
        // Another table has a key of its own: a client cannot learn one from another.
        let other = KeyHash::default();
        assert_ne!(
            ground.iter().map(|key| hash.of(key)).collect::<Vec<_>>(),
            ground.iter().map(|key| other.of(key)).collect::<Vec<_>>()
        );
        // And the map still finds each of them.
        let mut dense = PackedMap::default();
        for (n, key) in ground.iter().enumerate() {
            dense.insert(*key, n);
        }
        assert!(
            ground
                .iter()
                .enumerate()
                .all(|(n, key)| dense.get(key) == Some(&n))
        );
    }

    #[test]
    fn it_agrees_with_a_hash_map_through_inserts_replacements_and_removals() {
        let key = |n: u32| Hash32::of(&n.to_le_bytes());
        let (mut dense, mut reference) = (PackedMap::default(), HashMap::new());
        // A deterministic mix: inserts, replacements and removals, the removals often of
        // pairs in the middle (so that the last pair moves).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = (state % 500) as u32;
            match state % 3 {
                0 | 1 => assert_eq!(dense.insert(key(n), state), reference.insert(key(n), state)),
                _ => assert_eq!(dense.remove(&key(n)), reference.remove(&key(n))),
            }
            assert_eq!(dense.len(), reference.len());
        }
        for n in 0..500 {
            assert_eq!(dense.get(&key(n)), reference.get(&key(n)), "{n}");
            assert_eq!(dense.contains_key(&key(n)), reference.contains_key(&key(n)));
        }
        let mut listed: Vec<_> = dense.iter().map(|(k, v)| (*k, *v)).collect();
        let mut expected: Vec<_> = reference.iter().map(|(k, v)| (*k, *v)).collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
        dense.insert(key(1000), 7);
        *dense.get_mut(&key(1000)).unwrap() += 1;
        assert_eq!(dense.get(&key(1000)), Some(&8));
        dense.clear();
        assert_eq!(dense.len(), 0);
        assert_eq!(dense.get(&key(1000)), None);
    }
}
