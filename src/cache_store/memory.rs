//! A store in memory, for the cache's unit tests: its rules tested with no disk.
//!
//! It keeps whole responses only (no partial entries) and takes part in no fleet.
//! Requests that collapse into a fill wait for its end and then look the entry up: the
//! body is not shared while it is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use http_cache_semantics::CachePolicy;
use url::Url;

use super::{CacheStore, StoredResponse};
use crate::body::{SharedFill, StreamingBody, TeeSink, boxed};
use crate::collapse::{Background, FillEnd, FillHead, FillLeader, Fills, Role};
use crate::error::{BoxError, Error, ErrorKind, Result};
use crate::fleet::leases::{FleetFills, Lease};
use crate::format::layout::Hash32;
use crate::format::record::{Entry, content_length};
use crate::format::tags::Tags;
use crate::rt::lock;
use crate::store::partial_entry::{PartialEntry, PartialHead};
use crate::store::{ForPeer, Selection};
use crate::store::{StoreStats, StreamingManager};

/// The `CacheStore` the rules' unit tests run on: whole responses by key, in memory.
#[derive(Clone)]
pub(crate) struct MemoryStore {
    inner: Arc<Inner>,
}

/// What the clones of a [`MemoryStore`] share.
struct Inner {
    entries: Mutex<HashMap<String, (Arc<Entry>, Bytes)>>,
    fills: Arc<Fills>,
    /// What `HttpStreamingCache::manager` answers for a cache over memory; never opened.
    unopened: StreamingManager,
    /// The fields tags are read from: the manager's defaults.
    tag_fields: Vec<HeaderName>,
}

impl MemoryStore {
    /// An empty store.
    pub(crate) fn new() -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                entries: Mutex::default(),
                fills: Arc::new(Fills::verifying(false)),
                unopened: StreamingManager::new("never-opened".into()),
                tag_fields: crate::format::tags::default_fields().to_vec(),
            }),
        }
    }

    /// The never-opened manager [`Backing::manager`](super::Backing::manager) answers.
    pub(crate) fn unopened(&self) -> &StreamingManager {
        &self.inner.unopened
    }

    /// The keys stored, sorted.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.inner.entries).keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The record and body stored under `key`.
    pub(crate) fn stored(&self, key: &str) -> Option<(Arc<Entry>, Bytes)> {
        lock(&self.inner.entries).get(key).cloned()
    }

    fn keep(&self, entry: Entry, body: Bytes) -> Arc<Entry> {
        let entry = Arc::new(entry);
        let kept = (Arc::clone(&entry), body);
        lock(&self.inner.entries).insert(entry.key.clone(), kept);
        entry
    }

    fn remove(&self, key: &str) {
        lock(&self.inner.entries).remove(key);
    }
}

/// What a stored entry answers: its head and its whole body.
fn respond(entry: Arc<Entry>, body: Bytes) -> StoredResponse {
    let body = StreamingBody::stored_bytes(body, entry.trailers.clone());
    (entry.response(body), entry)
}

/// The record of a response stored under `key`.
fn record(
    key: String,
    head: &http::response::Parts,
    policy: CachePolicy,
    url: &Url,
    body: &Bytes,
    trailers: Option<HeaderMap>,
) -> Entry {
    Entry {
        key,
        url: url.to_string(),
        status: head.status,
        version: head.version,
        headers: head.headers.clone(),
        trailers,
        policy,
        digest: Hash32::of(body),
        length: body.len() as u64,
        stored_at: SystemTime::now(),
        tags: Tags::from_fields(&head.headers, &crate::format::tags::default_fields()),
    }
}

/// Why a body is not stored, when its length is not its `Content-Length`.
fn short(head: &http::response::Parts, body: &Bytes) -> Option<Error> {
    let expected = content_length(&head.headers)?;
    (expected != body.len() as u64).then(|| {
        Error::new(ErrorKind::Incomplete)
            .with_subject(format!("{} bytes of {expected}", body.len()))
    })
}

impl CacheStore for MemoryStore {
    async fn open(&self) -> Result<()> {
        Ok(())
    }
    fn known_unusable(&self) -> bool {
        false
    }
    async fn lookup(&self, key: &str) -> Result<Option<StoredResponse>> {
        Ok(self.lookup_in_memory(key))
    }
    fn lookup_in_memory(&self, key: &str) -> Option<StoredResponse> {
        let (entry, body) = self.stored(key)?;
        Some(respond(entry, body))
    }
    async fn stored_headers(&self, key: &str) -> Option<HeaderMap> {
        self.stored(key).map(|(entry, _)| entry.headers.clone())
    }
    async fn stored_headers_here(&self, key: &str) -> Option<HeaderMap> {
        self.stored_headers(key).await
    }
    fn admits(&self, _key: &str) -> bool {
        true
    }
    async fn update_headers(
        &self,
        key: &str,
        headers: HeaderMap,
        policy: CachePolicy,
    ) -> Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        let Some((entry, body)) = self.stored(key) else {
            return Ok(None);
        };
        let mut updated = Entry::clone(&entry);
        updated.headers = headers;
        updated.policy = policy.clone();
        updated.stored_at = SystemTime::now();
        let entry = self.keep(updated, body.clone());
        Ok(Some((respond(entry, body).0, policy)))
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.remove(key);
        Ok(())
    }
    async fn forget(&self, key: &str) -> Result<()> {
        self.remove(key);
        Ok(())
    }
    async fn remove_where<F>(&self, unwanted: F) -> Result<u64>
    where
        F: Fn(&Entry) -> bool + Send + 'static,
    {
        let mut entries = lock(&self.inner.entries);
        let before = entries.len();
        entries.retain(|_, (entry, _)| !unwanted(entry));
        Ok((before - entries.len()) as u64)
    }
    async fn stats(&self) -> Result<StoreStats> {
        let entries = lock(&self.inner.entries);
        let mut contents = HashMap::new();
        for (entry, _) in entries.values() {
            contents.insert(entry.digest, entry.length);
        }
        Ok(StoreStats {
            entries: entries.len() as u64,
            content_files: contents.len() as u64,
            content_bytes: contents.values().sum(),
            ..StoreStats::default()
        })
    }
    async fn put<B>(
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
        let (head, body) = response.into_parts();
        let collected = boxed(body).collect().await.map_err(Error::body)?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        if let Some(short) = short(&head, &body) {
            return Err(short);
        }
        let entry = self.keep(
            record(key, &head, policy, &url, &body, trailers),
            body.clone(),
        );
        Ok(respond(entry, body).0)
    }
    fn tee_or_refuse<B>(
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
        let (head, body) = response.into_parts();
        let leader = leader.map(|(leader, _)| leader);
        let fill = leader
            .as_ref()
            .map(|leader| Arc::clone(leader.fill()) as Arc<dyn SharedFill>);
        let sink = MemorySink {
            store: self.clone(),
            key,
            head: crate::head::response_head(head.status, head.version, &head.headers),
            policy,
            url,
            body: BytesMut::new(),
            trailers: None,
            leader,
            fill,
        };
        let body = StreamingBody::tee(boxed(body), Some(Box::new(sink)));
        (Response::from_parts(head, body), None)
    }
    fn join_fill(&self, key: &str, background: Option<Background>, wait: Duration) -> Role {
        self.inner
            .fills
            .join(Hash32::of(key.as_bytes()), background, wait)
    }
    fn fills_in_flight(&self) -> usize {
        self.inner.fills.len()
    }
    // No partial entries, no fleet.
    fn partial(&self, _key: &str) -> Option<Arc<PartialEntry>> {
        None
    }
    async fn partial_for(
        &self,
        _key: &str,
        _etag: &str,
        _total: u64,
        _head: PartialHead,
    ) -> Result<Arc<PartialEntry>> {
        Err(Error::new(ErrorKind::Io).with_subject("this store keeps no partial entries"))
    }
    fn drop_partial(&self, _key: &str) {}

    fn fleet_fills(&self) -> Option<&FleetFills> {
        None
    }
    async fn take_lease(&self, _key: &str, _unreachable: Option<&str>) -> Lease {
        Lease::Alone
    }
    async fn for_peer(&self, _key: &str, _wait: Duration) -> ForPeer {
        ForPeer::Nothing
    }
    fn shares_purges(&self) -> bool {
        false
    }
    async fn publish_prefix_purge(&self, _prefix: &str) -> Result<()> {
        Ok(())
    }
    fn tag_fields(&self) -> &[HeaderName] {
        &self.inner.tag_fields
    }
    async fn entry_here(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self.stored(key).map(|(entry, _)| Entry::clone(&entry)))
    }
    async fn entries(
        &self,
        selection: Selection,
        after: Option<Hash32>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Hash32>)> {
        let mut picked: Vec<(Hash32, Entry)> = lock(&self.inner.entries)
            .values()
            .filter(|(entry, _)| match &selection {
                Selection::Tag(tag) => entry.tags.contains(tag),
                Selection::Prefix(prefix) => entry.is_under(prefix),
            })
            .map(|(entry, _)| (Hash32::of(entry.key.as_bytes()), Entry::clone(entry)))
            .filter(|(key, _)| after.is_none_or(|after| *key > after))
            .collect();
        picked.sort_by_key(|(key, _)| *key);
        let limit = limit.max(1);
        let next = (picked.len() > limit).then(|| picked[limit - 1].0);
        picked.truncate(limit);
        Ok((picked.into_iter().map(|(_, entry)| entry).collect(), next))
    }
    async fn purge_tags(&self, tags: &[&str]) -> Result<u64> {
        self.remove_where({
            let tags: Vec<String> = tags.iter().map(|tag| (*tag).to_owned()).collect();
            move |entry| tags.iter().any(|tag| entry.tags.contains(tag))
        })
        .await
    }
}

/// A tee's end that keeps the body in memory and stores it once it ends complete. Its
/// leader, dropped with it, releases the followers of a fill that stored nothing.
struct MemorySink {
    store: MemoryStore,
    key: String,
    head: http::response::Parts,
    policy: CachePolicy,
    url: Url,
    body: BytesMut,
    trailers: Option<HeaderMap>,
    leader: Option<FillLeader>,
    fill: Option<Arc<dyn SharedFill>>,
}

impl TeeSink for MemorySink {
    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<bool> {
        Poll::Ready(true)
    }
    fn offer(&mut self, _: &mut Context<'_>, chunk: Bytes) -> bool {
        self.body.extend_from_slice(&chunk);
        true
    }
    fn trailers(&mut self, trailers: HeaderMap) {
        self.trailers = Some(trailers);
    }
    fn finish(self: Box<Self>) {
        let sink = *self;
        let body = sink.body.freeze();
        if let Some(error) = short(&sink.head, &body) {
            if let Some(leader) = &sink.leader {
                leader.fill().end(FillEnd::Failed(Arc::new(error)));
            }
            return;
        }
        let entry = record(
            sink.key,
            &sink.head,
            sink.policy,
            &sink.url,
            &body,
            sink.trailers,
        );
        let entry = sink.store.keep(entry, body);
        if let Some(leader) = &sink.leader {
            leader.fill().end_stored(entry.length, entry.digest);
        }
    }
    fn abandon(self: Box<Self>) {}
    fn fill(&self) -> Option<&Arc<dyn SharedFill>> {
        self.fill.as_ref()
    }
}
