//! The index snapshot, `cache-v2/index.snapshot`: every record's key, content digest and
//! length, and place in the eviction order, then each tagged record's tags, written by [`StreamingManager::close`], so that
//! the next open has its whole index at once instead of reading every record file.
//!
//! It is trusted only while the metadata directory is exactly as it was when the snapshot
//! was taken: its inode and modification time are kept in the snapshot, and any record
//! written, replaced or removed since (by this process or another sharing the directory)
//! changes them. A snapshot that is stale, damaged (it ends with the SHA-256 of what
//! precedes it) or of another format is ignored, and the records are read in as without
//! one. It is removed once read, so that a run that ends without closing leaves none.
//!
//! What the index takes from it only counts records and content: a lookup still reads and
//! checks the record file, so a stale snapshot could never make the store serve what it
//! did not store.

use std::fs;
use std::io::{self, Write as _};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use super::StreamingManager;
use super::open_store::OpenStore;
use crate::error::{Error, Result};
use crate::format::files;
use crate::format::layout::Hash32;
use crate::format::tags::{MAX_TAGS, is_tag};
use crate::rt::blocking;

const MAGIC: &[u8; 8] = b"HCSIDX02";
/// Key, digest, length and eviction stamp.
const ENTRY: usize = 32 + 32 + 8 + 8;
/// Magic, the metadata directory's identity and time, the entry count.
const HEADER: usize = 8 + DIR_STAMP + 8;
const DIR_STAMP: usize = 32;
/// A directory changed more recently than this may change again within the same tick of
/// the file system's clock without its time changing: the snapshot waits that long.
const SETTLE: Duration = Duration::from_millis(50);

/// An entry of the snapshot: key, content digest and length, eviction stamp.
pub(crate) type Saved = (Hash32, Hash32, u64, u64);

/// The metadata directory's device, inode and modification time, as bytes. (Elsewhere than
/// Unix, no snapshot is written or read.)
#[cfg(not(unix))]
fn dir_stamp(_: &std::path::Path) -> io::Result<([u8; DIR_STAMP], SystemTime)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "index snapshots need Unix",
    ))
}

/// The metadata directory's device, inode and modification time, as bytes.
#[cfg(unix)]
fn dir_stamp(path: &std::path::Path) -> io::Result<([u8; DIR_STAMP], SystemTime)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::symlink_metadata(path)?;
    let mut stamp = [0u8; DIR_STAMP];
    stamp[..8].copy_from_slice(&meta.dev().to_le_bytes());
    stamp[8..16].copy_from_slice(&meta.ino().to_le_bytes());
    stamp[16..24].copy_from_slice(&meta.mtime().to_le_bytes());
    stamp[24..32].copy_from_slice(&meta.mtime_nsec().to_le_bytes());
    Ok((stamp, meta.modified()?))
}

impl OpenStore {
    /// Writes the snapshot of the index. Waits (a little) for the metadata directory to
    /// settle; fails when records keep changing.
    pub(super) fn write_snapshot(&self) -> Result<usize> {
        let metadata = self.layout.metadata_dir();
        let path = self.layout.index_snapshot();
        let io_error = |e: io::Error| Error::io(e, &path);
        // Encoded under the lock straight from the index (80 bytes an entry), not copied
        // into a list first; hashed once the lock is let go.
        let (mut bytes, entries) = (|| {
            for _ in 0..20 {
                // Under the index lock records are neither installed nor removed: the
                // directory's time and the index agree.
                let index = self.index();
                let (stamp, modified) = dir_stamp(&metadata)?;
                let settled = SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|age| age >= SETTLE);
                if settled {
                    let (mut bytes, count) = encode(&stamp, index.saved());
                    encode_tags(&mut bytes, index.tag_index().entries());
                    return Ok((bytes, count));
                }
                drop(index);
                std::thread::sleep(SETTLE);
            }
            Err(io::Error::other(
                "records kept changing while the snapshot was taken",
            ))
        })()
        .map_err(io_error)?;
        seal(&mut bytes);
        let temp = self.scratch.temp_path();
        let written = (|| {
            let mut file = files::create_new(&temp, self.layout.mode(), false)?;
            file.write_all(&bytes)?;
            if self.options.durable {
                file.sync_all()?;
            }
            fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error(e));
        }
        Ok(entries)
    }

    /// Reads a snapshot that matches the metadata directory into the index, and removes it.
    /// Returns how many entries it held, or why it was not used.
    pub(super) fn read_snapshot(&self) -> std::result::Result<usize, String> {
        let path = self.layout.index_snapshot();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("none".into()),
            Err(e) => return Err(e.to_string()),
        };
        let _ = fs::remove_file(&path);
        let (stamp, _) = dir_stamp(&self.layout.metadata_dir()).map_err(|e| e.to_string())?;
        let (entries, tags) = parse(&bytes, &stamp)?;
        let count = entries.len();
        let mut index = self.index();
        for (key, digest, length, used) in entries {
            index.restore(key, digest, length, used);
        }
        if !parse_tags(tags, |key, tags| index.restore_tags(key, tags)) {
            // Checked by its digest: a tag section that does not read was not written so.
            index.clear();
            return Err("damaged".into());
        }
        Ok(count)
    }
}

/// A snapshot of `entries`, taken of the directory stamped `stamp`, without its closing
/// SHA-256 (of all that precedes it), with the count of entries.
fn encode(
    stamp: &[u8; DIR_STAMP],
    entries: impl ExactSizeIterator<Item = Saved>,
) -> (Vec<u8>, usize) {
    let count = entries.len();
    let mut bytes = Vec::with_capacity(HEADER + count * ENTRY + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(stamp);
    bytes.extend_from_slice(&(count as u64).to_le_bytes());
    for (key, digest, length, used) in entries {
        bytes.extend_from_slice(&key.0);
        bytes.extend_from_slice(&digest.0);
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&used.to_le_bytes());
    }
    (bytes, count)
}

/// Appends the tag section: how many entries are tagged, then each one's key, tag count,
/// and tags (each with its length).
fn encode_tags<'a>(bytes: &mut Vec<u8>, tagged: impl Iterator<Item = (&'a Hash32, Vec<&'a str>)>) {
    let at = bytes.len();
    bytes.extend_from_slice(&0u64.to_le_bytes());
    let mut count = 0u64;
    for (key, tags) in tagged {
        count += 1;
        bytes.extend_from_slice(&key.0);
        // At most MAX_TAGS tags of at most MAX_TAG_BYTES: both fit in 16 bits.
        bytes.extend_from_slice(&(tags.len() as u16).to_le_bytes());
        for tag in tags {
            bytes.extend_from_slice(&(tag.len() as u16).to_le_bytes());
            bytes.extend_from_slice(tag.as_bytes());
        }
    }
    bytes[at..at + 8].copy_from_slice(&count.to_le_bytes());
}

/// Reads the tag section of a snapshot (checked with the rest of it by its SHA-256),
/// handing each tagged entry's key and tags to `each`; `false` when it is damaged.
fn parse_tags(mut bytes: &[u8], mut each: impl FnMut(Hash32, &[&str])) -> bool {
    fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        take_slice(bytes, N).map(|b| b.try_into().expect("N bytes"))
    }
    fn take_slice<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    let mut read = || {
        let count = u64::from_le_bytes(take(&mut bytes)?);
        let mut tags: Vec<&str> = Vec::with_capacity(MAX_TAGS);
        for _ in 0..count {
            let key = Hash32(take(&mut bytes)?);
            let n = u16::from_le_bytes(take(&mut bytes)?);
            tags.clear();
            for _ in 0..n {
                let len = u16::from_le_bytes(take(&mut bytes)?);
                let tag = std::str::from_utf8(take_slice(&mut bytes, usize::from(len))?).ok()?;
                if tags.len() < MAX_TAGS && is_tag(tag) {
                    tags.push(tag);
                }
            }
            each(key, &tags);
        }
        Some(())
    };
    read().is_some() && bytes.is_empty()
}

/// Ends an encoded snapshot with the SHA-256 of all of it.
fn seal(bytes: &mut Vec<u8>) {
    let check: [u8; 32] = Sha256::digest(&*bytes).into();
    bytes.extend_from_slice(&check);
}

/// The entries of a snapshot taken of the directory stamped `stamp`, read as they are
/// iterated (a million of them are 80 MB: not copied into a list first), and its tag
/// section.
fn parse<'a>(
    bytes: &'a [u8],
    stamp: &[u8; DIR_STAMP],
) -> std::result::Result<(impl ExactSizeIterator<Item = Saved> + 'a, &'a [u8]), String> {
    if bytes.len() < HEADER + 32 || &bytes[..8] != MAGIC {
        return Err("not a snapshot of this format".into());
    }
    let (body, check) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != check {
        return Err("damaged".into());
    }
    if &body[8..8 + DIR_STAMP] != stamp {
        return Err("records changed since it was taken".into());
    }
    let count = u64::from_le_bytes(body[8 + DIR_STAMP..HEADER].try_into().expect("8 bytes"));
    let entries = &body[HEADER..];
    let Some(split) = usize::try_from(count.saturating_mul(ENTRY as u64))
        .ok()
        .filter(|&n| n <= entries.len())
    else {
        return Err("damaged".into());
    };
    let (entries, tags) = entries.split_at(split);
    let hash = |b: &[u8]| Hash32(b.try_into().expect("32 bytes"));
    let number = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let entries = entries.chunks_exact(ENTRY).map(move |e| {
        (
            hash(&e[..32]),
            hash(&e[32..64]),
            number(&e[64..72]),
            number(&e[72..80]),
        )
    });
    Ok((entries, tags))
}

impl StreamingManager {
    /// Writes the index snapshot, `cache-v2/index.snapshot`, so that the next open has its
    /// whole index at once (a store of a million entries in well under a second) instead of
    /// reading every record file (several seconds at a million, while requests are served
    /// but nothing is evicted). Call it when the service stops, after the last request; the
    /// proxy does on SIGTERM. The store stays usable: a record written or removed
    /// afterwards makes the snapshot stale, and the next open then reads the records in.
    ///
    /// Waits for the records to be read in, when the store was opened without a snapshot.
    pub async fn close(&self) -> Result<()> {
        let opened = self.opened().await?;
        opened.read_in().await?;
        // A purge still unlinking would leave a note, and the next open no snapshot.
        let patience = Instant::now() + Duration::from_secs(60);
        while !opened.notes.is_empty() && Instant::now() < patience {
            crate::rt::sleep_until(Instant::now() + Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let entries = blocking(move || opened.write_snapshot()).await?;
        crate::log::info_event!(
            entries,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index snapshot written"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_intact_snapshot_of_the_same_directory_is_used() {
        let stamp = [7u8; DIR_STAMP];
        let entries = vec![(Hash32::of(b"k"), Hash32::of(b"c"), 5 << 32, 42)];
        let (mut bytes, count) = encode(&stamp, entries.iter().copied());
        let tagged = Hash32::of(b"k");
        encode_tags(
            &mut bytes,
            [(&tagged, vec!["product-42", "home"])].into_iter(),
        );
        seal(&mut bytes);
        assert_eq!(count, 1);
        let (read, tags) = parse(&bytes, &stamp).unwrap();
        assert_eq!(read.collect::<Vec<_>>(), entries);
        let mut read = Vec::new();
        assert!(parse_tags(tags, |key, tags| read.push((key, tags.join(" ")))));
        assert_eq!(read, [(tagged, "product-42 home".to_owned())]);
        let missing = [1, 0, 0, 0, 0, 0, 0, 0];
        assert!(!parse_tags(&missing, |_, _| {}), "a tagged entry missing");
        assert!(
            parse(&bytes, &[8u8; DIR_STAMP]).is_err(),
            "another directory time"
        );
        for at in [0, 20, HEADER + 3, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            assert!(parse(&damaged, &stamp).is_err(), "a flipped bit at {at}");
        }
        assert!(parse(&bytes[..bytes.len() - 5], &stamp).is_err(), "torn");
        assert!(parse(b"", &stamp).is_err());
    }
}
