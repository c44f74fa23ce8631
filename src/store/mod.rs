//! The file-backed store: [`StreamingManager`]. It knows files, digests and records, and
//! nothing of HTTP caching rules.

pub(crate) mod files;
pub(crate) mod fill;
pub(crate) mod gc;
pub(crate) mod index;
pub(crate) mod layout;
pub(crate) mod reader;
pub(crate) mod record;
mod tier;
pub(crate) mod writer;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use http_cache_semantics::CachePolicy;
use std::collections::HashMap;

use tokio::sync::{OnceCell, oneshot, watch};
use url::Url;

use crate::body::{StreamingBody, TeeSink, boxed};
use crate::error::{BoxError, Error, ErrorKind, Result};
use fill::{FillEnd, FillHead, FillLeader, Fills, Role};
use gc::Scratch;
use index::{Index, Known, Stamp};
use layout::{Hash32, Layout};
use reader::{ChunkReader, Verify};
use record::Entry;
use writer::{ContentWriter, FinishedContent, TempFile};

/// Records larger than this are damage, not records: decoding them could take unbounded
/// memory.
const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Options of a [`StreamingManager`], set through [`StreamingManager::builder`].
#[derive(Debug, Clone)]
struct Options {
    durable: bool,
    read_chunk_size: usize,
    verify_on_read: bool,
    parsed_records: usize,
    memory_body_limit: usize,
    memory_budget: usize,
    max_size: Option<u64>,
    max_entries: Option<usize>,
    max_body_size: Option<u64>,
    /// The bits of the files and directories the store creates.
    mode: files::Mode,
    /// The free space kept on the file system; `None`: 5 %, at most 1 GiB.
    min_free: Option<u64>,
    /// The shared tier behind the local disk, if any.
    shared_tier: Option<Arc<dyn crate::storage::Storage>>,
    /// Stores of up to this many records are read in before serving.
    read_in_before_serving: usize,
    /// Holds the reading-in of records until a test lets it go on.
    #[cfg(test)]
    read_in_gate: Option<Arc<std::sync::Barrier>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durable: false,
            read_chunk_size: 512 * 1024,
            verify_on_read: false,
            parsed_records: 16 * 1024,
            memory_body_limit: 64 * 1024,
            memory_budget: 32 << 20,
            max_size: None,
            max_entries: None,
            max_body_size: None,
            mode: files::Mode::PRIVATE,
            min_free: None,
            shared_tier: None,
            read_in_before_serving: READ_IN_BEFORE_SERVING,
            #[cfg(test)]
            read_in_gate: None,
        }
    }
}

/// A file-based cache store that streams bodies to and from disk, never holding a whole body
/// in memory.
///
/// Each response is stored as a JSON record in `cache-v2/metadata/<sha256 of key>.json` and
/// its body in `cache-v2/content/<sha256 of body>`, so identical bodies are stored once. The
/// store is safe to share: it is a cheap [`Clone`], and several processes may open the same
/// directory. Directories are created, and leftovers of crashed writers removed, on first use.
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_cache_streaming::StreamingManager;
/// use http_body_util::{BodyExt, Full};
///
/// let dir = tempfile::tempdir()?;
/// let manager = StreamingManager::new(dir.path().to_path_buf());
///
/// let request = http::Request::get("https://example.com/").body(())?;
/// let response = http::Response::builder()
///     .header("cache-control", "max-age=60")
///     .body(Full::new(bytes::Bytes::from_static(b"hello")))?;
/// let policy = http_cache_semantics::CachePolicy::new(&request, &response);
/// let url = url::Url::parse("https://example.com/")?;
/// manager.put("GET:https://example.com/".into(), response, policy, url).await?;
///
/// let (hit, _policy) = manager.get("GET:https://example.com/").await?.expect("stored");
/// assert_eq!(hit.into_body().collect().await?.to_bytes(), "hello");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct StreamingManager {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    layout: Layout,
    options: Options,
    opened: OnceCell<Arc<Opened>>,
    /// Keys whose tee'd body has ended and whose entry is being committed. A lookup of such a
    /// key waits for the commit, so that a response read to its end is a hit at once.
    committing: Mutex<HashMap<Hash32, watch::Receiver<bool>>>,
    deletions: Arc<Mutex<Deletions>>,
    fills: Arc<Fills>,
    writes: std::sync::atomic::AtomicU64,
}

/// The state of a store whose directories exist and whose index is loaded.
struct Opened {
    layout: Layout,
    options: Options,
    scratch: Scratch,
    index: Mutex<Index>,
    evictions: std::sync::atomic::AtomicU64,
    /// The access log, opened for appending on the first use that is logged, and the lines
    /// it holds (as far as this process knows).
    access_log: Mutex<Option<File>>,
    access_log_lines: std::sync::atomic::AtomicU64,
    /// How far reading the records on disk into the index has come.
    read_in: watch::Sender<ReadIn>,
    /// The free space kept on the file system.
    free_space: files::FreeSpace,
    /// Bytes in the temp files of the bodies being stored, claimed through [`writer::Room`]:
    /// they count against `max_size` as stored entries do.
    in_flight: std::sync::atomic::AtomicU64,
}

/// Stores of up to this many records are read in before the first request is served (within
/// ~0.1 s here); larger ones while requests are served.
const READ_IN_BEFORE_SERVING: usize = 10_000;

/// How far reading the records on disk into the index has come.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadIn {
    Running,
    Done,
    Failed(String),
}

/// Builds a [`StreamingManager`] with options.
///
/// ```
/// use http_cache_streaming::StreamingManager;
/// let manager = StreamingManager::builder("./cache")
///     .durable(true)
///     .read_chunk_size(1 << 20)
///     .verify_on_read(true)
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct StreamingManagerBuilder {
    dir: PathBuf,
    options: Options,
}

impl StreamingManagerBuilder {
    /// Syncs each content file and record to disk before it is renamed into place, and the
    /// directories after. Off by default: without it an entry written just before a power
    /// loss may be missing afterwards (never corrupt: a record whose content is missing or
    /// short is a miss). A process crash loses nothing either way. Durable writes cost one
    /// or more disk flushes per stored response.
    pub fn durable(mut self, durable: bool) -> Self {
        self.options.durable = durable;
        self
    }

    /// How many bytes a stored body is read in at a time (512 KiB by default). A hit's
    /// reader keeps up to two chunks read ahead of the one being sent, and stops reading
    /// (freeing its thread) while they wait; larger chunks cost more memory per concurrent
    /// hit. Chunks go into page-aligned buffers from a pool that they return to when sent.
    /// Bodies no larger than this are read whole when looked up.
    pub fn read_chunk_size(mut self, bytes: usize) -> Self {
        self.options.read_chunk_size = bytes.max(1);
        self
    }

    /// Checks each stored body against its SHA-256 while it is read (off by default). A body
    /// that fails the check ends with an [`Integrity`](crate::ErrorKind::Integrity) error in
    /// place of its last chunk, so a client never receives a complete body of wrong bytes;
    /// one that fits in a read chunk is checked before it is served and is a miss when it
    /// fails. The damaged content file is removed.
    pub fn verify_on_read(mut self, verify: bool) -> Self {
        self.options.verify_on_read = verify;
        self
    }

    /// How many parsed records the store keeps in memory so that hits on them parse no JSON
    /// (16384 by default). Records beyond this are read from disk on each hit.
    pub fn parsed_records(mut self, records: usize) -> Self {
        self.options.parsed_records = records;
        self
    }

    /// Keeps bodies of up to `max_len` bytes in memory once they have been read, up to
    /// `budget` bytes in all (64 KiB and 32 MiB by default; `0` turns it off). A hit on such
    /// a body `stat`s its record and content file on the calling thread, to see that no
    /// other process replaced or removed them, and reads nothing else: no hand-off to a
    /// blocking thread. Such a body was checked when read (with
    /// [`verify_on_read`](Self::verify_on_read)); bytes damaged on disk later are not served
    /// from memory, and are found once the body is read from disk again.
    pub fn memory_bodies(mut self, max_len: usize, budget: usize) -> Self {
        self.options.memory_body_limit = max_len;
        self.options.memory_budget = budget;
        self
    }

    /// Keeps the content on disk within `bytes` (each deduplicated file counted once): when a
    /// commit takes the store over it, the least recently used entries are removed until it
    /// is back under 90% of it. Content that several entries share goes with the last of
    /// them. A reader of an evicted entry that has its file open reads on. Bodies being
    /// stored count too, from their first byte written: they evict stored entries to make
    /// room, and once they alone take all of `bytes`, a body that finds no room is not
    /// stored ([`ErrorKind::NoRoom`](crate::ErrorKind::NoRoom); its client is served all
    /// the same). Unbounded by default. Uses are appended to `cache-v2/access.log` (at most once a minute per
    /// entry), so the order survives a restart.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.options.max_size = Some(bytes);
        self
    }

    /// Keeps at most `entries` entries, evicting the least recently used as
    /// [`max_size`](Self::max_size) does. Unbounded by default.
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.options.max_entries = Some(entries);
        self
    }

    /// Stores no body longer than `bytes`: a response whose `Content-Length` is larger is
    /// passed through without being written, and a body without one is abandoned (its
    /// partial file removed) once it runs past the limit, while its client goes on
    /// receiving it. A body that never ends is then never driven to its end for the store
    /// either. Unbounded by default.
    pub fn max_body_size(mut self, bytes: u64) -> Self {
        self.options.max_body_size = Some(bytes);
        self
    }

    /// The permission bits of the files the store creates (Unix): `0o600` by default, so
    /// that no other local user can read what is cached, whatever the umask. Widen it for a
    /// group that shares the cache directory, for example `0o660` (directories get `0o770`).
    /// Bits beyond read and write for the owner and group, and read for others, are ignored:
    /// the store never makes a file others can write or execute.
    ///
    /// Whatever the bits, files are opened without following symbolic links, and the
    /// store refuses to open a cache directory that another user owns or that every user
    /// may write to (an [`Io`](crate::ErrorKind::Io) error that says so).
    pub fn file_mode(mut self, bits: u32) -> Self {
        self.options.mode = files::Mode::new(bits);
        self
    }

    /// The free space to keep on the cache directory's file system (Unix), as nginx's
    /// `min_free`: when it has less, the least recently used entries are evicted, and
    /// nothing new is stored while evicting does not make room (requests still pass
    /// through). By default 5 % of the file system, at most 1 GiB, so that a cache without
    /// [`max_size`](Self::max_size) never fills the disk; `0` turns it off.
    pub fn min_free(mut self, bytes: u64) -> Self {
        self.options.min_free = Some(bytes);
        self
    }

    /// Puts a shared tier behind this store, usually a bucket a fleet shares
    /// (`storage::ObjectStorage`, feature `object-store`): the local
    /// disk stays the fast tier in front of it.
    ///
    /// - Read-through: a key missing on disk is looked up in the shared tier; a hit there is
    ///   served from it and stored on disk while it streams.
    /// - Write-through: an entry committed on disk (a `put`, a `tee`, a refresh of its
    ///   headers) is then copied to the shared tier in the background, its body first (not
    ///   again when the tier has it) and its record after.
    /// - A `delete` removes the entry from both tiers; other machines' disks keep their
    ///   copies for as long as those stay fresh. [`max_size`](Self::max_size) and
    ///   [`max_entries`](Self::max_entries) bound the local tier only, and `clear` empties
    ///   only the local tier.
    ///
    /// The shared tier never fails a request: its errors are logged and taken as misses.
    pub fn shared_tier(mut self, storage: Arc<dyn crate::storage::Storage>) -> Self {
        self.options.shared_tier = Some(storage);
        self
    }

    /// Builds the manager. Nothing touches the disk until it is first used.
    pub fn build(self) -> StreamingManager {
        StreamingManager {
            inner: Arc::new(Inner {
                layout: Layout::new(&self.dir).with_mode(self.options.mode),
                dir: self.dir,
                options: self.options,
                opened: OnceCell::new(),
                committing: Mutex::new(HashMap::new()),
                deletions: Arc::default(),
                fills: Arc::default(),
                writes: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }
}

/// What a tee does besides storing the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Teeing {
    /// Open the committed content for the caller (`put` serves what it stored).
    reopen: bool,
    /// Copy the committed entry to the shared tier.
    share: bool,
}

impl Teeing {
    const PUT: Teeing = Teeing {
        reopen: true,
        share: true,
    };
    const TEE: Teeing = Teeing {
        reopen: false,
        share: true,
    };
    /// A body read through from the shared tier: stored on disk, not sent back up.
    pub(crate) const READ_THROUGH: Teeing = Teeing {
        reopen: false,
        share: false,
    };
}

/// What is known of a response before its body has been stored.
struct Draft {
    key: String,
    url: String,
    parts: http::response::Parts,
    policy: CachePolicy,
    /// Open the committed content for reading (for `put`, which serves what it stored even
    /// if another writer replaces the entry at once).
    reopen: bool,
    /// The deletion count when the write started: a delete of the key since then wins.
    started: u64,
    deletions: Arc<Mutex<Deletions>>,
    /// The order in which this write started among this store's writes: a write that
    /// started later and committed first is not replaced by this one.
    seq: u64,
}

/// Which keys were deleted when, so that a write started before a delete of its key (a
/// response fetched before a POST invalidated it) is never committed after it.
#[derive(Debug, Default)]
struct Deletions {
    /// Deletions so far.
    count: u64,
    /// The count at each key's last deletion.
    by_key: HashMap<Hash32, u64>,
    /// Writes started before this count are dropped whatever their key: set by `clear`, and
    /// when `by_key` grows past its bound.
    floor: u64,
}

/// Keys `Deletions` remembers before it forgets them all for a conservative floor.
const REMEMBERED_DELETIONS: usize = 4096;

impl Deletions {
    fn record(&mut self, key_hash: Option<Hash32>) {
        self.count += 1;
        match key_hash {
            Some(key_hash) if self.by_key.len() < REMEMBERED_DELETIONS => {
                self.by_key.insert(key_hash, self.count);
            }
            _ => {
                self.floor = self.count;
                self.by_key.clear();
            }
        }
    }

    /// Whether a write of `key_hash` started at `started` was overtaken by a deletion.
    fn overtakes(&self, key_hash: Hash32, started: u64) -> bool {
        started < self.floor || self.by_key.get(&key_hash).is_some_and(|&at| at > started)
    }
}

/// What a committed entry is, for `put` to serve it.
struct Committed {
    digest: Hash32,
    length: u64,
    trailers: Option<HeaderMap>,
    file: Option<File>,
    /// Whether the entry is in the store. `false` for a body that arrived whole while a
    /// delete of its key or a newer write overtook it: nothing is committed, and `file`
    /// (asked for with `reopen`) reads the bytes from the unlinked temp file.
    kept: bool,
}

/// Statistics of what a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoreStats {
    /// Stored responses.
    pub entries: u64,
    /// Distinct content files those responses use.
    pub content_files: u64,
    /// Bytes of content, each shared file counted once.
    pub content_bytes: u64,
    /// Entries removed to keep the store within its bounds since it was opened.
    pub evictions: u64,
}

impl std::fmt::Debug for StreamingManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingManager")
            .field("dir", &self.inner.dir)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl StreamingManager {
    /// A store in `cache_dir` with default options. Infallible: the directories are created
    /// when the store is first used, and a failure then is reported by that call.
    pub fn new(cache_dir: PathBuf) -> Self {
        StreamingManager::builder(cache_dir).build()
    }

    /// A builder for a store in `cache_dir`, to set options.
    pub fn builder(cache_dir: impl Into<PathBuf>) -> StreamingManagerBuilder {
        StreamingManagerBuilder {
            dir: cache_dir.into(),
            options: Options::default(),
        }
    }

    /// The directory given to [`new`](Self::new) or [`builder`](Self::builder).
    pub fn cache_dir(&self) -> &Path {
        &self.inner.dir
    }

    async fn opened(&self) -> Result<Arc<Opened>> {
        self.inner
            .opened
            .get_or_try_init(|| {
                let layout = self.inner.layout.clone();
                let options = self.inner.options.clone();
                blocking(move || {
                    let (opened, leftovers) = Opened::open(layout, options)?;
                    let opened = Arc::new(opened);
                    opened.start_reading_in(leftovers)?;
                    Ok(opened)
                })
            })
            .await
            .cloned()
    }

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
    /// pass-through and the failure is logged. Writing happens on a blocking thread behind a
    /// bounded queue, so memory stays flat when the disk is slower than the body.
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

    /// Leads a fill of `key` (see [`fill`]), or follows the one under way.
    pub(crate) fn join_fill(
        &self,
        key: &str,
        complete_on_disconnect: Option<fill::Background>,
    ) -> Role {
        self.inner
            .fills
            .join(Hash32::of(key.as_bytes()), complete_on_disconnect)
    }

    /// A [`tee`](Self::tee) whose temp file the leader's followers read as it grows. They
    /// are shown `head` once the file exists; a store that cannot even start writing
    /// releases them instead.
    pub(crate) fn tee_filling<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
        leader: FillLeader,
        head: FillHead,
    ) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.start_tee(
            key,
            response,
            policy,
            url,
            Teeing::TEE,
            Some((leader, head)),
        )
        .0
    }

    fn start_tee<B>(
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
        let (done_tx, done_rx) = oneshot::channel();
        if !crate::rt::available() {
            crate::log::warn_event!(%key, "not stored: tee called outside a runtime");
            let _ = done_tx.send(Err(
                Error::new(ErrorKind::Io).with_subject("tee called outside a runtime")
            ));
            return (
                Response::from_parts(parts, StreamingBody::tee(body, None)),
                done_rx,
            );
        }
        let expected_length = content_length(&parts.headers);
        let limit = self.inner.options.max_body_size;
        if let (Some(length), Some(limit)) = (expected_length, limit)
            && length > limit
        {
            crate::log::debug_event!(%key, length, limit, "not stored: body too large");
            let _ = done_tx.send(Err(Error::new(ErrorKind::TooLarge)
                .with_subject(format!("Content-Length {length}, limit {limit}"))));
            return (
                Response::from_parts(parts, StreamingBody::tee(body, None)),
                done_rx,
            );
        }
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
            parts: clone_parts(&parts),
            policy,
            reopen: how.reopen,
            started: lock(&self.inner.deletions).count,
            deletions: Arc::clone(&self.inner.deletions),
            seq: 1 + self
                .inner
                .writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let manager = self.clone();
        let (leader, head) = leader.unzip();
        let fill = leader.as_ref().map(|leader| Arc::clone(leader.fill()));
        let (sink, rx) = TeeSink::new(end_tx, on_end, fill.clone());
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!("http_cache.store", key = %draft.key);
        let write = async move {
            let result = async {
                let opened = manager.opened().await?;
                // Each step is a short job on the writers' pool: while the body waits for
                // bytes, no thread is held for it.
                let started = Arc::clone(&opened);
                let publish = fill.clone();
                let writer = writer::on_pool(move || {
                    started.make_room()?;
                    let scratch = &started.scratch;
                    let mode = started.layout.mode();
                    let room: Arc<dyn writer::Room> = Arc::clone(&started) as _;
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
                writer::on_pool(move || {
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
            if let Some(leader) = leader {
                leader.fill().end(match &result {
                    Ok(committed) if committed.kept => FillEnd::Stored(committed.length),
                    Ok(committed) => FillEnd::Unstored(committed.length),
                    Err(e) => FillEnd::Failed(e.to_string()),
                });
            }
            if let Ok(c) = &result
                && how.share
                && c.kept
            {
                manager.share(key_hash, c.digest, c.length);
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
                Err(e) => crate::log::warn_event!(error = %e, "not stored"),
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

        let body = StreamingBody::tee(body, Some(sink));
        (Response::from_parts(parts, body), done_rx)
    }

    /// Looks `key` up. A hit is the stored response, with a body that streams from disk, and
    /// its cache policy.
    ///
    /// A record that is damaged, of another format version, or whose content is missing or
    /// of the wrong length is a miss (`Ok(None)`), and is removed. Errors are reserved for a
    /// store that cannot be read at all.
    pub async fn get(&self, key: &str) -> Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        let found = self.lookup(key).await?;
        Ok(found.map(|(response, entry)| (response, entry.policy.clone())))
    }

    /// [`get`](Self::get), answering the record itself. A body held in memory whose record
    /// is unchanged on disk is served without a blocking hand-off.
    pub(crate) async fn lookup(
        &self,
        key: &str,
    ) -> Result<Option<(Response<StreamingBody>, Arc<Entry>)>> {
        let opened = self.opened().await?;
        let key_hash = Hash32::of(key.as_bytes());
        self.wait_for_commit(key_hash).await;
        let known = opened.index().entry(key_hash);
        if let Some(hit) = known
            .as_ref()
            .and_then(|k| opened.memory_hit(key_hash, key, k))
        {
            return Ok(Some(Arc::clone(&opened).respond(hit)));
        }
        let owned = key.to_owned();
        let task_opened = Arc::clone(&opened);
        let hit = blocking(move || task_opened.load(key_hash, &owned, known)).await?;
        match hit {
            Some(hit) => Ok(Some(opened.respond(hit))),
            None => Ok(self.read_through(key).await),
        }
    }

    /// The headers stored under `key`, on disk or else in the shared tier, without reading
    /// a body.
    pub(crate) async fn stored_headers(&self, key: &str) -> Option<HeaderMap> {
        let opened = self.opened().await.ok()?;
        let key_hash = Hash32::of(key.as_bytes());
        self.wait_for_commit(key_hash).await;
        let path = opened.layout.record_path(key_hash);
        let local = blocking(move || Ok(read_record(&path, key_hash).ok().flatten()))
            .await
            .ok()
            .flatten();
        match local {
            Some((entry, _)) if entry.key == key => Some(entry.headers),
            Some(_) => None,
            None => self.shared_headers(key).await,
        }
    }

    /// [`lookup`](Self::lookup) of a body held in memory, without waiting for anything:
    /// `None` unless the store is open, no commit of `key` is under way, and the body is
    /// in memory with its record unchanged on disk.
    pub(crate) fn lookup_in_memory(
        &self,
        key: &str,
    ) -> Option<(Response<StreamingBody>, Arc<Entry>)> {
        let opened = self.inner.opened.get()?;
        let key_hash = Hash32::of(key.as_bytes());
        if self.inner.committing().contains_key(&key_hash) {
            return None;
        }
        let known = opened.used(key_hash)?;
        let hit = opened.memory_hit(key_hash, key, &known)?;
        Some(Arc::clone(opened).respond(hit))
    }

    /// Replaces the headers and policy stored under `key`, keeping its body, and returns the
    /// updated entry as [`get`](Self::get) would. This is what a cache does when the origin
    /// answers a revalidation with `304 Not Modified`. `Ok(None)`: nothing usable is stored
    /// under `key` (any more).
    pub async fn update_headers(
        &self,
        key: &str,
        headers: HeaderMap,
        policy: CachePolicy,
    ) -> Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        let opened = self.opened().await?;
        let key_hash = Hash32::of(key.as_bytes());
        self.wait_for_commit(key_hash).await;
        let known = opened.index().entry(key_hash);
        let key = key.to_owned();
        let task_opened = Arc::clone(&opened);
        let hit =
            blocking(move || task_opened.refresh(key_hash, &key, known, headers, policy)).await?;
        if let Some(hit) = &hit {
            self.share(key_hash, hit.entry.digest, hit.entry.length);
        }
        Ok(hit.map(|hit| {
            let (response, entry) = opened.respond(hit);
            (response, entry.policy.clone())
        }))
    }

    /// Waits until an entry being committed under `key_hash` is in place (or has failed).
    async fn wait_for_commit(&self, key_hash: Hash32) {
        let pending = self.inner.committing().get(&key_hash).cloned();
        if let Some(mut pending) = pending {
            // An error means the writer is gone, which is as final as a commit.
            let _ = pending.wait_for(|done| *done).await;
        }
    }

    /// Removes the entry under `key`, and its content file if no other entry uses it. A key
    /// that is not stored is not an error.
    ///
    /// A write of `key` under way (a `tee` whose body has not ended) is not committed
    /// afterwards: what was fetched before a delete never reappears after it.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let opened = self.opened().await?;
        let key_hash = Hash32::of(key.as_bytes());
        lock(&self.inner.deletions).record(Some(key_hash));
        blocking(move || opened.delete(key_hash)).await?;
        self.unshare(key_hash).await;
        Ok(())
    }

    /// Removes every entry for which `unwanted` holds, reading from disk the records whose
    /// parsed form is not in memory. Returns how many were removed. An entry replaced while
    /// this runs is kept. Meant for a background sweep: it visits every entry.
    pub(crate) async fn remove_where<F>(&self, unwanted: F) -> Result<u64>
    where
        F: Fn(&Entry) -> bool + Send + 'static,
    {
        let opened = self.opened().await?;
        opened.read_in().await?;
        blocking(move || {
            let keys = opened.index().keys();
            let mut removed = 0;
            for (key_hash, parsed) in keys {
                let entry = match parsed {
                    Some(entry) => entry,
                    None => match read_record(&opened.layout.record_path(key_hash), key_hash) {
                        Ok(Some((entry, _))) => Arc::new(entry),
                        _ => continue,
                    },
                };
                if unwanted(&entry) {
                    opened.drop_record(key_hash, Some(entry.digest));
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    /// Removes every entry and content file. Writes under way are not committed afterwards.
    /// Right after a store of more than 10 000 records is opened, this waits until they are
    /// all read in.
    pub async fn clear(&self) -> Result<()> {
        let opened = self.opened().await?;
        opened.read_in().await?;
        lock(&self.inner.deletions).record(None);
        blocking(move || opened.clear()).await
    }

    /// What the store holds now. Right after a store of more than 10 000 records is opened,
    /// this waits until they are all read in (requests are served meanwhile).
    pub async fn stats(&self) -> Result<StoreStats> {
        let opened = self.opened().await?;
        opened.read_in().await?;
        let index = opened.index();
        Ok(StoreStats {
            entries: index.len() as u64,
            content_files: index.content_files() as u64,
            content_bytes: index.content_bytes(),
            evictions: opened.evictions.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl Inner {
    fn committing(&self) -> MutexGuard<'_, HashMap<Hash32, watch::Receiver<bool>>> {
        lock(&self.committing)
    }
}

/// Locks state that is updated in single statements, which a panic elsewhere leaves usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs blocking file work on the runtime's blocking pool.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    crate::rt::spawn_blocking(work)?.await?
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn clone_parts(parts: &http::response::Parts) -> http::response::Parts {
    let mut response = Response::new(());
    *response.status_mut() = parts.status;
    *response.version_mut() = parts.version;
    *response.headers_mut() = parts.headers.clone();
    response.into_parts().0
}

/// A hit: the record, and its body whole when small, else its open content file.
struct Hit {
    entry: Arc<Entry>,
    body: HitBody,
}

enum HitBody {
    Bytes(Bytes),
    File(File),
}

pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Bodies being stored take room within `max_size` as they are written, evicting stored
/// entries (least recently used first) to get it; once they alone take all of it, the next
/// byte written finds none and its body is not stored. So the directory never holds more
/// than `max_size`, plus what the write jobs running now wrote since they last settled.
impl writer::Room for Opened {
    fn claim(&self, bytes: u64) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.in_flight.fetch_add(bytes, Relaxed);
        match self.options.max_size {
            Some(max) if before + bytes > max => {
                self.in_flight.fetch_sub(bytes, Relaxed);
                Err(Error::new(ErrorKind::NoRoom).with_subject(format!(
                    "{before} bytes of bodies being stored, max_size {max}"
                )))
            }
            _ => Ok(()),
        }
    }

    fn release(&self, bytes: u64) {
        self.in_flight
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn settle(&self) {
        let Some(max) = self.options.max_size else {
            return;
        };
        let in_flight = self.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        if self.index().content_bytes() + in_flight > max {
            self.evict_if_needed();
        }
    }
}

impl Opened {
    /// Prepares the directories and an index that is still to be read in: requests are
    /// served from here on, while [`start_reading_in`](Self::start_reading_in) reads it.
    /// Returns how many files an earlier run left in `tmp/` too (removed now).
    fn open(layout: Layout, options: Options) -> Result<(Self, usize)> {
        let (scratch, leftovers) = prepare(&layout)?;
        let index = Index::new(options.parsed_records, options.memory_budget);
        let free_space = files::FreeSpace::new(options.min_free);
        let opened = Opened {
            layout,
            options,
            scratch,
            index: Mutex::new(index),
            evictions: std::sync::atomic::AtomicU64::new(0),
            access_log: Mutex::new(None),
            access_log_lines: std::sync::atomic::AtomicU64::new(0),
            read_in: watch::channel(ReadIn::Running).0,
            free_space,
            in_flight: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((opened, leftovers))
    }

    /// Reads every record on disk into the index, then removes orphaned content and evicts
    /// what the bounds ask for. A store of up to [`READ_IN_BEFORE_SERVING`] records is read in
    /// before this returns; a larger one on a thread of its own while requests are served.
    /// Until that is done, a key the index does not know is looked up on disk, as always;
    /// see [`Index::is_loading`] for what waits.
    fn start_reading_in(self: &Arc<Self>, leftovers: usize) -> Result<()> {
        let started = Instant::now();
        let metadata = self.layout.metadata_dir();
        let mut listing = fs::read_dir(&metadata).map_err(|e| Error::io(e, &metadata))?;
        let mut records = Vec::new();
        let limit = self.options.read_in_before_serving;
        if self.list_records(&mut listing, &mut records, Some(limit + 1))? <= limit {
            self.read_records_in(started, leftovers, records)?;
            self.read_in.send_replace(ReadIn::Done);
            return Ok(());
        }
        crate::log::info_event!(dir = %metadata.display(),
            "serving while the records are read in");
        let opened = Arc::clone(self);
        let work = move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                opened.list_records(&mut listing, &mut records, None)?;
                opened.read_records_in(started, leftovers, records)
            }));
            let state = match outcome {
                Ok(Ok(())) => ReadIn::Done,
                Ok(Err(e)) => ReadIn::Failed(e.to_string()),
                Err(_) => ReadIn::Failed("reading the records in panicked".into()),
            };
            if let ReadIn::Failed(why) = &state {
                crate::log::error_event!(dir = %opened.layout.metadata_dir().display(), %why,
                    "the records could not be read in: entries are served, but no content is \
                     removed and nothing is evicted until the store is opened again");
            }
            opened.read_in.send_replace(state);
        };
        std::thread::Builder::new()
            .name("http-cache-streaming-open".into())
            .spawn(work)
            .map(drop)
            .map_err(|e| Error::new(ErrorKind::Io).with_source(e))
    }

    /// Adds the record files `listing` names, by key hash, to `records`: all of them, or until
    /// it holds `up_to`. Returns how many it holds.
    fn list_records(
        &self,
        listing: &mut fs::ReadDir,
        records: &mut Vec<(Hash32, PathBuf)>,
        up_to: Option<usize>,
    ) -> Result<usize> {
        let metadata = self.layout.metadata_dir();
        while up_to.is_none_or(|n| records.len() < n) {
            let Some(item) = listing.next() else {
                break;
            };
            let item = item.map_err(|e| Error::io(e, &metadata))?;
            let name = item.file_name();
            if let Some(key_hash) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(Hash32::from_hex)
            {
                records.push((key_hash, item.path()));
            }
        }
        Ok(records.len())
    }

    fn read_records_in(
        &self,
        started: Instant,
        leftovers: usize,
        records: Vec<(Hash32, PathBuf)>,
    ) -> Result<()> {
        let mut dropped = 0usize;
        let metadata = self.layout.metadata_dir();
        // Reading records is a file open and read each: spread over the cores.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let per_thread = records.len().div_ceil(threads).max(1);
        let summaries: Option<Vec<_>> = std::thread::scope(|scope| {
            let readers: Vec<_> = records
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|(key_hash, path)| {
                                (*key_hash, path, read_summary(path, *key_hash))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // A reader that failed leaves reference counts unknown: better no removals than
            // removing content a record still names.
            let mut all = Vec::with_capacity(records.len());
            for reader in readers {
                all.extend(reader.join().ok()?);
            }
            Some(all)
        });
        let summaries = summaries.ok_or_else(|| {
            Error::new(ErrorKind::Io).with_subject(format!("reading {}", metadata.display()))
        })?;
        #[cfg(test)]
        if let Some(gate) = &self.options.read_in_gate {
            gate.wait();
        }
        // In batches, so that requests get the index lock in between.
        let mut summaries = summaries.into_iter().peekable();
        while summaries.peek().is_some() {
            let mut index = self.index();
            for (key_hash, path, summary) in summaries.by_ref().take(4096) {
                match summary {
                    Ok(Some((summary, stamp))) => {
                        let (digest, length) = (summary.digest, summary.length);
                        index.insert_summary(key_hash, digest, length, stamp, summary.stored_at);
                    }
                    Ok(None) => {}
                    // Unless a write replaced it meanwhile (records are installed under the
                    // index lock, which is held here).
                    Err(ReadFailure::Unusable(why)) if !index.is_newer(key_hash) => {
                        crate::log::warn_event!(path = %path.display(), %why, "removing unusable record");
                        let _ = remove_if_present(path);
                        dropped += 1;
                    }
                    Err(ReadFailure::Unusable(_)) => {}
                    Err(ReadFailure::Unavailable(e)) => {
                        // Its content would look orphaned: no removals rather than lost entries.
                        return Err(Error::io(e, path));
                    }
                }
            }
        }
        {
            let mut index = self.index();
            for digest in index.finish_loading() {
                let _ = remove_if_present(&self.layout.content_path(digest));
            }
        }
        let content = self.layout.content_dir();
        let orphans = gc::sweep_orphans(
            &content,
            |digest| self.index().refs(digest) > 0,
            |digest, path| {
                // Under the index lock: a commit installs content under it too.
                let index = self.index();
                index.refs(digest) == 0 && fs::remove_file(path).is_ok()
            },
        )
        .map_err(|e| Error::io(e, &content))?;
        crate::log::info_event!(
            dir = %self.layout.metadata_dir().display(),
            entries = self.index().len(),
            leftovers, dropped, orphans,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache opened"
        );
        self.read_access_log();
        self.evict_if_needed();
        Ok(())
    }

    /// While the records are being read in, reads in the one of `key_hash` ahead of the rest,
    /// before it is replaced or removed: so that the content it names counts as used by it,
    /// and is unlinked when no other record names it.
    fn read_in_key(&self, index: &mut Index, key_hash: Hash32) {
        if index.is_loading()
            && !index.is_newer(key_hash)
            && let Ok(Some((summary, stamp))) =
                read_summary(&self.layout.record_path(key_hash), key_hash)
        {
            let (digest, length) = (summary.digest, summary.length);
            index.insert_summary(key_hash, digest, length, stamp, summary.stored_at);
        }
    }

    /// Waits until the records on disk are read in (for what needs every entry counted).
    async fn read_in(&self) -> Result<()> {
        let mut state = self.read_in.subscribe();
        let state = state
            .wait_for(|state| *state != ReadIn::Running)
            .await
            .map(|state| state.clone())
            .unwrap_or(ReadIn::Failed("the store was dropped".into()));
        match state {
            ReadIn::Failed(why) => Err(Error::new(ErrorKind::Io)
                .with_subject(format!("reading the records in failed: {why}"))),
            _ => Ok(()),
        }
    }

    /// Turns a hit into the response a lookup returns.
    fn respond(self: Arc<Self>, hit: Hit) -> (Response<StreamingBody>, Arc<Entry>) {
        let entry = hit.entry;
        let trailers = entry.trailers.clone();
        let body = match hit.body {
            HitBody::Bytes(data) => StreamingBody::stored_bytes(data, trailers),
            HitBody::File(file) => {
                let chunk = self.options.read_chunk_size;
                let mut reader = ChunkReader::new(Arc::new(file), 0, entry.length, chunk);
                if self.options.verify_on_read {
                    let digest = entry.digest;
                    let on_corrupt = Box::new(move || {
                        crate::log::warn_event!(path = %self.layout.content_path(digest).display(),
                            "content fails its digest check, removing it");
                        self.forget_content(digest);
                    });
                    reader = reader.verify(Verify::new(digest), on_corrupt);
                }
                StreamingBody::stored_file(reader, trailers)
            }
        };
        (entry.response(body), entry)
    }

    /// The parsed record of `key_hash`, noting the use (in the access log once a minute).
    fn used(&self, key_hash: Hash32) -> Option<Known> {
        let (known, logged) = {
            let mut index = self.index();
            (index.entry(key_hash), index.touch(key_hash))
        };
        if let Some(at) = logged {
            self.log_use(key_hash, at);
        }
        known
    }

    /// Appends a use to the access log. Lines are short and appended whole, so processes
    /// sharing the store do not tear each other's; a lost line only ages an entry.
    fn log_use(&self, key_hash: Hash32, at: u64) {
        use std::io::Write as _;
        let mut log = lock(&self.access_log);
        if log.is_none() {
            let path = self.layout.access_log();
            *log = files::open_or_create(&path, self.layout.mode(), true).ok();
        }
        if let Some(file) = log.as_mut() {
            let line = format!("{} {at}\n", key_hash.to_hex());
            let _ = file.write_all(line.as_bytes());
        }
        drop(log);
        let lines = 1 + self
            .access_log_lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if lines > self.access_log_bound() {
            self.rewrite_access_log();
        }
    }

    /// Lines past which the access log is rewritten with one line an entry.
    fn access_log_bound(&self) -> u64 {
        4 * self.index().len() as u64 + 1024
    }

    /// Rewrites the access log with each entry's last use, one line each.
    fn rewrite_access_log(&self) {
        let uses = self.index().uses();
        let text: String = uses
            .iter()
            .map(|(key, at)| format!("{} {at}\n", key.to_hex()))
            .collect();
        let mut log = lock(&self.access_log);
        if let Ok((temp, _)) = writer::write_temp(
            self.scratch.temp_path(),
            text.as_bytes(),
            false,
            self.layout.mode(),
        ) && temp.persist(&self.layout.access_log()).is_ok()
        {
            // The handle held points at the old file: the next use opens the new one.
            *log = None;
            self.access_log_lines
                .store(uses.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reads the access log into the index's eviction order, and rewrites it short when it
    /// has grown well past one line an entry.
    fn read_access_log(&self) {
        use std::io::BufRead as _;
        let path = self.layout.access_log();
        let Ok(file) = files::open(&path) else {
            return;
        };
        let mut lines = 0u64;
        {
            let mut index = self.index();
            for line in std::io::BufReader::new(file).lines().map_while(|l| l.ok()) {
                lines += 1;
                let mut words = line.split(' ');
                if let (Some(Some(key)), Some(Ok(at))) = (
                    words.next().map(Hash32::from_hex),
                    words.next().map(str::parse::<u64>),
                ) {
                    index.set_last_used(key, at);
                }
            }
        }
        self.access_log_lines
            .store(lines, std::sync::atomic::Ordering::Relaxed);
        if lines > self.access_log_bound() {
            self.rewrite_access_log();
        }
    }

    /// A hit on a body held in memory, when its record and content are unchanged on disk.
    fn memory_hit(&self, key_hash: Hash32, key: &str, known: &Known) -> Option<Hit> {
        let body = known.body.as_ref()?;
        let usable =
            known.entry.key == key && self.unchanged_on_disk(key_hash, known.stamp, &known.entry);
        usable.then(|| Hit {
            entry: Arc::clone(&known.entry),
            body: HitBody::Bytes(body.clone()),
        })
    }

    /// Whether the record of `key_hash` on disk is still the one stamped `stamp`, and the
    /// content it names still there at its length: two `stat`s. Anything else sends the
    /// lookup down the path that reads the disk and cleans up.
    fn unchanged_on_disk(&self, key_hash: Hash32, stamp: Stamp, entry: &Entry) -> bool {
        let record = self.layout.record_path(key_hash);
        let content = self.layout.content_path(entry.digest);
        fs::symlink_metadata(record).is_ok_and(|m| Stamp::of(&m) == stamp)
            && fs::symlink_metadata(content).is_ok_and(|m| m.is_file() && m.len() == entry.length)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Whether there is room to store: the file system is not under the free-space floor,
    /// or evicting brought it back over.
    fn make_room(&self) -> Result<()> {
        let dir = self.layout.content_dir();
        if self.free_space.shortfall(&dir, false) == 0 {
            return Ok(());
        }
        self.evict_if_needed();
        match self.free_space.shortfall(&dir, true) {
            0 => Ok(()),
            short => {
                crate::log::warn_event!(
                    short,
                    "file system under its free-space floor: not stored"
                );
                Err(Error::new(ErrorKind::Io).with_subject(format!(
                    "the file system is {short} bytes under the store's free-space floor"
                )))
            }
        }
    }

    /// Renames the content and then the record into place and records both in the index.
    fn commit(
        &self,
        draft: Draft,
        content: FinishedContent,
        trailers: Option<HeaderMap>,
    ) -> Result<Committed> {
        let FinishedContent {
            temp,
            digest,
            length,
            claim,
        } = content;
        let reopen = draft.reopen;
        let (started, deletions, seq) = (draft.started, draft.deletions, draft.seq);
        let entry = Entry {
            key: draft.key,
            url: draft.url,
            status: draft.parts.status,
            version: draft.parts.version,
            headers: draft.parts.headers,
            trailers,
            policy: draft.policy,
            digest,
            length,
            stored_at: SystemTime::now(),
        };
        let key_hash = Hash32::of(entry.key.as_bytes());
        self.make_room()?;
        let (record_temp, stamp, own) = self.record_temp(&entry)?;
        let content_path = self.layout.content_path(digest);
        let mut committed = Committed {
            digest,
            length,
            trailers: entry.trailers.clone(),
            file: None,
            kept: true,
        };
        {
            let mut index = self.index();
            // Checked under the index lock: a delete records itself before it takes the lock.
            let overtaken = if lock(&deletions).overtakes(key_hash, started) {
                Some("deleted while it was being stored")
            } else if index.has_newer_write(key_hash, seq) {
                Some("a response that arrived later is stored already")
            } else {
                None
            };
            if let Some(why) = overtaken {
                if !reopen {
                    return Err(Error::new(ErrorKind::Incomplete)
                        .with_subject(format!("{}: {why}", entry.key)));
                }
                // `put` handed its body over whole: it gets the bytes back ("stored, then
                // deleted" or "stored, then replaced"), from the temp file that goes now.
                let file = files::open(temp.path()).map_err(|e| Error::io(e, temp.path()))?;
                committed.file = Some(file);
                committed.kept = false;
                crate::log::debug_event!(key = %entry.key, why, "stored, then overtaken");
                return Ok(committed);
            }
            install_content(temp, &content_path, length)?;
            // Its bytes count as stored from here on.
            drop(claim);
            if reopen {
                let file = files::open(&content_path).map_err(|e| Error::io(e, &content_path))?;
                committed.file = Some(file);
            }
            self.install_record(&mut index, key_hash, own, record_temp, stamp)?;
            index.set_written(key_hash, seq);
        }
        self.sync_dirs(&[self.layout.content_dir(), self.layout.metadata_dir()])?;
        self.evict_if_needed();
        Ok(committed)
    }

    /// Removes the least recently used entries while the store (with the bodies being stored)
    /// is over its bounds, or its file system under the free-space floor. Content files are
    /// moved out of the way while the index is locked and unlinked after (freeing a large
    /// file's blocks takes time), so that a large eviction never holds up lookups.
    fn evict_if_needed(&self) {
        let (max_size, max_entries) = (self.options.max_size, self.options.max_entries);
        let short = self.free_space.shortfall(&self.layout.content_dir(), false);
        if max_size.is_none() && max_entries.is_none() && short == 0 {
            return;
        }
        let mut doomed = Vec::new();
        let mut index = self.index();
        // Bodies being stored take their room first.
        let in_flight = self.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        let max_size = max_size.map(|max| max.saturating_sub(in_flight));
        let max_size = match short {
            0 => max_size,
            short => {
                let room = index.content_bytes().saturating_sub(short);
                Some(max_size.map_or(room, |max| max.min(room)))
            }
        };
        let evicted = index.evict(max_size, max_entries);
        for (key, unused) in &evicted {
            let _ = remove_if_present(&self.layout.record_path(*key));
            if let Some(digest) = unused {
                let content = self.layout.content_path(*digest);
                let aside = self.scratch.temp_path();
                match fs::rename(&content, &aside) {
                    Ok(()) => doomed.push(aside),
                    Err(_) => {
                        let _ = remove_if_present(&content);
                    }
                }
            }
        }
        let (entries, bytes) = (index.len(), index.content_bytes());
        drop(index);
        for path in doomed {
            let _ = fs::remove_file(path);
        }
        let count = evicted.len() as u64;
        self.evictions
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("http_cache_streaming_evictions_total").increment(count);
        if !evicted.is_empty() {
            crate::log::info_event!(
                evicted = evicted.len(),
                entries,
                bytes,
                "evicted least recently used entries"
            );
        }
    }

    /// Encodes a record into a temp file, ready to be renamed into place, and returns the
    /// entry as the index should keep it: decoded from the record written. Header values
    /// that hyper parsed are views into a connection's read buffer; an entry kept with them
    /// would keep that whole buffer (hundreds of KiB) alive for as long as it is indexed.
    fn record_temp(&self, entry: &Entry) -> Result<(TempFile, Stamp, Arc<Entry>)> {
        let record_error = |e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Record).with_subject(format!("{}: {e}", entry.key))
        };
        let json = entry.encode().map_err(|e| record_error(&e))?;
        let own = Entry::decode(&json).map_err(|e| record_error(&e))?;
        let (temp, stamp) = writer::write_temp(
            self.scratch.temp_path(),
            &json,
            self.options.durable,
            self.layout.mode(),
        )?;
        Ok((temp, stamp, Arc::new(own)))
    }

    /// Renames a record into place and indexes it, unlinking content it leaves unused. The
    /// caller holds the index lock, so that renames and reference counts change together.
    fn install_record(
        &self,
        index: &mut Index,
        key_hash: Hash32,
        entry: Arc<Entry>,
        temp: TempFile,
        stamp: Stamp,
    ) -> Result<()> {
        let path = self.layout.record_path(key_hash);
        self.read_in_key(index, key_hash);
        temp.persist(&path).map_err(|e| Error::io(e, &path))?;
        if let Some(unused) = index.insert(key_hash, entry, stamp) {
            let path = self.layout.content_path(unused);
            remove_if_present(&path).map_err(|e| Error::io(e, &path))?;
        }
        Ok(())
    }

    /// With `durable`, syncs directories whose entries were just renamed.
    fn sync_dirs(&self, dirs: &[PathBuf]) -> Result<()> {
        if self.options.durable {
            for dir in dirs {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::io(e, dir))?;
            }
        }
        Ok(())
    }

    /// Replaces a stored entry's headers and policy, keeping its content, and returns the
    /// updated hit. When another writer replaced the entry meanwhile, the newer record is
    /// kept and the hit found is returned with the new headers, unstored.
    fn refresh(
        &self,
        key_hash: Hash32,
        key: &str,
        cached: Option<Known>,
        headers: HeaderMap,
        policy: CachePolicy,
    ) -> Result<Option<Hit>> {
        let Some(hit) = self.load(key_hash, key, cached)? else {
            return Ok(None);
        };
        let mut entry = Entry::clone(&hit.entry);
        entry.headers = headers;
        entry.policy = policy;
        entry.stored_at = SystemTime::now();
        let (temp, stamp, entry) = self.record_temp(&entry)?;
        {
            let mut index = self.index();
            if index.digest(key_hash) == Some(entry.digest) {
                self.install_record(&mut index, key_hash, Arc::clone(&entry), temp, stamp)?;
            }
        }
        self.sync_dirs(&[self.layout.metadata_dir()])?;
        Ok(Some(Hit { entry, ..hit }))
    }

    /// Finds a key's record and opens its content, dropping whatever turns out broken.
    fn load(&self, key_hash: Hash32, key: &str, cached: Option<Known>) -> Result<Option<Hit>> {
        let path = self.layout.record_path(key_hash);
        // A parsed record is served only while its file is the one it was parsed from.
        let fresh = cached.and_then(|known| {
            let now = fs::symlink_metadata(&path).ok().map(|m| Stamp::of(&m));
            (now == Some(known.stamp)).then_some((known.entry, known.stamp))
        });
        let (entry, stamp) = match fresh {
            Some(fresh) => fresh,
            None => match read_record(&path, key_hash) {
                Ok(Some((entry, stamp))) => {
                    let entry = Arc::new(entry);
                    self.learn(key_hash, &entry, stamp);
                    (entry, stamp)
                }
                Ok(None) => {
                    // Gone from disk (another process deleted it): forget it here too.
                    let known = self.index().digest(key_hash);
                    if known.is_some() {
                        crate::log::info_event!(%key, path = %path.display(),
                            "record gone from disk, forgetting it");
                    }
                    self.drop_record(key_hash, known);
                    return Ok(None);
                }
                Err(ReadFailure::Unusable(why)) => {
                    crate::log::warn_event!(path = %path.display(), %why, "removing unusable record");
                    self.drop_record(key_hash, None);
                    return Ok(None);
                }
                Err(ReadFailure::Unavailable(e)) => return Err(Error::io(e, &path)),
            },
        };
        if entry.key != key {
            return Ok(None);
        }
        let logged = self.index().touch(key_hash);
        if let Some(at) = logged {
            self.log_use(key_hash, at);
        }
        let path = self.layout.content_path(entry.digest);
        let file = match files::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::log::warn_event!(%key, path = %path.display(), "content missing, removing record");
                self.drop_record(key_hash, Some(entry.digest));
                return Ok(None);
            }
            Err(e) if !is_transient(&e) => {
                crate::log::warn_event!(%key, path = %path.display(), error = %e,
                    "content unreadable, removing it and its record");
                self.forget_content(entry.digest);
                self.drop_record(key_hash, Some(entry.digest));
                return Ok(None);
            }
            Err(e) => return Err(Error::io(e, &path)),
        };
        let actual = file.metadata().map_err(|e| Error::io(e, &path))?.len();
        if actual != entry.length {
            crate::log::warn_event!(%key, path = %path.display(), expected = entry.length, actual,
                "content has the wrong length, removing it and its record");
            self.forget_content(entry.digest);
            self.drop_record(key_hash, Some(entry.digest));
            return Ok(None);
        }
        let Ok(len) = usize::try_from(entry.length) else {
            return Ok(Some(Hit {
                entry,
                body: HitBody::File(file),
            }));
        };
        if len > self.options.read_chunk_size {
            return Ok(Some(Hit {
                entry,
                body: HitBody::File(file),
            }));
        }
        // Small: read whole now, and kept in memory for the next hits when it is small enough.
        let keep = len <= self.options.memory_body_limit;
        let read = if keep {
            reader::read_chunk(&file, 0, len)
        } else {
            reader::read_pooled(&file, 0, len)
        };
        let bytes = read.map_err(|e| Error::io(e, &path))?;
        if self.options.verify_on_read && !reader::digest_matches(&bytes, entry.digest) {
            crate::log::warn_event!(%key, path = %path.display(),
                    "content fails its digest check, removing it and its record");
            self.forget_content(entry.digest);
            self.drop_record(key_hash, Some(entry.digest));
            return Ok(None);
        }
        if keep {
            self.index().keep_body(key_hash, stamp, &bytes);
        }
        Ok(Some(Hit {
            entry,
            body: HitBody::Bytes(bytes),
        }))
    }

    /// Takes in a record read from disk: one this index did not know (another process wrote
    /// it) or one whose parsed form was not kept.
    fn learn(&self, key_hash: Hash32, entry: &Arc<Entry>, stamp: Stamp) {
        let mut index = self.index();
        if index.digest(key_hash) == Some(entry.digest) {
            index.remember(key_hash, entry, stamp);
        } else if let Some(unused) = index.insert(key_hash, Arc::clone(entry), stamp) {
            let _ = remove_if_present(&self.layout.content_path(unused));
        }
    }

    /// Removes a broken record, unless a newer commit replaced it meanwhile (`expected` is the
    /// digest the broken record named, when known).
    fn drop_record(&self, key_hash: Hash32, expected: Option<Hash32>) {
        let mut index = self.index();
        let current = index.digest(key_hash);
        if expected.is_some() && current.is_some() && current != expected {
            return;
        }
        self.read_in_key(&mut index, key_hash);
        let _ = remove_if_present(&self.layout.record_path(key_hash));
        if let Some(unused) = index.remove(key_hash) {
            let _ = remove_if_present(&self.layout.content_path(unused));
        }
    }

    /// Removes a damaged content file; the records naming it become misses.
    fn forget_content(&self, digest: Hash32) {
        let mut index = self.index();
        index.forget_bodies(digest);
        let path = self.layout.content_path(digest);
        if let Err(e) = remove_if_present(&path) {
            crate::log::warn_event!(path = %path.display(), error = %e, "could not remove damaged content");
        }
    }

    fn delete(&self, key_hash: Hash32) -> Result<()> {
        let mut index = self.index();
        self.read_in_key(&mut index, key_hash);
        let record = self.layout.record_path(key_hash);
        remove_if_present(&record).map_err(|e| Error::io(e, &record))?;
        if let Some(unused) = index.remove(key_hash) {
            let path = self.layout.content_path(unused);
            remove_if_present(&path).map_err(|e| Error::io(e, &path))?;
        }
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        let mut index = self.index();
        for dir in [self.layout.metadata_dir(), self.layout.content_dir()] {
            let items = fs::read_dir(&dir).map_err(|e| Error::io(e, &dir))?;
            for item in items {
                let path = item.map_err(|e| Error::io(e, &dir))?.path();
                remove_if_present(&path).map_err(|e| Error::io(e, &path))?;
            }
        }
        index.clear();
        Ok(())
    }
}

/// Puts finished content at its digest's path. When a file is there already with the right
/// length the bytes are stored already, and the temp file is dropped: deduplication.
/// Makes the layout's directories, sweeps what dead instances left in `tmp/`, and makes
/// this instance's scratch directory there. Returns it and how many leftovers went.
/// The user's directory must be this process's user's and writable by no other user, and
/// the store's own directories real directories with the store's bits (`files`).
pub(crate) fn prepare(layout: &Layout) -> Result<(gc::Scratch, usize)> {
    let mode = layout.mode();
    let dir = layout.user_dir();
    files::ensure_dir(dir, mode, true).map_err(|e| Error::io(e, dir))?;
    for dir in [
        layout.format_dir().to_path_buf(),
        layout.metadata_dir(),
        layout.content_dir(),
        layout.tmp_dir(),
    ] {
        files::ensure_dir(&dir, mode, false).map_err(|e| Error::io(e, &dir))?;
    }
    let tmp = layout.tmp_dir();
    gc::sweep_tmp_and_create_scratch(&tmp, mode).map_err(|e| Error::io(e, &tmp))
}

pub(crate) fn install_content(temp: TempFile, path: &Path, length: u64) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(existing) if existing.is_file() && existing.len() == length => Ok(()),
        _ => temp.persist(path).map_err(|e| Error::io(e, path)),
    }
}

/// Why a record could not be read.
#[derive(Debug)]
enum ReadFailure {
    /// The file is damaged, unreadable or not a record: remove it.
    Unusable(String),
    /// The system cannot read it now (out of file handles or memory): the record may be
    /// fine, so it must not be removed, nor its content taken for an orphan.
    Unavailable(io::Error),
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFailure::Unusable(why) => f.write_str(why),
            ReadFailure::Unavailable(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        if is_transient(&e) {
            ReadFailure::Unavailable(e)
        } else {
            ReadFailure::Unusable(e.to_string())
        }
    }
}

/// Errors that say nothing about the file: the process or the system is short of something.
fn is_transient(e: &io::Error) -> bool {
    // ENOMEM, EAGAIN, ENFILE, EMFILE have these numbers on Linux and the BSDs alike.
    #[cfg(unix)]
    if matches!(e.raw_os_error(), Some(12 | 11 | 23 | 24 | 35)) {
        return true;
    }
    matches!(
        e.kind(),
        io::ErrorKind::OutOfMemory | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// Reads a record in summary (what the store opens with), with the stamp of the file read.
/// `Ok(None)`: there is none.
fn read_summary(
    path: &Path,
    key_hash: Hash32,
) -> std::result::Result<Option<(record::Summary, Stamp)>, ReadFailure> {
    read_as(path, key_hash, Entry::summarize, |summary| &summary.key)
}

/// Reads and decodes a record, with the stamp of the file read. `Ok(None)`: there is none.
fn read_record(
    path: &Path,
    key_hash: Hash32,
) -> std::result::Result<Option<(Entry, Stamp)>, ReadFailure> {
    read_as(path, key_hash, Entry::decode, |entry| &entry.key)
}

/// Reads a record file and decodes it with `decode`, checking that the key it holds is the
/// one its file name is the hash of.
fn read_as<T>(
    path: &Path,
    key_hash: Hash32,
    decode: fn(&[u8]) -> std::result::Result<T, record::DecodeError>,
    key: fn(&T) -> &str,
) -> std::result::Result<Option<(T, Stamp)>, ReadFailure> {
    use std::io::Read as _;
    let mut file = match files::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if meta.len() > MAX_RECORD_BYTES {
        return Err(ReadFailure::Unusable(format!(
            "record of {} bytes is larger than any this store writes",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    let decoded = decode(&bytes).map_err(|e| ReadFailure::Unusable(e.to_string()))?;
    if Hash32::of(key(&decoded).as_bytes()) != key_hash {
        return Err(ReadFailure::Unusable(
            "record is filed under another key's name".into(),
        ));
    }
    Ok(Some((decoded, Stamp::of(&meta))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn response(body: &'static str) -> Response<Full<Bytes>> {
        Response::builder()
            .header("cache-control", "max-age=3600")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn put(manager: &StreamingManager, key: &str, body: &'static str) {
        let request = http::Request::get("http://example.com/").body(()).unwrap();
        let policy = CachePolicy::new(&request, &response(body));
        let url = Url::parse("http://example.com/").unwrap();
        let stored = manager.put(key.into(), response(body), policy, url).await;
        stored.unwrap().into_body().collect().await.unwrap();
    }

    async fn read(manager: &StreamingManager, key: &str) -> Option<Bytes> {
        let (response, _) = manager.get(key).await.unwrap()?;
        Some(response.into_body().collect().await.unwrap().to_bytes())
    }

    fn content_files(dir: &Path) -> usize {
        fs::read_dir(dir.join("cache-v2/content")).unwrap().count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_is_served_while_its_records_are_read_in() {
        let dir = tempfile::tempdir().unwrap();
        let manager = StreamingManager::new(dir.path().to_path_buf());
        put(&manager, "GET:shared-1", "shared").await;
        put(&manager, "GET:shared-2", "shared").await;
        put(&manager, "GET:replaced", "old").await;
        put(&manager, "GET:deleted", "alone").await;
        put(&manager, "GET:kept", "kept").await;
        assert_eq!(content_files(dir.path()), 4);
        drop(manager);

        // Reopened as a large store would be: the records are read in on a thread, held
        // until the checks below are done.
        let gate = Arc::new(std::sync::Barrier::new(2));
        let mut builder = StreamingManager::builder(dir.path());
        builder.options.read_in_before_serving = 0;
        builder.options.read_in_gate = Some(Arc::clone(&gate));
        let manager = builder.build();
        assert_eq!(read(&manager, "GET:kept").await.unwrap(), "kept");
        manager.delete("GET:shared-1").await.unwrap();
        manager.delete("GET:deleted").await.unwrap();
        put(&manager, "GET:replaced", "new").await;
        assert_eq!(read(&manager, "GET:replaced").await.unwrap(), "new");
        assert_eq!(read(&manager, "GET:deleted").await, None);
        // Nothing is unlinked yet: the counts are not whole.
        assert_eq!(content_files(dir.path()), 5);
        let reading = tokio::task::spawn_blocking(move || gate.wait());

        let stats = manager.stats().await.unwrap();
        reading.await.unwrap();
        assert_eq!(stats.entries, 3, "shared-2, replaced, kept");
        // "alone" and "old" are gone; "shared" stays for shared-2.
        assert_eq!(content_files(dir.path()), 3);
        assert_eq!(read(&manager, "GET:shared-2").await.unwrap(), "shared");
        assert_eq!(read(&manager, "GET:shared-1").await, None);
        assert_eq!(read(&manager, "GET:replaced").await.unwrap(), "new");
    }
}
