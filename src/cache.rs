//! [`HttpStreamingCache`]: the RFC 9111 decisions (lookup, freshness, revalidation, storing,
//! invalidation) over a [`StreamingManager`]. It knows nothing of files: every byte goes
//! through the manager.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, request};
use http_body::Body;
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};

use crate::body::StreamingBody;
use crate::error::BoxError;
use crate::key;
use crate::mode::CacheMode;
use crate::range;
use crate::store::fill::{Background, FillEnd, FillHead, FillLeader, Followed, Role};
use crate::store::record::Entry;
use crate::store::{StoreStats, StreamingManager};

/// A boxed future the cache's slower steps run as.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

type KeyFn = Arc<dyn Fn(&request::Parts) -> String + Send + Sync>;
type ModeFn = Arc<dyn Fn(&request::Parts) -> CacheMode + Send + Sync>;
type BustFn = Arc<dyn Fn(&request::Parts, &str) -> Vec<String> + Send + Sync>;
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The header of a URL's variant list record: the list's generation. Origin responses that
/// carry it lose it before they are stored, so that no response can pass for a list.
const VARIANTS: HeaderName = HeaderName::from_static("x-http-cache-streaming-variants");
/// The header of a variant list record naming (by digest) the variants stored under it, so
/// that removing the list removes them too rather than leaving them on disk.
const STORED_VARIANTS: HeaderName = HeaderName::from_static("x-http-cache-streaming-stored");
/// The most variants a URL keeps, each named by its list; more pass through unstored.
const MAX_LISTED_VARIANTS: usize = 64;

/// Response headers that describe one connection, not the response (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Header fields a `304` may not change in the stored response, since the stored body stays.
const KEPT_ON_REVALIDATION: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// Fills read on at once with nobody reading them, by default.
const BACKGROUND_FILLS: usize = 8;
/// How far each of them reads once alone, by default.
const BACKGROUND_BYTES: u64 = 1 << 30;

/// How the cache behaves: options that users of http-cache rely on, with builder methods.
///
/// ```
/// use std::time::Duration;
/// use http_cache_streaming::{CacheMode, HttpCacheOptions};
///
/// let options = HttpCacheOptions::default()
///     .shared(false)
///     .max_ttl(Duration::from_secs(600))
///     .cache_key(|parts| format!("{}:{}", parts.method, parts.uri))
///     .mode_fn(|parts| {
///         if parts.uri.path().starts_with("/admin") {
///             CacheMode::NoStore
///         } else {
///             CacheMode::Default
///         }
///     });
/// ```
#[derive(Clone)]
pub struct HttpCacheOptions {
    shared: bool,
    mode: CacheMode,
    mode_fn: Option<ModeFn>,
    cache_key: Option<KeyFn>,
    cache_bust: Option<BustFn>,
    max_ttl: Option<Duration>,
    cache_status: Option<String>,
    x_cache: bool,
    clock: Clock,
    coalesce: bool,
    coalesce_wait: Duration,
    complete_on_disconnect: Option<bool>,
    background: Background,
    stale_if_error: Option<Duration>,
    sweep_every: Option<Duration>,
    fetch_whole_on_range_miss: bool,
}

impl Default for HttpCacheOptions {
    fn default() -> Self {
        HttpCacheOptions {
            shared: true,
            mode: CacheMode::Default,
            mode_fn: None,
            cache_key: None,
            cache_bust: None,
            max_ttl: None,
            cache_status: Some("http-cache-streaming".into()),
            x_cache: false,
            clock: Arc::new(SystemTime::now),
            coalesce: true,
            coalesce_wait: Duration::from_secs(10),
            complete_on_disconnect: None,
            background: Background::new(BACKGROUND_FILLS, BACKGROUND_BYTES),
            stale_if_error: None,
            sweep_every: None,
            fetch_whole_on_range_miss: false,
        }
    }
}

impl fmt::Debug for HttpCacheOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheOptions")
            .field("shared", &self.shared)
            .field("mode", &self.mode)
            .field("mode_fn", &self.mode_fn.is_some())
            .field("cache_key", &self.cache_key.is_some())
            .field("cache_bust", &self.cache_bust.is_some())
            .field("max_ttl", &self.max_ttl)
            .field("cache_status", &self.cache_status)
            .field("x_cache", &self.x_cache)
            .field("coalesce", &self.coalesce)
            .field("coalesce_wait", &self.coalesce_wait)
            .field("complete_on_disconnect", &self.complete_on_disconnect)
            .field("background_fills", &self.background.limits())
            .field("stale_if_error", &self.stale_if_error)
            .field("sweep_every", &self.sweep_every)
            .field("fetch_whole_on_range_miss", &self.fetch_whole_on_range_miss)
            .finish_non_exhaustive()
    }
}

impl HttpCacheOptions {
    /// A shared cache (the default: right for a server or a proxy) stores no `private`
    /// responses and honours `s-maxage`; a private cache (`false`: right for one user's
    /// client) stores `private` responses and ignores `s-maxage`.
    pub fn shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// The mode of every request that neither [`mode_fn`](Self::mode_fn) nor a request
    /// extension sets.
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// Chooses the mode of each request from its head. A [`CacheMode`] in the request's
    /// extensions still wins.
    pub fn mode_fn(
        mut self,
        f: impl Fn(&request::Parts) -> CacheMode + Send + Sync + 'static,
    ) -> Self {
        self.mode_fn = Some(Arc::new(f));
        self
    }

    /// Computes the key a request's response is stored under, in place of
    /// `METHOD:scheme://authority/path?query`. GET and HEAD requests must map to the same
    /// key for a HEAD to be answered from a stored GET.
    pub fn cache_key(
        mut self,
        f: impl Fn(&request::Parts) -> String + Send + Sync + 'static,
    ) -> Self {
        self.cache_key = Some(Arc::new(f));
        self
    }

    /// Names further keys to remove when a request arrives: given the request and its own
    /// key, the keys to invalidate.
    pub fn cache_bust(
        mut self,
        f: impl Fn(&request::Parts, &str) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.cache_bust = Some(Arc::new(f));
        self
    }

    /// Caps how long a stored response counts as fresh, whatever its headers say; past the
    /// cap it is revalidated.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = Some(max_ttl);
        self
    }

    /// Names the cache in the RFC 9211 `Cache-Status` header added to every response
    /// (`http-cache-streaming` by default); `None` adds no such header.
    pub fn cache_status(mut self, name: Option<&str>) -> Self {
        self.cache_status = name.map(str::to_owned);
        self
    }

    /// Adds `x-cache` (`HIT`/`MISS`) and `x-cache-lookup` (whether anything was stored)
    /// headers, as http-cache does (off by default).
    pub fn x_cache_headers(mut self, on: bool) -> Self {
        self.x_cache = on;
        self
    }

    /// The clock freshness is computed with (the system clock by default); tests use it to
    /// let time pass.
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Collapses concurrent misses for one key into one request to the inner service (on by
    /// default). The others follow it: they get its response head as soon as it arrives and
    /// read its body from the file it is being written to, as it grows. A response that is
    /// not stored (or is another `Vary` variant) sends them to the inner service themselves.
    pub fn coalesce(mut self, on: bool) -> Self {
        self.coalesce = on;
        self
    }

    /// How long a collapsed request waits for the first one's response head before it asks
    /// the inner service itself (10 s by default).
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.coalesce_wait = wait;
        self
    }

    /// Whether a miss being stored is read to its end when its client goes away and nobody
    /// follows it. Default: yes in a shared cache (the next client wants it), no in a
    /// private one. With followers it is always read to its end.
    pub fn complete_on_disconnect(mut self, complete: bool) -> Self {
        self.complete_on_disconnect = Some(complete);
        self
    }

    /// Bounds the fills read on with nobody reading them (`complete_on_disconnect`, and
    /// the whole body behind a ranged miss once its client is gone): at most `at_once` at a
    /// time, each reading at most `bytes_each` more once alone. Past that a fill whose last
    /// reader left is given up and nothing is stored, so clients that ask and go away cannot
    /// make the cache fetch without end. Fills others follow are read on for them whatever
    /// the bound. Default: 8 at once, 1 GiB each.
    pub fn background_fills(mut self, at_once: usize, bytes_each: u64) -> Self {
        self.background = Background::new(at_once, bytes_each);
        self
    }

    /// Serves a stored response that has been stale for up to `window` when the origin
    /// fails to revalidate it (an error, or a 500, 502, 503 or 504), as if every response
    /// said `stale-if-error` (RFC 5861). Off by default; `must-revalidate` always wins.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Every `interval`, removes stored responses that can no longer be used: stale, with
    /// no validator to revalidate them with (no `ETag`, no `Last-Modified`), and past every
    /// stale window (`stale-while-revalidate`, `stale-if-error`, this layer's
    /// [`stale_if_error`](Self::stale_if_error)). Off by default (modes such as
    /// `ForceCache` serve such responses). The sweep runs on a task of its own, started
    /// with the first request, and ends with the cache.
    pub fn sweep_expired_every(mut self, interval: Duration) -> Self {
        self.sweep_every = Some(interval);
        self
    }

    /// What a `Range` request that misses does: by default it goes to the origin as it is,
    /// and the partial answer is not stored. With `true`, the whole response is fetched
    /// (without `Range`) and stored, and the client is answered its range from the file as
    /// it is written; the next requests, ranged or not, are hits.
    pub fn fetch_whole_on_range_miss(mut self, on: bool) -> Self {
        self.fetch_whole_on_range_miss = on;
        self
    }

    fn semantics(&self) -> CacheOptions {
        CacheOptions {
            shared: self.shared,
            ..CacheOptions::default()
        }
    }
}

/// The HTTP cache: RFC 9111 decisions over a [`StreamingManager`]. Wrap a service with it
/// through [`HttpCacheStreamingLayer`](crate::HttpCacheStreamingLayer).
///
/// ```
/// use http_cache_streaming::{HttpCacheOptions, HttpCacheStreamingLayer, HttpStreamingCache};
/// use http_cache_streaming::StreamingManager;
///
/// let manager = StreamingManager::new("./cache".into());
/// let cache = HttpStreamingCache::new(manager)
///     .with_options(HttpCacheOptions::default().shared(false));
/// let layer = HttpCacheStreamingLayer::from(cache);
/// ```
#[derive(Clone)]
pub struct HttpStreamingCache {
    manager: StreamingManager,
    options: Arc<HttpCacheOptions>,
    counters: Arc<Counters>,
}

/// What the cache has done since it was made, counted as it happens.
#[derive(Debug, Default)]
struct Counters {
    /// Whether the background sweep of expired entries has been started.
    sweeping: std::sync::atomic::AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    revalidations: AtomicU64,
    errors: AtomicU64,
}

/// Counts one event in `counter` and, with the `metrics` feature, in the `metrics` counter
/// `name`.
fn count(counter: &AtomicU64, name: &'static str) {
    counter.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!(name).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

/// What a cache holds and has done: [`HttpStreamingCache::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// What the store holds, and how many entries it evicted.
    pub store: StoreStats,
    /// Responses served from the store without asking the origin.
    pub hits: u64,
    /// Requests that found nothing usable stored and went to the origin.
    pub misses: u64,
    /// Stale responses served: within `stale-while-revalidate` or `stale-if-error`.
    pub stale_served: u64,
    /// Stored responses the origin confirmed with `304 Not Modified`.
    pub revalidations: u64,
    /// Store failures that requests passed through.
    pub errors: u64,
}

impl fmt::Debug for HttpStreamingCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStreamingCache")
            .field("manager", &self.manager)
            .field("options", &self.options)
            .finish()
    }
}

// Values of these enums are returned and moved once, never kept: their size costs nothing.
/// How a request starts: answered at once (a hit in memory), straight to the inner
/// service, or after a lookup.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Start {
    Ready(Response<StreamingBody>),
    Forward(request::Parts, Pending),
    Lookup(BoxFuture<(Plan, request::Parts)>),
}

/// What a lookup decided.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Plan {
    /// Answer with this; the inner service is not called.
    Respond(Response<StreamingBody>),
    /// Call the inner service, with `conditional` replacing the request's validators when
    /// it is a revalidation.
    Forward {
        conditional: Option<HeaderMap>,
        pending: Pending,
    },
    /// Answer with `response` (a stale entry, within `stale-while-revalidate`) and
    /// revalidate it in the background: the inner service is called as for `Forward`, and
    /// its answer stored, on a task of its own.
    Background {
        response: Response<StreamingBody>,
        conditional: Option<HeaderMap>,
        pending: Pending,
    },
}

/// What the cache does with the inner service's answer.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Finished {
    Ready(Response<StreamingBody>),
    Later(BoxFuture<Response<StreamingBody>>),
}

/// A request forwarded to the inner service, and what to do with its answer.
pub(crate) struct Pending {
    cache: HttpStreamingCache,
    request: request::Parts,
    key: String,
    mode: CacheMode,
    action: Action,
    /// A ranged miss fetching the whole response: the client's range, answered from the
    /// stored body as it is written.
    range: Option<HeaderMap>,
}

enum Action {
    /// Not the cache's business (mode `NoStore`, or a method it does not cache).
    Pass,
    /// An unsafe method: on success, remove what is stored for its URL.
    Invalidate,
    /// A miss or a revalidation: store the answer if it may be stored.
    Fetch {
        fwd: &'static str,
        stale: Option<Box<Stale>>,
        lookup_found: bool,
        /// Requests for the same key that arrive meanwhile follow this one's fill.
        leader: Option<FillLeader>,
    },
}

/// A stored response being revalidated.
struct Stale {
    response: Response<StreamingBody>,
    entry: Arc<Entry>,
    key: String,
}

/// What a lookup found under a request's key.
#[allow(clippy::large_enum_variant)]
enum Found {
    Nothing { fwd: &'static str },
    Entry(Response<StreamingBody>, Arc<Entry>, String),
}

impl HttpStreamingCache {
    /// A cache over `manager` with default options: a shared cache, RFC 9111 rules.
    pub fn new(manager: StreamingManager) -> Self {
        HttpStreamingCache {
            manager,
            options: Arc::new(HttpCacheOptions::default()),
            counters: Arc::default(),
        }
    }

    /// What the store holds and what this cache has done since it was made.
    pub async fn stats(&self) -> crate::Result<CacheStats> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = &self.counters;
        Ok(CacheStats {
            store: self.manager.stats().await?,
            hits: load(&counters.hits),
            misses: load(&counters.misses),
            stale_served: load(&counters.stale_served),
            revalidations: load(&counters.revalidations),
            errors: load(&counters.errors),
        })
    }

    /// Removes what is stored for `url` (every variant of its GET, which HEAD shares), and
    /// says whether anything was. The key is computed as for a request, with the custom
    /// `cache_key` when there is one.
    pub async fn purge(&self, url: &str) -> crate::Result<bool> {
        let request = Request::get(url).body(()).map_err(|e| {
            crate::Error::new(crate::ErrorKind::InvalidInput)
                .with_subject(url.to_owned())
                .with_source(e)
        })?;
        let key = self.key(&request.into_parts().0);
        self.remove(&key).await
    }

    /// Removes what is stored under `key`: the response, or the variant list and the
    /// variants it names. `true` when something was stored.
    async fn remove(&self, key: &str) -> crate::Result<bool> {
        let stored = self.manager.stored_headers(key).await;
        if let Some(list) = &stored {
            self.remove_variants(key, list).await?;
        }
        self.manager.delete(key).await?;
        Ok(stored.is_some())
    }

    /// Removes the variants a variant list record (`list`, under `key`) names.
    async fn remove_variants(&self, key: &str, list: &HeaderMap) -> crate::Result<()> {
        let Some(generation) = variants_generation(list) else {
            return Ok(());
        };
        for digest in list.get_all(STORED_VARIANTS).iter() {
            if let Ok(digest) = digest.to_str() {
                let variant = key::variant_key_of(key, &generation, digest);
                self.manager.delete(&variant).await?;
            }
        }
        Ok(())
    }

    /// Names a variant about to be stored in its URL's list, so that it goes with the list.
    /// `false`: it cannot be named (the list is full, gone or unreadable) and must not be
    /// stored.
    async fn list_variant(&self, key: &str, generation: &str, digest: &str) -> bool {
        let Ok(Some((list, entry))) = self.manager.lookup(key).await else {
            return false;
        };
        drop(list.into_body());
        let headers = &entry.headers;
        let listed = headers.get_all(STORED_VARIANTS);
        if variants_generation(headers).as_deref() != Some(generation) {
            return false;
        }
        if listed.iter().any(|d| d.as_bytes() == digest.as_bytes()) {
            return true;
        }
        if listed.iter().count() >= MAX_LISTED_VARIANTS {
            crate::log::debug_event!(%key, "variant list full: a new variant passes unstored");
            return false;
        }
        let Ok(value) = HeaderValue::from_str(digest) else {
            return false;
        };
        let mut headers = headers.clone();
        headers.append(STORED_VARIANTS, value);
        match self
            .manager
            .update_headers(key, headers, entry.policy.clone())
            .await
        {
            Ok(_) => true,
            Err(error) => {
                crate::log::warn_event!(%key, %error, "could not list a variant");
                false
            }
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: HttpCacheOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// The store this cache uses.
    pub fn manager(&self) -> &StreamingManager {
        &self.manager
    }

    /// The options this cache uses.
    pub fn options(&self) -> &HttpCacheOptions {
        &self.options
    }

    fn now(&self) -> SystemTime {
        (self.options.clock)()
    }

    fn key(&self, parts: &request::Parts) -> String {
        match &self.options.cache_key {
            Some(f) => f(parts),
            None => key::primary_key(parts),
        }
    }

    fn mode(&self, parts: &request::Parts) -> CacheMode {
        parts
            .extensions
            .get::<CacheMode>()
            .copied()
            .or_else(|| self.options.mode_fn.as_ref().map(|f| f(parts)))
            .unwrap_or(self.options.mode)
    }

    /// Answers a request at once when it is a hit on a body held in memory: no lookup
    /// future, no hand-off. `None` sends it down the full path, which decides anew.
    fn hit_in_memory(
        &self,
        parts: &request::Parts,
        key: &str,
        mode: CacheMode,
    ) -> Option<Response<StreamingBody>> {
        let simple = (parts.method == Method::GET || parts.method == Method::HEAD)
            && !matches!(
                mode,
                CacheMode::NoStore | CacheMode::Reload | CacheMode::NoCache
            )
            && self.options.cache_bust.is_none();
        if !simple {
            return None;
        }
        let (mut response, mut entry) = self.manager.lookup_in_memory(key)?;
        if let Some(generation) = variants_generation(response.headers()) {
            let names = key::vary_names(response.headers())?;
            let variant = key::variant_key(key, &generation, &names, &parts.headers);
            (response, entry) = self.manager.lookup_in_memory(&variant)?;
        }
        if !self.admits(&entry, mode) {
            return None;
        }
        let now = self.now();
        let within_cap = self
            .options
            .max_ttl
            .is_none_or(|cap| entry.policy.age(now) < cap);
        let usable = match judge(&entry.policy, parts, now) {
            Judged::Fresh => within_cap || mode.ignores_staleness(),
            Judged::Stale => mode.ignores_staleness(),
            Judged::Mismatch => false,
        };
        usable.then(|| self.hit(parts, response, &entry.policy, now, "hit".into()))
    }

    /// Removes every stored response whose URL starts with `prefix` (every method and
    /// variant), and returns how many there were. It visits every entry.
    pub async fn purge_prefix(&self, prefix: &str) -> crate::Result<u64> {
        let prefix = prefix.to_owned();
        self.manager
            .remove_where(move |entry| entry.url.starts_with(&prefix))
            .await
    }

    /// Removes the stored responses that can no longer be used (see
    /// [`HttpCacheOptions::sweep_expired_every`]) and returns how many there were.
    pub async fn sweep_expired(&self) -> crate::Result<u64> {
        let now = self.now();
        let default_window = self.options.stale_if_error;
        self.manager
            .remove_where(move |entry| unusable(entry, now, default_window))
            .await
    }

    /// Starts the background sweep once, when one is asked for.
    fn start_sweeping(&self) {
        let Some(interval) = self.options.sweep_every else {
            return;
        };
        if self.counters.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.counters.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        // The task holds the cache weakly: it ends once the cache is dropped.
        let weak = (
            Arc::downgrade(&self.options),
            Arc::downgrade(&self.counters),
        );
        let manager = self.manager.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let (Some(options), Some(counters)) = (weak.0.upgrade(), weak.1.upgrade()) else {
                    return;
                };
                let cache = HttpStreamingCache {
                    manager: manager.clone(),
                    options,
                    counters,
                };
                match cache.sweep_expired().await {
                    Ok(0) => {}
                    Ok(removed) => crate::log::info_event!(removed, "swept expired entries"),
                    Err(error) => {
                        crate::log::warn_event!(%error, "sweeping expired entries failed")
                    }
                }
            }
        });
    }

    /// Decides how a request starts.
    pub(crate) fn start(&self, parts: request::Parts) -> Start {
        self.start_sweeping();
        let mode = if key::host_conflict(&parts) {
            // The origin may answer for the Host header's site while the key names the
            // URI's: storing that answer would serve it to the URI's users.
            crate::log::debug_event!(uri = %parts.uri, "Host differs from the URI's authority: not cached");
            CacheMode::NoStore
        } else if !key::authority_is_valid(&parts) {
            // No key is made of what is not a site's name: passed through, never stored,
            // and no stored entry is invalidated by it.
            crate::log::debug_event!(uri = %parts.uri, "no valid authority or Host: not cached");
            CacheMode::NoStore
        } else if key::is_fat_read(&parts) {
            // An origin may answer a GET by its body, which the key does not name.
            crate::log::debug_event!(uri = %parts.uri, "a GET or HEAD with a body: not cached");
            CacheMode::NoStore
        } else {
            self.mode(&parts)
        };
        let key = self.key(&parts);
        if let Some(response) = self.hit_in_memory(&parts, &key, mode) {
            return Start::Ready(response);
        }
        let action = if mode == CacheMode::NoStore {
            Action::Pass
        } else if parts.method == Method::GET || parts.method == Method::HEAD {
            let cache = self.clone();
            #[cfg(feature = "tracing")]
            let span = tracing::debug_span!("http_cache.lookup", %key, method = %parts.method);
            let lookup = async move {
                let plan = cache.plan(&parts, key, mode).await;
                (plan, parts)
            };
            #[cfg(feature = "tracing")]
            let lookup = tracing::Instrument::instrument(lookup, span);
            return Start::Lookup(Box::pin(lookup));
        } else if parts.method == Method::OPTIONS || parts.method == Method::TRACE {
            Action::Pass
        } else {
            Action::Invalidate
        };
        let pending = self.pending(&parts, key, mode, action);
        Start::Forward(parts, pending)
    }

    fn pending(
        &self,
        parts: &request::Parts,
        key: String,
        mode: CacheMode,
        action: Action,
    ) -> Pending {
        let mut request = request::Request::new(());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        Pending {
            cache: self.clone(),
            request: request.into_parts().0,
            key,
            mode,
            action,
            range: None,
        }
    }

    /// Looks the request up and decides: answer from the store, revalidate, or fetch.
    async fn plan(&self, parts: &request::Parts, key: String, mode: CacheMode) -> Plan {
        self.bust(parts, &key).await;
        let only_if_cached =
            mode == CacheMode::OnlyIfCached || has_directive(&parts.headers, "only-if-cached");
        let found = if mode == CacheMode::Reload {
            Found::Nothing { fwd: "request" }
        } else {
            self.find(parts, &key, mode).await
        };
        let (response, entry, stored_key) = match found {
            Found::Nothing { fwd } => {
                if only_if_cached {
                    return Plan::Respond(self.gateway_timeout(fwd, "only-if-cached"));
                }
                return self.miss(parts, key, mode, fwd, false).await;
            }
            Found::Entry(response, entry, stored_key) => (response, entry, stored_key),
        };
        let policy = &entry.policy;

        let now = self.now();
        let judged = judge(policy, parts, now);
        let within_cap = self.options.max_ttl.is_none_or(|cap| policy.age(now) < cap);
        match judged {
            Judged::Fresh if mode != CacheMode::NoCache && within_cap => {
                Plan::Respond(self.hit(parts, response, policy, now, "hit".into()))
            }
            Judged::Fresh | Judged::Stale if mode.ignores_staleness() => {
                Plan::Respond(self.hit(parts, response, policy, now, "hit".into()))
            }
            Judged::Mismatch => {
                // Stored for another variant or another host: this request's miss.
                if only_if_cached {
                    return Plan::Respond(self.gateway_timeout("miss", "only-if-cached"));
                }
                self.miss(parts, key, mode, "miss", true).await
            }
            Judged::Fresh | Judged::Stale if only_if_cached => {
                Plan::Respond(self.gateway_timeout("stale", "only-if-cached"))
            }
            Judged::Stale
                if mode == CacheMode::Default
                    && !must_revalidate(response.headers(), self.options.shared)
                    && directive_value(response.headers(), "stale-while-revalidate")
                        .and_then(|v| v.parse().ok())
                        .is_some_and(|s| {
                            stale_for_at_most(policy, now, Duration::from_secs(s))
                        }) =>
            {
                self.stale_while_revalidate(parts, key, response, &entry, stored_key, now)
                    .await
            }
            Judged::Fresh | Judged::Stale => {
                let view = policy_view(&parts.method, parts.headers.clone());
                let revalidation = validators(policy, &view);
                let stale = Box::new(Stale {
                    response,
                    entry: Arc::clone(&entry),
                    key: stored_key,
                });
                let revalidate = |leader| Action::Fetch {
                    fwd: "stale",
                    stale: Some(stale),
                    lookup_found: true,
                    leader,
                };
                let conditional = Some(revalidation);
                self.coalesced(parts, key, mode, ("stale", true), revalidate, conditional)
                    .await
            }
        }
    }

    /// Serves a stale entry within its `stale-while-revalidate` window at once, and starts
    /// its revalidation in the background unless one is under way for the key already.
    async fn stale_while_revalidate(
        &self,
        parts: &request::Parts,
        key: String,
        response: Response<StreamingBody>,
        entry: &Arc<Entry>,
        stored_key: String,
        now: SystemTime,
    ) -> Plan {
        count(
            &self.counters.stale_served,
            "http_cache_streaming_stale_served_total",
        );
        let status = "hit; detail=stale-while-revalidate".to_owned();
        let served = self.hit(parts, response, &entry.policy, now, status);
        let background = Some(self.options.background.clone());
        let Role::Leader(leader) = self.manager.join_fill(&key, background) else {
            return Plan::Respond(served); // a revalidation is under way
        };
        // The revalidation needs a handle on the stored response of its own.
        let Some((again, entry)) = self.lookup(&stored_key).await else {
            return Plan::Respond(served);
        };
        let view = policy_view(&parts.method, parts.headers.clone());
        let conditional = Some(validators(&entry.policy, &view));
        let stale = Box::new(Stale {
            response: again,
            entry,
            key: stored_key,
        });
        let action = Action::Fetch {
            fwd: "stale",
            stale: Some(stale),
            lookup_found: true,
            leader: Some(leader),
        };
        Plan::Background {
            response: served,
            conditional,
            pending: self.pending(parts, key, CacheMode::Default, action),
        }
    }

    /// A miss: lead a fill of the key, or follow the one under way and answer from it.
    async fn miss(
        &self,
        parts: &request::Parts,
        key: String,
        mode: CacheMode,
        fwd: &'static str,
        found: bool,
    ) -> Plan {
        count(&self.counters.misses, "http_cache_streaming_misses_total");
        let fetch = |leader| Action::Fetch {
            fwd,
            stale: None,
            lookup_found: found,
            leader,
        };
        self.coalesced(parts, key, mode, (fwd, found), fetch, None)
            .await
    }

    /// Sends the request on to the inner service as the leader of a fill of `key`, or
    /// follows the fill under way: its response head and body, or the entry it stored.
    /// Requests that could not take a stored response, and followers the leader's
    /// response is not for, go to the inner service on their own.
    async fn coalesced(
        &self,
        parts: &request::Parts,
        key: String,
        mode: CacheMode,
        (fwd, found): (&'static str, bool),
        action: impl FnOnce(Option<FillLeader>) -> Action,
        conditional: Option<HeaderMap>,
    ) -> Plan {
        let options = &self.options;
        // Only a request that would take a stored response may take one being stored.
        let takes_stored = matches!(
            mode,
            CacheMode::Default | CacheMode::ForceCache | CacheMode::IgnoreRules
        ) && !has_directive(&parts.headers, "no-cache")
            && !has_directive(&parts.headers, "no-store")
            && directive_value(&parts.headers, "max-age") != Some("0")
            && !has_pragma_no_cache(&parts.headers);
        if !options.coalesce || parts.method != Method::GET || !takes_stored {
            return self.forward(parts, key, mode, action(None), conditional);
        }
        let complete = options.complete_on_disconnect.unwrap_or(options.shared);
        let background = complete.then(|| options.background.clone());
        let mut follower = match self.manager.join_fill(&key, background) {
            Role::Leader(leader) => {
                let mut plan = self.forward(parts, key, mode, action(Some(leader)), conditional);
                if let Plan::Forward { pending, .. } = &mut plan
                    && options.fetch_whole_on_range_miss
                    && parts.headers.contains_key(header::RANGE)
                {
                    let mut range = HeaderMap::new();
                    for name in [header::RANGE, header::IF_RANGE] {
                        if let Some(value) = parts.headers.get(&name) {
                            range.insert(name, value.clone());
                        }
                    }
                    pending.range = Some(range);
                }
                return plan;
            }
            Role::Follower(follower) => follower,
        };
        match follower.head(options.coalesce_wait).await {
            Followed::Head(head) if same_variant(&head, &parts.headers) => {
                let (mut head_parts, policy) = (head.parts.clone(), head.policy.clone());
                head_parts.version = parts.version;
                // Followers are many: smaller reads keep each one's memory small.
                let chunk = 64 * 1024;
                let body = StreamingBody::follow(follower.body(chunk));
                let mut response = Response::from_parts(head_parts, body);
                let ttl = self.ttl(&policy, self.now());
                let status = format!("fwd={fwd}; collapsed; ttl={ttl}");
                self.annotate(response.headers_mut(), &status, false, found);
                Plan::Respond(response)
            }
            Followed::Stored => {
                drop(follower);
                // Stored or revalidated while this request waited: a hit, unless the
                // request wants more than the entry now offers.
                if let Found::Entry(response, entry, _) = self.find(parts, &key, mode).await {
                    let now = self.now();
                    if let Judged::Fresh = judge(&entry.policy, parts, now) {
                        let status = "hit; collapsed".to_owned();
                        let hit = self.hit(parts, response, &entry.policy, now, status);
                        return Plan::Respond(hit);
                    }
                }
                self.forward(parts, key, mode, action(None), conditional)
            }
            Followed::Head(_) | Followed::Alone => {
                self.forward(parts, key, mode, action(None), conditional)
            }
        }
    }

    fn forward(
        &self,
        parts: &request::Parts,
        key: String,
        mode: CacheMode,
        action: Action,
        conditional: Option<HeaderMap>,
    ) -> Plan {
        Plan::Forward {
            conditional,
            pending: self.pending(parts, key, mode, action),
        }
    }

    /// Finds the stored response for a request: under its key, or, when the key holds a
    /// URL's variant list, under the variant its headers select. A response this cache's
    /// storing rules refuse is not found (see [`admits`](Self::admits)).
    async fn find(&self, parts: &request::Parts, key: &str, mode: CacheMode) -> Found {
        let Some((response, entry)) = self.lookup(key).await else {
            return Found::Nothing { fwd: "uri-miss" };
        };
        let Some(generation) = variants_generation(response.headers()) else {
            if !self.admits(&entry, mode) {
                return Found::Nothing { fwd: "uri-miss" };
            }
            return Found::Entry(response, entry, key.to_owned());
        };
        let Some(names) = key::vary_names(response.headers()) else {
            return Found::Nothing { fwd: "vary-miss" };
        };
        let variant = key::variant_key(key, &generation, &names, &parts.headers);
        match self.lookup(&variant).await {
            Some((response, entry)) if self.admits(&entry, mode) => {
                Found::Entry(response, entry, variant)
            }
            _ => Found::Nothing { fwd: "vary-miss" },
        }
    }

    /// Whether a stored response may be served by this cache: one that its storing rules
    /// would have refused (written by a private cache into a shared tier or directory, or
    /// edited there: `private` or `Set-Cookie` without `public` in a shared cache, or
    /// `no-store` anywhere) is not, unless the request's mode ignores the rules. Nothing is
    /// trusted for being on disk or in a bucket.
    fn admits(&self, entry: &Entry, mode: CacheMode) -> bool {
        if mode == CacheMode::IgnoreRules {
            return true;
        }
        let headers = &entry.headers;
        let refused = has_directive(headers, "no-store")
            || (self.options.shared && has_directive(headers, "private"))
            || shared_cookie(self.options.shared, headers);
        if refused {
            crate::log::debug_event!(key = %entry.key, "a stored response this cache may not serve: a miss");
        }
        !refused
    }

    /// A store lookup; a store that fails is a miss, never a failed request.
    async fn lookup(&self, key: &str) -> Option<(Response<StreamingBody>, Arc<Entry>)> {
        match self.manager.lookup(key).await {
            Ok(found) => found,
            Err(error) => {
                count(&self.counters.errors, "http_cache_streaming_errors_total");
                crate::log::warn_event!(%key, %error, "cache lookup failed; forwarding the request");
                None
            }
        }
    }

    async fn delete(&self, key: &str) {
        if let Err(error) = self.remove(key).await {
            count(&self.counters.errors, "http_cache_streaming_errors_total");
            crate::log::warn_event!(%key, %error, "could not invalidate a cache entry");
        }
    }

    async fn bust(&self, parts: &request::Parts, key: &str) {
        if let Some(bust) = &self.options.cache_bust {
            for key in bust(parts, key) {
                self.delete(&key).await;
            }
        }
    }

    /// A stored response served: `Age` generated, the body dropped for a HEAD.
    fn hit(
        &self,
        parts: &request::Parts,
        response: Response<StreamingBody>,
        policy: &CachePolicy,
        now: SystemTime,
        status: String,
    ) -> Response<StreamingBody> {
        if status.starts_with("hit") && !status.contains("stale") {
            count(&self.counters.hits, "http_cache_streaming_hits_total");
        }
        let length = response.body().size_hint().exact();
        let (mut head, body) = response.into_parts();
        let age = policy.age(now).as_secs();
        head.headers.insert(header::AGE, HeaderValue::from(age));
        head.version = parts.version;
        let body = if parts.method == Method::HEAD {
            StreamingBody::empty()
        } else {
            body
        };
        let mut response = Response::from_parts(head, body);
        if parts.method == Method::GET
            && let Some(length) = length
        {
            response = range::apply(&parts.headers, response, length);
        }
        let ttl = self.ttl(policy, now);
        self.annotate(
            response.headers_mut(),
            &format!("{status}; ttl={ttl}"),
            true,
            true,
        );
        response
    }

    /// Seconds the response stays fresh (0 once stale), within `max_ttl`.
    fn ttl(&self, policy: &CachePolicy, now: SystemTime) -> u64 {
        let ttl = policy.time_to_live(now);
        let ttl = match self.options.max_ttl {
            Some(cap) => ttl.min(cap.saturating_sub(policy.age(now))),
            None => ttl,
        };
        ttl.as_secs()
    }

    fn gateway_timeout(&self, fwd: &str, detail: &str) -> Response<StreamingBody> {
        let mut response = Response::new(StreamingBody::empty());
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        self.annotate(
            response.headers_mut(),
            &format!("fwd={fwd}; detail={detail}"),
            false,
            fwd == "stale",
        );
        response
    }

    /// Adds this cache's `Cache-Status` entry (and the http-cache style headers if asked).
    fn annotate(&self, headers: &mut HeaderMap, status: &str, hit: bool, found: bool) {
        if let Some(name) = &self.options.cache_status
            && let Ok(value) = HeaderValue::try_from(format!("{name}; {status}"))
        {
            headers.append(HeaderName::from_static("cache-status"), value);
        }
        if self.options.x_cache {
            let word = |yes| HeaderValue::from_static(if yes { "HIT" } else { "MISS" });
            headers.insert(HeaderName::from_static("x-cache"), word(hit));
            headers.insert(HeaderName::from_static("x-cache-lookup"), word(found));
        }
    }

    /// The generation of a URL's variant list for `names`, writing a new list when there is
    /// none for them.
    async fn variant_generation(
        &self,
        key: &str,
        names: &[HeaderName],
        url: &url::Url,
        policy: &CachePolicy,
    ) -> Option<String> {
        if let Some((list, _)) = self.lookup(key).await
            && let Some(generation) = variants_generation(list.headers())
        {
            if key::vary_names(list.headers()).as_deref() == Some(names) {
                return Some(generation);
            }
            // The response now varies on other headers: the old list's variants go with it.
            if let Err(error) = self.remove_variants(key, list.headers()).await {
                crate::log::warn_event!(%key, %error, "could not remove old variants");
            }
        }
        let generation = new_generation();
        let vary = names
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let list = Response::builder()
            .header(header::VARY, vary)
            .header(VARIANTS, &generation)
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        match self
            .manager
            .put(key.to_owned(), list, policy.clone(), url.clone())
            .await
        {
            Ok(_) => Some(generation),
            Err(error) => {
                crate::log::warn_event!(%key, %error, "could not store a variant list");
                None
            }
        }
    }
}

impl Pending {
    /// What the cache does with the inner service's response.
    pub(crate) fn finish<B>(mut self, response: Response<B>) -> Finished
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match std::mem::replace(&mut self.action, Action::Pass) {
            Action::Pass => Finished::Ready(self.pass(response, "fwd=request")),
            Action::Invalidate => Finished::Later(Box::pin(self.invalidate(response))),
            Action::Fetch {
                fwd,
                stale,
                lookup_found,
                leader,
            } => match stale {
                Some(stale) if response.status() == StatusCode::NOT_MODIFIED => {
                    Finished::Later(Box::pin(self.revalidated(stale, response, leader)))
                }
                Some(stale)
                    if is_origin_failure(response.status()) && self.stale_on_error(&stale) =>
                {
                    let status = format!("fwd=stale; fwd-status={}", response.status().as_u16());
                    Finished::Ready(self.serve_stale(*stale, &status))
                }
                _ => self.store(response, fwd, lookup_found, leader),
            },
        }
    }

    /// Whether the request goes to the inner service without its `Range`: a ranged miss
    /// that fetches the whole response.
    pub(crate) fn fetches_whole(&self) -> bool {
        self.range.is_some()
    }

    /// What the cache answers when the inner service fails: a stored response that must not
    /// be served stale becomes a 504; otherwise the error stands.
    pub(crate) fn on_error<E>(mut self, error: E) -> Result<Response<StreamingBody>, E> {
        let Action::Fetch {
            stale: Some(stale), ..
        } = std::mem::replace(&mut self.action, Action::Pass)
        else {
            return Err(error);
        };
        if must_revalidate(stale.response.headers(), self.cache.options.shared) {
            return Ok(self.cache.gateway_timeout("stale", "origin-unreachable"));
        }
        if self.stale_on_error(&stale) {
            return Ok(self.serve_stale(*stale, "fwd=stale"));
        }
        Err(error)
    }

    /// Whether `stale` may stand in for an origin that failed: within a `stale-if-error`
    /// window of the response, of the request or of the layer's option (RFC 5861), and
    /// never when the response must be revalidated.
    fn stale_on_error(&self, stale: &Stale) -> bool {
        let headers = stale.response.headers();
        if must_revalidate(headers, self.cache.options.shared) {
            return false;
        }
        let seconds = |h: &HeaderMap| {
            directive_value(h, "stale-if-error")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
        };
        let window = [
            seconds(headers),
            seconds(&self.request.headers),
            self.cache.options.stale_if_error,
        ]
        .into_iter()
        .flatten()
        .max();
        window
            .is_some_and(|window| stale_for_at_most(&stale.entry.policy, self.cache.now(), window))
    }

    /// A stale response served in place of the origin's answer, saying so in
    /// `Cache-Status`.
    fn serve_stale(&self, stale: Stale, status: &str) -> Response<StreamingBody> {
        count(
            &self.cache.counters.stale_served,
            "http_cache_streaming_stale_served_total",
        );
        let now = self.cache.now();
        let status = format!("{status}; detail=stale-if-error");
        self.cache.hit(
            &self.request,
            stale.response,
            &stale.entry.policy,
            now,
            status,
        )
    }

    fn pass<B>(&self, response: Response<B>, status: &str) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut response = response.map(StreamingBody::pass);
        self.cache
            .annotate(response.headers_mut(), status, false, false);
        response
    }

    async fn invalidate<B>(self, response: Response<B>) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cache = &self.cache;
        cache.bust(&self.request, &self.key).await;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            let mut get = self.request.clone();
            get.method = Method::GET;
            cache.delete(&cache.key(&get)).await;
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let targets = response.headers().get_all(name).iter();
                for target in targets.filter_map(|v| v.to_str().ok()) {
                    if let Some(get) = key::same_origin_get(&self.request, target) {
                        cache.delete(&cache.key(&get)).await;
                    }
                }
            }
        }
        self.pass(response, "fwd=request")
    }

    /// A `304` to a revalidation: the stored response, with the `304`'s headers, served
    /// from disk and stored with them.
    async fn revalidated<B>(
        self,
        stale: Box<Stale>,
        response: Response<B>,
        leader: Option<FillLeader>,
    ) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cache = &self.cache;
        let now = cache.now();
        let (fresh_parts, _) = response.into_parts();
        if let AfterResponse::Modified(..) =
            stale
                .entry
                .policy
                .after_response(&self.request, &fresh_parts, now)
        {
            // The 304 answers validators of the client's own, not the stored response.
            let response = Response::from_parts(fresh_parts, http_body_util::Empty::<Bytes>::new());
            return self.pass(response, "fwd=stale; fwd-status=304");
        }
        count(
            &cache.counters.revalidations,
            "http_cache_streaming_revalidations_total",
        );
        let Stale {
            response: stored,
            entry: _,
            key: stored_key,
        } = *stale;
        let (stored_parts, stored_body) = stored.into_parts();
        let mut merged = stored_parts.headers.clone();
        // What the 304 says to the client that caused it alone: in a shared cache a cookie
        // set on one user's revalidation would be replayed to every user.
        let mut to_client_only = HeaderMap::new();
        for name in fresh_parts.headers.keys() {
            if KEPT_ON_REVALIDATION.contains(name) || is_hop_by_hop(name) || is_internal(name) {
                continue;
            }
            if cache.options.shared && *name == header::SET_COOKIE {
                for value in fresh_parts.headers.get_all(name) {
                    to_client_only.append(name.clone(), value.clone());
                }
                continue;
            }
            merged.remove(name);
            for value in fresh_parts.headers.get_all(name) {
                merged.append(name.clone(), value.clone());
            }
        }
        let mut head = Response::new(());
        *head.status_mut() = stored_parts.status;
        *head.headers_mut() = merged.clone();
        let policy = CachePolicy::new_options(
            &self.stored_request(&merged),
            &head,
            now,
            cache.options.semantics(),
        );
        let status = "fwd=stale; fwd-status=304".to_owned();
        // Freshened headers the storing rules refuse (a 304 that makes the response
        // `private` or `no-store` for this cache) are served, and the entry goes.
        let storable = policy.is_storable() && !shared_cookie(cache.options.shared, &merged);
        let updated = if storable || self.mode == CacheMode::IgnoreRules {
            cache
                .manager
                .update_headers(&stored_key, merged, policy.clone())
                .await
        } else {
            cache.delete(&stored_key).await;
            Ok(None)
        };
        let mut response = match updated {
            Ok(Some((response, policy))) => {
                if let Some(leader) = leader {
                    // Those waiting on this revalidation find the refreshed entry.
                    leader.fill().end(FillEnd::Updated);
                }
                cache.hit(&self.request, response, &policy, now, status)
            }
            result => {
                if let Err(error) = result {
                    crate::log::warn_event!(key = %stored_key, %error, "could not store revalidated headers");
                }
                // Serve the body already open, with the headers the origin just confirmed.
                let (mut parts, ()) = head.into_parts();
                parts.version = stored_parts.version;
                cache.hit(
                    &self.request,
                    Response::from_parts(parts, stored_body),
                    &policy,
                    now,
                    status,
                )
            }
        };
        for (name, value) in &to_client_only {
            response.headers_mut().append(name, value.clone());
        }
        response
    }

    /// A response from the origin: tee'd into the store when it may be stored, else passed.
    fn store<B>(
        self,
        response: Response<B>,
        fwd: &'static str,
        found: bool,
        leader: Option<FillLeader>,
    ) -> Finished
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cache = &self.cache;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        for name in INTERNAL {
            parts.headers.remove(name);
        }
        let response = Response::from_parts(parts, body);
        let now = cache.now();
        let options = cache.options.semantics();
        let status = response.status();
        // A shared cache that stored a Set-Cookie would hand one user's cookie to the next,
        // unless the origin said the response is public.
        let sets_cookie = shared_cookie(cache.options.shared, response.headers());
        let storable = self.request.method == Method::GET
            && status != StatusCode::PARTIAL_CONTENT
            && (!sets_cookie || self.mode == CacheMode::IgnoreRules)
            && match self.mode {
                CacheMode::IgnoreRules => status.is_success(),
                _ => CachePolicy::new_options(&self.request, &response, now, options).is_storable(),
            };
        let names = key::vary_names(response.headers());
        let url = url::Url::parse(&key::effective_uri(&self.request));
        let (Some(names), Ok(url), true) = (names, url, storable) else {
            let fwd_status = format!("fwd={fwd}; fwd-status={}", status.as_u16());
            let mut response = self.pass(response, &fwd_status);
            if found && cache.options.x_cache {
                response.headers_mut().insert(
                    HeaderName::from_static("x-cache-lookup"),
                    HeaderValue::from_static("HIT"),
                );
            }
            return Finished::Ready(response);
        };
        let stored_request = self.stored_request(&names_as_vary(&names));
        let policy = CachePolicy::new_options(&stored_request, &response, now, options);
        let leader = leader.map(|leader| {
            let mut head = Response::new(());
            *head.status_mut() = response.status();
            *head.version_mut() = response.version();
            *head.headers_mut() = response.headers().clone();
            let head = FillHead {
                parts: head.into_parts().0,
                policy: policy.clone(),
                varying: stored_request.headers,
            };
            (leader, head)
        });
        let status = format!(
            "fwd={fwd}; fwd-status={}; stored; ttl={}",
            status.as_u16(),
            cache.ttl(&policy, now)
        );
        if names.is_empty() {
            let mut response = match leader {
                Some((leader, head)) => {
                    let manager = &cache.manager;
                    let teed =
                        manager.tee_filling(self.key.clone(), response, policy, url, leader, head);
                    self.answer_range(teed)
                }
                None => cache.manager.tee(self.key, response, policy, url),
            };
            cache.annotate(response.headers_mut(), &status, false, found);
            return Finished::Ready(response);
        }
        Finished::Later(Box::pin(async move {
            let cache = &self.cache;
            let generation = cache
                .variant_generation(&self.key, &names, &url, &policy)
                .await;
            let digest = key::variant_digest(&names, &self.request.headers);
            let listed = match &generation {
                Some(generation) => cache.list_variant(&self.key, generation, &digest).await,
                None => false,
            };
            let (mut response, status) = match generation {
                Some(generation) if listed => {
                    let key = key::variant_key_of(&self.key, &generation, &digest);
                    let teed = match leader {
                        Some((leader, head)) => {
                            let manager = &cache.manager;
                            manager.tee_filling(key, response, policy, url, leader, head)
                        }
                        None => cache.manager.tee(key, response, policy, url),
                    };
                    (teed, status)
                }
                // A URL keeps at most so many variants, each named by its list so that they
                // go with it: past that (an attacker varying a header at will) they pass.
                _ => {
                    let status = format!(
                        "fwd={fwd}; fwd-status={}; detail=variant-not-stored",
                        response.status().as_u16()
                    );
                    (response.map(StreamingBody::pass), status)
                }
            };
            cache.annotate(response.headers_mut(), &status, false, found);
            response
        }))
    }

    /// For a ranged miss that fetched the whole response: reads the whole body into the
    /// store on a task of its own and answers the client's range from the file as it is
    /// written. Anything it cannot do that for (no `Content-Length`, several ranges, no
    /// fill to follow) is answered with the whole response.
    fn answer_range(&self, teed: Response<StreamingBody>) -> Response<StreamingBody> {
        let Some(range) = &self.range else {
            return teed;
        };
        let length = teed
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let Some(length) = length else {
            return teed;
        };
        let ranged = range::ranged(range, teed.headers(), length);
        let (start, len) = match ranged {
            range::Ranged::Part { start, len } => (start, len),
            range::Ranged::Unsatisfiable => (0, 0),
            range::Ranged::Whole | range::Ranged::Parts(_) => return teed,
        };
        let background = Some(self.cache.options.background.clone());
        let Role::Follower(follower) = self.cache.manager.join_fill(&self.key, background) else {
            return teed;
        };
        let (mut head, body) = teed.into_parts();
        if !crate::body::complete_in_background(body) {
            return Response::from_parts(head, StreamingBody::empty());
        }
        if len == 0 {
            head.status = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(value) = HeaderValue::try_from(format!("bytes */{length}")) {
                head.headers.insert(header::CONTENT_RANGE, value);
            }
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Response::from_parts(head, StreamingBody::empty());
        }
        head.status = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {start}-{}/{length}", start + len - 1);
        if let Ok(value) = HeaderValue::try_from(value) {
            head.headers.insert(header::CONTENT_RANGE, value);
        }
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        head.headers
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let reader = follower.body(256 * 1024).narrow(start, len);
        Response::from_parts(head, StreamingBody::follow(reader))
    }

    /// The request as the stored policy sees it: only the headers the response's `Vary`
    /// names, so that no credential or cookie is stored.
    fn stored_request(&self, response_headers: &HeaderMap) -> request::Parts {
        let mut headers = HeaderMap::new();
        for name in key::vary_names(response_headers).unwrap_or_default() {
            for value in self.request.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        policy_view(&self.request.method, headers)
    }
}

/// A request as cache policies see it. The cache key already names the resource (and a
/// custom key may name one resource for several URLs), so every view has the same URI and no
/// `Host`: what a policy still matches is the method and the headers `Vary` names. A HEAD is
/// judged as the GET it is answered from.
fn policy_view(method: &Method, mut headers: HeaderMap) -> request::Parts {
    headers.remove(header::HOST);
    let mut request = Request::new(());
    *request.method_mut() = if *method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    *request.uri_mut() = http::Uri::from_static("/");
    *request.headers_mut() = headers;
    request.into_parts().0
}

/// Whether a request asks for the variant a fill is storing: the same values for every
/// header its response's `Vary` names. `Vary: *` matches nothing.
fn same_variant(head: &FillHead, request: &HeaderMap) -> bool {
    let Some(names) = key::vary_names(&head.parts.headers) else {
        return false;
    };
    names.iter().all(|name| {
        head.varying
            .get_all(name)
            .iter()
            .eq(request.get_all(name).iter())
    })
}

/// The generation a variant list record carries, when the response is one.
fn variants_generation(headers: &HeaderMap) -> Option<String> {
    Some(headers.get(VARIANTS)?.to_str().ok()?.to_owned())
}

fn new_generation() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{nanos:x}.{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn names_as_vary(names: &[HeaderName]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in names {
        if let Ok(value) = HeaderValue::from_str(name.as_str()) {
            headers.append(header::VARY, value);
        }
    }
    headers
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether a shared cache must not store a response with `headers`: it sets a cookie and
/// the origin did not say it is public, so storing it would hand one user's cookie to the
/// next.
fn shared_cookie(shared: bool, headers: &HeaderMap) -> bool {
    shared && headers.contains_key(header::SET_COOKIE) && !has_directive(headers, "public")
}

/// Whether `name` is one of the headers the cache keeps in its own records (a variant
/// list's generation and members): never taken from an origin's response.
fn is_internal(name: &HeaderName) -> bool {
    INTERNAL.contains(name)
}

/// The headers the cache keeps in its own records.
const INTERNAL: [HeaderName; 2] = [VARIANTS, STORED_VARIANTS];

/// Removes the headers that describe one connection, including those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP.map(HeaderName::from_static)) {
        headers.remove(name);
    }
}

/// Whether a `Cache-Control` header in `headers` has `directive`.
fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    directive_value(headers, directive).is_some()
}

/// The value of a `Cache-Control` directive in `headers` (empty when it has none).
fn directive_value<'h>(headers: &'h HeaderMap, directive: &str) -> Option<&'h str> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (name, value) = d.split_once('=').unwrap_or((d, ""));
            name.trim()
                .eq_ignore_ascii_case(directive)
                .then(|| value.trim().trim_matches('"'))
        })
}

fn has_pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-cache"))
}

/// Whether a stored response may never be served without a successful revalidation.
fn must_revalidate(headers: &HeaderMap, shared: bool) -> bool {
    has_directive(headers, "must-revalidate")
        || has_directive(headers, "no-cache")
        || (shared && has_directive(headers, "proxy-revalidate"))
}

/// Whether a stored response can no longer be used: stale, without a validator to
/// revalidate it, and past every window in which it could be served stale.
fn unusable(entry: &Entry, now: SystemTime, default_window: Option<Duration>) -> bool {
    let headers = &entry.headers;
    if !entry.policy.is_stale(now)
        || headers.contains_key(header::ETAG)
        || headers.contains_key(header::LAST_MODIFIED)
        || variants_generation(headers).is_some()
    {
        return false;
    }
    let window = ["stale-while-revalidate", "stale-if-error"]
        .iter()
        .filter_map(|d| directive_value(headers, d)?.parse().ok())
        .map(Duration::from_secs)
        .chain(default_window)
        .max();
    !window.is_some_and(|window| stale_for_at_most(&entry.policy, now, window))
}

/// Whether the origin's answer is a failure that a stale response may stand in for.
fn is_origin_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Whether the response `policy` describes has been stale for no longer than `window`:
/// `window` ago it was still fresh.
fn stale_for_at_most(policy: &CachePolicy, now: SystemTime, window: Duration) -> bool {
    now.checked_sub(window)
        .is_some_and(|then| !policy.is_stale(then))
}

/// How a stored response stands for a request.
enum Judged {
    Fresh,
    Stale,
    /// Stored for other request headers than the ones `Vary` names in this request.
    Mismatch,
}

/// Judges a stored response for a request. A request without `Cache-Control` or `Pragma`
/// asks nothing but freshness, and the key (and variant key) already matched it, so its
/// answer is `is_stale`; any other request is judged by http-cache-semantics in full.
fn judge(policy: &CachePolicy, parts: &request::Parts, now: SystemTime) -> Judged {
    let plain = !parts.headers.contains_key(header::CACHE_CONTROL)
        && !parts.headers.contains_key(header::PRAGMA);
    if plain {
        return if policy.is_stale(now) {
            Judged::Stale
        } else {
            Judged::Fresh
        };
    }
    let view = policy_view(&parts.method, parts.headers.clone());
    match policy.before_request(&view, now) {
        BeforeRequest::Fresh(_) => Judged::Fresh,
        BeforeRequest::Stale { matches: true, .. } => Judged::Stale,
        BeforeRequest::Stale { matches: false, .. } => Judged::Mismatch,
    }
}

/// The validators (`If-None-Match`, `If-Modified-Since`) to revalidate a stored response
/// with, as http-cache-semantics computes them.
fn validators(policy: &CachePolicy, parts: &request::Parts) -> HeaderMap {
    // Judged a century on, every stored response is stale, and the answer carries the
    // revalidation request this response allows, whether or not it is stale now.
    let later = SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut validators = HeaderMap::new();
    if let BeforeRequest::Stale { request, .. } = policy.before_request(parts, later) {
        for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
            for value in request.headers.get_all(&name) {
                validators.append(name.clone(), value.clone());
            }
        }
    }
    validators
}
