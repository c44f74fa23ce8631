//! [`HttpStreamingCache`]: the RFC 9111 decisions (lookup, freshness, revalidation, storing,
//! invalidation) over its store, reached only through `CacheStore` and held as a `Backing`
//! (the [`StreamingManager`] it was made with, or a store in memory in unit tests). It
//! knows nothing of files: every byte goes through the store.

mod decided;
mod directives;
mod freshen;
mod inspect;
mod languages;
pub(crate) mod mode;
mod options;
mod partial;
mod peer_fills;
mod pending;
mod plan;
mod purge;
mod stats;
mod status;
mod storing;
mod ttl;
mod variants;

pub use crate::key::CacheKey;
pub use crate::key::is_valid_authority;
pub use directives::strip_hop_by_hop;
pub use inspect::{EntryPage, StoredEntry};
pub use mode::CacheMode;
pub use options::HttpCacheOptions;
pub use stats::{CacheStats, OriginRequests};
pub use status::NotStored;
pub use ttl::Ttl;

use crate::Counter;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, request};
use http_body::Body;
use http_cache_semantics::CachePolicy;

use crate::body::StreamingBody;
use crate::collapse::FillLeader;
use crate::format::record::Entry;
use crate::store::StreamingManager;

use crate::cache_store::{Backing, CacheStore as _};
use crate::fleet::invalidations::FleetInvalidations;
use directives::{Verdict, unusable};
use stats::{Counters, count};
use status::{Detail, Fwd, Status};
use variants::variants_generation;

use crate::storage::BoxFuture;

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
    store: Backing,
    options: Arc<HttpCacheOptions>,
    counters: Arc<Counters>,
    invalidations: Arc<FleetInvalidations>,
}

impl fmt::Debug for HttpStreamingCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStreamingCache")
            .field("manager", self.store.manager())
            .field("options", &self.options)
            .finish()
    }
}

/// How a request starts: answered at once (a hit in memory), straight to the inner
/// service, or after a lookup.
#[expect(
    clippy::large_enum_variant,
    reason = "returned and moved once, never kept"
)]
pub(crate) enum Start {
    Ready(Response<StreamingBody>),
    Forward(request::Parts, Pending),
    Lookup(BoxFuture<'static, (Plan, request::Parts)>),
}

/// What a lookup decided.
#[expect(
    clippy::large_enum_variant,
    reason = "returned and moved once, never kept"
)]
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
pub(crate) enum Finished {
    Ready(Response<StreamingBody>),
    Later(BoxFuture<'static, Response<StreamingBody>>),
    /// The request goes to the inner service again, unconditionally: its answer to the
    /// revalidation selected nothing.
    Again(Pending),
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
    /// A ranged miss that keeps or completes a partial entry.
    partial: Option<partial::PartialPlan>,
    /// A revalidation in the background (`stale-while-revalidate`): its client was
    /// answered already, and counted.
    background: bool,
    /// A [`Ttl`] the request carried in its extensions (which its kept head drops); boxed,
    /// since few requests carry one.
    request_ttl: Option<Box<Ttl>>,
}

impl Pending {
    /// Whether this is the revalidation of a stored response.
    pub(crate) fn revalidates(&self) -> bool {
        matches!(self.action, Action::Fetch { stale: Some(_), .. })
    }
}

/// What a request forwarded to the inner service is for, and so what its answer is for.
enum Action {
    /// Not the cache's business (mode `NoStore`, or a method it does not cache).
    Pass,
    /// An unsafe method: on success, remove what is stored for its URL.
    Invalidate,
    /// A miss or a revalidation: store the answer if it may be stored.
    Fetch {
        fwd: Fwd,
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
#[expect(
    clippy::large_enum_variant,
    reason = "returned and moved once, never kept"
)]
enum Found {
    Nothing { fwd: Fwd },
    Entry(Response<StreamingBody>, Arc<Entry>, String),
}

impl HttpStreamingCache {
    /// A cache over `manager` with default options: a shared cache, RFC 9111 rules.
    pub fn new(manager: StreamingManager) -> Self {
        HttpStreamingCache::over(Backing::Disk(manager))
    }

    /// A cache over `store` with default options.
    fn over(store: Backing) -> Self {
        HttpStreamingCache {
            store,
            options: Arc::new(HttpCacheOptions::default()),
            counters: Arc::default(),
            invalidations: Arc::new(FleetInvalidations::new()),
        }
    }

    /// A cache with `options` over a new store in memory, and the store: what the rules'
    /// unit tests run on (see `crate::testing`).
    #[cfg(test)]
    pub(crate) fn in_memory(
        options: HttpCacheOptions,
    ) -> (Self, crate::cache_store::memory::MemoryStore) {
        let store = crate::cache_store::memory::MemoryStore::new();
        let cache = HttpStreamingCache::over(Backing::Memory(store.clone())).with_options(options);
        (cache, store)
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: HttpCacheOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// The store this cache uses.
    pub fn manager(&self) -> &StreamingManager {
        self.store.manager()
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
            None => crate::key::primary_key(parts),
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
        let (mut response, mut entry) = self.store.lookup_in_memory(key)?;
        if let Some(generation) = variants_generation(response.headers()) {
            let names = crate::key::vary_names(response.headers())?;
            let variant = crate::key::variant_key(key, &generation, &names, &parts.headers);
            (response, entry) = self.store.lookup_in_memory(&variant)?;
        }
        if !self.admits(&entry, mode) {
            return None;
        }
        let now = self.now();
        let within_cap = self.within_cap(entry.status, &entry.policy, now);
        let stored = (entry.status, entry.version, &entry.headers);
        let usable = match self.judge_stored(&entry.policy, parts, stored, now) {
            Verdict::Fresh => within_cap && mode != CacheMode::NoCache,
            Verdict::Stale => within_cap && mode.ignores_staleness(),
            Verdict::Mismatch => false,
        };
        usable.then(|| self.hit(parts, response, &entry.policy, now, Status::hit()))
    }

    /// Removes the stored responses that can no longer be used (see
    /// [`HttpCacheOptions::sweep_expired_every`]) and returns how many there were.
    pub async fn sweep_expired(&self) -> crate::Result<u64> {
        let now = self.now();
        let default_window = self.options.stale_on_error;
        let targeted = self.options.targeted().to_vec();
        let shared = self.options.shared;
        self.store
            .remove_where(move |entry| unusable(entry, now, default_window, &targeted, shared))
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
        let store = self.store.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let (Some(options), Some(counters)) = (weak.0.upgrade(), weak.1.upgrade()) else {
                    return;
                };
                let cache = HttpStreamingCache {
                    store: store.clone(),
                    options,
                    counters,
                    invalidations: Arc::new(FleetInvalidations::new()),
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

    /// An invalidation of `key` by an unsafe request (RFC 9111 §4.4): everywhere the fleet
    /// keeps it, within [`FleetInvalidations`]' bounds; past them, here and in the shared
    /// tier only.
    async fn delete(&self, key: &str) {
        if let Err(error) = self.remove_within_budget(key, false).await {
            count(&self.counters.errors, Counter::Errors);
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
        status: Status,
    ) -> Response<StreamingBody> {
        if status.is_fresh_hit() {
            count(&self.counters.hits, Counter::Hits);
        }
        let length = response.body().size_hint().exact();
        let stored_status = response.status();
        let (mut head, body) = response.into_parts();
        let age = policy.age(now).as_secs();
        head.headers.insert(header::AGE, HeaderValue::from(age));
        head.version = parts.version;
        let body = if parts.method == Method::HEAD {
            StreamingBody::empty()
        } else {
            body
        };
        // A client's validators that the stored 200 meets: a 304, before any range
        // (RFC 9110 §13.2.2).
        let conditional = self.options.answer_conditionals
            && head.status == StatusCode::OK
            && (parts.method == Method::GET || parts.method == Method::HEAD)
            && crate::fields::conditional::not_modified(&parts.headers, &head.headers);
        let mut response = if conditional {
            drop(body);
            Response::from_parts(
                crate::fields::conditional::not_modified_head(head),
                StreamingBody::empty(),
            )
        } else {
            Response::from_parts(head, body)
        };
        if !conditional
            && parts.method == Method::GET
            && let Some(length) = length
        {
            response = crate::fields::range::apply(&parts.headers, response, length);
        }
        let ttl = self.ttl(stored_status, policy, now);
        self.annotate(response.headers_mut(), &status.ttl(ttl), true, true);
        response
    }

    /// Seconds a response of `status` stays fresh (0 once stale), within `max_ttl` (and
    /// `store_errors`' cap).
    fn ttl(&self, status: StatusCode, policy: &CachePolicy, now: SystemTime) -> u64 {
        let ttl = policy.time_to_live(now);
        let ttl = match self.options.cap_for(status) {
            Some(cap) => ttl.min(cap.saturating_sub(policy.age(now))),
            None => ttl,
        };
        ttl.as_secs()
    }

    /// Whether a stored response of `status` is young enough for the cache's caps on any
    /// response's age (`max_ttl`, and `store_errors` for errors in a shared cache).
    pub(super) fn within_cap(
        &self,
        status: StatusCode,
        policy: &CachePolicy,
        now: SystemTime,
    ) -> bool {
        self.options
            .cap_for(status)
            .is_none_or(|cap| policy.age(now) < cap)
    }

    /// A `502` the cache answers itself, with `status` saying why.
    fn bad_gateway(&self, status: Status) -> Response<StreamingBody> {
        let mut response = Response::new(StreamingBody::empty());
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        self.annotate(response.headers_mut(), &status, false, true);
        response
    }

    fn gateway_timeout(&self, fwd: Fwd, detail: Detail) -> Response<StreamingBody> {
        let mut response = Response::new(StreamingBody::empty());
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        let status = Status::forward(fwd).detail(detail);
        let found = status.forwarded_for_stale();
        self.annotate(response.headers_mut(), &status, false, found);
        response
    }

    /// Adds this cache's `Cache-Status` entry (and the http-cache style headers if asked).
    /// Every response the cache answers goes through here: the cache's own fields leave.
    fn annotate(&self, headers: &mut HeaderMap, status: &Status, hit: bool, found: bool) {
        headers.remove(ttl::TTL_FIELD);
        if self.options.strips_tags() {
            for name in self.store.tag_fields() {
                headers.remove(name);
            }
        }
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
}
