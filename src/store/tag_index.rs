//! [`TagIndex`]: which entries carry which tags, in memory, so that a purge of a tag finds
//! its entries without reading a record. It is made from the records (or the snapshot) when
//! the store opens and kept with the index; nothing of it is written anywhere else, so a
//! store of an entry costs no write of a shared file.
//!
//! Each distinct tag is kept once, its bytes in one text with those of every other, with a
//! 4-byte id; each tagged entry has a place that does not move, holding its key hash and its
//! tags' ids (up to three inline). A tag names the places of its entries: one inline (a tag
//! only one entry carries costs no list), the others in a list of 4-byte places. A removal
//! leaves the lists as they are (a place is checked against the entry there when a purge
//! reads it, and a list is compacted once half of it is stale), so that a purge reads just
//! its entries and a store or removal appends at most.

use std::hash::BuildHasher as _;

use hashbrown::HashTable;

use std::collections::HashMap;

use crate::format::layout::{Hash32, KeyHash};

/// Tags by id, and each tagged entry's tag ids.
#[derive(Default)]
pub(crate) struct TagIndex {
    /// Every tag's bytes, one after another; a tag no entry carries leaves its bytes here
    /// until [`compact`](Self::compact) takes them out.
    text: Vec<u8>,
    /// Each id's place in `text` and how many entries carry it; ids no entry carries are
    /// in `free`.
    names: Vec<Name>,
    free: Vec<u32>,
    /// Ids by their tag's hash (keyed per index: a client cannot choose colliding tags).
    ids: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Bytes of `text` no id names any more.
    garbage: usize,
    /// Tagged entries, in places that do not move; a free place holds no ids.
    entries: Vec<Tagged>,
    free_places: Vec<u32>,
    /// Places by their entry's key hash.
    places: HashTable<u32>,
    key_hash: KeyHash,
    /// For tags more than one entry carried: the places of the others (see [`Name::first`]),
    /// some of which may no longer carry it.
    postings: HashMap<u32, Vec<u32>>,
    /// Tag-entry pairs.
    pairs: usize,
}

/// A tagged entry: its key hash and its tags' ids.
struct Tagged {
    key: Hash32,
    ids: Ids,
}

impl std::fmt::Debug for TagIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagIndex")
            .field("tags", &self.ids.len())
            .field("pairs", &self.pairs)
            .finish()
    }
}

/// A tag's bytes in the text, how many entries carry it, and the place of the first that
/// took it (which may no longer carry it).
#[derive(Debug, Clone, Copy, Default)]
struct Name {
    at: u32,
    len: u32,
    refs: u32,
    first: u32,
}

/// An entry's tag ids: up to three held inline (no allocation), more in a slice of their
/// own.
enum Ids {
    Few(u8, [u32; 3]),
    Many(Box<[u32]>),
}

impl Ids {
    fn new(ids: &[u32]) -> Ids {
        match ids.len() {
            0..=3 => {
                let mut few = [0; 3];
                few[..ids.len()].copy_from_slice(ids);
                Ids::Few(ids.len() as u8, few)
            }
            _ => Ids::Many(ids.into()),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Ids::Few(len, ids) => &ids[..usize::from(*len)],
            Ids::Many(ids) => ids,
        }
    }
}

/// Compaction runs when at least this many bytes of text are garbage, and half of it.
const COMPACT_AFTER: usize = 1 << 20;

impl TagIndex {
    /// Notes `key`'s tags, in place of those it had.
    pub(crate) fn set<'a>(&mut self, key: Hash32, tags: impl IntoIterator<Item = &'a str>) {
        // Taken before the old ones are let go: a tag it keeps keeps its id.
        let mut ids: Vec<(u32, bool)> = tags
            .into_iter()
            .filter_map(|tag| self.acquire(tag))
            .collect();
        self.remove(key);
        if ids.is_empty() {
            return;
        }
        let place = match self.free_places.pop() {
            Some(place) => place,
            None => {
                self.entries.push(Tagged {
                    key,
                    ids: Ids::new(&[]),
                });
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 tagged entries")
            }
        };
        for (id, new) in &mut ids {
            if *new {
                self.names[*id as usize].first = place;
            } else {
                self.post(*id, place);
            }
        }
        let ids: Vec<u32> = ids.into_iter().map(|(id, _)| id).collect();
        self.pairs += ids.len();
        self.entries[place as usize] = Tagged {
            key,
            ids: Ids::new(&ids),
        };
        let Self {
            places,
            entries,
            key_hash,
            ..
        } = self;
        places.insert_unique(key_hash.of(&key), place, |&p| {
            key_hash.of(&entries[p as usize].key)
        });
    }

    /// Adds `place` to the places of tag `id`, compacting its list when half of it is
    /// stale.
    fn post(&mut self, id: u32, place: u32) {
        let refs = self.names[id as usize].refs as usize;
        let list = self.postings.entry(id).or_default();
        list.push(place);
        if list.len() > 2 * refs + 16 {
            let entries = &self.entries;
            list.retain(|&p| p == place || entries[p as usize].ids.as_slice().contains(&id));
            list.sort_unstable();
            list.dedup();
            list.shrink_to(2 * list.len());
        }
    }

    fn place(&self, key: &Hash32) -> Option<u32> {
        let entries = &self.entries;
        self.places
            .find(self.key_hash.of(key), |&p| entries[p as usize].key == *key)
            .copied()
    }

    /// Forgets `key`'s tags.
    pub(crate) fn remove(&mut self, key: Hash32) {
        let Some(place) = self.place(&key) else {
            return;
        };
        let entries = &self.entries;
        if let Ok(found) = self
            .places
            .find_entry(self.key_hash.of(&key), |&p| entries[p as usize].key == key)
        {
            found.remove();
        }
        let ids = std::mem::replace(&mut self.entries[place as usize].ids, Ids::new(&[]));
        self.free_places.push(place);
        self.pairs -= ids.as_slice().len();
        for id in ids.as_slice() {
            self.release(*id);
        }
        if self.garbage >= COMPACT_AFTER && self.garbage * 2 >= self.text.len() {
            self.compact();
        }
    }

    fn name(&self, id: u32) -> &str {
        let Name { at, len, .. } = self.names[id as usize];
        let bytes = &self.text[at as usize..(at + len) as usize];
        // Only tags (ASCII) are put in the text.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    fn find(&self, tag: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(tag);
        self.ids.find(hash, |&id| self.name(id) == tag).copied()
    }

    /// The id of `tag`, one more entry carrying it; `true` when no entry carried it. `None`
    /// past 4 GiB of distinct tags (said in the log: the entry is not found by that tag).
    fn acquire(&mut self, tag: &str) -> Option<(u32, bool)> {
        if let Some(id) = self.find(tag) {
            self.names[id as usize].refs += 1;
            return Some((id, false));
        }
        if self.text.len() + tag.len() > u32::MAX as usize {
            self.compact();
            if self.text.len() + tag.len() > u32::MAX as usize {
                crate::log::warn_event!("4 GiB of distinct tags: a tag is not indexed");
                return None;
            }
        }
        let name = Name {
            at: self.text.len() as u32,
            len: tag.len() as u32,
            refs: 1,
            first: 0,
        };
        self.text.extend_from_slice(tag.as_bytes());
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = name;
                id
            }
            None => {
                self.names.push(name);
                u32::try_from(self.names.len() - 1).expect("fewer than 2^32 tags")
            }
        };
        let Self {
            ids,
            hasher,
            names,
            text,
            ..
        } = self;
        let rehash = |&id: &u32| {
            let Name { at, len, .. } = names[id as usize];
            hasher.hash_one(
                std::str::from_utf8(&text[at as usize..(at + len) as usize]).unwrap_or_default(),
            )
        };
        ids.insert_unique(hasher.hash_one(tag), id, rehash);
        Some((id, true))
    }

    fn release(&mut self, id: u32) {
        let name = &mut self.names[id as usize];
        name.refs -= 1;
        if name.refs > 0 {
            return;
        }
        self.garbage += name.len as usize;
        let hash = self.hasher.hash_one(self.name(id));
        if let Ok(found) = self.ids.find_entry(hash, |&other| other == id) {
            found.remove();
        }
        self.names[id as usize] = Name::default();
        self.postings.remove(&id);
        self.free.push(id);
    }

    /// Writes the text again with only the tags entries carry.
    fn compact(&mut self) {
        let mut text = Vec::with_capacity(self.text.len() - self.garbage);
        for name in self.names.iter_mut().filter(|name| name.refs > 0) {
            let at = text.len() as u32;
            text.extend_from_slice(&self.text[name.at as usize..(name.at + name.len) as usize]);
            name.at = at;
        }
        self.text = text;
        self.garbage = 0;
    }

    /// The entries that carry any of `tags`: read from the tags' places, not from every
    /// entry.
    pub(crate) fn tagged<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Vec<Hash32> {
        let mut places = Vec::new();
        for id in tags.into_iter().filter_map(|tag| self.find(tag)) {
            let first = self.names[id as usize].first;
            let others = self.postings.get(&id).map_or(&[][..], Vec::as_slice);
            places.extend(
                std::iter::once(first)
                    .chain(others.iter().copied())
                    .filter(|&p| self.entries[p as usize].ids.as_slice().contains(&id)),
            );
        }
        places.sort_unstable();
        places.dedup();
        places
            .into_iter()
            .map(|p| self.entries[p as usize].key)
            .collect()
    }

    /// Every tagged entry with its tags, for the snapshot.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&Hash32, Vec<&str>)> {
        self.entries
            .iter()
            .filter(|tagged| !tagged.ids.as_slice().is_empty())
            .map(|tagged| {
                let tags = tagged
                    .ids
                    .as_slice()
                    .iter()
                    .map(|id| self.name(*id))
                    .collect();
                (&tagged.key, tags)
            })
    }

    /// Tag-entry pairs, and distinct tags.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.pairs, self.ids.len())
    }

    pub(crate) fn clear(&mut self) {
        *self = TagIndex::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags<'a>(list: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        list.iter().copied()
    }

    #[test]
    fn a_tag_finds_the_entries_that_carry_it_now() {
        let mut index = TagIndex::default();
        let [a, b, c] = [b"a", b"b", b"c"].map(|k| Hash32::of(k));
        index.set(a, tags(&["product-42", "home"]));
        index.set(b, tags(&["product-7", "home"]));
        index.set(c, tags(&[]));
        let mut home = index.tagged(["home"]);
        home.sort();
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(home, both);
        assert_eq!(index.tagged(["product-42"]), [a]);
        assert_eq!(index.tagged(["product-42", "product-7"]).len(), 2);
        assert!(index.tagged(["nothing"]).is_empty());
        assert_eq!(index.counts(), (4, 3));

        // Stored again with other tags: the old ones no longer find it.
        index.set(a, tags(&["product-43"]));
        assert_eq!(index.tagged(["home"]), [b]);
        assert_eq!(index.tagged(["product-43"]), [a]);
        let listed: Vec<_> = index.entries().collect();
        assert!(listed.contains(&(&a, vec!["product-43"])), "{listed:?}");
        // A tag no entry carries any more is forgotten, and its id used again.
        assert_eq!(index.counts(), (3, 3));
        index.remove(b);
        assert_eq!(index.counts(), (1, 1));
        index.set(c, tags(&["fresh"]));
        assert_eq!(index.names.len(), 4, "freed ids are reused: no fifth");
        assert_eq!(index.tagged(["fresh"]), [c]);
        assert!(index.tagged(["home"]).is_empty());
    }

    #[test]
    fn the_text_of_tags_no_entry_carries_is_let_go() {
        let mut index = TagIndex::default();
        let kept = Hash32::of(b"kept");
        index.set(kept, ["kept"]);
        for n in 0..200_000u32 {
            let key = Hash32::of(&n.to_le_bytes());
            let tag = format!("item-{n:08}");
            index.set(key, [tag.as_str(), "shared"]);
            index.remove(key);
        }
        assert!(
            index.text.len() < 2 * COMPACT_AFTER,
            "{} bytes",
            index.text.len()
        );
        assert_eq!(index.tagged(["kept"]), [kept]);
        assert!(index.tagged(["shared"]).is_empty());
        assert_eq!(index.counts(), (1, 1));
    }
}
