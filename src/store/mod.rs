//! The file-backed store: [`StreamingManager`]. It knows files, digests and records, and
//! nothing of HTTP caching rules. The fleet's protocol (leases, purge notes, seals, peers'
//! asks) is [`crate::fleet`]'s: the store holds its handles and answers its purge log
//! (`fleet_side.rs`), and reads through and copies up to the bucket (`from_bucket.rs`).

pub(crate) mod index;
pub(crate) mod partial_entry;
pub(crate) mod writer;

mod access_log;
mod builder;
mod content_ids;
mod fleet_side;
mod from_bucket;
mod listing;
mod loading;
mod open_store;
mod packed_map;
mod parsed;
mod purge_notes;
mod record_file;
mod snapshot;
mod tag_index;
mod tee;
mod tee_queue;

pub use builder::StreamingManagerBuilder;
pub(crate) use fleet_side::ForPeer;
pub(crate) use listing::Selection;
pub(crate) use tee::Teeing;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_cache_semantics::CachePolicy;
use std::collections::HashMap;

use tokio::sync::{OnceCell, watch};

use crate::body::StreamingBody;
use crate::collapse::Fills;
use crate::error::Result;
use crate::fleet;
use crate::format::layout::{Hash32, Layout};
use crate::format::record::Entry;
use crate::rt::{blocking, lock};

use builder::Options;
use open_store::OpenStore;
use record_file::read_record;
use tee::Deletions;

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

/// What a store's handles share: its directory and options, the open store, the writes and
/// fills under way, and its counters.
struct Inner {
    dir: PathBuf,
    layout: Layout,
    options: Options,
    opened: OnceCell<Arc<OpenStore>>,
    /// Keys whose tee'd body has ended and whose entry is being committed. A lookup of such a
    /// key waits for the commit, so that a response read to its end is a hit at once.
    committing: Mutex<HashMap<Hash32, watch::Receiver<bool>>>,
    deletions: Arc<Mutex<Deletions>>,
    fills: Arc<Fills>,
    /// Reads through from the shared tier under way, which other lookups of the key follow.
    read_throughs: Arc<Fills>,
    /// This store's part in the shared tier's purge log.
    purges: Option<Arc<crate::fleet::purges::PurgeLog>>,
    writes: std::sync::atomic::AtomicU64,
    /// Bodies whose write failed for the store's own reasons (not the body's).
    failed_writes: std::sync::atomic::AtomicU64,
    /// Whether the last attempt to open the store failed.
    open_failed: std::sync::atomic::AtomicBool,
    /// Bodies being written now (see `max_writes_in_flight`).
    writes_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Responses received in ranges so far.
    partials: partial_entry::Partials,
}

/// Statistics of what a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
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
    /// Purges written by other stores sharing its tier, applied here since it was opened
    /// (see [`StreamingManagerBuilder::purge_log_every`]).
    pub fleet_purges_applied: u64,
    /// Bodies that were being stored and were not, for the store's own reasons (a disk
    /// full or failing, a directory gone): the body reached its reader, the entry was not
    /// kept. Bodies that ended short or failed at their source are not counted.
    pub failed_writes: u64,
    /// Distinct tags the entries carry ([`StreamingManagerBuilder::tag_fields`]).
    pub tags: u64,
    /// Tags carried, counted once per entry that carries each: what the tag index holds.
    pub tagged: u64,
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

    /// Opens the store now: creates its directories, checks that the cache directory is
    /// usable (this user's, writable by no other), sweeps what a crashed run left, and starts
    /// reading its records in. Every other method opens the store on first use; a service
    /// calls this at start-up to fail early, with the reason, on a directory it cannot use.
    ///
    /// With a shared tier's purge log, this also reads the log (waiting at most 10 s), so
    /// that nothing the fleet purged meanwhile is served.
    pub async fn open(&self) -> Result<()> {
        self.serving().await.map(|_| ())
    }

    /// The opened store, once what it may serve is known: the purge log read at start.
    pub(in crate::store) async fn serving(&self) -> Result<Arc<OpenStore>> {
        let opened = self.opened().await?;
        self.purges_read().await;
        Ok(opened)
    }

    /// Whether the store is known to be unusable: the last attempt to open it failed (a
    /// directory refused, missing, unwritable). Writes would fail; lookups retry the open.
    pub(crate) fn known_unusable(&self) -> bool {
        self.inner.opened.get().is_none()
            && self
                .inner
                .open_failed
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn opened(&self) -> Result<Arc<OpenStore>> {
        let opened = self.open_once().await;
        self.inner
            .open_failed
            .store(opened.is_err(), std::sync::atomic::Ordering::Relaxed);
        opened
    }

    async fn open_once(&self) -> Result<Arc<OpenStore>> {
        self.inner
            .opened
            .get_or_try_init(|| {
                let layout = self.inner.layout.clone();
                let options = self.inner.options.clone();
                blocking(move || {
                    let (opened, leftovers) = OpenStore::open(layout, options)?;
                    let opened = Arc::new(opened);
                    opened.start_reading_in(leftovers)?;
                    Ok(opened)
                })
            })
            .await
            .cloned()
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
        match self.lookup_on_disk(key).await? {
            Some(found) => Ok(Some(found)),
            None => Ok(self.read_through(key).await),
        }
    }

    /// [`lookup`](Self::lookup) on this store's disk only.
    async fn lookup_on_disk(
        &self,
        key: &str,
    ) -> Result<Option<(Response<StreamingBody>, Arc<Entry>)>> {
        let opened = self.serving().await?;
        let key_hash = Hash32::of(key.as_bytes());
        self.wait_for_commit(key_hash).await;
        let known = opened.index().entry(key_hash);
        if let Some(hit) = known
            .as_ref()
            .and_then(|k| opened.memory_hit(key_hash, key, k))
        {
            opened.note_use(key_hash);
            return Ok(Some(Arc::clone(&opened).respond(hit)));
        }
        let owned = key.to_owned();
        let task_opened = Arc::clone(&opened);
        let hit = blocking(move || task_opened.load(key_hash, &owned, known)).await?;
        Ok(hit.map(|hit| opened.respond(hit)))
    }

    /// The headers stored under `key`, on disk or else in the shared tier, without reading
    /// a body.
    pub(crate) async fn stored_headers(&self, key: &str) -> Option<HeaderMap> {
        match self.record_here(key).await? {
            Some(entry) if entry.key == key => Some(entry.headers),
            Some(_) => None,
            None => self.shared_headers(key).await,
        }
    }

    /// [`stored_headers`](Self::stored_headers) on disk only.
    pub(crate) async fn stored_headers_here(&self, key: &str) -> Option<HeaderMap> {
        self.record_here(key)
            .await?
            .filter(|entry| entry.key == key)
            .map(|entry| entry.headers)
    }

    /// The record on disk under `key`'s hash (`Some(None)`: none), once any commit of it
    /// under way is done; `None` when the store cannot be opened.
    async fn record_here(&self, key: &str) -> Option<Option<Entry>> {
        let opened = self.serving().await.ok()?;
        let key_hash = Hash32::of(key.as_bytes());
        self.wait_for_commit(key_hash).await;
        let path = opened.layout.record_path(key_hash);
        let local = blocking(move || Ok(read_record(&path, key_hash).ok().flatten()))
            .await
            .ok()
            .flatten();
        let unpurged =
            local.filter(|(entry, _)| !opened.notes.purges(&entry.tags, entry.stored_at));
        Some(unpurged.map(|(entry, _)| entry))
    }

    /// [`lookup`](Self::lookup) of a body held in memory, without waiting for anything:
    /// `None` unless the store is open, no commit of `key` is under way, and the body is
    /// in memory with its record unchanged on disk.
    pub(crate) fn lookup_in_memory(
        &self,
        key: &str,
    ) -> Option<(Response<StreamingBody>, Arc<Entry>)> {
        let opened = self.inner.opened.get()?;
        if self.purge_log().is_some_and(|log| !log.started()) {
            return None;
        }
        let key_hash = Hash32::of(key.as_bytes());
        if self.inner.committing().contains_key(&key_hash) {
            return None;
        }
        let known = opened.used(key_hash)?;
        let hit = opened.memory_hit(key_hash, key, &known)?;
        Some(Arc::clone(opened).respond(hit))
    }

    /// Whether a response fetched for `key` is to be stored, by
    /// [`min_uses`](StreamingManagerBuilder::min_uses): counts this miss of `key` when it is
    /// not. A store not yet open admits everything.
    pub(crate) fn admits(&self, key: &str) -> bool {
        match self.inner.opened.get() {
            Some(opened) if opened.options.min_uses > 1 => {
                opened.index().admits(Hash32::of(key.as_bytes()))
            }
            _ => true,
        }
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
        let opened = self.serving().await?;
        let key_hash = Hash32::of(key.as_bytes());
        self.wait_for_commit(key_hash).await;
        let known = opened.index().entry(key_hash);
        let key = key.to_owned();
        let task_opened = Arc::clone(&opened);
        let hit =
            blocking(move || task_opened.refresh(key_hash, &key, known, headers, policy)).await?;
        if let Some(hit) = &hit {
            self.share(key_hash, hit.entry.digest, hit.entry.length, None);
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
    ///
    /// With a shared tier, the entry goes from it too, and the delete is written to its
    /// purge log (see [`purge_log_every`](StreamingManagerBuilder::purge_log_every)): every
    /// store sharing the tier drops its copy within a second. An error then says the log
    /// could not be written (the entry is gone from this store and the tier).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.forget(key).await?;
        match self.purge_log() {
            Some(log) => log.publish_key(key).await,
            None => Ok(()),
        }
    }

    /// [`delete`](Self::delete) from this store and the shared tier, without a purge for
    /// the fleet (for keys nothing was stored under, and variants, which go with their
    /// list on other nodes).
    pub(crate) async fn forget(&self, key: &str) -> Result<()> {
        let opened = self.opened().await?;
        let key_hash = Hash32::of(key.as_bytes());
        lock(&self.inner.deletions).record(Some(key_hash));
        self.drop_partial(key);
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

    /// The response fields an entry's tags are read from.
    pub(crate) fn tag_fields(&self) -> &[http::HeaderName] {
        &self.inner.options.tag_fields
    }

    /// Removes every entry that carries one of `tags` (read from its response's
    /// [`tag_fields`](StreamingManagerBuilder::tag_fields) when it was stored), and returns
    /// how many there were here. A tag is 1 to 1024 bytes of visible ASCII but the comma;
    /// anything else, or no tag at all, is refused with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput). The entries are found in memory, without reading a
    /// record; a write under way of a response carrying one of them is not committed.
    /// Right after a store of more than 10 000 records is opened, this waits until they
    /// are all read in.
    ///
    /// With a shared tier, the purge is written to its purge log, so every node drops its
    /// entries carrying them within a second, and the tier's records carrying them are
    /// removed in the background (each record is read, as for a prefix purge).
    pub async fn purge_tags<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Result<u64> {
        let tags: Vec<&str> = tags.into_iter().collect();
        crate::format::tags::check_purge(&tags)?;
        let before = SystemTime::now() + fleet::purges::SKEW;
        if let Some(log) = self.purge_log() {
            // Before anything goes here: a read-through of a copy the tier still has is a
            // miss from now on.
            log.remember_tags(&tags, before);
        }
        let (removed, keys) = self.remove_tagged(&tags, SystemTime::now()).await?;
        let Some(tier) = self.shared_tier().cloned() else {
            return Ok(removed);
        };
        let owned: Vec<String> = tags.iter().map(|tag| (*tag).to_owned()).collect();
        fleet::bucket::remove_tagged(tier, owned, before);
        match self.purge_log() {
            Some(log) => log.publish_tags(&tags).await?,
            // Nothing keeps this node's read-throughs from the tier's copies meanwhile.
            None => {
                for key_hash in keys {
                    self.unshare(key_hash).await;
                }
            }
        }
        Ok(removed)
    }

    /// Removes from this node the entries carrying one of `tags` that were stored before
    /// `at` (or now, when that is later); how many, and their keys. It answers once they
    /// are out of the index, with a note in place of their files until those are unlinked
    /// (see [`purge_notes`]). An entry stored since `at` may go too (the index keeps no
    /// times): at worst one more fetch.
    pub(crate) async fn remove_tagged(
        &self,
        tags: &[&str],
        at: SystemTime,
    ) -> Result<(u64, Vec<Hash32>)> {
        let opened = self.opened().await?;
        // Writes started from here on are newer than the purge; what was stored before the
        // note's time (a millisecond past now) is purged by it, what commits later was
        // either started before (and is not committed) or is newer.
        lock(&self.inner.deletions).record_tags(tags.iter().copied());
        let at = at.max(SystemTime::now() + std::time::Duration::from_millis(1));
        let owned: Arc<[String]> = tags.iter().map(|tag| (*tag).to_owned()).collect();
        let note = {
            let (opened, tags) = (Arc::clone(&opened), Arc::clone(&owned));
            blocking(move || opened.notes.add(&tags, at)).await?
        };
        self.clear_partials();
        opened.read_in().await?;
        // On a blocking thread: a purge of a hundred thousand entries holds no task's
        // thread, and takes them out of the index a few hundred at a time, so that hits get
        // the lock in between.
        let removing = Arc::clone(&opened);
        let (keys, removed) = blocking(move || {
            let keys = removing.index().tagged(owned.iter().map(String::as_str));
            let mut removed = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(256) {
                let mut index = removing.index();
                for key_hash in chunk {
                    let unused = index.remove(*key_hash);
                    removed.push((*key_hash, unused));
                }
                drop(index);
                // The lock is not fair: a moment for the lookups waiting for it.
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
            Ok((keys, removed))
        })
        .await?;
        let count = removed.len() as u64;
        let unlinking = Arc::clone(&opened);
        crate::rt::spawn(async move {
            let unlinked = blocking(move || {
                unlinking.unlink_removed(removed, at);
                unlinking.notes.done(&note);
                Ok(())
            });
            let _ = unlinked.await;
        });
        Ok((count, keys))
    }

    /// Removes every entry and content file. Writes under way are not committed afterwards.
    /// Right after a store of more than 10 000 records is opened, this waits until they are
    /// all read in.
    pub async fn clear(&self) -> Result<()> {
        let opened = self.opened().await?;
        opened.read_in().await?;
        lock(&self.inner.deletions).record(None);
        self.clear_partials();
        blocking(move || opened.clear()).await
    }

    /// What the store holds now. Right after a store of more than 10 000 records is opened,
    /// this waits until they are all read in (requests are served meanwhile).
    pub async fn stats(&self) -> Result<StoreStats> {
        let opened = self.opened().await?;
        opened.read_in().await?;
        let index = opened.index();
        let (tagged, tags) = index.tag_index().counts();
        Ok(StoreStats {
            tags: tags as u64,
            tagged: tagged as u64,
            entries: index.len() as u64,
            content_files: index.content_files() as u64,
            content_bytes: index.content_bytes(),
            evictions: opened.evictions.load(std::sync::atomic::Ordering::Relaxed),
            fleet_purges_applied: self.purges_applied(),
            failed_writes: self
                .inner
                .failed_writes
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl Inner {
    fn committing(&self) -> MutexGuard<'_, HashMap<Hash32, watch::Receiver<bool>>> {
        lock(&self.committing)
    }
}

/// A hit: the record, and its body whole when small, else its open content file.
struct Hit {
    entry: Arc<Entry>,
    body: HitBody,
}

/// A hit's body: bytes held in memory, or its open content file.
enum HitBody {
    Bytes(Bytes),
    File(File),
}

#[cfg(test)]
mod tests;
