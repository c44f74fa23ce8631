//! Storing: `put` and `tee` of a response, the write of its body into a temp file, and
//! the order of writes and deletes of one key.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use http_cache_semantics::CachePolicy;
use std::collections::HashMap;

use tokio::sync::{oneshot, watch};
use url::Url;

use super::tee_queue::TeeQueue;
use crate::body::{StreamingBody, boxed};
use crate::collapse::{FillEnd, FillHead, FillLeader, Role};
use crate::error::{BoxError, Error, ErrorKind, Result};
use crate::format::content::ContentWriter;
use crate::format::layout::Hash32;
use crate::format::reader::ChunkReader;
use crate::format::tags::Tags;

use super::{StreamingManager, writer};
use crate::format::reader;
use crate::format::record::content_length;
use crate::rt::blocking;
use crate::rt::lock;
use crate::rt::pool;

/// A tee's response passed through, never written, with why as its outcome.
fn unstored(
    parts: http::response::Parts,
    body: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
    error: Error,
) -> (
    Response<StreamingBody>,
    oneshot::Receiver<Result<Committed>>,
) {
    let (done_tx, done_rx) = oneshot::channel();
    let _ = done_tx.send(Err(error));
    (
        Response::from_parts(parts, StreamingBody::tee(body, None)),
        done_rx,
    )
}

/// One of the writes a store allows under way at once, given back when dropped.
struct WriteSlot(Arc<std::sync::atomic::AtomicUsize>);

impl WriteSlot {
    fn take(writes: &Arc<std::sync::atomic::AtomicUsize>, most: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        writes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < most).then_some(n + 1)
            })
            .ok()
            .map(|_| WriteSlot(Arc::clone(writes)))
    }
}

impl Drop for WriteSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What a tee does besides storing the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Teeing {
    /// Open the committed content for the caller (`put` serves what it stored).
    pub(super) reopen: bool,
    /// Copy the committed entry to the shared tier.
    pub(super) share: bool,
    /// When the response was first stored, for a copy of a stored entry (a read-through
    /// keeps the time its origin fetch was stored, which purges are judged by); else now.
    pub(super) stored_at: Option<SystemTime>,
}

impl Teeing {
    pub(super) const PUT: Teeing = Teeing {
        reopen: true,
        share: true,
        stored_at: None,
    };
    const TEE: Teeing = Teeing {
        reopen: false,
        share: true,
        stored_at: None,
    };
    /// A body read through from the shared tier: stored on disk, not sent back up.
    pub(crate) const READ_THROUGH: Teeing = Teeing {
        reopen: false,
        share: false,
        stored_at: None,
    };
}

/// What is known of a response before its body has been stored.
pub(super) struct Draft {
    pub(super) key: String,
    pub(super) url: String,
    pub(super) parts: http::response::Parts,
    pub(super) policy: CachePolicy,
    /// Open the committed content for reading (for `put`, which serves what it stored even
    /// if another writer replaces the entry at once).
    pub(super) reopen: bool,
    /// When the response was first stored, for a copy; else the commit's time.
    pub(super) stored_at: Option<SystemTime>,
    /// The deletion count when the write started: a delete of the key since then wins.
    pub(super) started: u64,
    pub(super) deletions: Arc<Mutex<Deletions>>,
    /// The order in which this write started among this store's writes: a write that
    /// started later and committed first is not replaced by this one.
    pub(super) seq: u64,
}

/// Which keys were deleted when, so that a write started before a delete of its key (a
/// response fetched before a POST invalidated it) is never committed after it.
#[derive(Debug, Default)]
pub(super) struct Deletions {
    /// Deletions so far.
    pub(super) count: u64,
    /// The count at each key's last deletion.
    pub(super) by_key: HashMap<Hash32, u64>,
    /// The count at each tag's last purge.
    pub(super) by_tag: HashMap<Box<str>, u64>,
    /// Writes started before this count are dropped whatever their key: set by `clear`, and
    /// when `by_key` grows past its bound.
    pub(super) floor: u64,
}

/// Keys `Deletions` remembers before it forgets them all for a conservative floor.
pub(super) const REMEMBERED_DELETIONS: usize = 4096;

impl Deletions {
    pub(super) fn record(&mut self, key_hash: Option<Hash32>) {
        self.count += 1;
        match key_hash {
            Some(key_hash) if self.by_key.len() < REMEMBERED_DELETIONS => {
                self.by_key.insert(key_hash, self.count);
            }
            _ => {
                self.floor = self.count;
                self.by_key.clear();
                self.by_tag.clear();
            }
        }
    }

    /// Notes a purge of `tags`: writes of entries carrying one of them, started before it,
    /// are not committed.
    pub(super) fn record_tags<'a>(&mut self, tags: impl IntoIterator<Item = &'a str>) {
        self.count += 1;
        for tag in tags {
            if self.by_tag.len() >= REMEMBERED_DELETIONS {
                self.floor = self.count;
                self.by_tag.clear();
                return;
            }
            self.by_tag.insert(tag.into(), self.count);
        }
    }

    /// Whether a write of `key_hash` carrying `tags`, started at `started`, was overtaken
    /// by a deletion.
    pub(super) fn overtakes(&self, key_hash: Hash32, tags: &Tags, started: u64) -> bool {
        started < self.floor
            || self.by_key.get(&key_hash).is_some_and(|&at| at > started)
            || (!self.by_tag.is_empty()
                && tags
                    .iter()
                    .any(|tag| self.by_tag.get(tag).is_some_and(|&at| at > started)))
    }
}

/// What a committed entry is, for `put` to serve it.
pub(super) struct Committed {
    pub(super) digest: Hash32,
    pub(super) length: u64,
    pub(super) trailers: Option<HeaderMap>,
    pub(super) file: Option<File>,
    /// Whether the entry is in the store. `false` for a body that arrived whole while a
    /// delete of its key or a newer write overtook it: nothing is committed, and `file`
    /// (asked for with `reopen`) reads the bytes from the unlinked temp file.
    pub(super) kept: bool,
}

impl StreamingManager {
    /// Stores `response` under `key`, reading its whole body to disk, and returns it with a
    /// body that streams from the stored file.
    ///
    /// The body is hashed as it is written and never held whole in memory. The entry is
    /// committed only if the body ends complete (and with exactly its `Content-Length`, when
    /// it has one); otherwise nothing is stored and the error says why. An existing entry
    /// under `key` is replaced.
    ///
    /// Once the body has arrived whole, `put` returns a response streaming exactly those
    /// bytes, whatever happens to the entry meanwhile. A [`delete`](Self::delete) of `key`
    /// while the body is being written wins, and so does a newer write of `key` that
    /// commits first: the outcome is "stored, then deleted" (or "then replaced"), the
    /// entry is not in the store, and the response still reads the bytes it was given.
    pub async fn put<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
    ) -> Result<Response<StreamingBody>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (response, done) = self.start_tee(key, response, policy, url, Teeing::PUT, None);
        let (parts, mut body) = response.into_parts();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        drop(body);
        let committed = done
            .await
            .map_err(|_| Error::new(ErrorKind::Io).with_subject("the store's writer stopped"))??;
        let opened = self.opened().await?;
        let chunk = opened.options.read_chunk_size;
        let path = opened.layout.content_path(committed.digest);
        let file = committed
            .file
            .ok_or_else(|| Error::new(ErrorKind::Io).with_subject(path.display().to_string()))?;
        let (file, prefetched) = blocking(move || {
            let prefetched = match usize::try_from(committed.length) {
                Ok(len) if len <= chunk => {
                    Some(reader::read_chunk(&file, 0, len).map_err(|e| Error::io(e, &path))?)
                }
                _ => None,
            };
            Ok((file, prefetched))
        })
        .await?;
        let body = match prefetched {
            Some(data) => StreamingBody::stored_bytes(data, committed.trailers),
            None => {
                let reader = ChunkReader::new(Arc::new(file), 0, committed.length, chunk);
                StreamingBody::stored_file(reader, committed.trailers)
            }
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Returns `response` at once with a body that hands each frame to the caller as it
    /// arrives and writes it to the store.
    ///
    /// The entry under `key` is committed only when the body ends complete: end of stream,
    /// and exactly `Content-Length` bytes where the header is present. If the body fails, is
    /// dropped early or ends short, the partial file is removed and nothing is committed. A
    /// store failure never fails or stalls the caller's stream: the body carries on as a plain
    /// pass-through and the failure is logged. Writing happens in short jobs on the store's
    /// writer threads behind a bounded queue, so memory stays flat when the disk is slower
    /// than the body, and a body waiting for bytes holds no thread.
    pub fn tee<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
    ) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.start_tee(key, response, policy, url, Teeing::TEE, None)
            .0
    }

    /// Fills under way now.
    pub(crate) fn fills_in_flight(&self) -> usize {
        self.inner.fills.len()
    }

    /// Leads a fill of `key` (see [`crate::collapse`]), or follows the one under way.
    pub(crate) fn join_fill(
        &self,
        key: &str,
        complete_on_disconnect: Option<crate::collapse::Background>,
        wait: std::time::Duration,
    ) -> Role {
        let key = Hash32::of(key.as_bytes());
        self.inner.fills.join(key, complete_on_disconnect, wait)
    }

    /// A [`tee`](Self::tee) that says when the store refuses the body at once (over
    /// `max_body_size` by its `Content-Length`, as many writes under way as allowed, no
    /// runtime): then the response passes through, and the error beside it says why. With `leader`,
    /// the leader's followers read the temp file as it grows: they are shown its head once
    /// the file exists; a store that cannot even start writing releases them instead.
    pub(crate) fn tee_or_refuse<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
        leader: Option<(FillLeader, FillHead)>,
    ) -> (Response<StreamingBody>, Option<Error>)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (response, mut done) = self.start_tee(key, response, policy, url, Teeing::TEE, leader);
        match done.try_recv() {
            Ok(Err(refused)) => (response, Some(refused)),
            _ => (response, None),
        }
    }

    pub(super) fn start_tee<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
        how: Teeing,
        leader: Option<(FillLeader, FillHead)>,
    ) -> (
        Response<StreamingBody>,
        oneshot::Receiver<Result<Committed>>,
    )
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = response.into_parts();
        let body = boxed(body);
        if !crate::rt::available() {
            crate::log::warn_event!(%key, "not stored: tee called outside a runtime");
            let error = Error::new(ErrorKind::Io).with_subject("tee called outside a runtime");
            return unstored(parts, body, error);
        }
        let expected_length = content_length(&parts.headers);
        let limit = self.inner.options.max_body_size;
        if let (Some(length), Some(limit)) = (expected_length, limit)
            && length > limit
        {
            crate::log::debug_event!(%key, length, limit, "not stored: body too large");
            let error = Error::new(ErrorKind::TooLarge)
                .with_subject(format!("Content-Length {length}, limit {limit}"));
            return unstored(parts, body, error);
        }
        // `put` waits for its commit: only what is answered before it is bounded.
        let most = if how.reopen {
            usize::MAX
        } else {
            self.inner.options.max_writes_in_flight
        };
        let Some(slot) = WriteSlot::take(&self.inner.writes_in_flight, most) else {
            crate::log::debug_event!(%key, most, "not stored: as many writes as allowed under way");
            let error =
                Error::new(ErrorKind::NoRoom).with_subject(format!("{most} writes under way"));
            return unstored(parts, body, error);
        };
        let (done_tx, done_rx) = oneshot::channel();
        let (end_tx, end_rx) = oneshot::channel();
        let (commit_tx, commit_rx) = watch::channel(false);
        let key_hash = Hash32::of(key.as_bytes());
        let on_end = {
            let inner = Arc::clone(&self.inner);
            let commit_rx = commit_rx.clone();
            Box::new(move || {
                inner.committing().insert(key_hash, commit_rx);
            })
        };
        let draft = Draft {
            key,
            url: url.to_string(),
            parts: crate::head::response_head(parts.status, parts.version, &parts.headers),
            policy,
            reopen: how.reopen,
            stored_at: how.stored_at,
            started: lock(&self.inner.deletions).count,
            deletions: Arc::clone(&self.inner.deletions),
            seq: 1 + self
                .inner
                .writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let manager = self.clone();
        let (mut leader, head) = leader.unzip();
        let fill = leader.as_ref().map(|leader| Arc::clone(leader.fill()));
        let shared = fill
            .clone()
            .map(|fill| fill as Arc<dyn crate::body::SharedFill>);
        let (sink, rx) = TeeQueue::new(end_tx, on_end, shared);
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!("http_cache.store", key = %draft.key);
        let write = async move {
            let _slot = slot;
            let result = async {
                let opened = manager.opened().await?;
                // Each step is a short job on the writers' pool: while the body waits for
                // bytes, no thread is held for it.
                let started = Arc::clone(&opened);
                let publish = fill.clone();
                let writer = pool::on_pool(move || {
                    started.make_room()?;
                    let scratch = &started.scratch;
                    let mode = started.layout.mode();
                    let room: Arc<dyn crate::format::content::DiskBudget> =
                        Arc::clone(&started) as _;
                    let writer = ContentWriter::create(scratch.temp_path(), mode)?.within(room);
                    if let (Some(fill), Some(head)) = (&publish, head) {
                        fill.publish_file(writer.reader()?);
                        fill.publish_head(head);
                    }
                    Ok::<_, Error>(writer)
                })
                .await??;
                let expected = writer::Expected {
                    length: expected_length,
                    limit,
                };
                let (writer, hasher, trailers) =
                    writer::run_tee(rx, end_rx, writer, expected, fill.clone()).await?;
                let length = writer.length();
                let durable = opened.options.durable;
                let publish = fill.clone();
                pool::on_pool(move || {
                    let finished = writer.finish_hashed(durable, hasher);
                    let committed = finished.and_then(|content| {
                        if let Some(fill) = &publish {
                            fill.publish_written(content.length);
                        }
                        opened.commit(draft, content, trailers)
                    });
                    if let (Err(_), Some(fill)) = (&committed, &publish) {
                        // The whole body is in the temp file, which the followers hold
                        // open: they finish reading it even though it is not kept.
                        fill.end(FillEnd::Unstored(length));
                    }
                    committed
                })
                .await?
            }
            .await;
            let lease = leader.as_mut().and_then(|leader| leader.lease.take());
            if let Some(leader) = leader {
                match &result {
                    Ok(committed) if committed.kept => {
                        leader.fill().end_stored(committed.length, committed.digest);
                    }
                    Ok(committed) => leader.fill().end(FillEnd::Unstored(committed.length)),
                    // The followers are told why, as an error of the same kind; the writer's
                    // own goes to whoever stored it.
                    Err(e) => leader.fill().end(FillEnd::Failed(Arc::new(e.retold()))),
                }
            }
            if let Ok(c) = &result
                && how.share
                && c.kept
            {
                // The fleet's lease goes once the entry is in the shared tier.
                manager.share(key_hash, c.digest, c.length, lease);
            }
            match &result {
                Ok(c) if !c.kept => {}
                Ok(c) => crate::log::debug_event!(digest = ?c.digest, length = c.length, "stored"),
                Err(e)
                    if e.kind() == ErrorKind::Incomplete
                        || e.kind() == ErrorKind::NoRoom
                        || e.is_body() =>
                {
                    crate::log::debug_event!(error = %e, "not stored")
                }
                Err(e) => {
                    manager
                        .inner
                        .failed_writes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crate::log::warn_event!(error = %e, "not stored")
                }
            }
            {
                let mut committing = manager.inner.committing();
                if committing
                    .get(&key_hash)
                    .is_some_and(|rx| rx.same_channel(&commit_rx))
                {
                    committing.remove(&key_hash);
                }
            }
            let _ = commit_tx.send(true);
            let _ = done_tx.send(result);
        };
        #[cfg(feature = "tracing")]
        let write = tracing::Instrument::instrument(write, span);
        crate::rt::spawn(write);

        let body = StreamingBody::tee(body, Some(Box::new(sink)));
        (Response::from_parts(parts, body), done_rx)
    }
}
