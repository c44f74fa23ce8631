//! [`StreamingManagerBuilder`] and the options a store is built with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use tokio::sync::OnceCell;

use crate::format::layout::Layout;

use super::{Inner, StreamingManager};
use crate::eviction::Eviction;
use crate::format::files;

/// Stores of up to this many records are read in before the first request is served (within
/// ~0.1 s here); larger ones while requests are served.
pub(super) const READ_IN_BEFORE_SERVING: usize = 10_000;

/// Options of a [`StreamingManager`], set through [`StreamingManager::builder`].
#[derive(Debug, Clone)]
pub(super) struct Options {
    pub(super) durable: bool,
    pub(super) read_chunk_size: usize,
    pub(super) verify_on_read: bool,
    pub(super) parsed_records: usize,
    pub(super) memory_body_limit: usize,
    pub(super) memory_budget: usize,
    pub(super) max_size: Option<u64>,
    pub(super) max_entries: Option<usize>,
    pub(super) eviction: Eviction,
    pub(super) min_uses: u8,
    pub(super) max_writes_in_flight: usize,
    pub(super) max_body_size: Option<u64>,
    /// The bits of the files and directories the store creates.
    pub(super) mode: files::Mode,
    /// The free space kept on the file system; `None`: 5 %, at most 1 GiB.
    pub(super) min_free: Option<u64>,
    /// The shared tier behind the local disk, if any.
    pub(super) shared_tier: Option<Arc<dyn crate::storage::Storage>>,
    /// How often the shared tier's purge log is read; `None`: purges stay on this node.
    pub(super) purge_log_every: Option<std::time::Duration>,
    /// How long purges stay in the log.
    pub(super) purge_log_retention: std::time::Duration,
    /// One origin fetch per key across the fleet sharing the tier.
    pub(super) fleet_fills: Option<crate::fleet::FleetFills>,
    /// The fields a response's tags are read from ([`crate::format::tags`]).
    pub(super) tag_fields: Arc<[http::HeaderName]>,
    /// Stores of up to this many records are read in before serving.
    pub(super) read_in_before_serving: usize,
    /// Holds the reading-in of records until a test lets it go on.
    #[cfg(test)]
    pub(super) read_in_gate: Option<Arc<std::sync::Barrier>>,
    /// Holds the unlinking after a tag purge until a test lets it go on.
    #[cfg(test)]
    pub(super) purge_gate: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
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
            eviction: Eviction::default(),
            min_uses: 1,
            max_writes_in_flight: 1024,
            max_body_size: None,
            mode: files::Mode::PRIVATE,
            min_free: None,
            shared_tier: None,
            purge_log_every: Some(std::time::Duration::from_millis(500)),
            purge_log_retention: std::time::Duration::from_secs(24 * 3600),
            fleet_fills: None,
            tag_fields: Arc::new(crate::format::tags::default_fields()),
            read_in_before_serving: READ_IN_BEFORE_SERVING,
            #[cfg(test)]
            read_in_gate: None,
            #[cfg(test)]
            purge_gate: None,
        }
    }
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
    pub(super) dir: PathBuf,
    pub(super) options: Options,
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
    /// fails. The damaged content file is removed. Requests following a body being stored
    /// read it back from its file checked the same way, against the digest of the body as
    /// it arrived.
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
    /// a body reads nothing and needs no hand-off to a blocking thread. While another store
    /// (in this process or another) has the directory open, each such hit `stat`s its
    /// record and content file first, to see that the other did not replace or remove
    /// them; a store alone on its directory does so at most every 100 ms per entry, and
    /// notices a store opened meanwhile within 100 ms. Such a body was checked when read (with
    /// [`verify_on_read`](Self::verify_on_read)); bytes damaged on disk later are not served
    /// from memory, and are found once the body is read from disk again.
    pub fn memory_bodies(mut self, max_len: usize, budget: usize) -> Self {
        self.options.memory_body_limit = max_len;
        self.options.memory_budget = budget;
        self
    }

    /// Keeps the content on disk within `bytes` (each deduplicated file counted once): when a
    /// commit takes the store over it, entries are evicted in the order of
    /// [`eviction`](Self::eviction) until it is back under 90% of it. Content that several
    /// entries share goes with the last of them. A reader of an evicted entry that has its
    /// file open reads on. Bodies being
    /// stored count too, from their first byte written: they evict stored entries to make
    /// room, and once they alone take all of `bytes`, a body that finds no room is not
    /// stored ([`ErrorKind::NoRoom`](crate::ErrorKind::NoRoom); its client is served all
    /// the same). Unbounded by default. Uses are appended to `cache-v2/access.log` (at most
    /// once a minute per entry), so the order survives a restart.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.options.max_size = Some(bytes);
        self
    }

    /// Keeps at most `entries` entries, evicting as [`max_size`](Self::max_size) does.
    /// Unbounded by default.
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.options.max_entries = Some(entries);
        self
    }

    /// The order in which a bounded store evicts: [`Eviction::S3Fifo`] by default, which
    /// keeps popular entries through scans of objects requested once;
    /// [`Eviction::Lru`] for least recently used first.
    pub fn eviction(mut self, eviction: Eviction) -> Self {
        self.options.eviction = eviction;
        self
    }

    /// Writes at most this many bodies at once (1 024 by default). A response is answered
    /// before its entry is committed, so misses answered faster than the disk commits them
    /// would otherwise queue their writes without bound (and the memory they hold); past
    /// this many, a response the caching layer would store is passed through unstored, as a
    /// body too large is. [`put`](StreamingManager::put) waits for its commit, and is never
    /// refused.
    pub fn max_writes_in_flight(mut self, writes: usize) -> Self {
        self.options.max_writes_in_flight = writes.max(1);
        self
    }

    /// Stores a response only once its key has missed `uses` times (1, the default: at
    /// once), as nginx's `proxy_cache_min_uses`: objects requested once, most of what a
    /// scan or a crawler fetches, then cost no disk write. The misses are counted in a table
    /// of about four keys per stored entry (at least 1 024), 4 bytes each, so a key must be
    /// asked for again before that many other misses pass. Applies to what the caching
    /// layer stores; [`put`](StreamingManager::put) always stores. At most 15.
    pub fn min_uses(mut self, uses: u8) -> Self {
        self.options.min_uses = uses.clamp(1, 15);
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
    /// `min_free`: when it has less, entries are evicted (as for `max_size`), and
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
    /// - A `delete` removes the entry from both tiers and, through the tier's purge log (see
    ///   [`purge_log_every`](Self::purge_log_every)), from every other store sharing it
    ///   within a second. [`max_size`](Self::max_size) and
    ///   [`max_entries`](Self::max_entries) bound the local tier only, and `clear` empties
    ///   only the local tier.
    ///
    /// The shared tier never fails a request: its errors are logged and taken as misses.
    pub fn shared_tier(mut self, storage: Arc<dyn crate::storage::Storage>) -> Self {
        self.options.shared_tier = Some(storage);
        self
    }

    /// How often this store reads the shared tier's purge log (every 500 ms by default);
    /// `None` keeps purges on this store. Only with a [`shared_tier`](Self::shared_tier)
    /// that keeps notes (both of this crate's do).
    ///
    /// A [`delete`](StreamingManager::delete) (so a cache's purge or invalidation) and a
    /// cache's `purge_prefix` write a purge to the log; every store sharing the tier reads
    /// the log on this timer (a conditional read of one small note; the log is listed only
    /// when it changed, and every 30 s) and drops what it stored before the purge. So a purge
    /// stops every node serving the entry within this interval plus two requests to the
    /// tier. A store reads the whole log before it serves, so a node that was down applies
    /// what it missed.
    pub fn purge_log_every(mut self, every: Option<std::time::Duration>) -> Self {
        self.options.purge_log_every = every;
        self
    }

    /// How long purges stay in the shared tier's purge log (a day by default): a store
    /// that did not read the log for longer drops, when it starts, everything it stored
    /// before the oldest purge the log still holds.
    pub fn purge_log_retention(mut self, retention: std::time::Duration) -> Self {
        self.options.purge_log_retention = retention.max(std::time::Duration::from_secs(60));
        self
    }

    /// One origin fetch per key for the whole fleet sharing the
    /// [`shared_tier`](Self::shared_tier): the first node to miss a key takes its lease
    /// (a note created only if absent) and fetches it; the others stream the body from it
    /// while it is written, through its [`HttpStreamingCache::serve_peer`] endpoint, and
    /// store it themselves. A holder that dies releases its lease by expiry; a node that
    /// cannot reach the holder asks the origin. Off by default.
    ///
    /// [`HttpStreamingCache::serve_peer`]: crate::HttpStreamingCache::serve_peer
    pub fn fleet_fills(mut self, fleet: crate::fleet::FleetFills) -> Self {
        self.options.fleet_fills = Some(fleet);
        self
    }

    /// The response fields an entry's tags are read from: `Surrogate-Key` (as Fastly
    /// names them) and `Cache-Tag` (as Cloudflare does) by default; none turns tags off.
    /// Each field holds tags separated by spaces or commas; a tag is 1 to 1024 bytes of
    /// visible ASCII, a response keeps at most 128 of them, and at most 16 KiB of these
    /// fields is read. A field HTTP gives a meaning of its own (`Cache-Control`,
    /// `Content-Type`, `Vary`, CORS and security fields…) is never one: it is left out, and
    /// said in the log. Tags are kept in the entry's record and purged with
    /// [`HttpStreamingCache::purge_tags`](crate::HttpStreamingCache::purge_tags). The
    /// fields themselves stay in the stored response; a shared
    /// [`HttpStreamingCache`](crate::HttpStreamingCache) removes them from what its clients
    /// receive (see [`forward_tags`](crate::HttpCacheOptions::forward_tags)).
    pub fn tag_fields(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.options.tag_fields = names
            .into_iter()
            .filter(|name| {
                let may = crate::format::tags::may_be_tag_field(name);
                if !may {
                    crate::log::warn_event!(%name, "not a tag field: HTTP gives it a meaning of its own");
                }
                may
            })
            .collect();
        self
    }

    /// Builds the manager. Nothing touches the disk until it is first used.
    pub fn build(self) -> StreamingManager {
        let purges = self
            .options
            .shared_tier
            .clone()
            .zip(self.options.purge_log_every)
            .map(|(tier, every)| {
                let secret = self.options.fleet_fills.as_ref().map(|f| f.secret.clone());
                Arc::new(crate::fleet::purges::PurgeLog::new(
                    tier,
                    every,
                    self.options.purge_log_retention,
                    secret,
                ))
            });
        let verify = self.options.verify_on_read;
        StreamingManager {
            inner: Arc::new(Inner {
                layout: Layout::new(&self.dir).with_mode(self.options.mode),
                dir: self.dir,
                options: self.options,
                opened: OnceCell::new(),
                committing: Mutex::new(HashMap::new()),
                deletions: Arc::default(),
                fills: Arc::new(crate::collapse::Fills::verifying(verify)),
                read_throughs: Arc::new(crate::collapse::Fills::verifying(verify)),
                purges,
                writes: std::sync::atomic::AtomicU64::new(0),
                failed_writes: std::sync::atomic::AtomicU64::new(0),
                open_failed: std::sync::atomic::AtomicBool::new(false),
                writes_in_flight: Arc::default(),
                partials: Default::default(),
            }),
        }
    }
}
