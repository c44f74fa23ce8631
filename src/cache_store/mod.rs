//! The store under a cache, as the cache sees it: [`CacheStore`], every operation the RFC
//! 9111 decisions make of a store, and [`Backing`], the store a cache is over. A
//! [`StreamingManager`] is the store the crate ships; the cache's unit tests put one in
//! memory in its place (`memory.rs`), so that its rules are tested with no disk.

#[cfg(test)]
pub(crate) mod memory;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response};
use http_body::Body;
use http_cache_semantics::CachePolicy;
use url::Url;

use crate::body::StreamingBody;
use crate::collapse::{Background, FillHead, FillLeader, Role};
use crate::error::{BoxError, Error, Result};
use crate::fleet::leases::{FleetFills, Lease};
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::store::partial_entry::{PartialEntry, PartialHead};
use crate::store::{ForPeer, Selection, StoreStats, StreamingManager};

/// A stored response as a lookup finds it: the response, its body streaming, and its record.
pub(crate) type StoredResponse = (Response<StreamingBody>, Arc<Entry>);

/// What a cache asks of its store. No method has a default: a new one is implemented by
/// each store and forwarded by [`Backing`], or nothing compiles (a default that `Backing`
/// did not forward would answer in production in the manager's place).
pub(crate) trait CacheStore {
    /// Opens the store, for a service that fails early on one it cannot use.
    fn open(&self) -> impl Future<Output = Result<()>> + Send;
    /// Whether the last attempt to open the store failed: writes would fail.
    fn known_unusable(&self) -> bool;
    /// The response stored under `key`, with its record.
    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<StoredResponse>>> + Send;
    /// [`lookup`](Self::lookup) answered without waiting for anything, when it can be.
    fn lookup_in_memory(&self, key: &str) -> Option<StoredResponse>;
    /// The headers stored under `key`, without its body; with a shared tier, from there
    /// when this store has none.
    fn stored_headers(&self, key: &str) -> impl Future<Output = Option<HeaderMap>> + Send;
    /// [`stored_headers`](Self::stored_headers) of this store alone.
    fn stored_headers_here(&self, key: &str) -> impl Future<Output = Option<HeaderMap>> + Send;
    /// Whether a response fetched for `key` is to be stored (`min_uses`).
    fn admits(&self, key: &str) -> bool;
    /// Replaces the headers and policy stored under `key`, keeping its body (a `304`).
    fn update_headers(
        &self,
        key: &str,
        headers: HeaderMap,
        policy: CachePolicy,
    ) -> impl Future<Output = Result<Option<(Response<StreamingBody>, CachePolicy)>>> + Send;
    /// Removes `key`, here, in the shared tier and (through the purge log) in the fleet.
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes `key` here and in the shared tier, without a purge for the fleet.
    fn forget(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes every entry for which `unwanted` holds; how many there were.
    fn remove_where<F>(&self, unwanted: F) -> impl Future<Output = Result<u64>> + Send
    where
        F: Fn(&Entry) -> bool + Send + 'static;
    /// What the store holds.
    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send;
    /// Stores `response` whole under `key` and answers it from the store.
    fn put<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
    ) -> impl Future<Output = Result<Response<StreamingBody>>> + Send
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>;
    /// Answers `response` at once, storing its body under `key` as it passes; the error
    /// says why when the store refuses it from the start (the response then passes).
    /// `leader`'s followers are told the outcome.
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
        B::Error: Into<BoxError>;
    /// Leads the fill of `key`, or follows the one under way.
    fn join_fill(&self, key: &str, background: Option<Background>, wait: Duration) -> Role;
    /// Fills under way.
    fn fills_in_flight(&self) -> usize;

    /// The partial entry kept for `key` (a response received in ranges).
    fn partial(&self, key: &str) -> Option<Arc<PartialEntry>>;
    /// The partial entry of `key` for the representation `etag`, `total` bytes long.
    fn partial_for(
        &self,
        key: &str,
        etag: &str,
        total: u64,
        head: PartialHead,
    ) -> impl Future<Output = Result<Arc<PartialEntry>>> + Send;
    /// Forgets the partial entry of `key`.
    fn drop_partial(&self, key: &str);

    /// The fleet's fills this store takes part in.
    fn fleet_fills(&self) -> Option<&FleetFills>;
    /// Takes `key`'s lease in the fleet, or finds who holds it.
    fn take_lease(
        &self,
        key: &str,
        unreachable: Option<&str>,
    ) -> impl Future<Output = Lease> + Send;
    /// What a peer asking for `key` is served.
    fn for_peer(&self, key: &str, wait: Duration) -> impl Future<Output = ForPeer> + Send;
    /// Whether deletes here go to a purge log the fleet reads.
    fn shares_purges(&self) -> bool;
    /// Writes a purge of every key under `prefix` to the fleet's log.
    fn publish_prefix_purge(&self, prefix: &str) -> impl Future<Output = Result<()>> + Send;
    /// The response fields an entry's tags are read from.
    fn tag_fields(&self) -> &[HeaderName];
    /// Removes every entry carrying one of `tags`, here and in the fleet; how many here.
    fn purge_tags(&self, tags: &[&str]) -> impl Future<Output = Result<u64>> + Send;
    /// The record stored under `key` here, without its body.
    fn entry_here(&self, key: &str) -> impl Future<Output = Result<Option<Entry>>> + Send;
    /// A page of the records `selection` picks, after the key hash `after`, and where the
    /// next page starts.
    fn entries(
        &self,
        selection: Selection,
        after: Option<Hash32>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<Entry>, Option<Hash32>)>> + Send;
}

impl CacheStore for StreamingManager {
    fn open(&self) -> impl Future<Output = Result<()>> + Send {
        StreamingManager::open(self)
    }
    fn known_unusable(&self) -> bool {
        StreamingManager::known_unusable(self)
    }
    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<StoredResponse>>> + Send {
        StreamingManager::lookup(self, key)
    }
    fn lookup_in_memory(&self, key: &str) -> Option<StoredResponse> {
        StreamingManager::lookup_in_memory(self, key)
    }
    fn stored_headers(&self, key: &str) -> impl Future<Output = Option<HeaderMap>> + Send {
        StreamingManager::stored_headers(self, key)
    }
    fn stored_headers_here(&self, key: &str) -> impl Future<Output = Option<HeaderMap>> + Send {
        StreamingManager::stored_headers_here(self, key)
    }
    fn admits(&self, key: &str) -> bool {
        StreamingManager::admits(self, key)
    }
    fn update_headers(
        &self,
        key: &str,
        headers: HeaderMap,
        policy: CachePolicy,
    ) -> impl Future<Output = Result<Option<(Response<StreamingBody>, CachePolicy)>>> + Send {
        StreamingManager::update_headers(self, key, headers, policy)
    }
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send {
        StreamingManager::delete(self, key)
    }
    fn forget(&self, key: &str) -> impl Future<Output = Result<()>> + Send {
        StreamingManager::forget(self, key)
    }
    fn remove_where<F>(&self, unwanted: F) -> impl Future<Output = Result<u64>> + Send
    where
        F: Fn(&Entry) -> bool + Send + 'static,
    {
        StreamingManager::remove_where(self, unwanted)
    }
    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send {
        StreamingManager::stats(self)
    }
    fn put<B>(
        &self,
        key: String,
        response: Response<B>,
        policy: CachePolicy,
        url: Url,
    ) -> impl Future<Output = Result<Response<StreamingBody>>> + Send
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        StreamingManager::put(self, key, response, policy, url)
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
        StreamingManager::tee_or_refuse(self, key, response, policy, url, leader)
    }
    fn join_fill(&self, key: &str, background: Option<Background>, wait: Duration) -> Role {
        StreamingManager::join_fill(self, key, background, wait)
    }
    fn fills_in_flight(&self) -> usize {
        StreamingManager::fills_in_flight(self)
    }
    fn partial(&self, key: &str) -> Option<Arc<PartialEntry>> {
        StreamingManager::partial(self, key)
    }
    fn partial_for(
        &self,
        key: &str,
        etag: &str,
        total: u64,
        head: PartialHead,
    ) -> impl Future<Output = Result<Arc<PartialEntry>>> + Send {
        StreamingManager::partial_for(self, key, etag, total, head)
    }
    fn drop_partial(&self, key: &str) {
        StreamingManager::drop_partial(self, key)
    }
    fn fleet_fills(&self) -> Option<&FleetFills> {
        StreamingManager::fleet_fills(self)
    }
    fn take_lease(
        &self,
        key: &str,
        unreachable: Option<&str>,
    ) -> impl Future<Output = Lease> + Send {
        StreamingManager::take_lease(self, key, unreachable)
    }
    fn for_peer(&self, key: &str, wait: Duration) -> impl Future<Output = ForPeer> + Send {
        StreamingManager::for_peer(self, key, wait)
    }
    fn shares_purges(&self) -> bool {
        StreamingManager::shares_purges(self)
    }
    fn publish_prefix_purge(&self, prefix: &str) -> impl Future<Output = Result<()>> + Send {
        StreamingManager::publish_prefix_purge(self, prefix)
    }
    fn tag_fields(&self) -> &[HeaderName] {
        StreamingManager::tag_fields(self)
    }
    fn purge_tags(&self, tags: &[&str]) -> impl Future<Output = Result<u64>> + Send {
        StreamingManager::purge_tags(self, tags.iter().copied())
    }
    fn entry_here(&self, key: &str) -> impl Future<Output = Result<Option<Entry>>> + Send {
        StreamingManager::entry_here(self, key)
    }
    fn entries(
        &self,
        selection: Selection,
        after: Option<Hash32>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<Entry>, Option<Hash32>)>> + Send {
        StreamingManager::entries(self, selection, after, limit)
    }
}

/// The store a cache is over: the manager it was made with, or (in the cache's unit tests)
/// one in memory. Each operation goes to the one it holds, with no allocation or dynamic
/// call on the way.
#[derive(Clone)]
pub(crate) enum Backing {
    /// The manager the cache was made with.
    Disk(StreamingManager),
    /// A store in memory, for the rules' unit tests.
    #[cfg(test)]
    Memory(memory::MemoryStore),
}

/// Runs `$call` on the store `$backing` holds, bound to `$store`.
macro_rules! each {
    ($backing:expr, $store:ident => $call:expr) => {
        match $backing {
            Backing::Disk($store) => $call,
            #[cfg(test)]
            Backing::Memory($store) => $call,
        }
    };
}

impl Backing {
    /// The manager a cache was made with. A cache over memory has one that is never opened.
    pub(crate) fn manager(&self) -> &StreamingManager {
        match self {
            Backing::Disk(manager) => manager,
            #[cfg(test)]
            Backing::Memory(memory) => memory.unopened(),
        }
    }
}

impl CacheStore for Backing {
    async fn open(&self) -> Result<()> {
        each!(self, s => s.open().await)
    }
    fn known_unusable(&self) -> bool {
        each!(self, s => CacheStore::known_unusable(s))
    }
    async fn lookup(&self, key: &str) -> Result<Option<StoredResponse>> {
        each!(self, s => CacheStore::lookup(s, key).await)
    }
    fn lookup_in_memory(&self, key: &str) -> Option<StoredResponse> {
        each!(self, s => CacheStore::lookup_in_memory(s, key))
    }
    async fn stored_headers(&self, key: &str) -> Option<HeaderMap> {
        each!(self, s => CacheStore::stored_headers(s, key).await)
    }
    async fn stored_headers_here(&self, key: &str) -> Option<HeaderMap> {
        each!(self, s => CacheStore::stored_headers_here(s, key).await)
    }
    fn admits(&self, key: &str) -> bool {
        each!(self, s => CacheStore::admits(s, key))
    }
    async fn update_headers(
        &self,
        key: &str,
        headers: HeaderMap,
        policy: CachePolicy,
    ) -> Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        each!(self, s => CacheStore::update_headers(s, key, headers, policy).await)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        each!(self, s => CacheStore::delete(s, key).await)
    }
    async fn forget(&self, key: &str) -> Result<()> {
        each!(self, s => CacheStore::forget(s, key).await)
    }
    async fn remove_where<F>(&self, unwanted: F) -> Result<u64>
    where
        F: Fn(&Entry) -> bool + Send + 'static,
    {
        each!(self, s => CacheStore::remove_where(s, unwanted).await)
    }
    async fn stats(&self) -> Result<StoreStats> {
        each!(self, s => CacheStore::stats(s).await)
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
        each!(self, s => CacheStore::put(s, key, response, policy, url).await)
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
        each!(self, s => CacheStore::tee_or_refuse(s, key, response, policy, url, leader))
    }
    fn join_fill(&self, key: &str, background: Option<Background>, wait: Duration) -> Role {
        each!(self, s => CacheStore::join_fill(s, key, background, wait))
    }
    fn fills_in_flight(&self) -> usize {
        each!(self, s => CacheStore::fills_in_flight(s))
    }
    fn partial(&self, key: &str) -> Option<Arc<PartialEntry>> {
        each!(self, s => CacheStore::partial(s, key))
    }
    async fn partial_for(
        &self,
        key: &str,
        etag: &str,
        total: u64,
        head: PartialHead,
    ) -> Result<Arc<PartialEntry>> {
        each!(self, s => CacheStore::partial_for(s, key, etag, total, head).await)
    }
    fn drop_partial(&self, key: &str) {
        each!(self, s => CacheStore::drop_partial(s, key))
    }
    fn fleet_fills(&self) -> Option<&FleetFills> {
        each!(self, s => CacheStore::fleet_fills(s))
    }
    async fn take_lease(&self, key: &str, unreachable: Option<&str>) -> Lease {
        each!(self, s => CacheStore::take_lease(s, key, unreachable).await)
    }
    async fn for_peer(&self, key: &str, wait: Duration) -> ForPeer {
        each!(self, s => CacheStore::for_peer(s, key, wait).await)
    }
    fn shares_purges(&self) -> bool {
        each!(self, s => CacheStore::shares_purges(s))
    }
    async fn publish_prefix_purge(&self, prefix: &str) -> Result<()> {
        each!(self, s => CacheStore::publish_prefix_purge(s, prefix).await)
    }
    fn tag_fields(&self) -> &[HeaderName] {
        each!(self, s => CacheStore::tag_fields(s))
    }
    async fn purge_tags(&self, tags: &[&str]) -> Result<u64> {
        each!(self, s => CacheStore::purge_tags(s, tags).await)
    }
    async fn entry_here(&self, key: &str) -> Result<Option<Entry>> {
        each!(self, s => CacheStore::entry_here(s, key).await)
    }
    async fn entries(
        &self,
        selection: Selection,
        after: Option<Hash32>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Hash32>)> {
        each!(self, s => CacheStore::entries(s, selection, after, limit).await)
    }
}
