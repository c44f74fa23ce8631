//! [`CacheMode`]: how the cache treats a request, set on the layer and overridable per request.

/// How the cache treats a request. The layer's mode is set with
/// [`HttpCacheOptions::mode`](crate::HttpCacheOptions::mode) or computed per request with
/// [`HttpCacheOptions::mode_fn`](crate::HttpCacheOptions::mode_fn); a `CacheMode` put in
/// a request's extensions overrides both for that request:
///
/// ```
/// use http_cache_streaming::CacheMode;
/// let mut request = http::Request::get("https://example.com/").body(()).unwrap();
/// request.extensions_mut().insert(CacheMode::Reload);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheMode {
    /// RFC 9111: fresh stored responses are served, stale ones revalidated, storable
    /// responses stored.
    #[default]
    Default,
    /// The cache is not involved: nothing is looked up or stored.
    NoStore,
    /// Nothing is looked up; the response from the origin is stored if storable.
    Reload,
    /// A stored response is always revalidated with the origin before it is used.
    NoCache,
    /// Any stored response is used however stale; without one, the origin is asked and its
    /// response stored.
    ForceCache,
    /// Any stored response is used however stale; without one the answer is
    /// `504 Gateway Timeout` and the origin is not asked.
    OnlyIfCached,
    /// Caching headers are ignored: every successful response is stored and every stored
    /// response is used without revalidation.
    IgnoreRules,
}

impl CacheMode {
    /// Whether a stored response is used whatever its freshness.
    pub(crate) fn ignores_staleness(self) -> bool {
        matches!(
            self,
            CacheMode::ForceCache | CacheMode::OnlyIfCached | CacheMode::IgnoreRules
        )
    }
}
