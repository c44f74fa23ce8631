//! [`Contents`]: the content files the indexed records use, each once, under a small id
//! that records hold instead of the 32-byte digest. A content's id stays the same while any
//! record uses it; ids of content no longer used are given out again.

use hashbrown::HashTable;

use crate::format::layout::Hash32;
use crate::format::layout::KeyHash;

/// One content file: its digest, length and how many records use it. 44 bytes (the length
/// is kept as two halves so that the struct needs no 8-byte alignment).
#[derive(Debug, Clone, Copy)]
struct Content {
    digest: Hash32,
    length: [u32; 2],
    /// Records using it; 0 for an id free to be given out again.
    refs: u32,
}

impl Content {
    fn length(&self) -> u64 {
        u64::from(self.length[0]) | (u64::from(self.length[1]) << 32)
    }
}

/// The content files records use, each under a small id.
#[derive(Default)]
pub(crate) struct Contents {
    items: Vec<Content>,
    /// Ids whose content no record uses.
    free: Vec<u32>,
    /// Digest → id of the content in use.
    ids: HashTable<u32>,
    hash: KeyHash,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contents")
            .field("len", &self.len())
            .finish()
    }
}

impl Contents {
    /// Content files in use.
    pub(crate) fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    fn id(&self, digest: &Hash32) -> Option<u32> {
        let items = &self.items;
        self.ids
            .find(self.hash.of(digest), |&i| {
                items[i as usize].digest == *digest
            })
            .copied()
    }

    /// Counts one more record using `digest`. Returns its id, and whether it is the first
    /// record to use it.
    pub(crate) fn acquire(&mut self, digest: Hash32, length: u64) -> (u32, bool) {
        if let Some(id) = self.id(&digest) {
            self.items[id as usize].refs += 1;
            return (id, false);
        }
        let content = Content {
            digest,
            length: [length as u32, (length >> 32) as u32],
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = content;
                id
            }
            None => {
                let id = u32::try_from(self.items.len()).expect("fewer than 2^32 content files");
                self.items.push(content);
                id
            }
        };
        let (items, hash) = (&self.items, &self.hash);
        self.ids.insert_unique(hash.of(&digest), id, |&i| {
            hash.of(&items[i as usize].digest)
        });
        (id, true)
    }

    /// Counts one record fewer using content `id`. Returns its digest and length when no
    /// record uses it any more (the id is then free).
    pub(crate) fn release(&mut self, id: u32) -> Option<(Hash32, u64)> {
        let content = self.items.get_mut(id as usize)?;
        if content.refs == 0 {
            return None;
        }
        content.refs -= 1;
        if content.refs > 0 {
            return None;
        }
        let (digest, length) = (content.digest, content.length());
        if let Ok(found) = self.ids.find_entry(self.hash.of(&digest), |&i| i == id) {
            found.remove();
        }
        self.free.push(id);
        Some((digest, length))
    }

    pub(crate) fn digest(&self, id: u32) -> Hash32 {
        self.items[id as usize].digest
    }

    pub(crate) fn length(&self, id: u32) -> u64 {
        self.items[id as usize].length()
    }

    /// How many records use the content `digest`.
    pub(crate) fn refs(&self, digest: &Hash32) -> u32 {
        self.id(digest).map_or(0, |id| self.items[id as usize].refs)
    }

    pub(crate) fn clear(&mut self) {
        *self = Contents::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_shared_by_one_digest_and_given_out_again_once_free() {
        let mut contents = Contents::default();
        let (a, b) = (Hash32::of(b"a"), Hash32::of(b"b"));
        let big = 5u64 << 32 | 7;
        let (id_a, first) = contents.acquire(a, big);
        assert!(first);
        assert_eq!(contents.acquire(a, big), (id_a, false));
        let (id_b, _) = contents.acquire(b, 1);
        assert_ne!(id_a, id_b);
        assert_eq!((contents.len(), contents.refs(&a)), (2, 2));
        assert_eq!(contents.length(id_a), big, "lengths past 4 GiB");
        assert_eq!(contents.release(id_a), None, "one record still uses it");
        assert_eq!(contents.release(id_a), Some((a, big)));
        assert_eq!(
            contents.release(id_a),
            None,
            "a free id is not released twice"
        );
        assert_eq!((contents.len(), contents.refs(&a)), (1, 0));
        let c = Hash32::of(b"c");
        assert_eq!(
            contents.acquire(c, 3),
            (id_a, true),
            "the free id is reused"
        );
        assert_eq!(contents.digest(id_a), c);
        assert_eq!(contents.digest(id_b), b);
        assert_eq!(std::mem::size_of::<Content>(), 44);
    }
}
