//! Writing content: a temp file in this instance's scratch directory, hashed while written,
//! committed by rename into `content/<sha256>` (an existing file of that name means the bytes
//! are already stored, which is how identical bodies end up stored once).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

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
) -> Result<(TempFile, Stamp), Error> {
    let temp = TempFile::new(path);
    let io = |e| Error::io(e, temp.path());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp.path())
        .map_err(io)?;
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

/// Bodies longer than this are hashed on a thread of their own while the writer writes, so
/// that storing goes at the speed of the slower of the two rather than of both in turn.
const HASH_ON_A_THREAD_AFTER: u64 = 4 << 20;

/// The SHA-256 of a body being written: computed in line, or by a thread fed the chunks.
enum Hashing {
    Inline(Sha256),
    Thread {
        chunks: std::sync::mpsc::SyncSender<Bytes>,
        done: std::thread::JoinHandle<Sha256>,
    },
    /// The thread could not be started or has failed.
    Lost,
}

impl Hashing {
    /// Hashes the chunk that follows `written` bytes.
    fn update(&mut self, chunk: &Bytes, written: u64) {
        match self {
            Hashing::Inline(hasher) if written + chunk.len() as u64 <= HASH_ON_A_THREAD_AFTER => {
                hasher.update(chunk)
            }
            Hashing::Inline(_) => {
                let Hashing::Inline(mut hasher) = std::mem::replace(self, Hashing::Lost) else {
                    return;
                };
                // A bounded queue: a writer ahead of the hashing waits for it.
                let (chunks, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
                let spawned = std::thread::Builder::new()
                    .name("http-cache-streaming-hash".into())
                    .spawn(move || {
                        for chunk in rx {
                            hasher.update(&chunk);
                        }
                        hasher
                    });
                if let Ok(done) = spawned {
                    let _ = chunks.send(chunk.clone());
                    *self = Hashing::Thread { chunks, done };
                }
            }
            Hashing::Thread { chunks, .. } => {
                if chunks.send(chunk.clone()).is_err() {
                    *self = Hashing::Lost;
                }
            }
            Hashing::Lost => {}
        }
    }

    /// The hasher with every chunk in it; `None` when it was lost.
    fn finish(self) -> Option<Sha256> {
        match self {
            Hashing::Inline(hasher) => Some(hasher),
            Hashing::Thread { chunks, done } => {
                drop(chunks);
                done.join().ok()
            }
            Hashing::Lost => None,
        }
    }
}

impl ContentWriter {
    pub(crate) fn create(path: PathBuf) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(e, &path))?;
        Ok(ContentWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            temp: TempFile::new(path),
            hasher: Hashing::Inline(Sha256::new()),
            length: 0,
        })
    }

    pub(crate) fn write(&mut self, bytes: &Bytes) -> Result<(), Error> {
        self.hasher.update(bytes, self.length);
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(e, self.temp.path()))?;
        self.length += bytes.len() as u64;
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
        File::open(self.temp.path()).map_err(|e| Error::io(e, self.temp.path()))
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
        let hasher = hasher.finish().ok_or_else(|| {
            Error::new(ErrorKind::Io).with_subject("the hashing thread of a body being stored")
        })?;
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
