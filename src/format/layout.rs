//! Where things live under `<dir>/cache-v2/`, and the hash names files are given.
//!
//! No key, URL or header ever becomes part of a path: records are named by the SHA-256 of
//! their key and content by the SHA-256 of its bytes, both as 64 lowercase hex digits.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::files::Mode;

/// The directory under the user's cache directory that holds this format.
pub(crate) const FORMAT_DIR: &str = "cache-v2";

/// A SHA-256 value: the name of a content file or of a record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Hash32(pub(crate) [u8; 32]);

impl Hash32 {
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Hash32(Sha256::digest(bytes).into())
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Hash32(hasher.finalize().into())
    }

    pub(crate) fn to_hex(self) -> String {
        crate::support::hex(&self.0)
    }

    /// Parses 64 lowercase hex digits; anything else is `None`.
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        let bytes: [u8; 32] = crate::support::unhex(hex)?.try_into().ok()?;
        Some(Hash32(bytes))
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The paths of one store.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The directory the user gave.
    dir: PathBuf,
    root: PathBuf,
    /// The bits of the files and directories the store creates.
    mode: Mode,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
            root: dir.join(FORMAT_DIR),
            mode: Mode::PRIVATE,
        }
    }

    pub(crate) fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The directory the user gave, which holds `cache-v2/`.
    pub(crate) fn user_dir(&self) -> &Path {
        &self.dir
    }

    /// `cache-v2/` itself.
    pub(crate) fn format_dir(&self) -> &Path {
        &self.root
    }

    pub(crate) fn metadata_dir(&self) -> PathBuf {
        self.root.join("metadata")
    }

    pub(crate) fn content_dir(&self) -> PathBuf {
        self.root.join("content")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Lines of `<hex key hash> <milliseconds>`: when entries were used, for the eviction
    /// order to survive a restart.
    pub(crate) fn access_log(&self) -> PathBuf {
        self.root.join("access.log")
    }

    /// The index snapshot a store writes when it is closed.
    pub(crate) fn index_snapshot(&self) -> PathBuf {
        self.root.join("index.snapshot")
    }

    pub(crate) fn record_path(&self, key: Hash32) -> PathBuf {
        let mut name = key.to_hex();
        name.push_str(".json");
        self.metadata_dir().join(name)
    }

    pub(crate) fn content_path(&self, digest: Hash32) -> PathBuf {
        self.content_dir().join(digest.to_hex())
    }
}

/// Where a SHA-256 goes in a table of this process: its first 8 bytes hashed with a secret
/// seed of the table's own (foldhash, hashbrown's default hasher). A key hash is a SHA-256
/// of what a client sent, so its bytes could serve as they are; but a client that grinds
/// URLs until their hashes share their low bits (some 2^21 SHA-256 each at a million
/// entries: a fraction of a second) would pile them into one run of the table, and every
/// lookup there would walk the pile under the index lock. Unkeyed, the same goes for
/// digests of bodies a client can upload to the origin.
#[derive(Debug, Default)]
pub(crate) struct KeyHash(hashbrown::DefaultHashBuilder);

impl KeyHash {
    pub(crate) fn of(&self, key: &Hash32) -> u64 {
        use std::hash::BuildHasher as _;
        let mut first = [0u8; 8];
        first.copy_from_slice(&key.0[..8]);
        self.0.hash_one(u64::from_le_bytes(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let h = Hash32::of(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Hash32::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash32::from_hex("ba78"), None);
        assert_eq!(Hash32::from_hex(&h.to_hex().to_uppercase()), None);
        assert_eq!(Hash32::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn paths_never_contain_the_key() {
        let layout = Layout::new(Path::new("/c"));
        let key = Hash32::of(b"GET:../../etc/passwd\0");
        let path = layout.record_path(key);
        assert_eq!(path.parent(), Some(layout.metadata_dir().as_path()));
        assert!(path.to_str().is_some_and(|p| !p.contains("..")));
        assert!(layout.content_path(key).starts_with("/c/cache-v2/content"));
    }
}
