//! Reading the records on disk into the index when a store opens (on a thread of its own
//! for a large store, while requests are served).

use std::fs::{self};
use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::parsed::HeldEntry;
use crate::error::{Error, ErrorKind, Result};
use crate::format::files::Stamp;
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use index::Index;

use super::open_store::{OpenStore, ReadIn, ReadInFailure};
use super::record_file::{ReadFailure, is_transient, read_record, read_summary};
use super::{Hit, HitBody, index};
use crate::format::content::remove_if_present;
use crate::format::files;
use crate::format::reader;
use crate::format::scratch;

/// Runs `work` on a thread of its own, named for what opening a store does there.
fn on_open_thread(work: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name("http-cache-streaming-open".into())
        .spawn(work)
        .map(drop)
        .map_err(|e| Error::new(ErrorKind::Io).with_source(e))
}

impl OpenStore {
    /// Reads every record on disk into the index (or takes the index from its snapshot,
    /// see [`snapshot`](super::snapshot)), then removes orphaned content and evicts
    /// what the bounds ask for. A store of up to [`READ_IN_BEFORE_SERVING`](super::builder::READ_IN_BEFORE_SERVING) records is read in
    /// before this returns; a larger one on a thread of its own while requests are served.
    /// Until that is done, a key the index does not know is looked up on disk, as always;
    /// see [`Index::is_loading`] for what waits.
    pub(super) fn start_reading_in(self: &Arc<Self>, leftovers: usize) -> Result<()> {
        let started = Instant::now();
        let metadata = self.layout.metadata_dir();
        // With purges pending, every record is read (the snapshot knows no URLs or times).
        let snapshot = match self.notes.is_empty() {
            true => self.read_snapshot(),
            false => {
                let _ = remove_if_present(&self.layout.index_snapshot());
                Err("purges pending".into())
            }
        };
        match snapshot {
            Ok(entries) => return self.start_from_snapshot(started, leftovers, entries),
            Err(why) if why != "none" => {
                crate::log::info_event!(dir = %metadata.display(), %why,
                    "index snapshot not used: reading the records in");
            }
            Err(_) => {}
        }
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
                Ok(Err(e)) => ReadIn::Failed(ReadInFailure::Error(Arc::new(e))),
                Err(_) => ReadIn::Failed(ReadInFailure::Panicked),
            };
            if let ReadIn::Failed(why) = &state {
                crate::log::error_event!(dir = %opened.layout.metadata_dir().display(), %why,
                    "the records could not be read in: entries are served, but no content is \
                     removed and nothing is evicted until the store is opened again");
            }
            opened.read_in.send_replace(state);
        };
        on_open_thread(work)
    }

    /// Once the snapshot's `entries` are in the index, it is whole: what reading the records
    /// in ends with (orphans, the access log, the bounds) is done before serving for a
    /// small store, on a thread of its own while requests are served for a large one.
    fn start_from_snapshot(
        self: &Arc<Self>,
        started: Instant,
        leftovers: usize,
        entries: usize,
    ) -> Result<()> {
        self.finish_loading();
        crate::log::info_event!(dir = %self.layout.metadata_dir().display(), entries,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index read from its snapshot");
        if entries <= self.options.read_in_before_serving {
            let settled = self.settle_read_in(started, leftovers, 0);
            self.read_in.send_replace(ReadIn::Done);
            return settled;
        }
        self.read_in.send_replace(ReadIn::Done);
        let opened = Arc::clone(self);
        on_open_thread(move || {
            if let Err(e) = opened.settle_read_in(started, leftovers, 0) {
                crate::log::warn_event!(error = %e, "cleaning up after the snapshot");
            }
        })
    }

    /// Marks the records all read in, and unlinks the content that lost its last user
    /// meanwhile. Under the index lock: a commit that names such content again installs
    /// its record under it too.
    fn finish_loading(&self) {
        let mut index = self.index();
        for digest in index.finish_loading() {
            let _ = remove_if_present(&self.layout.content_path(digest));
        }
    }

    /// Adds the key hashes of the record files `listing` names to `records`: all of them, or
    /// until it holds `up_to`. Returns how many it holds. (Key hashes only: a path each
    /// would cost a million allocations in a store of a million records.)
    pub(super) fn list_records(
        &self,
        listing: &mut fs::ReadDir,
        records: &mut Vec<Hash32>,
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
                records.push(key_hash);
            }
        }
        Ok(records.len())
    }

    pub(super) fn read_records_in(
        &self,
        started: Instant,
        leftovers: usize,
        records: Vec<Hash32>,
    ) -> Result<()> {
        let metadata = self.layout.metadata_dir();
        #[cfg(test)]
        if let Some(gate) = &self.options.read_in_gate {
            gate.wait();
        }
        // Reading records is a file open and read each: spread over the cores. Each reader
        // puts what it read into the index in batches, so that requests get the index lock
        // in between and nothing but the index is held for every record.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let per_thread = records.len().div_ceil(threads).max(1);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let outcomes: Vec<std::thread::Result<Result<usize>>> = std::thread::scope(|scope| {
            let readers: Vec<_> = records
                .chunks(per_thread)
                .map(|chunk| scope.spawn(|| self.read_in_chunk(chunk, &failed)))
                .collect();
            readers.into_iter().map(|reader| reader.join()).collect()
        });
        // A reader that failed leaves reference counts unknown: better no removals than
        // removing content a record still names.
        let mut dropped = 0;
        for outcome in outcomes {
            dropped += outcome.map_err(|_| {
                Error::new(ErrorKind::Io).with_subject(format!("reading {}", metadata.display()))
            })??;
        }
        self.settle_read_in(started, leftovers, dropped)
    }

    /// Once every record is counted: unlinks what lost its last user meanwhile and content
    /// no record names, takes in the access log, and evicts what the bounds ask for.
    fn settle_read_in(&self, started: Instant, leftovers: usize, dropped: usize) -> Result<()> {
        self.finish_loading();
        let content = self.layout.content_dir();
        let orphans = scratch::sweep_orphans(
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
        // The purges found pending when the store opened were applied as it read in.
        for name in &self.replayed {
            self.notes.done(name);
        }
        self.read_access_log();
        self.evict_if_needed();
        Ok(())
    }

    /// Reads the records of `keys` into the index, 4096 at a time; returns how many were
    /// damaged and removed. Stops at the first record the system cannot read now (setting
    /// `failed`, which stops the other readers too).
    fn read_in_chunk(
        &self,
        keys: &[Hash32],
        failed: &std::sync::atomic::AtomicBool,
    ) -> Result<usize> {
        use std::sync::atomic::Ordering;
        let mut dropped = 0;
        for batch in keys.chunks(4096) {
            if failed.load(Ordering::Relaxed) {
                return Ok(dropped);
            }
            let read: Vec<_> = batch
                .iter()
                .map(|&key_hash| {
                    let summary =
                        read_summary(&self.layout.record_path(key_hash), key_hash).map(|found| {
                            found.map(|(s, stamp)| {
                                ((s.digest, s.length), s.stored_at, s.tags, stamp)
                            })
                        });
                    (key_hash, summary)
                })
                .collect();
            let mut index = self.index();
            for (key_hash, summary) in read {
                match summary {
                    // Purged by a purge whose work was not done (a write that replaced it
                    // meanwhile is newer than the purge).
                    Ok(Some(((digest, _), stored_at, tags, _)))
                        if self.notes.purges(&tags, stored_at) && !index.is_newer(key_hash) =>
                    {
                        let _ = remove_if_present(&self.layout.record_path(key_hash));
                        index.unused_while_loading(digest);
                    }
                    Ok(Some((content, stored_at, tags, stamp))) => {
                        index.insert_summary(key_hash, content, stamp, stored_at, &tags);
                    }
                    Ok(None) => {}
                    // Unless a write replaced it meanwhile (records are installed under the
                    // index lock, which is held here).
                    Err(ReadFailure::Unusable(why)) if !index.is_newer(key_hash) => {
                        let path = self.layout.record_path(key_hash);
                        crate::log::warn_event!(path = %path.display(), %why, "removing unusable record");
                        let _ = remove_if_present(&path);
                        dropped += 1;
                    }
                    Err(ReadFailure::Unusable(_)) => {}
                    Err(ReadFailure::Unavailable(e)) => {
                        // Its content would look orphaned: no removals rather than lost entries.
                        failed.store(true, Ordering::Relaxed);
                        return Err(Error::io(e, &self.layout.record_path(key_hash)));
                    }
                }
            }
        }
        Ok(dropped)
    }

    /// While the records are being read in, reads in the one of `key_hash` ahead of the rest,
    /// before it is replaced or removed: so that the content it names counts as used by it,
    /// and is unlinked when no other record names it.
    pub(super) fn read_in_key(&self, index: &mut Index, key_hash: Hash32) {
        if index.is_loading()
            && !index.is_newer(key_hash)
            && let Ok(Some((summary, stamp))) =
                read_summary(&self.layout.record_path(key_hash), key_hash)
            && !self.notes.purges(&summary.tags, summary.stored_at)
        {
            let content = (summary.digest, summary.length);
            index.insert_summary(key_hash, content, stamp, summary.stored_at, &summary.tags);
        }
    }

    /// Waits until the records on disk are read in (for what needs every entry counted).
    pub(super) async fn read_in(&self) -> Result<()> {
        let mut state = self.read_in.subscribe();
        let state = state
            .wait_for(|state| !matches!(state, ReadIn::Running))
            .await
            .map(|state| state.clone())
            .unwrap_or(ReadIn::Failed(ReadInFailure::Dropped));
        match state {
            ReadIn::Failed(why) => Err(Error::new(ErrorKind::Io)
                .with_subject(format!("reading the records in failed: {why}"))),
            _ => Ok(()),
        }
    }

    /// Finds a key's record and opens its content, dropping whatever turns out broken.
    pub(super) fn load(
        &self,
        key_hash: Hash32,
        key: &str,
        cached: Option<HeldEntry>,
    ) -> Result<Option<Hit>> {
        let path = self.layout.record_path(key_hash);
        // A parsed record is served only while its file is the one it was parsed from.
        let fresh = cached.and_then(|known| {
            let now = fs::symlink_metadata(&path).ok().map(|m| Stamp::of(&m));
            (now == Some(known.stamp)).then_some((known.entry, known.stamp))
        });
        let (entry, stamp) = match fresh {
            Some(fresh) => fresh,
            None => match read_record(&path, key_hash) {
                Ok(Some((entry, _))) if self.notes.purges(&entry.tags, entry.stored_at) => {
                    // A purge's note stands in for the files it has not removed yet (its
                    // work removes them, or the next open's reading-in).
                    return Ok(None);
                }
                Ok(Some((entry, stamp))) => {
                    let entry = Arc::new(entry);
                    if !self.learn(key_hash, &entry, stamp) {
                        return Ok(None);
                    }
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
        self.note_use(key_hash);
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
        // Read whole now when it fits a chunk, and kept in memory for the next hits when it
        // is within the memory bodies' limit (which may be larger than a chunk).
        let keep = len <= self.options.memory_body_limit;
        if len > self.options.read_chunk_size && !keep {
            return Ok(Some(Hit {
                entry,
                body: HitBody::File(file),
            }));
        }
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
    /// it) or one whose parsed form was not kept. `false` when a purge answered since it was
    /// read purges it (the caller answers a miss).
    pub(super) fn learn(&self, key_hash: Hash32, entry: &Arc<Entry>, stamp: Stamp) -> bool {
        let mut index = self.index();
        // Under the lock a purge takes its entries out under, after writing its note.
        if self.notes.purges(&entry.tags, entry.stored_at) {
            return false;
        }
        if index.digest(key_hash) == Some(entry.digest) {
            index.remember(key_hash, entry, stamp);
        } else if let Some(unused) = index.insert(key_hash, Arc::clone(entry), stamp) {
            let _ = remove_if_present(&self.layout.content_path(unused));
        }
        true
    }

    /// Removes a broken record, unless a newer commit replaced it meanwhile (`expected` is the
    /// digest the broken record named, when known). Whether an entry was indexed under
    /// `key_hash`.
    pub(super) fn drop_record(&self, key_hash: Hash32, expected: Option<Hash32>) -> bool {
        let mut index = self.index();
        let current = index.digest(key_hash);
        if expected.is_some() && current.is_some() && current != expected {
            return false;
        }
        self.read_in_key(&mut index, key_hash);
        let _ = remove_if_present(&self.layout.record_path(key_hash));
        let indexed = index.digest(key_hash).is_some();
        if let Some(unused) = index.remove(key_hash) {
            let _ = remove_if_present(&self.layout.content_path(unused));
        }
        indexed
    }

    /// Removes a damaged content file; the records naming it become misses.
    pub(super) fn forget_content(&self, digest: Hash32) {
        let mut index = self.index();
        index.forget_bodies(digest);
        let path = self.layout.content_path(digest);
        if let Err(e) = remove_if_present(&path) {
            crate::log::warn_event!(path = %path.display(), error = %e, "could not remove damaged content");
        }
    }
}
