//! [`ObjectStoreManager`]: the store's API (`put`, `get`, `delete`) over any [`Storage`],
//! above all a bucket shared by a fleet.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use http_cache_semantics::CachePolicy;
use url::Url;

use super::{Name, Storage};
use crate::StreamingBody;
use crate::error::{BoxError, Error, ErrorKind, Result};
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::format::record::content_length;

/// A store of responses in a [`Storage`], by default a bucket of any
/// [`object_store`](https://docs.rs/object_store) backend (feature `object-store`), laid
/// out as on disk: `cache-v2/metadata/<sha256 of key>.json` and `cache-v2/content/<sha256>`.
///
/// Bodies stream up while they are read and down while they are served; memory stays
/// within a few upload parts whatever their size. A body is committed before the record
/// that names it, so a reader never finds a record of a body that is not there; a record
/// whose body is missing or of another length is a miss, and is removed. Several machines
/// may share one bucket: what one stored, the others serve.
///
/// [`delete`](Self::delete) removes a record, never a body, since another record (written
/// by any machine) may name the same bytes; [`sweep`](Self::sweep) removes the bodies no
/// record names.
#[derive(Debug, Clone)]
pub struct ObjectStoreManager {
    storage: Arc<dyn Storage>,
    /// Bodies this manager has read whole and found to match their digest.
    checked: Arc<CheckedDigests>,
}

/// The digests of bodies read whole from a storage and found to match: a range of one of
/// them is read as a range, a range of any other only out of a whole read that checks it.
/// Forgotten all at once past [`CHECKED_DIGESTS`], so memory stays bounded.
#[derive(Debug, Default)]
pub(crate) struct CheckedDigests(Mutex<HashSet<Hash32>>);

const CHECKED_DIGESTS: usize = 16 * 1024;

impl CheckedDigests {
    fn contains(&self, digest: Hash32) -> bool {
        crate::rt::lock(&self.0).contains(&digest)
    }

    fn insert(&self, digest: Hash32) {
        let mut checked = crate::rt::lock(&self.0);
        if checked.len() >= CHECKED_DIGESTS {
            checked.clear();
        }
        checked.insert(digest);
    }
}

/// What a [`sweep`](ObjectStoreManager::sweep) found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Records read.
    pub records: u64,
    /// Records removed because they could not be read as records.
    pub broken_records: u64,
    /// Bodies that no record names, old enough to be removed, and removed.
    pub bodies: u64,
}

impl ObjectStoreManager {
    /// A manager of the cache under `cache-v2/` in `store`.
    #[cfg(feature = "object-store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "object-store")))]
    pub fn new(store: Arc<dyn object_store::ObjectStore>) -> Self {
        Self::over(Arc::new(super::ObjectStorage::new(store)))
    }

    /// A manager over any storage: a bucket with options of its own
    /// (`ObjectStorage`, feature `object-store`), a [`FileStorage`](super::FileStorage), or
    /// one of yours.
    pub fn over(storage: Arc<dyn Storage>) -> Self {
        ObjectStoreManager {
            storage,
            checked: Arc::default(),
        }
    }

    /// The storage it keeps its bytes in.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Stores `response` under `key`, streaming its body to the storage as it is read.
    ///
    /// The entry is stored only if the body ends complete (and with exactly its
    /// `Content-Length`, when it has one): otherwise the upload is abandoned and the error
    /// says why. An existing entry under `key` is replaced.
    pub async fn put<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
    ) -> Result<()>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = response.into_parts();
        let (tx, rx) = tokio::sync::mpsc::channel(TEE_QUEUE);
        let upload = self.upload_teed(key, head_of(&parts), policy, url, rx);
        let read = async {
            let mut body = std::pin::pin!(TeeUp {
                inner: crate::body::boxed(body),
                to: Some(tokio_util::sync::PollSender::new(tx)),
            });
            while let Some(frame) = body.frame().await {
                frame.map_err(Error::body)?;
            }
            Ok::<_, Error>(())
        };
        let (read, uploaded) = tokio::join!(read, upload);
        read?;
        uploaded
    }

    /// Returns `response` at once with a body that hands each frame to the caller as it
    /// arrives and uploads it to the storage on a task of its own: the entry is stored when
    /// the body has ended complete (and with exactly its `Content-Length`, when it has one),
    /// body first, record last. A body that fails or is dropped early is abandoned. The
    /// caller's stream waits when the upload falls 16 frames behind, so memory
    /// stays bounded; an upload that fails leaves the stream a plain pass-through.
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
        let (parts, body) = response.into_parts();
        let (tx, rx) = tokio::sync::mpsc::channel(TEE_QUEUE);
        let head = head_of(&parts);
        let manager = self.clone();
        let upload = async move {
            if let Err(error) = manager.upload_teed(key, head, policy, url, rx).await {
                crate::log::debug_event!(%error, "not stored in the storage");
            }
        };
        let body = if crate::rt::spawn(upload) {
            StreamingBody::pass(TeeUp {
                inner: crate::body::boxed(body),
                to: Some(tokio_util::sync::PollSender::new(tx)),
            })
        } else {
            StreamingBody::pass(body)
        };
        Response::from_parts(parts, body)
    }

    async fn upload_teed(
        &self,
        key: String,
        head: Response<()>,
        policy: CachePolicy,
        url: Url,
        mut rx: tokio::sync::mpsc::Receiver<Teed>,
    ) -> Result<()> {
        let expected = content_length(head.headers());
        let mut upload = self.storage.upload().await?;
        let mut trailers: Option<HeaderMap> = None;
        let mut length = 0u64;
        let mut complete = false;
        while let Some(teed) = rx.recv().await {
            if let Some(data) = teed.data {
                length += data.len() as u64;
                if let Err(e) = upload.write(data).await {
                    let _ = upload.abort().await;
                    return Err(e);
                }
            }
            if teed.trailers.is_some() {
                trailers = teed.trailers;
            }
            if teed.end {
                complete = true;
                break;
            }
        }
        let failed = match expected {
            _ if !complete => Some(Error::new(ErrorKind::Incomplete).with_subject(key.clone())),
            Some(n) if n != length => Some(
                Error::new(ErrorKind::Length)
                    .with_subject(format!("Content-Length {n}, body {length} bytes")),
            ),
            _ => None,
        };
        if let Some(error) = failed {
            let _ = upload.abort().await;
            return Err(error);
        }
        let committed = upload.commit().await?;
        let (parts, ()) = head.into_parts();
        self.write_entry(key, parts, trailers, policy, url, committed)
            .await
    }

    /// Writes the record of a committed body.
    async fn write_entry(
        &self,
        key: String,
        parts: http::response::Parts,
        trailers: Option<HeaderMap>,
        policy: CachePolicy,
        url: Url,
        committed: super::Committed,
    ) -> Result<()> {
        let entry = Entry {
            key,
            url: url.to_string(),
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            trailers,
            policy,
            digest: committed.digest.0,
            length: committed.length,
            stored_at: SystemTime::now(),
            tags: Default::default(),
        };
        let record = entry.encode().map_err(|e| {
            Error::new(ErrorKind::Record)
                .with_subject(entry.key.clone())
                .with_source(e)
        })?;
        let name = Name::of(entry.key.as_bytes());
        self.storage.write_record(name, Bytes::from(record)).await
    }

    /// Looks `key` up: the stored response, with a body that streams from the storage, and
    /// its cache policy. A record that is damaged, or whose body is missing or of another
    /// length, is a miss (`Ok(None)`) and is removed.
    pub async fn get(&self, key: &str) -> Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        self.get_part(key, None).await
    }

    /// [`get`](Self::get) of bytes `start..start + len` of the body only (a `Range`
    /// request), clamped to the body.
    ///
    /// Bytes in a bucket are untrusted until checked: the first range of a body this
    /// manager has not read whole is cut from a whole read that checks the body against its
    /// digest (its last bytes are held until the check passes), and later ranges of it are
    /// read as ranges.
    pub async fn get_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        self.get_part(key, Some((start, len))).await
    }

    async fn get_part(
        &self,
        key: &str,
        part: Option<(u64, u64)>,
    ) -> Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        let checked = Some(&self.checked);
        let Some((entry, body)) = read_entry(&*self.storage, key, part, checked).await? else {
            return Ok(None);
        };
        Ok(Some((entry.response(body), entry.policy)))
    }

    /// Removes what is stored under `key`: its record. Its body stays until a
    /// [`sweep`](Self::sweep) finds no record naming it.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.storage.delete_record(Name::of(key.as_bytes())).await
    }

    /// Removes the bodies no record names, once they are older than `grace`, and records
    /// that are not records. In a bucket several machines write, `grace` must exceed the
    /// longest upload: a body is committed before the record naming it is written, and a
    /// sweep in between must not take it (an hour is a safe choice).
    pub async fn sweep(&self, grace: Duration) -> Result<Swept> {
        let mut swept = Swept::default();
        let mut named = HashSet::new();
        for listed in self.storage.list_records().await? {
            swept.records += 1;
            let Some(bytes) = self.storage.read_record(listed.name).await? else {
                continue;
            };
            match Entry::summarize(&bytes) {
                Ok(summary) => {
                    named.insert(summary.digest);
                }
                Err(_) => {
                    self.storage.delete_record(listed.name).await?;
                    swept.broken_records += 1;
                }
            }
        }
        let now = SystemTime::now();
        for listed in self.storage.list_bodies().await? {
            let old = now
                .duration_since(listed.modified)
                .is_ok_and(|age| age >= grace);
            if old && !named.contains(&listed.name.0) {
                self.storage.delete_body(listed.name).await?;
                swept.bodies += 1;
            }
        }
        Ok(swept)
    }
}

/// The entry stored under `key` in `storage` and its body (bytes `part` of it, clamped to
/// the body, or all of it followed by its trailers). A record that is damaged, or whose body
/// is missing or of another length, is `None` and is removed. A body is checked against its
/// digest as it streams; a part is read as a part only when `checked` knows the body was.
pub(crate) async fn read_entry(
    storage: &dyn Storage,
    key: &str,
    part: Option<(u64, u64)>,
    checked: Option<&Arc<CheckedDigests>>,
) -> Result<Option<(Entry, StreamingBody)>> {
    let name = Name::of(key.as_bytes());
    let Some(bytes) = storage.read_record(name).await? else {
        return Ok(None);
    };
    let entry = match Entry::decode(&bytes) {
        Ok(entry) if entry.key == key => entry,
        Ok(_) => return Ok(None),
        Err(why) => {
            crate::log::warn_event!(%key, %why, "removing unusable record");
            storage.delete_record(name).await?;
            return Ok(None);
        }
    };
    let digest = Name(entry.digest);
    let stored = storage.body_length(digest).await?;
    if stored != Some(entry.length) {
        crate::log::warn_event!(%key, %digest, expected = entry.length, ?stored,
            "body missing or of the wrong length, removing its record");
        storage.delete_record(name).await?;
        return Ok(None);
    }
    let window = part.map(|(start, len)| {
        let start = start.min(entry.length);
        (start, len.min(entry.length - start))
    });
    let known_good = checked.is_some_and(|c| c.contains(entry.digest));
    let (start, len) = match window {
        Some(window) if known_good => window,
        _ => (0, entry.length),
    };
    let Some(body) = storage.read_body(digest, start, len).await? else {
        storage.delete_record(name).await?;
        return Ok(None);
    };
    if window.is_some() && known_good {
        return Ok(Some((entry, body)));
    }
    // Bytes changed in a shared bucket are never passed off as a complete body, nor a
    // range of one.
    let body = Checked {
        inner: body,
        hasher: Some(<sha2::Sha256 as sha2::Digest>::new()),
        expected: entry.digest,
        held: None,
        window,
        position: 0,
        checked: checked.cloned(),
    };
    let body = match (&entry.trailers, window) {
        (Some(trailers), None) => {
            let trailers = trailers.clone();
            StreamingBody::pass(body.with_trailers(async move { Some(Ok(trailers)) }))
        }
        _ => StreamingBody::pass(body),
    };
    Ok(Some((entry, body)))
}

/// A body checked against its SHA-256 as it streams: each chunk is handed on only when the
/// next has arrived, and the last only once the digest matches, so a body whose bytes were
/// changed ends in an error, never complete. With a `window`, the whole body is read and
/// checked, and only the bytes inside the window are handed on.
struct Checked {
    inner: StreamingBody,
    hasher: Option<sha2::Sha256>,
    expected: Hash32,
    /// The chunk read but not yet handed on.
    held: Option<Bytes>,
    /// `(start, len)` of the bytes to hand on; all of them when `None`.
    window: Option<(u64, u64)>,
    /// Bytes of the body read so far.
    position: u64,
    /// Told of the digest once the whole body has matched it.
    checked: Option<Arc<CheckedDigests>>,
}

impl Checked {
    /// The part of `data` (read at `self.position`) inside the window.
    fn in_window(&self, data: Bytes) -> Bytes {
        let Some((start, len)) = self.window else {
            return data;
        };
        let end = start + len;
        let from = start.saturating_sub(self.position);
        let to = end.saturating_sub(self.position);
        let clamp = |at: u64| usize::try_from(at).unwrap_or(usize::MAX).min(data.len());
        data.slice(clamp(from)..clamp(to).max(clamp(from)))
    }
}

impl Body for Checked {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            let Some(hasher) = this.hasher.as_mut() else {
                // Checked: hand on what is held, then end.
                return Poll::Ready(this.held.take().map(|b| Ok(http_body::Frame::data(b))));
            };
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    sha2::Digest::update(hasher, &data);
                    let read = data.len() as u64;
                    let data = this.in_window(data);
                    this.position += read;
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(previous) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(previous))));
                    }
                }
                Poll::Ready(None) => {
                    let hasher = this.hasher.take().unwrap_or_default();
                    if Hash32::from_hasher(hasher) != this.expected {
                        this.held = None;
                        return Poll::Ready(Some(Err(Error::new(ErrorKind::Integrity)
                            .with_subject("a stored body whose bytes differ from its digest"))));
                    }
                    if let Some(checked) = &this.checked {
                        checked.insert(this.expected);
                    }
                }
            }
        }
    }

    /// Over once checked and the last chunk handed on: a client that stops polling then
    /// (hyper does, at the end of a `Content-Length`) has had the whole body, and a tee of
    /// it stores it.
    fn is_end_stream(&self) -> bool {
        self.hasher.is_none() && self.held.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.len() as u64);
        let mut hint = http_body::SizeHint::new();
        match self.window {
            Some((start, len)) if self.hasher.is_some() => {
                let ahead = (start + len).saturating_sub(self.position.max(start));
                hint.set_upper(ahead + held);
            }
            Some(_) => hint.set_exact(held),
            None => {
                let inner = self.inner.size_hint();
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + held);
                }
                hint.set_lower(inner.lower() + held);
            }
        }
        hint
    }
}

/// A response's head, for the record of its body.
fn head_of(parts: &http::response::Parts) -> Response<()> {
    let head = crate::head::response_head(parts.status, parts.version, &parts.headers);
    Response::from_parts(head, ())
}

/// Frames a [`tee`](ObjectStoreManager::tee) may queue for its upload before the caller
/// waits for it.
const TEE_QUEUE: usize = 16;

/// What a tee'd body hands its upload: a frame's data or trailers, and whether the body
/// ended complete with it.
struct Teed {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    end: bool,
}

/// A body passed through while its frames go to an upload.
struct TeeUp {
    inner: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
    /// `None` once the upload is gone (failed) or told of the end.
    to: Option<tokio_util::sync::PollSender<Teed>>,
}

impl Body for TeeUp {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        // Room for what comes next, before reading it: the upload sets the pace.
        if let Some(to) = this.to.as_mut() {
            match to.poll_reserve(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => this.to = None,
            }
        }
        let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let teed = match &frame {
            Some(Ok(frame)) => Some(Teed {
                data: frame.data_ref().cloned(),
                trailers: frame.trailers_ref().cloned(),
                // The client may stop polling once the body says it is over.
                end: this.inner.is_end_stream(),
            }),
            Some(Err(_)) => None,
            None => Some(Teed {
                data: None,
                trailers: None,
                end: true,
            }),
        };
        match (teed, this.to.as_mut()) {
            (Some(teed), Some(to)) => {
                let end = teed.end;
                if to.send_item(teed).is_err() || end {
                    this.to = None;
                }
            }
            // An error: the upload sees the channel close without an end and abandons it.
            (None, _) => this.to = None,
            (Some(_), None) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
