//! [`Counter`]: the names of the counters the cache reports with the `metrics` feature, one
//! list for the crate that counts them and for the tools (the proxy's `/metrics`) that show
//! them before their first count.

/// A counter the cache counts, as the `metrics` feature names it
/// (`http_cache_streaming_…_total`). [`Counter::ALL`] lists them, so that an exporter can
/// show each at zero before its first count and dashboards find every series from the
/// start.
///
/// ```
/// use http_cache_streaming::Counter;
///
/// assert_eq!(Counter::Hits.name(), "http_cache_streaming_hits_total");
/// assert!(Counter::ALL.contains(&Counter::OriginRequests));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Counter {
    /// Fresh responses served from the store.
    Hits,
    /// Responses the origin sent anew.
    Misses,
    /// Stale responses served (`stale-while-revalidate`, `stale-if-error`, the stale-on-error
    /// window).
    StaleServed,
    /// Stored responses a `304` freshened.
    Revalidations,
    /// Requests passed to the origin without the cache (methods it does not serve, `no-store`).
    Passes,
    /// Store failures a request passed through.
    Errors,
    /// Entries evicted to stay within the store's bounds.
    Evictions,
    /// Purges read from the fleet's purge log and applied here.
    FleetPurgesApplied,
    /// Invalidations past the fleet's rate, applied on this node only.
    InvalidationsNotShared,
    /// Requests sent to the origin, by the label `cause` (`misses`, `stale`, `revalidated`,
    /// `passes`).
    OriginRequests,
}

impl Counter {
    /// Every counter, in the order above.
    pub const ALL: [Counter; 10] = [
        Counter::Hits,
        Counter::Misses,
        Counter::StaleServed,
        Counter::Revalidations,
        Counter::Passes,
        Counter::Errors,
        Counter::Evictions,
        Counter::FleetPurgesApplied,
        Counter::InvalidationsNotShared,
        Counter::OriginRequests,
    ];

    /// The causes [`Counter::OriginRequests`] is labelled with.
    pub const ORIGIN_CAUSES: [&'static str; 4] = ["misses", "stale", "revalidated", "passes"];

    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Hits => "http_cache_streaming_hits_total",
            Counter::Misses => "http_cache_streaming_misses_total",
            Counter::StaleServed => "http_cache_streaming_stale_served_total",
            Counter::Revalidations => "http_cache_streaming_revalidations_total",
            Counter::Passes => "http_cache_streaming_passes_total",
            Counter::Errors => "http_cache_streaming_errors_total",
            Counter::Evictions => "http_cache_streaming_evictions_total",
            Counter::FleetPurgesApplied => "http_cache_streaming_fleet_purges_applied_total",
            Counter::InvalidationsNotShared => {
                "http_cache_streaming_invalidations_not_shared_total"
            }
            Counter::OriginRequests => "http_cache_streaming_origin_requests_total",
        }
    }
}
