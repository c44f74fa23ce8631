//! Writing a tee'd body: jobs on the process's writer pool that write what has arrived into
//! the body's content file and hash it behind the writer, publish it to the requests that
//! follow the fill, and relay the rest to them when storing fails.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::tee_queue::{Queued, TeeEnd};
use crate::collapse::{Fill, FillEnd};
use crate::error::{Error, ErrorKind};
use crate::format::content::{ContentWriter, HASH_INLINE};
use crate::rt::pool::{Lane, on_pool, pool};

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

/// Hashing a written body on the pool: its digest state and length.
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
    let mut buffer = vec![0u8; HASH_READ + crate::format::reader::ALIGN];
    let start = crate::format::reader::page_start(&buffer);
    let buf = &mut buffer[start..start + HASH_READ];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(HASH_READ, |n| n.min(HASH_READ));
        crate::format::reader::read_exact_at(file, &mut buf[..n], at)?;
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
