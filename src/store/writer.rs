//! Writing content: a temp file in this instance's scratch directory, hashed while written,
//! committed by rename into `content/<sha256>` (an existing file of that name means the bytes
//! are already stored, which is how identical bodies end up stored once).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::files::{self, Mode};
use super::fill::{Fill, FillEnd};
use super::index::Stamp;
use super::layout::Hash32;
use crate::body::Queued;
use crate::error::{Error, ErrorKind};

/// Writes larger than this go to the file directly; smaller ones are gathered first.
const WRITE_BUFFER: usize = 256 * 1024;

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
}

/// Streams a body into a temp file, computing its SHA-256 and length as it goes.
pub(crate) struct ContentWriter {
    file: BufWriter<File>,
    temp: TempFile,
    hasher: Hashing,
    length: u64,
}

/// Bodies longer than this are hashed by a thread of their own that reads the temp file behind
/// the writer: the writer, and so the client of a tee, never waits for the hashing (SHA-256
/// runs at ~1.7 GB/s on one core, slower than a write to the page cache), and no chunk is
/// held in memory for it. The commit waits for the hashing to catch up.
const HASH_ON_A_THREAD_AFTER: u64 = 4 << 20;

/// What the hashing thread reads at a time.
const HASH_READ: usize = 256 * 1024;

/// The SHA-256 of a body being written: computed in line, or by a thread that follows the file.
enum Hashing {
    Inline(Sha256),
    Trailing(Trailing),
    /// The thread could not be started.
    Lost,
}

/// A thread hashing the temp file up to where the writer has written it.
struct Trailing {
    trail: Arc<Trail>,
    done: Option<std::thread::JoinHandle<io::Result<Sha256>>>,
}

/// What the writer tells the hashing thread.
struct Trail {
    state: Mutex<TrailState>,
    moved: Condvar,
    /// The body was abandoned: stop hashing.
    abandoned: AtomicBool,
}

struct TrailState {
    /// Bytes in the file.
    written: u64,
    /// The body's length, once it is complete.
    end: Option<u64>,
}

impl Trail {
    fn state(&self) -> MutexGuard<'_, TrailState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hashes `file` from `hashed` on, as far as it is written, until its end.
    fn follow(&self, file: &File, mut hasher: Sha256, mut hashed: u64) -> io::Result<Sha256> {
        let mut buffer = vec![0u8; HASH_READ + super::reader::ALIGN];
        let start = super::reader::page_start(&buffer);
        let buf = &mut buffer[start..start + HASH_READ];
        loop {
            let (written, end) = {
                let mut state = self.state();
                while state.written == hashed
                    && state.end.is_none()
                    && !self.abandoned.load(Ordering::Relaxed)
                {
                    state = self
                        .moved
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                (state.written, state.end)
            };
            while hashed < written {
                if self.abandoned.load(Ordering::Relaxed) {
                    return Err(io::Error::other("the body was abandoned"));
                }
                let n = usize::try_from(written - hashed).map_or(HASH_READ, |n| n.min(HASH_READ));
                super::reader::read_exact_at(file, &mut buf[..n], hashed)?;
                hasher.update(&buf[..n]);
                hashed += n as u64;
            }
            if self.abandoned.load(Ordering::Relaxed) {
                return Err(io::Error::other("the body was abandoned"));
            }
            if end == Some(hashed) {
                return Ok(hasher);
            }
        }
    }
}

impl Trailing {
    fn start(path: &Path, hasher: Sha256, hashed: u64) -> io::Result<Self> {
        let file = files::open(path)?;
        let trail = Arc::new(Trail {
            state: Mutex::new(TrailState {
                written: hashed,
                end: None,
            }),
            moved: Condvar::new(),
            abandoned: AtomicBool::new(false),
        });
        let follower = Arc::clone(&trail);
        let done = std::thread::Builder::new()
            .name("http-cache-streaming-hash".into())
            .spawn(move || follower.follow(&file, hasher, hashed))?;
        Ok(Trailing {
            trail,
            done: Some(done),
        })
    }

    /// The file holds `written` bytes.
    fn written(&self, written: u64) {
        let mut state = self.trail.state();
        if written > state.written {
            state.written = written;
            drop(state);
            self.trail.moved.notify_one();
        }
    }

    /// The file is complete at `length` bytes: the hash of all of it, once the thread is there.
    fn finish(mut self, length: u64) -> io::Result<Sha256> {
        {
            let mut state = self.trail.state();
            state.written = length;
            state.end = Some(length);
        }
        self.trail.moved.notify_one();
        match self.done.take().map(std::thread::JoinHandle::join) {
            Some(Ok(hashed)) => hashed,
            _ => Err(io::Error::other("the hashing thread failed")),
        }
    }
}

impl Drop for Trailing {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.trail.abandoned.store(true, Ordering::Relaxed);
            // Taking the lock orders the flag before a waiting thread's check.
            drop(self.trail.state());
            self.trail.moved.notify_one();
        }
    }
}

impl ContentWriter {
    pub(crate) fn create(path: PathBuf, mode: Mode) -> Result<Self, Error> {
        let file = files::create_new(&path, mode, false).map_err(|e| Error::io(e, &path))?;
        Ok(ContentWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            temp: TempFile::new(path),
            hasher: Hashing::Inline(Sha256::new()),
            length: 0,
        })
    }

    pub(crate) fn write(&mut self, bytes: &Bytes) -> Result<(), Error> {
        let io = |e| Error::io(e, self.temp.path());
        self.hasher = match std::mem::replace(&mut self.hasher, Hashing::Lost) {
            Hashing::Inline(mut hasher)
                if self.length + bytes.len() as u64 <= HASH_ON_A_THREAD_AFTER =>
            {
                hasher.update(bytes);
                Hashing::Inline(hasher)
            }
            Hashing::Inline(hasher) => {
                // From here on a thread hashes what reaches the file; everything before was
                // hashed in line, and the write buffer is emptied first.
                self.file.flush().map_err(io)?;
                Trailing::start(self.temp.path(), hasher, self.length)
                    .map_or(Hashing::Lost, Hashing::Trailing)
            }
            other => other,
        };
        self.file.write_all(bytes).map_err(io)?;
        self.length += bytes.len() as u64;
        if let Hashing::Trailing(trailing) = &self.hasher {
            trailing.written(self.flushed());
        }
        Ok(())
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
        let ContentWriter {
            file,
            temp,
            hasher,
            length,
        } = self;
        let io = |e| Error::io(e, temp.path());
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        if durable {
            file.sync_all().map_err(io)?;
        }
        let hasher = match hasher {
            Hashing::Inline(hasher) => hasher,
            Hashing::Trailing(trailing) => trailing.finish(length).map_err(io)?,
            Hashing::Lost => {
                return Err(Error::new(ErrorKind::Io)
                    .with_subject("the hashing thread of a body being stored"));
            }
        };
        Ok(FinishedContent {
            temp,
            digest: Hash32::from_hasher(hasher),
            length,
        })
    }
}

/// How a tee'd body ended, sent once by the body to its writer. A body dropped before its
/// end sends nothing, and the writer then abandons the entry.
#[derive(Debug)]
pub(crate) struct TeeEnd {
    /// A last chunk that the bounded queue had no room for when the body ended.
    pub(crate) tail: Option<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
}

/// Runs on a blocking thread: writes what the tee'd body sends until the body ends, then
/// checks that the body was complete. The writer it returns is ready to be finished.
///
/// `progress` hears of each write with the writer, so that readers following the file can be
/// told how much of it they can read. When writing fails, or the body runs past the store's
/// limit, and others follow the body through `fill`, the rest of the body is relayed to them
/// in memory (see [`Fill::relay`]) before the failure is returned.
/// What a tee'd body is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    /// Its `Content-Length`, if it has one.
    pub(crate) length: Option<u64>,
    /// The most the store keeps of a body.
    pub(crate) limit: Option<u64>,
}

impl Expected {
    fn within_limit(&self, length: u64) -> Result<(), Error> {
        match self.limit {
            Some(limit) if length > limit => {
                Err(Error::new(ErrorKind::TooLarge)
                    .with_subject(format!("body past {limit} bytes")))
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn run_tee(
    mut chunks: mpsc::UnboundedReceiver<Queued>,
    end: oneshot::Receiver<TeeEnd>,
    mut writer: ContentWriter,
    expected: Expected,
    progress: &mut dyn FnMut(&mut ContentWriter) -> Result<(), Error>,
    fill: Option<&Fill>,
) -> Result<(ContentWriter, Option<HeaderMap>), Error> {
    let expected_length = expected.length;
    let mut end = Some(end);
    // Writes a chunk and reports it; `Err`: the store gives up on the body.
    let mut take = |writer: &mut ContentWriter, chunk: &Bytes| {
        expected
            .within_limit(writer.length() + chunk.len() as u64)
            .and_then(|()| writer.write(chunk))
            .and_then(|()| progress(writer))
    };
    while let Some((chunk, room)) = chunks.blocking_recv() {
        let at = writer.length();
        if let Err(e) = take(&mut writer, &chunk) {
            drop(room);
            if let Some(fill) = fill {
                relay(fill, at, chunk, chunks, end.take(), expected_length);
            }
            return Err(e);
        }
        drop(room);
        if expected_length.is_some_and(|n| writer.length() > n) {
            return Err(length_mismatch(expected_length, writer.length()));
        }
    }
    let Some(Ok(end)) = end.map(|end| end.blocking_recv()) else {
        return Err(Error::new(ErrorKind::Incomplete));
    };
    if let Some(tail) = end.tail {
        let at = writer.length();
        if let Err(e) = take(&mut writer, &tail) {
            if let Some(fill) = fill {
                let (_, empty) = mpsc::unbounded_channel();
                let (ended, end) = oneshot::channel();
                let _ = ended.send(TeeEnd {
                    tail: None,
                    trailers: None,
                });
                relay(fill, at, tail, empty, Some(end), expected_length);
            }
            return Err(e);
        }
    }
    if let Some(expected) = expected_length
        && writer.length() != expected
    {
        return Err(length_mismatch(expected_length, writer.length()));
    }
    Ok((writer, end.trailers))
}

/// The store failed at body offset `at` (`first` is the chunk that did not make it): hands
/// the rest of the body to the fill's followers, and ends the fill `Unstored` once it is
/// complete. A body that fails or falls short leaves the fill for the caller to fail.
fn relay(
    fill: &Fill,
    at: u64,
    first: Bytes,
    mut chunks: mpsc::UnboundedReceiver<Queued>,
    end: Option<oneshot::Receiver<TeeEnd>>,
    expected_length: Option<u64>,
) {
    // Whoever comes now asks the origin; those already following get the rest, for as
    // long as any of them is left.
    fill.close_to_newcomers();
    if !fill.followed() {
        return;
    }
    let mut length = at + first.len() as u64;
    fill.relay(at, first);
    while let Some((chunk, room)) = chunks.blocking_recv() {
        drop(room);
        if !fill.followed() {
            return;
        }
        let len = chunk.len() as u64;
        fill.relay(length, chunk);
        length += len;
    }
    let Some(Ok(end)) = end.map(|end| end.blocking_recv()) else {
        return;
    };
    if let Some(tail) = end.tail {
        let len = tail.len() as u64;
        fill.relay(length, tail);
        length += len;
    }
    if expected_length.is_none_or(|n| n == length) {
        fill.end(FillEnd::Unstored(length));
    }
}

fn length_mismatch(expected: Option<u64>, got: u64) -> Error {
    Error::new(ErrorKind::Length).with_subject(format!(
        "Content-Length {}, body {got} bytes",
        expected.unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn a_body_past_the_thread_threshold_is_hashed_whole_and_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = pattern((HASH_ON_A_THREAD_AFTER as usize) * 2 + 12_345);
        let mut writer = ContentWriter::create(dir.path().join("body"), Mode::PRIVATE).unwrap();
        // Chunks smaller and larger than the write buffer, one across the threshold.
        let sizes = [1, 4_000, WRITE_BUFFER + 7, 3 << 20, 65_536, 1_000_003];
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            writer
                .write(&Bytes::copy_from_slice(&bytes[at..end]))
                .unwrap();
            at = end;
        }
        assert!(matches!(writer.hasher, Hashing::Trailing(_)));
        let finished = writer.finish(false).unwrap();
        assert_eq!(finished.length, bytes.len() as u64);
        assert_eq!(finished.digest, Hash32::of(&bytes));
        assert_eq!(fs::read(finished.temp.path()).unwrap(), bytes);
    }

    #[test]
    fn a_short_body_is_hashed_in_line() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = pattern(100_000);
        let mut writer = ContentWriter::create(dir.path().join("body"), Mode::PRIVATE).unwrap();
        writer.write(&Bytes::copy_from_slice(&bytes)).unwrap();
        assert!(matches!(writer.hasher, Hashing::Inline(_)));
        let finished = writer.finish(false).unwrap();
        assert_eq!(finished.digest, Hash32::of(&bytes));
    }

    #[test]
    fn the_hashing_thread_of_an_abandoned_body_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        fs::write(&path, pattern(1_000)).unwrap();
        let trailing = Trailing::start(&path, Sha256::new(), 0).unwrap();
        trailing.written(1_000);
        let trail = Arc::clone(&trailing.trail);
        let mut trailing = trailing;
        // Keep the hashing thread's handle to join it here; a stand-in goes in its place.
        let done = trailing.done.take().unwrap();
        trailing.done = Some(std::thread::spawn(|| Ok(Sha256::new())));
        // The thread has hashed what was written and waits for more; the writer goes away.
        drop(trailing);
        assert!(trail.abandoned.load(Ordering::Relaxed));
        let ended = done.join().unwrap();
        assert!(ended.is_err(), "an abandoned body has no digest");
    }
}
