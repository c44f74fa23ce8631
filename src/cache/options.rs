//! [`HttpCacheOptions`]: how the cache behaves, and the function types its options hold.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::request;
use http_cache_semantics::CacheOptions;

use super::mode::CacheMode;
use super::ttl::Ttl;
use crate::collapse::Background;
use crate::key::CacheKey;

/// Makes a request's cache key (`HttpCacheOptions::cache_key`).
pub(super) type KeyFn = Arc<dyn Fn(&request::Parts) -> String + Send + Sync>;

/// Chooses a request's `CacheMode` (`HttpCacheOptions::mode_fn`).
pub(super) type ModeFn = Arc<dyn Fn(&request::Parts) -> CacheMode + Send + Sync>;

/// Names the keys a request removes (`HttpCacheOptions::cache_bust`).
pub(super) type BustFn = Arc<dyn Fn(&request::Parts, &str) -> Vec<String> + Send + Sync>;

/// Decides a response's `Ttl` in code (`HttpCacheOptions::ttl_fn`).
pub(super) type TtlFn = Arc<dyn Fn(&request::Parts, &http::response::Parts) -> Ttl + Send + Sync>;

/// The time the cache judges freshness by (`HttpCacheOptions::clock`).
pub(super) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Fills read on at once with nobody reading them, by default.
pub(super) const BACKGROUND_FILLS: usize = 8;

/// How far each of them reads once alone, by default.
pub(super) const BACKGROUND_BYTES: u64 = 1 << 30;

/// How the cache behaves: options that users of http-cache rely on, with builder methods.
///
/// ```
/// use std::time::Duration;
/// use http_cache_streaming::{CacheKey, CacheMode, HttpCacheOptions};
///
/// let options = HttpCacheOptions::default()
///     .shared(false)
///     .max_ttl(Duration::from_secs(600))
///     .cache_key_from(CacheKey::new().drop_query(["utm_*"]))
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
    pub(super) shared: bool,
    pub(super) mode: CacheMode,
    pub(super) mode_fn: Option<ModeFn>,
    pub(super) cache_key: Option<KeyFn>,
    pub(super) cache_bust: Option<BustFn>,
    pub(super) max_ttl: Option<Duration>,
    pub(super) ttl: Ttl,
    pub(super) ttl_fn: Option<TtlFn>,
    pub(super) cache_status: Option<String>,
    pub(super) x_cache: bool,
    pub(super) clock: Clock,
    pub(super) coalesce: bool,
    pub(super) coalesce_wait: Duration,
    pub(super) complete_on_disconnect: Option<bool>,
    pub(super) background: Background,
    pub(super) stale_on_error: Option<Duration>,
    pub(super) sweep_every: Option<Duration>,
    pub(super) fetch_whole_on_range_miss: bool,
    pub(super) store_partial: bool,
    pub(super) targeted: Vec<http::HeaderName>,
    pub(super) answer_conditionals: bool,
    pub(super) reuse_post: bool,
    pub(super) store_set_cookie: bool,
    pub(super) store_errors: Option<Duration>,
    pub(super) fleet_invalidation_rate: u32,
    pub(super) forward_tags: bool,
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
            ttl: Ttl::origin(),
            ttl_fn: None,
            cache_status: Some("http-cache-streaming".into()),
            x_cache: false,
            clock: Arc::new(SystemTime::now),
            coalesce: true,
            coalesce_wait: Duration::from_secs(10),
            complete_on_disconnect: None,
            background: Background::new(BACKGROUND_FILLS, BACKGROUND_BYTES),
            targeted: vec![http::HeaderName::from_static("cdn-cache-control")],
            answer_conditionals: true,
            reuse_post: true,
            stale_on_error: None,
            sweep_every: None,
            fetch_whole_on_range_miss: false,
            store_partial: true,
            store_set_cookie: false,
            store_errors: None,
            fleet_invalidation_rate: 100,
            forward_tags: false,
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
            .field("ttl", &self.ttl)
            .field("ttl_fn", &self.ttl_fn.is_some())
            .field("cache_status", &self.cache_status)
            .field("x_cache", &self.x_cache)
            .field("coalesce", &self.coalesce)
            .field("coalesce_wait", &self.coalesce_wait)
            .field("complete_on_disconnect", &self.complete_on_disconnect)
            .field("background_fills", &self.background.limits())
            .field("stale_on_error", &self.stale_on_error)
            .field("sweep_every", &self.sweep_every)
            .field("fetch_whole_on_range_miss", &self.fetch_whole_on_range_miss)
            .field("store_partial_content", &self.store_partial)
            .field("targeted_cache_control", &self.targeted)
            .field("answer_conditionals", &self.answer_conditionals)
            .field("reuse_post_responses", &self.reuse_post)
            .field("store_set_cookie", &self.store_set_cookie)
            .field("store_errors", &self.store_errors)
            .field("fleet_invalidation_rate", &self.fleet_invalidation_rate)
            .field("forward_tags", &self.forward_tags)
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
    /// [`CacheKey::default_key`] (`GET:https://example.com/path?query`). GET and HEAD
    /// requests must map to the same key for a HEAD to be answered from a stored GET, and
    /// a key must name the site (on a server, the URI has no authority: the `Host` header
    /// names it). Start from the default key to keep both:
    ///
    /// ```
    /// use http_cache_streaming::{CacheKey, HttpCacheOptions};
    ///
    /// // One entry per tenant, whose id a header carries.
    /// let options = HttpCacheOptions::default().cache_key(|parts| {
    ///     let tenant = parts.headers.get("x-tenant").and_then(|v| v.to_str().ok());
    ///     format!("{} tenant={}", CacheKey::default_key(parts), tenant.unwrap_or("-"))
    /// });
    /// ```
    ///
    /// The common edits (query parameters dropped or sorted, a header or a cookie added)
    /// are builder calls of [`CacheKey`], set with [`cache_key_from`](Self::cache_key_from).
    pub fn cache_key(
        mut self,
        f: impl Fn(&request::Parts) -> String + Send + Sync + 'static,
    ) -> Self {
        self.cache_key = Some(Arc::new(f));
        self
    }

    /// Keys requests as `key` says: the default key with its edits (see [`CacheKey`]).
    pub fn cache_key_from(self, key: CacheKey) -> Self {
        self.cache_key(move |parts| key.key(parts))
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

    /// Caps how long a stored response is used without asking the origin, whatever its
    /// headers, its [`Ttl`] or the request's mode say: past the cap it is revalidated (in
    /// every mode, `IgnoreRules` and `ForceCache` included; an `only-if-cached` request gets
    /// a `504`).
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = Some(max_ttl);
        self
    }

    /// How long a response that gives no explicit freshness (no `max-age`, no `s-maxage`
    /// in a shared cache, no `Expires`) stays fresh, in place of the heuristic freshness of
    /// RFC 9111 §4.2.2 and of none at all: what nginx's `proxy_cache_valid` does. Such a
    /// response is otherwise stored only with a validator, and revalidated on every use.
    /// A route's own [`Ttl`] wins over it.
    pub fn default_ttl(mut self, lifetime: Duration) -> Self {
        self.ttl = self.ttl.or(lifetime);
        self
    }

    /// How long every stored response stays fresh at least, whatever its headers say
    /// (but for `no-cache` and `must-revalidate`, which still hold). A route's own [`Ttl`]
    /// wins over it.
    pub fn min_ttl(mut self, lifetime: Duration) -> Self {
        self.ttl = self.ttl.at_least(lifetime);
        self
    }

    /// Decides each response's [`Ttl`] from the request and the response's head (its
    /// status, headers and extensions): per route, per status, per content type. What it
    /// leaves unset comes from [`default_ttl`](Self::default_ttl) and
    /// [`min_ttl`](Self::min_ttl). Without it, a `Ttl` in the response's extensions (set by
    /// a handler) or the request's is used.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_cache_streaming::{HttpCacheOptions, Ttl};
    ///
    /// let options = HttpCacheOptions::default().ttl_fn(|request, response| {
    ///     match request.uri.path() {
    ///         // The handler sends no Cache-Control: five minutes.
    ///         "/api/catalog" => Ttl::origin().or(Duration::from_secs(300)),
    ///         // A minute whatever it says, and a stale copy while a new one is fetched.
    ///         path if path.starts_with("/feeds/") => {
    ///             Ttl::fixed(Duration::from_secs(60)).grace(Duration::from_secs(30))
    ///         }
    ///         _ if response.status == http::StatusCode::NOT_FOUND => Ttl::no_store(),
    ///         _ => Ttl::origin(),
    ///     }
    /// });
    /// ```
    pub fn ttl_fn(
        mut self,
        f: impl Fn(&request::Parts, &http::response::Parts) -> Ttl + Send + Sync + 'static,
    ) -> Self {
        self.ttl_fn = Some(Arc::new(f));
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
    /// fails to revalidate it: the inner service fails (a refused or reset connection, a
    /// timeout) or answers any `5xx`, as nginx's `proxy_cache_use_stale` does. Off by
    /// default. A response that must not be served stale (`must-revalidate`, `no-cache`,
    /// and in a shared cache `proxy-revalidate` and `s-maxage`) never is; an unreachable
    /// origin is then a `504`. Nor is one that never was fresh (stored for its validator
    /// alone, with no freshness lifetime): it answered one request, and served stale it
    /// would be that client's page for the next. The response served says
    /// `Cache-Status: …; fwd=stale; fwd-status=<the origin's status>; detail=stale-on-error`.
    ///
    /// Responses and requests may ask the same for themselves with `stale-if-error`
    /// (RFC 5861), which covers errors and `500`, `502`, `503`, `504`.
    pub fn stale_on_error(mut self, window: Duration) -> Self {
        self.stale_on_error = Some(window);
        self
    }

    /// Every `interval`, removes stored responses that can no longer be used: stale, with
    /// no validator to revalidate them with (no `ETag`, no `Last-Modified`), and past every
    /// stale window (`stale-while-revalidate`, `stale-if-error`, this layer's
    /// [`stale_on_error`](Self::stale_on_error)). Off by default (modes such as
    /// `ForceCache` serve such responses). The sweep runs on a task of its own, started
    /// with the first request, and ends with the cache.
    pub fn sweep_expired_every(mut self, interval: Duration) -> Self {
        self.sweep_every = Some(interval);
        self
    }

    /// What a `Range` request that misses does: by default it goes to the origin as it is,
    /// and its `206` is kept as a partial entry (see
    /// [`store_partial_content`](Self::store_partial_content)). With `true`, the whole
    /// response is fetched (without `Range`) and stored, and the client is answered its
    /// range from the file as it is written; the next requests, ranged or not, are hits.
    pub fn fetch_whole_on_range_miss(mut self, on: bool) -> Self {
        self.fetch_whole_on_range_miss = on;
        self
    }

    /// Whether `206` answers to ranged misses are kept as partial entries (RFC 9111 §3.3,
    /// §3.4): on by default. A range a partial entry holds is then a hit; one it holds in
    /// part fetches only the span it lacks (with `If-Range`, so that a changed
    /// representation comes back whole), answered from the entry around the fetched bytes;
    /// and once its ranges cover the whole body it is hashed, checked against the origin's
    /// `Repr-Digest` when there is one, and stored as a complete entry. Kept: a single byte
    /// range with the whole length in its `Content-Range`, a strong `ETag`, no `Vary`, and
    /// the storing rules a `200` would meet. Partial entries live in the store's scratch
    /// directory, count against its `max_size`, and do not outlive the process (a restart
    /// starts them over); at most 256 are kept, the least recently used going first.
    pub fn store_partial_content(mut self, on: bool) -> Self {
        self.store_partial = on;
        self
    }

    /// The targeted cache-control fields (RFC 9213) a shared cache obeys, the first present
    /// and valid of them winning: `CDN-Cache-Control` by default. When one is present and
    /// a valid structured dictionary, it alone decides freshness and storability for this
    /// cache, and `Cache-Control` and `Expires` are ignored here (they still go to the
    /// client). An empty list turns this off; a private cache ignores targeted fields.
    ///
    /// ```
    /// use http::HeaderName;
    /// use http_cache_streaming::HttpCacheOptions;
    ///
    /// let options = HttpCacheOptions::default().targeted_cache_control([
    ///     HeaderName::from_static("example-cache-control"),
    ///     HeaderName::from_static("cdn-cache-control"),
    /// ]);
    /// ```
    pub fn targeted_cache_control<I>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = http::HeaderName>,
    {
        self.targeted = names.into_iter().collect();
        self
    }

    /// Whether a client's `If-None-Match` (weak comparison) or `If-Modified-Since` that a
    /// stored `200` meets is answered `304` from the store, without the origin (RFC 9111
    /// §4.3.2). On by default; off, such requests get the `200`.
    pub fn answer_conditionals(mut self, answer: bool) -> Self {
        self.answer_conditionals = answer;
        self
    }

    /// Whether a `POST`'s answer that gives explicit freshness and a `Content-Location`
    /// naming the `POST`'s own URI is stored as that URI's `GET` response, for later `GET`
    /// and `HEAD` requests (RFC 9110 §9.3.3: the origin says it is the URI's current
    /// representation). On by default; the storing rules of any response still apply (no
    /// `Authorization`, no `private`, no cookie in a shared cache). Off, a `POST` only
    /// invalidates what is stored for its URI.
    pub fn reuse_post_responses(mut self, reuse: bool) -> Self {
        self.reuse_post = reuse;
        self
    }

    /// Whether a shared cache stores a response that sets a cookie. By default it does not,
    /// whatever the response's `Cache-Control` says (as nginx, Varnish, Fastly and Cloudflare
    /// do not): the request passes through, and its `Cache-Status` says
    /// `detail=set-cookie`. With `true` such a response is stored without its `Set-Cookie`
    /// fields: the client whose request fetched it gets its cookie, every later client the
    /// stored copy without one. Either way no stored copy ever carries a `Set-Cookie`, and a
    /// record that does (written by a private cache, or by an earlier version into a
    /// shared directory or bucket) is a miss. A private cache stores cookies as it stores
    /// the rest.
    ///
    /// Fields a response names in a qualified `no-cache="…"` (and, in a shared cache,
    /// `private="…"`) are treated the same way whatever this option says: kept for the
    /// client that caused the fetch, never in the stored copy (RFC 9111 §5.2.2.4,
    /// §5.2.2.7); a revalidation's `304` gives them to its own client only.
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.store_set_cookie = store;
        self
    }

    /// Whether a shared cache stores `400 Bad Request` and `5xx` responses, and for at most
    /// how long. By default it does not, whatever freshness the origin gives them: an error
    /// one client provoked (an oversized or odd header the origin refuses) would otherwise be
    /// served to every later client of the URL (cache-poisoned denial of service, CPDoS).
    /// With `Some(cap)` they are stored when the origin gives them explicit freshness, and
    /// served for no longer than `cap`. `404`, `410` and the other statuses RFC 9110 §15.1
    /// lists as heuristically cacheable (but for `501`) are stored as the origin says. A
    /// private cache stores errors as the origin says.
    pub fn store_errors(mut self, cap: Option<Duration>) -> Self {
        self.store_errors = cap;
        self
    }

    /// How many invalidations by unsafe requests a second this node writes to a shared
    /// tier's purge log for the whole fleet (100 by default, a second's worth at once).
    /// Any client can send a `POST` the origin answers `2xx`, and each note costs bucket
    /// requests on every node: past this rate, and for a key invalidated within the last
    /// second already, an invalidation removes this node's copy and the tier's only
    /// (counted in [`CacheStats::invalidations_not_shared`](crate::CacheStats) and
    /// `http_cache_streaming_invalidations_not_shared_total`). Purges
    /// ([`purge`](crate::HttpStreamingCache::purge)) always reach the fleet. Without a
    /// shared tier it changes nothing.
    pub fn fleet_invalidation_rate(mut self, per_second: u32) -> Self {
        self.fleet_invalidation_rate = per_second;
        self
    }

    /// Whether a shared cache passes the fields an entry's tags are read from
    /// ([`tag_fields`](crate::StreamingManagerBuilder::tag_fields): `Surrogate-Key` and
    /// `Cache-Tag` by default) on to its clients. By default it does not, as Fastly and
    /// Cloudflare do not: tags name how the origin groups its pages (`user-42`), which is
    /// nobody else's business, and only the cache uses them. Set it for a cache in front of
    /// another cache that purges by the same tags. A private cache passes them on.
    pub fn forward_tags(mut self, forward: bool) -> Self {
        self.forward_tags = forward;
        self
    }

    /// Whether this cache removes the tag fields from what its clients receive.
    pub(super) fn strips_tags(&self) -> bool {
        self.shared && !self.forward_tags
    }

    /// Whether this cache refuses to store a response of `status` for its origin's reasons
    /// alone: an error, in a shared cache, without [`store_errors`](Self::store_errors).
    pub(super) fn refuses_error(&self, status: http::StatusCode) -> bool {
        self.shared
            && self.store_errors.is_none()
            && (status == http::StatusCode::BAD_REQUEST || status.is_server_error())
    }

    /// The longest a stored response of `status` is served: [`max_ttl`](Self::max_ttl),
    /// and for an error [`store_errors`](Self::store_errors)'s cap.
    pub(super) fn cap_for(&self, status: http::StatusCode) -> Option<Duration> {
        let error = status == http::StatusCode::BAD_REQUEST || status.is_server_error();
        match (
            self.max_ttl,
            self.store_errors.filter(|_| self.shared && error),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The targeted fields this cache obeys: none for a private cache.
    pub(super) fn targeted(&self) -> &[http::HeaderName] {
        if self.shared { &self.targeted } else { &[] }
    }

    pub(super) fn semantics(&self) -> CacheOptions {
        CacheOptions {
            shared: self.shared,
            ..CacheOptions::default()
        }
    }
}
