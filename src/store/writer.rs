//! Writing content: a temp file in this instance's scratch directory, hashed while written,
//! committed by rename into `content/<sha256>` (an existing file of that name means the bytes
//! are already stored, which is how identical bodies end up stored once).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
pub(crate) trait Room: Send + Sync {
    /// Claims `bytes` more for a body being written; `Err`: there is no room for them.
    fn claim(&self, bytes: u64) -> Result<(), Error>;
    /// Gives back `bytes` claimed before.
    fn release(&self, bytes: u64);
    /// Makes room for what was claimed: evicts stored entries while they and the bodies
    /// being written are over the store's bounds.
    fn settle(&self);
}

/// Bytes claimed from a [`Room`], given back when dropped.
pub(crate) struct Claim {
    room: Arc<dyn Room>,
    bytes: u64,
}

impl Claim {
    pub(crate) fn new(room: Arc<dyn Room>) -> Self {
        Claim { room, bytes: 0 }
    }

    fn more(&mut self, bytes: u64) -> Result<(), Error> {
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
const HASH_INLINE: u64 = 4 << 20;

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
    pub(crate) fn within(mut self, room: Arc<dyn Room>) -> Self {
        self.claim = Some(Claim::new(room));
        self
    }

    /// Lets the store make room for what this writer has claimed (see [`Room::settle`]).
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

/// The threads that write and hash the bodies being stored, shared by every store of the
/// process. However many bodies are in flight (a thousand slow clients), they hold no thread
/// while they wait for bytes: each batch of bytes that arrived is one short job here. Reads
/// of hits run on the runtime's blocking pool and never queue behind these.
struct Pool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Writes and commits: clients, or the requests after them, wait for these.
    jobs: std::collections::VecDeque<Job>,
    /// Hashing, which only the commit waits for: taken when no write waits, so that the
    /// writes of a new body never queue behind the hashing of earlier ones.
    hashing: std::collections::VecDeque<Job>,
    /// Threads waiting for a job, the one that went idle last on top.
    idle: Vec<std::thread::Thread>,
}

/// Which queue of the pool a job joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Write,
    Hash,
}

impl PoolState {
    fn queue(&mut self, lane: Lane) -> &mut std::collections::VecDeque<Job> {
        match lane {
            Lane::Write => &mut self.jobs,
            Lane::Hash => &mut self.hashing,
        }
    }

    fn next(&mut self) -> Option<Job> {
        self.jobs.pop_front().or_else(|| self.hashing.pop_front())
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads of the pool: one per core (at least two, for a write and a hash beside it). More
/// lose to fewer here: a body's jobs then wander between threads and cores, and the 1 GiB
/// miss of `benches/compare` reached its client 5 % slower with four threads on two cores.
fn pool_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
}

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` and wakes the thread that went idle last: a body's jobs, each started
    /// when the one before ended, keep to one thread and its core instead of going round.
    fn submit(&self, lane: Lane, job: Job) {
        let mut state = self.state();
        state.queue(lane).push_back(job);
        let wake = state.idle.pop();
        drop(state);
        if let Some(thread) = wake {
            thread.unpark();
        }
    }

    /// Queues the sequel of the job running on this thread, which takes it next unless other
    /// jobs wait: then it wakes another thread for them, as [`submit`](Self::submit) does.
    fn requeue(&self, lane: Lane, job: Job) {
        let mut state = self.state();
        state.queue(lane).push_back(job);
        let wake = if state.jobs.len() + state.hashing.len() > 1 {
            state.idle.pop()
        } else {
            None
        };
        drop(state);
        if let Some(thread) = wake {
            thread.unpark();
        }
    }

    /// A thread of the pool: takes jobs until the process ends.
    fn serve(&self) {
        let me = std::thread::current();
        loop {
            let mut state = self.state();
            let Some(job) = state.next() else {
                if !state.idle.iter().any(|t| t.id() == me.id()) {
                    state.idle.push(me.clone());
                }
                drop(state);
                std::thread::park();
                continue;
            };
            drop(state);
            // A job that panics fails its caller (its result is dropped unsent), not the
            // thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}

fn pool() -> Option<&'static Pool> {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    static STARTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let pool: &'static Pool = POOL.get_or_init(|| Pool {
        state: Mutex::default(),
    });
    let started = STARTED.get_or_init(|| {
        let mut started = 0;
        for n in 0..pool_threads() {
            let thread = std::thread::Builder::new()
                .name(format!("http-cache-streaming-writer-{n}"))
                .spawn(move || pool.serve());
            started += usize::from(thread.is_ok());
        }
        started > 0
    });
    started.then_some(pool)
}

/// Runs `work` on the writers' pool and waits for it without holding a thread.
pub(crate) async fn on_pool<T, F>(work: F) -> Result<T, Error>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let failed = || Error::new(ErrorKind::Io).with_subject("a job of the store's writer threads");
    let (done, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(work());
    });
    pool().ok_or_else(failed)?.submit(Lane::Write, job);
    result.await.map_err(|_| failed())
}

/// How a tee'd body ended, sent once by the body to its writer. A body dropped before its
/// end sends nothing, and the writer then abandons the entry.
#[derive(Debug)]
pub(crate) struct TeeEnd {
    /// A last chunk that the bounded queue had no room for when the body ended.
    pub(crate) tail: Option<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
}

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

/// Writes what the tee'd body sends, as jobs on the writers' pool (each takes what has
/// arrived and what keeps arriving, see [`write_batch`]), until the body ends; then checks
/// that the body was complete. Returns the writer, ready to be finished, and, for a body
/// past [`HASH_INLINE`], the hasher of the [`Trail`] once it has caught up with the file.
///
/// With a `fill`, what is written is flushed and its followers told how far they can read
/// at least every [`PUBLISH_EVERY`] bytes. When writing fails, or the body runs past the
/// store's limit, while others follow, the rest of the body is relayed to them in memory
/// (see [`Fill::relay`]) before the failure is returned.
pub(crate) async fn run_tee(
    chunks: mpsc::UnboundedReceiver<Queued>,
    end: oneshot::Receiver<TeeEnd>,
    mut writer: ContentWriter,
    expected: Expected,
    fill: Option<Arc<Fill>>,
) -> Result<(ContentWriter, Option<Sha256>, Option<HeaderMap>), Error> {
    let mut trail: Option<Trail> = None;
    let mut end = Some(end);
    let mut chunks = Some(chunks);
    while let Some(mut queue) = chunks.take()
        && let Some(first) = queue.recv().await
    {
        let mut batch = vec![first];
        let mut size = batch[0].0.len();
        loop {
            while size < MIN_BATCH
                && let Ok(next) = queue.try_recv()
            {
                size += next.0.len();
                batch.push(next);
            }
            // Nobody reads the file yet: gather a larger batch, each job costing hand-offs
            // between threads, until a request follows (it reads only what is written).
            if size >= MIN_BATCH || fill.as_ref().is_some_and(|fill| fill.followed()) {
                break;
            }
            let followed = async {
                match &fill {
                    Some(fill) => fill.until_followed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = queue.recv() => match next {
                    Some(next) => {
                        size += next.0.len();
                        batch.push(next);
                    }
                    None => break,
                },
                () = followed => break,
            }
        }
        if trail.is_none() && writer.length() >= HASH_INLINE {
            let (handed, started) = Trail::start(writer).await?;
            (writer, trail) = (handed, started);
        }
        // The hashing follows this job's writes as they reach the file.
        let follow = match &mut trail {
            Some(trail) => {
                trail.advance()?;
                Some(Arc::clone(&trail.written))
            }
            None => None,
        };
        let batch = batch.into_iter().map(|(chunk, room)| (chunk, Some(room)));
        let batch = batch.collect();
        let (step, queue) =
            write_batch(writer, batch, Some(queue), expected, fill.clone(), follow).await;
        match step {
            Ok(written) => {
                writer = written;
                chunks = queue;
                if let Some(trail) = &mut trail {
                    trail.advance()?;
                }
            }
            Err(failed) => {
                if let (Some(fill), Some(Failed { at, rest, .. }), Some(queue)) =
                    (&fill, &failed.relay, queue)
                {
                    relay(fill, *at, rest.clone(), queue, end.take(), expected.length).await;
                }
                return Err(failed.error);
            }
        }
        if expected.length.is_some_and(|n| writer.length() > n) {
            return Err(length_mismatch(expected.length, writer.length()));
        }
    }
    let Some(Ok(end)) = (match end {
        Some(end) => Some(end.await),
        None => None,
    }) else {
        return Err(Error::new(ErrorKind::Incomplete));
    };
    if let Some(tail) = end.tail {
        let tail = vec![(tail, None)];
        let follow = trail.as_ref().map(|trail| Arc::clone(&trail.written));
        match write_batch(writer, tail, None, expected, fill.clone(), follow)
            .await
            .0
        {
            Ok(written) => writer = written,
            Err(failed) => {
                if let (Some(fill), Some(Failed { at, rest, .. })) = (&fill, &failed.relay) {
                    let (_, empty) = mpsc::unbounded_channel();
                    let (ended, end) = oneshot::channel();
                    let _ = ended.send(TeeEnd {
                        tail: None,
                        trailers: None,
                    });
                    relay(fill, *at, rest.clone(), empty, Some(end), expected.length).await;
                }
                return Err(failed.error);
            }
        }
    }
    if let Some(expected) = expected.length
        && writer.length() != expected
    {
        return Err(length_mismatch(Some(expected), writer.length()));
    }
    // The hashing catches up with the whole file.
    let hasher = match trail {
        Some(trail) => {
            let mut flushing = writer;
            writer = on_pool(move || flushing.flush().map(|()| flushing)).await??;
            Some(trail.finish(writer.length()).await?)
        }
        None => None,
    };
    Ok((writer, hasher, end.trailers))
}

/// The hashing of a body past [`HASH_INLINE`]: jobs on the writers' pool that read the temp
/// file behind the writer (from the page cache), one at a time, so that the writer never
/// waits for SHA-256 and no chunk is held for it. The commit waits for it to catch up.
///
/// A job goes on for as long as the writer keeps ahead of it (up to [`HASH_JOB_BYTES`]), so
/// a body arriving fast is hashed by one thread that stays on its core, as the writer's
/// jobs do, instead of by short jobs that the scheduler moves about.
struct Trail {
    file: Arc<File>,
    /// How far the file holds the body: set by the write jobs, followed by the hashing.
    written: Arc<AtomicU64>,
    /// The hasher while no job has it, and how far it has hashed.
    idle: Option<Sha256>,
    hashed: u64,
    job: Option<HashJob>,
}

type HashJob =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Sha256, u64), Error>> + Send>>;

impl Trail {
    /// Takes the hashing over from `writer`, which has hashed all it has written so far.
    async fn start(writer: ContentWriter) -> Result<(ContentWriter, Option<Trail>), Error> {
        let (mut writer, file) = on_pool(move || {
            let file = writer.reader();
            (writer, file)
        })
        .await?;
        let file = match file {
            Ok(file) => Arc::new(file),
            // Hashed in line to the end, then.
            Err(_) => return Ok((writer, None)),
        };
        let hashed = writer.length();
        let trail = writer.take_hasher().map(|hasher| Trail {
            file,
            written: Arc::new(AtomicU64::new(writer.flushed())),
            idle: Some(hasher),
            hashed,
            job: None,
        });
        Ok((writer, trail))
    }

    /// Takes back the job under way if it has finished, without waiting for it.
    fn reap(&mut self) -> Result<(), Error> {
        let Some(job) = &mut self.job else {
            return Ok(());
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(done) = job.as_mut().poll(&mut cx) {
            self.job = None;
            (self.idle, self.hashed) = done.map(|(hasher, hashed)| (Some(hasher), hashed))?;
        }
        Ok(())
    }

    /// Hashes on as far as the file is written, unless a job is under way.
    fn advance(&mut self) -> Result<(), Error> {
        self.reap()?;
        if self.job.is_some() || self.hashed >= self.written.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(hasher) = self.idle.take() else {
            return Err(Error::new(ErrorKind::Io).with_subject("a body whose hashing was lost"));
        };
        let (file, written, from) = (
            Arc::clone(&self.file),
            Arc::clone(&self.written),
            self.hashed,
        );
        let failed = || Error::new(ErrorKind::Io).with_subject("the hashing of a body");
        let (done, hashed) = oneshot::channel();
        let pool = pool().ok_or_else(failed)?;
        let job = Box::new(move || hash_on(file, written, hasher, from, done));
        pool.submit(Lane::Hash, job);
        self.job = Some(Box::pin(async move {
            let hashed = hashed.await.map_err(|_| failed())?;
            hashed.map_err(|e: io::Error| failed().with_source(e))
        }));
        // Polled once now, which hands the job to the pool: it runs while the writer goes on.
        self.reap()
    }

    /// Waits until the first `length` bytes, all written, are hashed: their hasher.
    async fn finish(mut self, length: u64) -> Result<Sha256, Error> {
        self.written.fetch_max(length, Ordering::AcqRel);
        loop {
            if let Some(job) = self.job.take() {
                let (hasher, hashed) = job.await?;
                (self.idle, self.hashed) = (Some(hasher), hashed);
            }
            if self.hashed >= length {
                return self.idle.take().ok_or_else(|| {
                    Error::new(ErrorKind::Io).with_subject("a body whose hashing was lost")
                });
            }
            self.advance()?;
        }
    }
}

/// A hashing job: hashes `file` from `at` as far as `written` says it holds the body, up to
/// [`HASH_JOB_BYTES`]; then, if the writer is still ahead, queues its sequel behind the
/// pool's other hashing (and any write), and otherwise sends the hasher and how far it got.
fn hash_on(
    file: Arc<File>,
    written: Arc<AtomicU64>,
    mut hasher: Sha256,
    mut at: u64,
    done: oneshot::Sender<io::Result<(Sha256, u64)>>,
) {
    let from = at;
    loop {
        let to = written.load(Ordering::Acquire).min(from + HASH_JOB_BYTES);
        if at >= to {
            break;
        }
        match hash_file(&file, hasher, at, to) {
            Ok(hashed) => (hasher, at) = hashed,
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        }
    }
    // Nobody waits for the hash of an abandoned body.
    if at < written.load(Ordering::Acquire)
        && !done.is_closed()
        && let Some(pool) = pool()
    {
        pool.requeue(
            Lane::Hash,
            Box::new(move || hash_on(file, written, hasher, at, done)),
        );
        return;
    }
    let _ = done.send(Ok((hasher, at)));
}

/// What a hashing job reads at a time.
const HASH_READ: usize = 256 * 1024;

/// The most one hashing job hashes before the pool turns to other work (~10 ms of SHA-256).
const HASH_JOB_BYTES: u64 = 16 << 20;

/// Feeds bytes `from..to` of `file` to `hasher`.
fn hash_file(file: &File, mut hasher: Sha256, from: u64, to: u64) -> io::Result<(Sha256, u64)> {
    let mut buffer = vec![0u8; HASH_READ + super::reader::ALIGN];
    let start = super::reader::page_start(&buffer);
    let buf = &mut buffer[start..start + HASH_READ];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(HASH_READ, |n| n.min(HASH_READ));
        super::reader::read_exact_at(file, &mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok((hasher, at))
}

/// What a write job waits for while nobody follows the body (the queue holds up to 4 MiB).
const MIN_BATCH: usize = 256 * 1024;

/// Why a batch was not written, and what of it followers still need.
struct Failure {
    error: Error,
    relay: Option<Failed>,
}

/// The body offset of the first byte that did not reach the file, and the bytes from there.
struct Failed {
    at: u64,
    rest: Vec<Bytes>,
}

/// A chunk to write, holding its room in the tee's queue (the tail of a body holds none).
type ToWrite = (Bytes, Option<tokio::sync::OwnedSemaphorePermit>);

/// Writes `batch`, then whatever else waits in `queue`, as one job: up to [`JOB_BYTES`],
/// so that a body arriving fast is written without a hand-off per batch, and the pool still
/// takes turns between bodies. Each chunk's room in the queue is freed once it is written.
/// With a fill, what is written is flushed and published every [`PUBLISH_EVERY`] bytes and
/// at the end; a failure relays everything since the last publication.
async fn write_batch(
    mut writer: ContentWriter,
    batch: Vec<ToWrite>,
    mut queue: Option<mpsc::UnboundedReceiver<Queued>>,
    expected: Expected,
    fill: Option<Arc<Fill>>,
    follow: Option<Arc<AtomicU64>>,
) -> (
    Result<ContentWriter, Failure>,
    Option<mpsc::UnboundedReceiver<Queued>>,
) {
    let job = on_pool(move || {
        let mut batch = batch.into_iter();
        // Where the last publication left the body, and what has been written since.
        let mut at = writer.length();
        let mut unpublished: Vec<Bytes> = Vec::new();
        let mut write_all = || {
            let mut publish = |writer: &mut ContentWriter, unpublished: &mut Vec<Bytes>| {
                if let Some(fill) = &fill {
                    writer.flush()?;
                    fill.publish_written(writer.flushed());
                }
                unpublished.clear();
                at = writer.length();
                Ok::<_, Error>(())
            };
            let (mut pending, mut written) = (0, 0);
            loop {
                let next = batch.next().or_else(|| {
                    let more = queue.as_mut().filter(|_| written < JOB_BYTES)?;
                    let (chunk, room) = more.try_recv().ok()?;
                    Some((chunk, Some(room)))
                });
                let Some((chunk, room)) = next else {
                    break;
                };
                let len = chunk.len();
                unpublished.push(chunk.clone());
                expected.within_limit(writer.length() + len as u64)?;
                writer.write(&chunk)?;
                drop(room);
                if let Some(follow) = &follow {
                    follow.store(writer.flushed(), Ordering::Release);
                }
                written += len;
                pending += len;
                if pending >= PUBLISH_EVERY {
                    pending = 0;
                    publish(&mut writer, &mut unpublished)?;
                }
            }
            publish(&mut writer, &mut unpublished)?;
            if let Some(follow) = &follow {
                follow.store(writer.flushed(), Ordering::Release);
            }
            writer.settle();
            Ok(())
        };
        let written = write_all();
        let result = match written {
            Ok(()) => Ok(writer),
            Err(error) => {
                // The batch's chunks after the one that failed are the body's next bytes.
                unpublished.extend(batch.map(|(chunk, _)| chunk));
                let relay = Some(Failed {
                    at,
                    rest: unpublished,
                });
                Err(Failure { error, relay })
            }
        };
        (result, queue)
    });
    match job.await {
        Ok(done) => done,
        Err(error) => (Err(Failure { error, relay: None }), None),
    }
}

/// The most one write job takes from a body's queue before the pool turns to another.
const JOB_BYTES: usize = 8 << 20;

/// How often a write job tells the fill's followers how far they can read.
const PUBLISH_EVERY: usize = 256 * 1024;

/// The store failed at body offset `at` (`first` are the chunks that did not make it): hands
/// the rest of the body to the fill's followers, and ends the fill `Unstored` once it is
/// complete. A body that fails or falls short leaves the fill for the caller to fail. It
/// holds no thread while it waits for the body or for slow followers.
async fn relay(
    fill: &Fill,
    at: u64,
    first: Vec<Bytes>,
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
    let mut length = at;
    for chunk in first {
        let len = chunk.len() as u64;
        fill.relay(length, chunk).await;
        length += len;
    }
    while let Some((chunk, room)) = chunks.recv().await {
        drop(room);
        if !fill.followed() {
            return;
        }
        let len = chunk.len() as u64;
        fill.relay(length, chunk).await;
        length += len;
    }
    let Some(Ok(end)) = (match end {
        Some(end) => Some(end.await),
        None => None,
    }) else {
        return;
    };
    if let Some(tail) = end.tail {
        let len = tail.len() as u64;
        fill.relay(length, tail).await;
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

    #[test]
    fn a_write_queued_after_hashing_runs_before_it() {
        let pool = pool().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Every thread of the pool busy with a hashing job until released, and more queued.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let (started, running) = std::sync::mpsc::channel();
        for _ in 0..pool_threads() {
            let (wait, started) = (Arc::clone(&wait), started.clone());
            pool.submit(
                Lane::Hash,
                Box::new(move || {
                    started.send(()).unwrap();
                    let _ = wait.lock().unwrap().recv();
                }),
            );
        }
        for _ in 0..pool_threads() {
            running.recv().unwrap();
        }
        for n in 0..5 {
            let order = Arc::clone(&order);
            pool.submit(
                Lane::Hash,
                Box::new(move || order.lock().unwrap().push(format!("hash {n}"))),
            );
        }
        let (written, done) = std::sync::mpsc::channel();
        let write_order = Arc::clone(&order);
        pool.submit(
            Lane::Write,
            Box::new(move || {
                write_order.lock().unwrap().push("write".to_string());
                written.send(()).unwrap();
            }),
        );
        // One thread comes free: it takes the write, queued last.
        release.send(()).unwrap();
        done.recv().unwrap();
        drop(release);
        assert_eq!(
            order.lock().unwrap().first().map(String::as_str),
            Some("write")
        );
    }

    #[test]
    fn the_pool_runs_jobs_and_survives_a_panicking_one() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let panicked = on_pool(|| -> u8 { panic!("a job that panics") }).await;
            assert!(panicked.is_err());
            let jobs: Vec<_> = (0..64u64).map(|n| on_pool(move || n * 2)).collect();
            for (n, job) in jobs.into_iter().enumerate() {
                assert_eq!(job.await.unwrap(), n as u64 * 2);
            }
        });
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |t| t.count());
        assert!(threads < 64, "{threads} threads for 64 jobs");
    }
}
