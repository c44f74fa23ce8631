//! Partial entries (RFC 9111 §3.3–§3.4): the byte ranges of one response received in `206`
//! answers, held in a sparse file in this store's scratch directory beside the ranges it
//! holds, until they cover the whole body. Then the body is hashed (and checked against the
//! origin's `Repr-Digest`, when it sent one) and stored as an ordinary entry.
//!
//! A range counts as held only once its bytes are written (and with `durable`, synced): a
//! reader is never handed a byte of the file the origin did not send. Partial entries live
//! as long as the store instance: its scratch directory goes when it ends, and a restart
//! starts them over. Their bytes take room within `max_size` as bodies being stored do;
//! the least recently used ones go when there is no more, or when there are
//! [`MAX_PARTIALS`].

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_cache_semantics::CachePolicy;
use sha2::{Digest as _, Sha256};
use url::Url;

use super::{Inner, StreamingManager};
use crate::body::StreamingBody;
use crate::error::{Error, Result};
use crate::format::content::{Claim, DiskBudget, TempFile};
use crate::format::files;
use crate::format::reader::{ChunkReader, read_exact_at};
use crate::rt::pool::{self, Lane};
use crate::rt::{blocking, lock};

/// Partial entries a store holds at most; a new one past this replaces the least recently
/// used.
pub(crate) const MAX_PARTIALS: usize = 256;

/// Bytes of one range waiting for the disk: past this the range stops being stored (its
/// client is served all the same), so that a slow disk never costs memory.
const MAX_QUEUED: usize = 8 << 20;

/// The response a partial entry is a part of, as a `200` of the whole body would have it.
#[derive(Clone)]
pub(crate) struct PartialHead {
    pub(crate) parts: http::response::Parts,
    pub(crate) policy: CachePolicy,
    pub(crate) url: Url,
}

/// One response's ranges received so far.
pub(crate) struct PartialEntry {
    pub(crate) key: String,
    /// The strong entity tag every range carried: ranges of one representation only.
    pub(crate) etag: String,
    /// The length of the whole body.
    pub(crate) total: u64,
    /// For reading; writes go through `writer`.
    file: Arc<File>,
    writer: File,
    /// Removes the file when the entry goes.
    _temp: TempFile,
    durable: bool,
    chunk: usize,
    manager: Weak<Inner>,
    state: Mutex<State>,
    /// Ranges that have ended and are being written out and recorded.
    settling: tokio::sync::watch::Sender<usize>,
}

/// A partial entry's head and the ranges its file holds.
struct State {
    head: PartialHead,
    /// `[start, end)` held, sorted, none touching another.
    ranges: Vec<(u64, u64)>,
    claim: Claim,
    used: Instant,
    complete: bool,
}

impl std::fmt::Debug for PartialEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialEntry")
            .field("key", &self.key)
            .field("total", &self.total)
            .field("ranges", &lock(&self.state).ranges)
            .finish()
    }
}

impl PartialEntry {
    pub(crate) fn head(&self) -> PartialHead {
        lock(&self.state).head.clone()
    }

    /// Takes the headers of a newer response for the same representation (§3.4).
    pub(crate) fn freshen(&self, head: PartialHead) {
        lock(&self.state).head = head;
    }

    /// Whether bytes `start..end` are all held (none are asked when `start >= end`).
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        let state = lock(&self.state);
        start >= end || state.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    /// The span of `start..end` that is not held: from its first missing byte to its last.
    /// `None` when all of it is held.
    pub(crate) fn missing(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let state = lock(&self.state);
        let mut first = start;
        for &(s, e) in &state.ranges {
            if s <= first && first < e {
                first = e;
            }
        }
        if first >= end {
            return None;
        }
        let mut last = end;
        for &(s, e) in state.ranges.iter().rev() {
            if s < last && last <= e {
                last = s;
            }
        }
        Some((first, last.max(first + 1)))
    }

    /// Waits (up to `patience`) until the ranges that have ended are recorded: a range read
    /// to its end is then held for the request after it.
    pub(crate) async fn settled(&self, patience: std::time::Duration) {
        let mut settling = self.settling.subscribe();
        let deadline = crate::rt::sleep_until(Instant::now() + patience);
        tokio::select! {
            _ = settling.wait_for(|n| *n == 0) => {}
            () = deadline => {}
        }
    }

    /// A reader of bytes `start..end`, which must be held.
    pub(crate) fn reader(&self, start: u64, end: u64) -> ChunkReader {
        ChunkReader::new(Arc::clone(&self.file), start, end - start, self.chunk)
    }

    /// A sink that stores the bytes of `start..end` as they arrive, in order.
    pub(crate) fn sink(self: &Arc<Self>, start: u64, end: u64) -> PartialSink {
        PartialSink {
            shared: Arc::new(SinkShared {
                entry: Arc::clone(self),
                start,
                state: Mutex::new(SinkState {
                    written: start,
                    ..SinkState::default()
                }),
            }),
            next: start,
            end,
        }
    }

    fn write_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.writer, bytes, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < bytes.len() {
                let n = std::os::windows::fs::FileExt::seek_write(
                    &self.writer,
                    &bytes[done..],
                    offset + done as u64,
                )?;
                done += n;
            }
            Ok(())
        }
    }

    /// Claims room for `bytes` more, making it from the least recently used other partial
    /// entries when the store has none.
    fn claim(self: &Arc<Self>, bytes: u64) -> Result<()> {
        loop {
            match lock(&self.state).claim.more(bytes) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    let manager = self
                        .manager
                        .upgrade()
                        .map(|inner| StreamingManager { inner });
                    if !manager.is_some_and(|m| m.drop_least_used_partial(self)) {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// Records `start..end` as held; when the whole body is, stores it as an entry.
    fn hold(self: &Arc<Self>, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if self.durable && self.writer.sync_data().is_err() {
            return;
        }
        let mut state = lock(&self.state);
        let mut ranges = std::mem::take(&mut state.ranges);
        ranges.push((start, end));
        ranges.sort_unstable();
        for (s, e) in ranges {
            match state.ranges.last_mut() {
                Some((_, last)) if s <= *last => *last = (*last).max(e),
                _ => state.ranges.push((s, e)),
            }
        }
        let whole = state.ranges.first() == Some(&(0, self.total));
        if whole && !state.complete {
            state.complete = true;
            drop(state);
            let (entry, manager) = (Arc::clone(self), self.manager.upgrade());
            if let Some(inner) = manager {
                crate::rt::spawn(promote(entry, StreamingManager { inner }));
            }
        }
    }
}

/// Stores a partial entry that holds its whole body as an ordinary entry: hashed, checked
/// against `Repr-Digest` (RFC 9530) when the origin sent one, then written through
/// [`StreamingManager::put`], which hashes it again as it stores it.
async fn promote(entry: Arc<PartialEntry>, manager: StreamingManager) {
    let head = entry.head();
    let (file, total) = (Arc::clone(&entry.file), entry.total);
    let digest = blocking(move || {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < total {
            let n = usize::try_from(total - at).map_or(buf.len(), |left| left.min(buf.len()));
            read_exact_at(&file, &mut buf[..n], at).map_err(Error::from)?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(<[u8; 32]>::from(hasher.finalize()))
    })
    .await;
    let checked = match &digest {
        Ok(digest) => repr_digest_agrees(&head.parts.headers, digest),
        Err(_) => false,
    };
    if checked {
        let body = StreamingBody::stored_file(entry.reader(0, total), None);
        let response = Response::from_parts(head.parts, body);
        match manager
            .put(entry.key.clone(), response, head.policy, head.url)
            .await
        {
            Ok(_) => crate::log::debug_event!(key = %entry.key, total, "a partial entry completed"),
            Err(error) => {
                crate::log::warn_event!(key = %entry.key, %error, "could not store a completed partial entry")
            }
        }
    } else {
        crate::log::warn_event!(
            key = %entry.key,
            "a completed partial entry fails its Repr-Digest (or could not be read): dropped"
        );
    }
    manager.drop_partial_entry(&entry);
}

/// Whether `headers` carry no `sha-256` `Repr-Digest`, or one equal to `digest`.
fn repr_digest_agrees(headers: &http::HeaderMap, digest: &[u8; 32]) -> bool {
    let expected = format!(":{}:", base64(digest));
    let mut sha256 = headers
        .get_all("repr-digest")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|member| member.trim().split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sha-256"))
        .map(|(_, value)| value.trim().to_owned())
        .peekable();
    sha256.peek().is_none() || sha256.any(|value| value == expected)
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Stores one range of a partial entry as its bytes arrive: each batch a short job on the
/// writers' pool, behind a queue of at most [`MAX_QUEUED`] bytes. What was written when it
/// is dropped (the range ended, failed, or its client left) is recorded as held.
pub(crate) struct PartialSink {
    shared: Arc<SinkShared>,
    next: u64,
    end: u64,
}

/// What a partial entry's sink shares with the task that writes its queue.
struct SinkShared {
    entry: Arc<PartialEntry>,
    start: u64,
    state: Mutex<SinkState>,
}

/// The chunks a sink has queued for writing, and whether a task writes them.
#[derive(Default)]
struct SinkState {
    queue: VecDeque<(u64, Bytes)>,
    queued: usize,
    running: bool,
    /// Where the bytes written in order end.
    written: u64,
    stopped: bool,
    closed: bool,
}

impl PartialSink {
    /// Queues `bytes`, the next of the range. Bytes past its end are not stored.
    pub(crate) fn push(&mut self, bytes: &Bytes) {
        let room = self.end.saturating_sub(self.next);
        let take = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
        if take == 0 {
            return;
        }
        let offset = self.next;
        self.next += take as u64;
        let mut state = lock(&self.shared.state);
        if state.stopped {
            return;
        }
        if state.queued + take > MAX_QUEUED {
            state.stopped = true;
            state.queue.clear();
            return;
        }
        state.queue.push_back((offset, bytes.slice(..take)));
        state.queued += take;
        if !state.running {
            state.running = true;
            drop(state);
            run(Arc::clone(&self.shared));
        }
    }
}

impl Drop for PartialSink {
    fn drop(&mut self) {
        self.shared.entry.settling.send_modify(|n| *n += 1);
        let mut state = lock(&self.shared.state);
        state.closed = true;
        if !state.running {
            state.running = true;
            drop(state);
            run(Arc::clone(&self.shared));
        }
    }
}

/// Runs [`drain`] on the writers' pool (in line when it has no threads).
fn run(shared: Arc<SinkShared>) {
    match pool::pool() {
        Some(pool) => pool.submit(Lane::Write, Box::new(move || drain(&shared))),
        None => drain(&shared),
    }
}

/// Writes what is queued, then, once the sink is closed, records what was written.
fn drain(shared: &SinkShared) {
    let entry = &shared.entry;
    loop {
        let mut state = lock(&shared.state);
        let Some((offset, bytes)) = state.queue.pop_front() else {
            state.running = false;
            if state.closed {
                let written = state.written;
                drop(state);
                entry.hold(shared.start, written);
                entry.settling.send_modify(|n| *n -= 1);
            }
            return;
        };
        state.queued -= bytes.len();
        drop(state);
        let wrote = entry
            .claim(bytes.len() as u64)
            .and_then(|()| entry.write_at(&bytes, offset).map_err(Error::from));
        let mut state = lock(&shared.state);
        match wrote {
            Ok(()) => state.written = offset + bytes.len() as u64,
            Err(error) => {
                crate::log::debug_event!(key = %entry.key, %error, "a range stopped being stored");
                state.stopped = true;
                state.queue.clear();
                state.queued = 0;
            }
        }
    }
}

impl StreamingManager {
    /// The partial entry of `key`, if there is one.
    pub(crate) fn partial(&self, key: &str) -> Option<Arc<PartialEntry>> {
        let book = lock(&self.inner.partials);
        let entry = book.get(key)?;
        lock(&entry.state).used = Instant::now();
        Some(Arc::clone(entry))
    }

    /// The partial entry of `key` for the representation `etag` of `total` bytes, with
    /// `head`: the one there is, freshened, or a new one in place of any other.
    pub(crate) async fn partial_for(
        &self,
        key: &str,
        etag: &str,
        total: u64,
        head: PartialHead,
    ) -> Result<Arc<PartialEntry>> {
        if let Some(entry) = self.partial(key)
            && entry.etag == etag
            && entry.total == total
        {
            entry.freshen(head);
            return Ok(entry);
        }
        let opened = self.opened().await?;
        let path = opened.scratch.temp_path();
        let mode = opened.layout.mode();
        let (temp, writer, file) = blocking(move || {
            let writer = files::create_new(&path, mode, false).map_err(|e| Error::io(e, &path))?;
            let file = files::open(&path).map_err(|e| Error::io(e, &path))?;
            Ok((TempFile::new(path), writer, file))
        })
        .await?;
        let room: Arc<dyn DiskBudget> = Arc::clone(&opened) as _;
        let entry = Arc::new(PartialEntry {
            key: key.to_owned(),
            etag: etag.to_owned(),
            total,
            file: Arc::new(file),
            writer,
            _temp: temp,
            durable: opened.options.durable,
            chunk: opened.options.read_chunk_size,
            manager: Arc::downgrade(&self.inner),
            state: Mutex::new(State {
                head,
                ranges: Vec::new(),
                claim: Claim::new(room),
                used: Instant::now(),
                complete: false,
            }),
            settling: tokio::sync::watch::Sender::new(0),
        });
        let mut book = lock(&self.inner.partials);
        if book.len() >= MAX_PARTIALS
            && !book.contains_key(key)
            && let Some(oldest) = least_used(&book, None)
        {
            book.remove(&oldest);
        }
        book.insert(key.to_owned(), Arc::clone(&entry));
        Ok(entry)
    }

    /// Forgets the partial entry of `key`: its file goes once no reader holds it.
    pub(crate) fn drop_partial(&self, key: &str) {
        lock(&self.inner.partials).remove(key);
    }

    /// Forgets `entry`, if it is still the partial entry of its key.
    fn drop_partial_entry(&self, entry: &Arc<PartialEntry>) {
        let mut book = lock(&self.inner.partials);
        if book
            .get(&entry.key)
            .is_some_and(|held| Arc::ptr_eq(held, entry))
        {
            book.remove(&entry.key);
        }
    }

    /// Forgets the least recently used partial entry other than `keep`, giving back its
    /// room; `false` when there is none.
    fn drop_least_used_partial(&self, keep: &Arc<PartialEntry>) -> bool {
        let mut book = lock(&self.inner.partials);
        least_used(&book, Some(keep)).is_some_and(|key| book.remove(&key).is_some())
    }

    /// Forgets the partial entries whose key `unwanted` holds for.
    pub(crate) fn drop_partials_where(&self, unwanted: impl Fn(&str) -> bool) {
        lock(&self.inner.partials).retain(|key, _| !unwanted(key));
    }

    /// Forgets every partial entry.
    pub(crate) fn clear_partials(&self) {
        lock(&self.inner.partials).clear();
    }
}

/// The partial entries of a store, by key.
pub(crate) type Partials = Mutex<HashMap<String, Arc<PartialEntry>>>;

/// The key of the least recently used partial entry in `book`, other than `except`.
fn least_used(
    book: &HashMap<String, Arc<PartialEntry>>,
    except: Option<&Arc<PartialEntry>>,
) -> Option<String> {
    book.iter()
        .filter(|(_, entry)| except.is_none_or(|except| !Arc::ptr_eq(entry, except)))
        .min_by_key(|(_, entry)| lock(&entry.state).used)
        .map(|(key, _)| key.clone())
}

impl crate::body::RangeSink for PartialSink {
    fn push(&mut self, bytes: &Bytes) {
        PartialSink::push(self, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc_4648s() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn a_repr_digest_must_agree_when_there_is_one() {
        let digest: [u8; 32] = Sha256::digest(b"hello").into();
        let mut headers = http::HeaderMap::new();
        assert!(repr_digest_agrees(&headers, &digest));
        let good = format!("sha-512=:AAAA:, sha-256=:{}:", base64(&digest));
        headers.insert("repr-digest", good.parse().unwrap());
        assert!(repr_digest_agrees(&headers, &digest));
        headers.insert("repr-digest", "sha-256=:AAAA:".parse().unwrap());
        assert!(!repr_digest_agrees(&headers, &digest));
    }
}
