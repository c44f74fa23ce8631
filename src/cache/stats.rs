//! What a cache has done, counted as it happens: its counters, and [`CacheStats`], what
//! [`HttpStreamingCache::stats`] reads of them and of the store.

use crate::cache_store::CacheStore as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::HttpStreamingCache;
use crate::store::StoreStats;

/// What the cache has done since it was made, counted as it happens.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Whether the background sweep of expired entries has been started.
    pub(super) sweeping: std::sync::atomic::AtomicBool,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) stale_served: AtomicU64,
    pub(super) revalidations: AtomicU64,
    pub(super) passes: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) invalidations_here: AtomicU64,
    pub(super) trip_misses: AtomicU64,
    pub(super) trip_stale: AtomicU64,
    pub(super) trip_revalidated: AtomicU64,
    pub(super) trip_passes: AtomicU64,
}

/// Counts one event in `counter` and, with the `metrics` feature, in the `metrics` counter
/// `name`.
pub(super) fn count(counter: &AtomicU64, name: crate::Counter) {
    counter.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!(name.name()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

/// What a cache holds and has done: [`HttpStreamingCache::stats`]. Serialises (serde) as
/// a JSON object of the same names, for a stats route.
///
/// Each response the cache answers is counted once, in one of `hits`, `stale_served`,
/// `misses`, `revalidations` and `passes` (but for the `502`/`504` it makes itself): their
/// sum is the requests answered, and `hits / (hits + stale_served + misses + revalidations)`
/// the hit ratio of what it may serve. Each request sent to the origin is counted once in
/// [`origin`](Self::origin), by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// What the store holds, and how many entries it evicted.
    pub store: StoreStats,
    /// Responses served fresh from the store without asking the origin.
    pub hits: u64,
    /// Requests answered by a response the origin sent anew, because nothing usable was
    /// stored: nothing at all, another variant, or a stale response the origin replaced.
    /// Those that followed another request's fetch of the same key are counted too.
    pub misses: u64,
    /// Stale responses served: within `stale-while-revalidate` or `stale-if-error`, or
    /// the layer's `stale_on_error`.
    pub stale_served: u64,
    /// Stored responses the origin confirmed with `304 Not Modified`, then served.
    pub revalidations: u64,
    /// Requests the cache passed to the origin without looking up: a method it does not
    /// serve (`POST`, `OPTIONS`...), a request whose mode is `NoStore`, one it cannot key.
    /// (A `Reload` is a miss: its answer is stored.)
    pub passes: u64,
    /// Store failures that requests passed through.
    pub errors: u64,
    /// Responses being fetched and stored now (each followed by the requests for the same
    /// key that arrived meanwhile).
    pub fills_in_flight: u64,
    /// Invalidations by unsafe requests that removed this node's copy (and the shared
    /// tier's) but did not go to the fleet's purge log: another of the same key had within
    /// the second, or past [`fleet_invalidation_rate`](crate::HttpCacheOptions::fleet_invalidation_rate).
    pub invalidations_not_shared: u64,
    /// Requests sent to the origin, by cause.
    pub origin: OriginRequests,
}

/// Requests a cache sent to the origin, each counted once, by cause (its
/// [`stats`](HttpStreamingCache::stats)). Requests that followed another's fetch of the
/// same key sent none; revalidations in the background (`stale-while-revalidate`) count, and
/// so do fetches a peer of the fleet answered for the origin, and requests the service
/// behind the cache failed to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct OriginRequests {
    /// For nothing usable stored.
    pub misses: u64,
    /// To revalidate a stale response, answered with a new one (or an error).
    pub stale: u64,
    /// To revalidate a stale response, answered `304 Not Modified`.
    pub revalidated: u64,
    /// Passed without a lookup (see [`CacheStats::passes`]), invalidations included.
    pub passes: u64,
}

impl OriginRequests {
    /// Every request sent to the origin.
    pub fn total(&self) -> u64 {
        self.misses + self.stale + self.revalidated + self.passes
    }
}

impl HttpStreamingCache {
    /// What the store holds and what this cache has done since it was made. A store that
    /// cannot be opened holds nothing: its counters are zero, and the cache's are read
    /// (its `errors` say how many requests met it).
    pub async fn stats(&self) -> crate::Result<CacheStats> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = &self.counters;
        let store = match self.store.stats().await {
            Ok(store) => store,
            Err(_) if self.store.known_unusable() => StoreStats::default(),
            Err(error) => return Err(error),
        };
        Ok(CacheStats {
            store,
            hits: load(&counters.hits),
            misses: load(&counters.misses),
            stale_served: load(&counters.stale_served),
            revalidations: load(&counters.revalidations),
            passes: load(&counters.passes),
            errors: load(&counters.errors),
            fills_in_flight: self.store.fills_in_flight() as u64,
            invalidations_not_shared: load(&counters.invalidations_here),
            origin: OriginRequests {
                misses: load(&counters.trip_misses),
                stale: load(&counters.trip_stale),
                revalidated: load(&counters.trip_revalidated),
                passes: load(&counters.trip_passes),
            },
        })
    }
}
