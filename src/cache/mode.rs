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

/// The name of each mode, as [`FromStr`](std::str::FromStr) reads it and
/// [`Display`](std::fmt::Display) writes it (as the Fetch standard's `cache` modes are
/// written).
const NAMES: [(CacheMode, &str); 7] = [
    (CacheMode::Default, "default"),
    (CacheMode::NoStore, "no-store"),
    (CacheMode::Reload, "reload"),
    (CacheMode::NoCache, "no-cache"),
    (CacheMode::ForceCache, "force-cache"),
    (CacheMode::OnlyIfCached, "only-if-cached"),
    (CacheMode::IgnoreRules, "ignore-rules"),
];

impl CacheMode {
    /// The names of every mode: `default`, `no-store`, `reload`, `no-cache`, `force-cache`,
    /// `only-if-cached`, `ignore-rules`.
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(_, name)| *name)
    }
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = NAMES
            .iter()
            .find(|(mode, _)| mode == self)
            .map_or("default", |(_, name)| name);
        f.write_str(name)
    }
}

/// Reads a mode by its name (`no-store`, `force-cache`...), as configuration files and
/// command lines write it.
///
/// ```
/// use http_cache_streaming::CacheMode;
/// assert_eq!("force-cache".parse::<CacheMode>(), Ok(CacheMode::ForceCache));
/// assert!("sometimes".parse::<CacheMode>().is_err());
/// ```
impl std::str::FromStr for CacheMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        NAMES
            .iter()
            .find(|(_, known)| known.eq_ignore_ascii_case(name.trim()))
            .map(|(mode, _)| *mode)
            .ok_or_else(|| {
                let names: Vec<_> = CacheMode::names().collect();
                format!("{name:?} is not a cache mode ({})", names.join(", "))
            })
    }
}
