//! Content files: a temp file in a store's scratch directory, hashed while written and
//! installed by rename under `content/<sha256>` (an existing file of that name means the
//! bytes are stored already: deduplication), and the room a store gives bodies being written.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::files::{self, Mode};
use super::layout::Hash32;
use crate::error::{Error, ErrorKind, Result};
use crate::format::files::Stamp;

/// Writes larger than this go to the file directly; smaller ones are gathered first. Every
/// body being stored holds one such buffer: 600 stalled fills held 150 MiB at 256 KiB.
const WRITE_BUFFER: usize = 32 * 1024;

/// A file that is removed when dropped, unless it was kept (renamed into place).
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        TempFile { path, armed: true }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `to`; from then on it is no longer removed on drop.
    pub(crate) fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes a temp file whole and syncs it when asked: used for records. Returns the file's
/// stamp too, which its rename into place keeps.
pub(crate) fn write_temp(
    path: PathBuf,
    bytes: &[u8],
    durable: bool,
    mode: Mode,
) -> Result<(TempFile, Stamp), Error> {
    let temp = TempFile::new(path);
    let io = |e| Error::io(e, temp.path());
    let mut file = files::create_new(temp.path(), mode, false).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    if durable {
        file.sync_all().map_err(io)?;
    }
    let stamp = Stamp::of(&file.metadata().map_err(io)?);
    Ok((temp, stamp))
}

/// Content that is complete on disk but not yet committed.
#[derive(Debug)]
pub(crate) struct FinishedContent {
    pub(crate) temp: TempFile,
    pub(crate) digest: Hash32,
    pub(crate) length: u64,
    /// The room its bytes take in the store, given back when this is dropped.
    pub(crate) claim: Option<Claim>,
}

/// The room a store gives the bodies it is writing, so that with them its directory stays
/// within its bounds: a body that finds none is not stored (its client is served all the
/// same). Bytes are claimed as they are written and given back once the body is committed
/// (then they count as stored) or abandoned.
pub(crate) trait DiskBudget: Send + Sync {
    /// Claims `bytes` more for a body being written; `Err`: there is no room for them.
    fn claim(&self, bytes: u64) -> Result<(), Error>;
    /// Gives back `bytes` claimed before.
    fn release(&self, bytes: u64);
    /// Makes room for what was claimed: evicts stored entries while they and the bodies
    /// being written are over the store's bounds.
    fn settle(&self);
}

/// Bytes claimed from a [`DiskBudget`], given back when dropped.
pub(crate) struct Claim {
    room: Arc<dyn DiskBudget>,
    bytes: u64,
}

impl Claim {
    pub(crate) fn new(room: Arc<dyn DiskBudget>) -> Self {
        Claim { room, bytes: 0 }
    }

    pub(crate) fn more(&mut self, bytes: u64) -> Result<(), Error> {
        self.room.claim(bytes)?;
        self.bytes += bytes;
        Ok(())
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("bytes", &self.bytes).finish()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.room.release(self.bytes);
    }
}

/// Streams a body into a temp file, computing its SHA-256 and length as it goes (or leaving
/// the hashing to its caller, see [`take_hasher`](Self::take_hasher)).
pub(crate) struct ContentWriter {
    file: BufWriter<File>,
    temp: TempFile,
    hasher: Option<Sha256>,
    length: u64,
    claim: Option<Claim>,
}

/// A tee hashes this much of a body in the jobs that write it; past that, jobs of their own
/// hash the file behind the writer (SHA-256 runs at ~1.7 GB/s on one core, slower than a
/// write to the page cache), so that the client of a tee does not wait for it.
pub(crate) const HASH_INLINE: u64 = 4 << 20;

impl ContentWriter {
    pub(crate) fn create(path: PathBuf, mode: Mode) -> Result<Self, Error> {
        let file = files::create_new(&path, mode, false).map_err(|e| Error::io(e, &path))?;
        Ok(ContentWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            temp: TempFile::new(path),
            hasher: Some(Sha256::new()),
            length: 0,
            claim: None,
        })
    }

    /// Claims the room for each write from `room` first; a write it refuses fails.
    pub(crate) fn within(mut self, room: Arc<dyn DiskBudget>) -> Self {
        self.claim = Some(Claim::new(room));
        self
    }

    /// Lets the store make room for what this writer has claimed (see [`DiskBudget::settle`]).
    pub(crate) fn settle(&self) {
        if let Some(claim) = &self.claim {
            claim.room.settle();
        }
    }

    pub(crate) fn write(&mut self, bytes: &Bytes) -> Result<(), Error> {
        if let Some(claim) = &mut self.claim {
            claim.more(bytes.len() as u64)?;
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(bytes);
        }
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(e, self.temp.path()))?;
        self.length += bytes.len() as u64;
        Ok(())
    }

    /// Hands the hashing of what is written from now on to the caller, who gives the hasher
    /// back to [`finish_hashed`](Self::finish_hashed) having fed it every later byte.
    pub(crate) fn take_hasher(&mut self) -> Option<Sha256> {
        self.hasher.take()
    }

    pub(crate) fn length(&self) -> u64 {
        self.length
    }

    /// Writes out what the write buffer holds.
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        self.file
            .flush()
            .map_err(|e| Error::io(e, self.temp.path()))
    }

    /// Bytes that have reached the file (the rest wait in the write buffer).
    pub(crate) fn flushed(&self) -> u64 {
        self.length - self.file.buffer().len() as u64
    }

    /// A second handle on the temp file, for reading it while it is written. It stays
    /// readable after the file is renamed or removed.
    pub(crate) fn reader(&self) -> Result<File, Error> {
        files::open(self.temp.path()).map_err(|e| Error::io(e, self.temp.path()))
    }

    /// Flushes (and with `durable`, syncs) the file and names its digest.
    pub(crate) fn finish(self, durable: bool) -> Result<FinishedContent, Error> {
        self.finish_hashed(durable, None)
    }

    /// [`finish`](Self::finish), with the hasher taken by [`take_hasher`](Self::take_hasher)
    /// when it was.
    pub(crate) fn finish_hashed(
        self,
        durable: bool,
        hashed: Option<Sha256>,
    ) -> Result<FinishedContent, Error> {
        let ContentWriter {
            file,
            temp,
            hasher,
            length,
            claim,
        } = self;
        let io = |e| Error::io(e, temp.path());
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        if durable {
            file.sync_all().map_err(io)?;
        }
        let Some(hasher) = hasher.or(hashed) else {
            return Err(Error::new(ErrorKind::Io).with_subject("a body whose hashing was lost"));
        };
        Ok(FinishedContent {
            temp,
            digest: Hash32::from_hasher(hasher),
            length,
            claim,
        })
    }
}

/// Puts finished content at its digest's path. When a file is there already with the right
/// length the bytes are stored already, and the temp file is dropped: deduplication.
pub(crate) fn install_content(temp: TempFile, path: &Path, length: u64) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(existing) if existing.is_file() && existing.len() == length => Ok(()),
        _ => temp.persist(path).map_err(|e| Error::io(e, path)),
    }
}

/// Removes `path`; a file that is gone already is not an error.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn a_body_is_hashed_whole_in_line_or_by_its_caller() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = pattern((HASH_INLINE as usize) * 2 + 12_345);
        for handed_over in [false, true] {
            let path = dir.path().join(format!("body-{handed_over}"));
            let mut writer = ContentWriter::create(path, Mode::PRIVATE).unwrap();
            let mut outside = None;
            // Chunks smaller and larger than the write buffer.
            let sizes = [1, 4_000, WRITE_BUFFER + 7, 3 << 20, 65_536, 1_000_003];
            let mut at = 0;
            for size in sizes.iter().cycle() {
                if at == bytes.len() {
                    break;
                }
                if handed_over && outside.is_none() && at >= HASH_INLINE as usize {
                    outside = writer.take_hasher();
                }
                let end = (at + size).min(bytes.len());
                let chunk = Bytes::copy_from_slice(&bytes[at..end]);
                writer.write(&chunk).unwrap();
                if let Some(hasher) = &mut outside {
                    hasher.update(&chunk);
                }
                at = end;
            }
            assert_eq!(outside.is_some(), handed_over);
            let finished = writer.finish_hashed(false, outside).unwrap();
            assert_eq!(finished.length, bytes.len() as u64);
            assert_eq!(finished.digest, Hash32::of(&bytes));
            assert_eq!(fs::read(finished.temp.path()).unwrap(), bytes);
        }
    }

    #[test]
    fn a_body_whose_hasher_was_taken_and_not_given_back_has_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ContentWriter::create(dir.path().join("body"), Mode::PRIVATE).unwrap();
        writer.write(&Bytes::from_static(b"abc")).unwrap();
        drop(writer.take_hasher());
        assert!(writer.finish(false).is_err());
    }
}
