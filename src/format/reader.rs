//! Reading content files: large reads on the blocking pool, a couple of chunks ahead of the
//! consumer, with an optional digest check that withholds the last chunk until it passes.

use crate::rt::lock;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::layout::Hash32;
use crate::error::{Error, ErrorKind};

/// Reads exactly `buf.len()` bytes at `offset`; a file shorter than that is an error.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// Reads `len` bytes at `offset` into a new buffer.
pub(crate) fn read_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, offset)?;
    Ok(Bytes::from(buf))
}

/// Reads `len` bytes at `offset` into a buffer from [`the pool`](take_buffer), for bytes that
/// are handed out and dropped soon (a chunk of a body on its way to a client), never for bytes
/// kept for long.
pub(crate) fn read_pooled(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    if len < POOLED_FROM {
        return read_chunk(file, offset, len);
    }
    let mut buf = take_buffer(len);
    let start = page_start(&buf);
    read_exact_at(file, &mut buf[start..start + len], offset)?;
    Ok(Bytes::from_owner(Pooled { buf, start, len }))
}

/// Where a page boundary is in `buf` (which has [`ALIGN`] bytes of room for it). Reads go
/// there: copying from the page cache to an address 16 bytes past a page boundary (where a
/// large allocation starts) ran at half the speed here.
pub(crate) fn page_start(buf: &[u8]) -> usize {
    buf.as_ptr().align_offset(ALIGN).min(ALIGN)
}

/// Where the bytes of a pooled buffer start (and of other buffers the page cache is copied
/// into).
pub(crate) const ALIGN: usize = 4096;

/// Reads shorter than this take a buffer of their own.
const POOLED_FROM: usize = 64 * 1024;

/// The most bytes the pool keeps while nobody uses them.
const POOL_BYTES: usize = 16 << 20;

/// Read buffers given back by the chunks they were lent to, for the next reads. A buffer
/// from `malloc` for each chunk costs more than reading the chunk from the page cache: the
/// allocator hands large blocks back to the system when they are freed, and each new one is
/// page-faulted and zeroed again. Buffers are sized in powers of two (and a page).
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer with room for `len` bytes from a page boundary on.
fn take_buffer(len: usize) -> Vec<u8> {
    let size = len.checked_next_power_of_two().unwrap_or(len) + ALIGN;
    let taken = {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        pool.iter()
            .rposition(|buf| buf.len() == size)
            .map(|at| pool.swap_remove(at))
    };
    taken.unwrap_or_else(|| vec![0; size])
}

fn give_back(buf: Vec<u8>) {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.iter().map(Vec::len).sum::<usize>() + buf.len() <= POOL_BYTES {
        pool.push(buf);
    }
}

/// `len` bytes of a pooled buffer from `start` on; the buffer goes back to the pool when the
/// last `Bytes` over it is dropped.
struct Pooled {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// The digest check of a body being read.
pub(crate) struct Verify {
    hasher: Sha256,
    expected: Hash32,
}

impl Verify {
    pub(crate) fn new(expected: Hash32) -> Self {
        Verify {
            hasher: Sha256::new(),
            expected,
        }
    }
}

/// Checks that `bytes` hash to `expected`.
pub(crate) fn digest_matches(bytes: &[u8], expected: Hash32) -> bool {
    Hash32::of(bytes) == expected
}

/// How many chunks a reader keeps read ahead of its consumer.
const AHEAD: usize = 2;

/// A content file read in chunks from an offset.
///
/// The reading runs on the blocking pool as a job that keeps reading while fewer than
/// [`AHEAD`] chunks wait for the consumer, and ends when that many do (so a slow client holds
/// memory, never a thread). A consumer that keeps up finds the next chunk read by the time it
/// asks: the job does not wait for a hand-off between chunks, which costs more than reading a
/// chunk from the page cache.
pub(crate) struct ChunkReader {
    file: Arc<File>,
    /// Where the bytes this reader was made for start.
    offset: u64,
    /// Bytes not yet handed out.
    remaining: u64,
    chunk: usize,
    verify: Option<Box<Verify>>,
    /// What to tell the store when the content turns out to be corrupt.
    on_corrupt: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// The state shared with the reading job, from the first poll on.
    ahead: Option<Arc<Mutex<Ahead>>>,
    job: Option<crate::rt::Blocking<()>>,
    /// A failure to hand out at the next poll.
    broken: Option<Error>,
}

/// What the reading job and the consumer share.
struct Ahead {
    ready: VecDeque<Bytes>,
    failed: Option<io::Error>,
    /// Where the next read starts, and how much is left to read.
    next: u64,
    unread: u64,
    running: bool,
    /// The consumer is gone: read no more.
    stopped: bool,
    waker: Option<Waker>,
    verify: Option<Box<Verify>>,
}

impl ChunkReader {
    pub(crate) fn new(file: Arc<File>, offset: u64, len: u64, chunk: usize) -> Self {
        ChunkReader {
            file,
            offset,
            remaining: len,
            chunk: chunk.max(1),
            verify: None,
            on_corrupt: None,
            ahead: None,
            job: None,
            broken: None,
        }
    }

    pub(crate) fn verify(
        mut self,
        verify: Verify,
        on_corrupt: Box<dyn FnOnce() + Send + Sync>,
    ) -> Self {
        self.verify = Some(Box::new(verify));
        self.on_corrupt = Some(on_corrupt);
        self
    }

    /// Reads only bytes `start..start + len` of what it was made for, before any read: a
    /// digest check, which needs every byte, is dropped.
    pub(crate) fn narrow(&mut self, start: u64, len: u64) {
        if self.ahead.is_some() {
            return;
        }
        let start = start.min(self.remaining);
        self.offset += start;
        self.remaining = len.min(self.remaining - start);
        self.verify = None;
        self.on_corrupt = None;
    }

    /// A reader of bytes `start..start + len` of the same file, from the offset this one
    /// started at, without a digest check.
    pub(crate) fn range(&self, start: u64, len: u64) -> ChunkReader {
        ChunkReader::new(Arc::clone(&self.file), self.offset + start, len, self.chunk)
    }

    /// Bytes not yet handed out.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    pub(crate) fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// Starts a reading job; the caller has marked the state running.
    fn start(&mut self, ahead: &Arc<Mutex<Ahead>>) -> Result<(), Error> {
        let file = Arc::clone(&self.file);
        let chunk = self.chunk;
        let job = Job(Arc::clone(ahead));
        match crate::rt::spawn_blocking(move || job.run(&file, chunk)) {
            Ok(handle) => {
                self.job = Some(handle);
                Ok(())
            }
            Err(e) => {
                lock(ahead).running = false;
                Err(e)
            }
        }
    }

    /// The next chunk, or `None` at the end. Chunks after it are already being read when this
    /// returns.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        if let Some(e) = self.broken.take() {
            self.remaining = 0;
            return Poll::Ready(Some(Err(e)));
        }
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let ahead = Arc::clone(self.ahead.get_or_insert_with(|| {
            Arc::new(Mutex::new(Ahead {
                ready: VecDeque::with_capacity(AHEAD),
                failed: None,
                next: self.offset,
                unread: self.remaining,
                running: false,
                stopped: false,
                waker: None,
                verify: self.verify.take(),
            }))
        }));
        let mut state = lock(&ahead);
        let popped = state.ready.pop_front();
        if popped.is_none()
            && let Some(e) = state.failed.take()
        {
            drop(state);
            self.remaining = 0;
            return Poll::Ready(Some(Err(self.failure(e))));
        }
        if popped.is_none() && !state.running && state.unread == 0 {
            // Everything read is handed out, yet bytes are owed: an error, never a hang.
            drop(state);
            self.remaining = 0;
            let short = Error::new(ErrorKind::Io).with_subject("content read ended early");
            return Poll::Ready(Some(Err(short)));
        }
        let start = !state.running && state.unread > 0 && state.failed.is_none();
        if popped.is_none() {
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            }
        }
        state.running |= start;
        drop(state);
        if start && let Err(e) = self.start(&ahead) {
            self.broken = Some(e);
        }
        match popped {
            Some(bytes) => {
                self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(bytes)))
            }
            None => match self.broken.take() {
                Some(e) => {
                    self.remaining = 0;
                    Poll::Ready(Some(Err(e)))
                }
                None => Poll::Pending,
            },
        }
    }

    fn failure(&mut self, e: io::Error) -> Error {
        let is_mismatch = e
            .get_ref()
            .is_some_and(|inner| inner.is::<DigestMismatch>());
        if is_mismatch {
            if let Some(report) = self.on_corrupt.take() {
                report();
            }
            Error::new(ErrorKind::Integrity).with_source(e)
        } else {
            Error::new(ErrorKind::Io).with_source(e)
        }
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        if let Some(ahead) = &self.ahead {
            lock(ahead).stopped = true;
        }
        if let Some(handle) = self.job.take() {
            handle.abort();
        }
    }
}

/// A reading job: reads chunks until [`AHEAD`] wait, the file is read, a read fails or the
/// consumer is gone. However it ends (a panic too), the state says it is no longer running
/// and the consumer is woken.
struct Job(Arc<Mutex<Ahead>>);

impl Job {
    fn run(&self, file: &File, chunk: usize) {
        loop {
            let (offset, len, mut verify) = {
                let mut state = lock(&self.0);
                if state.stopped
                    || state.failed.is_some()
                    || state.unread == 0
                    || state.ready.len() >= AHEAD
                {
                    return;
                }
                let len = usize::try_from(state.unread.min(chunk as u64)).unwrap_or(chunk);
                (state.next, len, state.verify.take())
            };
            let read = read_pooled(file, offset, len);
            if let (Ok(bytes), Some(v)) = (&read, verify.as_mut()) {
                v.hasher.update(bytes);
            }
            let waker = {
                let mut state = lock(&self.0);
                match read {
                    Ok(bytes) => {
                        state.next += len as u64;
                        state.unread -= len as u64;
                        if state.unread == 0
                            && let Some(v) = verify.take()
                            && Hash32::from_hasher(v.hasher) != v.expected
                        {
                            state.failed =
                                Some(io::Error::new(io::ErrorKind::InvalidData, DigestMismatch));
                        } else {
                            state.ready.push_back(bytes);
                        }
                    }
                    Err(e) => state.failed = Some(e),
                }
                state.verify = verify;
                state.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.0);
            state.running = false;
            if std::thread::panicking() && state.failed.is_none() {
                state.failed = Some(io::Error::other("reading the content file panicked"));
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A stored body whose bytes are not those its digest names.
#[derive(Debug)]
struct DigestMismatch;

impl std::fmt::Display for DigestMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("content digest differs from the digest it was stored under")
    }
}

impl std::error::Error for DigestMismatch {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn file_of(bytes: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        Arc::new(file)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Every chunk the reader hands out, and the error it ends with, if any.
    async fn drain(mut reader: ChunkReader) -> (Vec<Bytes>, Option<Error>) {
        let mut chunks = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| reader.poll_chunk(cx)).await {
            match chunk {
                Ok(bytes) => chunks.push(bytes),
                Err(e) => return (chunks, Some(e)),
            }
        }
        (chunks, None)
    }

    #[tokio::test]
    async fn hands_out_the_file_in_chunks_from_its_offset() {
        let bytes = pattern(10_000);
        let reader = ChunkReader::new(file_of(&bytes), 100, 9_000, 1_000 - 1);
        let (chunks, error) = drain(reader).await;
        assert!(error.is_none());
        assert!(chunks.iter().all(|c| c.len() <= 999));
        assert_eq!(chunks.concat(), bytes[100..9_100]);
    }

    #[tokio::test]
    async fn chunks_in_pooled_buffers_hold_what_the_file_holds() {
        let bytes = pattern(1_000_000);
        let reader = ChunkReader::new(file_of(&bytes), 1, 999_999, 100_000);
        let (chunks, error) = drain(reader).await;
        assert!(error.is_none());
        assert_eq!(chunks.len(), 10);
        assert_eq!(chunks.concat(), bytes[1..]);
    }

    #[test]
    fn a_pooled_buffer_goes_back_to_the_pool_when_its_bytes_are_dropped() {
        // A size class no other test reads in.
        let len = (8 << 20) - 3;
        let bytes = pattern(len);
        let file = file_of(&bytes);
        let in_pool = || {
            let pool = POOL.lock().unwrap();
            pool.iter()
                .filter(|buf| buf.len() == (8 << 20) + ALIGN)
                .count()
        };
        let read = read_pooled(&file, 0, len).unwrap();
        assert_eq!(read, bytes);
        let copy = read.slice(10..20);
        drop(read);
        assert_eq!(in_pool(), 0, "a slice still uses it");
        drop(copy);
        assert_eq!(in_pool(), 1);
        // The next read of that class takes it, and sees only its own bytes.
        let shorter = read_pooled(&file, 5, len - 5).unwrap();
        assert_eq!(in_pool(), 0);
        assert_eq!(shorter, bytes[5..]);
    }

    #[tokio::test]
    async fn reads_no_more_than_a_couple_of_chunks_ahead_of_a_slow_consumer() {
        let bytes = pattern(64 * 1024);
        let mut reader = ChunkReader::new(file_of(&bytes), 0, bytes.len() as u64, 1024);
        let first = std::future::poll_fn(|cx| reader.poll_chunk(cx)).await;
        assert_eq!(first.unwrap().unwrap(), bytes[..1024]);
        // Give the job all the time it wants: it stops once AHEAD chunks wait.
        let ahead = Arc::clone(reader.ahead.as_ref().unwrap());
        for _ in 0..2000 {
            if !lock(&ahead).running {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        {
            let state = lock(&ahead);
            assert!(!state.running, "the job waits on nobody");
            assert_eq!(state.ready.len(), AHEAD);
            assert_eq!(state.unread, bytes.len() as u64 - 1024 * (1 + AHEAD as u64));
        }
        let (rest, error) = drain(reader).await;
        assert!(error.is_none());
        assert_eq!(rest.concat(), bytes[1024..]);
    }

    #[tokio::test]
    async fn withholds_the_last_chunk_of_content_that_fails_its_digest() {
        let bytes = pattern(10_000);
        let mut stored = bytes.clone();
        stored[9_999] ^= 1;
        let reported = Arc::new(AtomicBool::new(false));
        let told = Arc::clone(&reported);
        let reader = ChunkReader::new(file_of(&stored), 0, 10_000, 4_000).verify(
            Verify::new(Hash32::of(&bytes)),
            Box::new(move || told.store(true, Ordering::SeqCst)),
        );
        let (chunks, error) = drain(reader).await;
        assert_eq!(chunks.concat(), bytes[..8_000]);
        assert_eq!(error.unwrap().kind(), ErrorKind::Integrity);
        assert!(reported.load(Ordering::SeqCst));

        let reader = ChunkReader::new(file_of(&bytes), 0, 10_000, 4_000)
            .verify(Verify::new(Hash32::of(&bytes)), Box::new(|| ()));
        let (chunks, error) = drain(reader).await;
        assert!(error.is_none());
        assert_eq!(chunks.concat(), bytes);
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_record_says_is_an_error() {
        let bytes = pattern(5_000);
        let reader = ChunkReader::new(file_of(&bytes), 0, 8_000, 2_000);
        let (chunks, error) = drain(reader).await;
        assert_eq!(chunks.concat(), bytes[..4_000]);
        assert_eq!(error.unwrap().kind(), ErrorKind::Io);
    }

    #[tokio::test]
    async fn a_dropped_reader_stops_its_job() {
        let bytes = pattern(64 * 1024);
        let mut reader = ChunkReader::new(file_of(&bytes), 0, bytes.len() as u64, 1024);
        let first = std::future::poll_fn(|cx| reader.poll_chunk(cx)).await;
        assert!(first.unwrap().is_ok());
        let ahead = Arc::clone(reader.ahead.as_ref().unwrap());
        drop(reader);
        for _ in 0..2000 {
            if !lock(&ahead).running {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let state = lock(&ahead);
        assert!(state.stopped && !state.running);
        assert!(state.unread >= bytes.len() as u64 - 1024 * (1 + AHEAD as u64));
    }
}
