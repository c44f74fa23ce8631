//! [`OpenStore`]: a store whose directories exist and whose index is loaded; the hit path,
//! commits, eviction and the room bodies being stored take.

use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use http::{HeaderMap, Response};
use http_cache_semantics::CachePolicy;

use tokio::sync::watch;

use super::parsed::{HeldEntry, RECHECK_AFTER};
use super::purge_notes::PurgeNotes;
use crate::body::StreamingBody;
use crate::error::{Error, ErrorKind, Result};
use crate::format::content::{FinishedContent, TempFile};
use crate::format::files::Stamp;
use crate::format::layout::{Hash32, Layout};
use crate::format::reader::{ChunkReader, Verify};
use crate::format::record::Entry;
use crate::format::scratch::{self, Scratch};
use crate::format::tags::Tags;
use index::Index;

use super::builder::Options;
use super::tee::{Committed, Draft};
use super::{Hit, HitBody, index};
use crate::format::content::install_content;
use crate::format::content::remove_if_present;
use crate::format::files;
use crate::format::scratch::prepare;
use crate::rt::lock;

/// How far reading the records on disk into the index has come.
#[derive(Debug, Clone)]
pub(super) enum ReadIn {
    Running,
    Done,
    /// Why it stopped: every caller that waits for the records is told.
    Failed(ReadInFailure),
}

/// Why reading the records in stopped.
#[derive(Debug, Clone)]
pub(super) enum ReadInFailure {
    /// A record or the directory could not be read (as this error said).
    Error(Arc<crate::error::Error>),
    /// The reading thread panicked.
    Panicked,
    /// The store was dropped before it ended.
    Dropped,
}

impl std::fmt::Display for ReadInFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadInFailure::Error(error) => error.fmt(f),
            ReadInFailure::Panicked => f.write_str("reading the records in panicked"),
            ReadInFailure::Dropped => f.write_str("the store was dropped"),
        }
    }
}

/// The state of a store whose directories exist and whose index is loaded.
pub(super) struct OpenStore {
    pub(super) layout: Layout,
    pub(super) options: Options,
    pub(super) scratch: Scratch,
    pub(super) index: Mutex<Index>,
    pub(super) evictions: std::sync::atomic::AtomicU64,
    /// The access log, opened for appending on the first use that is logged, and the lines
    /// it holds (as far as this process knows).
    pub(super) access_log: Mutex<Option<File>>,
    /// Whether this is the only store open on its directory, and when that was found.
    alone: Mutex<Option<(std::time::Instant, bool)>>,
    pub(super) access_log_lines: std::sync::atomic::AtomicU64,
    /// How far reading the records on disk into the index has come.
    pub(super) read_in: watch::Sender<ReadIn>,
    /// The free space kept on the file system.
    pub(super) free_space: files::FreeSpace,
    /// Bytes in the temp files of the bodies being stored, claimed through
    /// [`DiskBudget`](crate::format::content::DiskBudget): they count against `max_size` as stored
    /// entries do.
    pub(super) claimed_bytes: std::sync::atomic::AtomicU64,
    /// Purges answered whose work on disk is not all done.
    pub(super) notes: PurgeNotes,
    /// The notes found when the store opened: done once the records are read in with them
    /// applied.
    pub(super) replayed: Vec<String>,
}

/// Bodies being stored take room within `max_size` as they are written, evicting stored
/// entries (in the eviction order) to get it; once they alone take all of it, the next
/// byte written finds none and its body is not stored. So the directory never holds more
/// than `max_size`, plus what the write jobs running now wrote since they last settled.
impl crate::format::content::DiskBudget for OpenStore {
    fn claim(&self, bytes: u64) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.claimed_bytes.fetch_add(bytes, Relaxed);
        match self.options.max_size {
            Some(max) if before + bytes > max => {
                self.claimed_bytes.fetch_sub(bytes, Relaxed);
                Err(Error::new(ErrorKind::NoRoom).with_subject(format!(
                    "{before} bytes of bodies being stored, max_size {max}"
                )))
            }
            _ => Ok(()),
        }
    }

    fn release(&self, bytes: u64) {
        self.claimed_bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn settle(&self) {
        let Some(max) = self.options.max_size else {
            return;
        };
        let claimed_bytes = self
            .claimed_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.index().content_bytes() + claimed_bytes > max {
            self.evict_if_needed();
        }
    }
}

impl OpenStore {
    /// Prepares the directories and an index that is still to be read in: requests are
    /// served from here on, while [`start_reading_in`](Self::start_reading_in) reads it.
    /// Returns how many files an earlier run left in `tmp/` too (removed now).
    pub(super) fn open(layout: Layout, options: Options) -> Result<(Self, usize)> {
        let (scratch, leftovers) = prepare(&layout)?;
        let index = Index::new(options.parsed_records, options.memory_budget)
            .with_policy(options.eviction, options.min_uses);
        let free_space = files::FreeSpace::new(options.min_free);
        let notes_dir = layout.format_dir().join(super::purge_notes::DIR);
        let notes = PurgeNotes::open(notes_dir, options.durable, layout.mode())?;
        let replayed = notes.names();
        let opened = OpenStore {
            notes,
            replayed,
            layout,
            options,
            scratch,
            index: Mutex::new(index),
            evictions: std::sync::atomic::AtomicU64::new(0),
            access_log: Mutex::new(None),
            alone: Mutex::new(None),
            access_log_lines: std::sync::atomic::AtomicU64::new(0),
            read_in: watch::channel(ReadIn::Running).0,
            free_space,
            claimed_bytes: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((opened, leftovers))
    }

    /// Turns a hit into the response a lookup returns.
    pub(super) fn respond(self: Arc<Self>, hit: Hit) -> (Response<StreamingBody>, Arc<Entry>) {
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

    /// A hit on a body held in memory, when its record and content are unchanged on disk:
    /// found so now, or less than [`RECHECK_AFTER`] ago while no other store has the
    /// directory open (no other can have changed them).
    pub(super) fn memory_hit(&self, key_hash: Hash32, key: &str, known: &HeldEntry) -> Option<Hit> {
        let body = known.body.as_ref()?;
        let unchanged = || {
            let unchanged = self.unchanged_on_disk(key_hash, known.stamp, &known.entry);
            if unchanged {
                self.index().checked(key_hash, known.stamp);
            }
            unchanged
        };
        let usable = known.entry.key == key && ((known.checked && self.alone()) || unchanged());
        usable.then(|| Hit {
            entry: Arc::clone(&known.entry),
            body: HitBody::Bytes(body.clone()),
        })
    }

    /// Whether this is the only store open on its directory (in this process or another),
    /// as found at most [`RECHECK_AFTER`] ago: a listing of `tmp/`, a few names.
    fn alone(&self) -> bool {
        let mut seen = lock(&self.alone);
        if let Some((at, alone)) = *seen
            && at.elapsed() < RECHECK_AFTER
        {
            return alone;
        }
        let alone = scratch::instances(&self.layout.tmp_dir()).is_ok_and(|n| n <= 1);
        *seen = Some((std::time::Instant::now(), alone));
        alone
    }

    /// Whether the record of `key_hash` on disk is still the one stamped `stamp`, and the
    /// content it names still there at its length: two `stat`s. Anything else sends the
    /// lookup down the path that reads the disk and cleans up.
    pub(super) fn unchanged_on_disk(&self, key_hash: Hash32, stamp: Stamp, entry: &Entry) -> bool {
        let record = self.layout.record_path(key_hash);
        let content = self.layout.content_path(entry.digest);
        fs::symlink_metadata(record).is_ok_and(|m| Stamp::of(&m) == stamp)
            && fs::symlink_metadata(content).is_ok_and(|m| m.is_file() && m.len() == entry.length)
    }

    pub(super) fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Whether there is room to store: the file system is not under the free-space floor,
    /// or evicting brought it back over.
    pub(super) fn make_room(&self) -> Result<()> {
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
    pub(super) fn commit(
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
        let tags = Tags::from_fields(&draft.parts.headers, &self.options.tag_fields);
        let entry = Entry {
            tags,
            key: draft.key,
            url: draft.url,
            status: draft.parts.status,
            version: draft.parts.version,
            headers: draft.parts.headers,
            trailers,
            policy: draft.policy,
            digest,
            length,
            // A copy's time, never later than now (a bucket's record is not trusted).
            stored_at: draft
                .stored_at
                .map_or_else(SystemTime::now, |at| at.min(SystemTime::now())),
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
            let overtaken = if lock(&deletions).overtakes(key_hash, &entry.tags, started)
                || self.notes.purges(&entry.tags, entry.stored_at)
            {
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

    /// Evicts entries, in the policy's order, while the store (with the bodies being stored)
    /// is over its bounds, or its file system under the free-space floor. Content files are
    /// moved out of the way while the index is locked and unlinked after (freeing a large
    /// file's blocks takes time), so that a large eviction never holds up lookups.
    pub(super) fn evict_if_needed(&self) {
        let (max_size, max_entries) = (self.options.max_size, self.options.max_entries);
        let short = self.free_space.shortfall(&self.layout.content_dir(), false);
        if max_size.is_none() && max_entries.is_none() && short == 0 {
            return;
        }
        let mut doomed = Vec::new();
        let mut index = self.index();
        // Bodies being stored take their room first.
        let claimed_bytes = self
            .claimed_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let max_size = max_size.map(|max| max.saturating_sub(claimed_bytes));
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
        metrics::counter!(crate::Counter::Evictions.name()).increment(count);
        if !evicted.is_empty() {
            crate::log::info_event!(evicted = evicted.len(), entries, bytes, "evicted entries");
        }
    }

    /// Encodes a record into a temp file, ready to be renamed into place, and returns the
    /// entry as the index should keep it: decoded from the record written. Header values
    /// that hyper parsed are views into a connection's read buffer; an entry kept with them
    /// would keep that whole buffer (hundreds of KiB) alive for as long as it is indexed.
    pub(super) fn record_temp(&self, entry: &Entry) -> Result<(TempFile, Stamp, Arc<Entry>)> {
        let record_error = |e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Record).with_subject(format!("{}: {e}", entry.key))
        };
        let json = entry.encode().map_err(|e| record_error(&e))?;
        let own = Entry::decode(&json).map_err(|e| record_error(&e))?;
        let (temp, stamp) = crate::format::content::write_temp(
            self.scratch.temp_path(),
            &json,
            self.options.durable,
            self.layout.mode(),
        )?;
        Ok((temp, stamp, Arc::new(own)))
    }

    /// Renames a record into place and indexes it, unlinking content it leaves unused. The
    /// caller holds the index lock, so that renames and reference counts change together.
    pub(super) fn install_record(
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
    pub(super) fn sync_dirs(&self, dirs: &[PathBuf]) -> Result<()> {
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
    pub(super) fn refresh(
        &self,
        key_hash: Hash32,
        key: &str,
        cached: Option<HeldEntry>,
        headers: HeaderMap,
        policy: CachePolicy,
    ) -> Result<Option<Hit>> {
        let Some(hit) = self.load(key_hash, key, cached)? else {
            return Ok(None);
        };
        let mut entry = Entry::clone(&hit.entry);
        entry.tags = Tags::from_fields(&headers, &self.options.tag_fields);
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

    /// Unlinks the records of entries a purge at `at` took out of the index (`removed`: each
    /// key with the content it left unused), and that content, unless the key was stored
    /// again since (here, or by another process: its record is read first) or the content
    /// is named again. The unlinks are made without the index lock (one can wait for the
    /// file system's journal): a commit of the key or content in between loses its entry
    /// (a miss), never serves other bytes.
    pub(super) fn unlink_removed(&self, removed: Vec<(Hash32, Option<Hash32>)>, at: SystemTime) {
        #[cfg(test)]
        if let Some(gate) = &self.options.purge_gate {
            let _ = lock(gate).recv();
        }
        for (key_hash, unused) in removed {
            let path = self.layout.record_path(key_hash);
            let purged = match super::record_file::read_summary(&path, key_hash) {
                Ok(Some((summary, stamp))) => (summary.stored_at < at).then_some(stamp),
                _ => None,
            };
            let (record, content) = {
                let index = self.index();
                let record = index.digest(key_hash).is_none() && purged.is_some();
                (record, unused.filter(|digest| index.refs(*digest) == 0))
            };
            let same = || fs::symlink_metadata(&path).is_ok_and(|m| Some(Stamp::of(&m)) == purged);
            if record && same() {
                let _ = remove_if_present(&path);
            }
            if let Some(digest) = content {
                let _ = remove_if_present(&self.layout.content_path(digest));
            }
        }
    }

    pub(super) fn delete(&self, key_hash: Hash32) -> Result<()> {
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

    /// Drops the entry under `key_hash` if it was stored before `before` (or its record
    /// is damaged); a newer entry stays. Whether one was dropped.
    pub(super) fn drop_stored_before(&self, key_hash: Hash32, before: SystemTime) -> bool {
        let path = self.layout.record_path(key_hash);
        match super::record_file::read_record(&path, key_hash) {
            Ok(Some((entry, _))) if entry.stored_at < before => {
                self.drop_record(key_hash, Some(entry.digest))
            }
            Ok(_) | Err(super::record_file::ReadFailure::Unavailable(_)) => false,
            Err(super::record_file::ReadFailure::Unusable(_)) => self.drop_record(key_hash, None),
        }
    }

    pub(super) fn clear(&self) -> Result<()> {
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
