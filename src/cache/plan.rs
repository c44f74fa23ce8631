//! What a request needs before the inner service is called: an answer from the store, a
//! revalidation, a miss that leads a fill or follows one, or a pass.

use crate::Counter;
use crate::cache_store::CacheStore as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Response, request};

use super::mode::CacheMode;
use crate::body::StreamingBody;
use crate::collapse::{FillLeader, Followed, Role};
use crate::format::record::Entry;
use crate::key;

use super::directives::{
    Verdict, must_revalidate, policy_view, shared_cookie, stale_for_at_most, validators, withheld,
};
use super::status::{Detail, Forwarded, Fwd, Status};
use super::variants::{same_variant, variants_generation};
use super::{Action, Finished, Found, HttpStreamingCache, Pending, Plan, Stale, Start, count};
use crate::fields::cache_control::{CacheControl, Qualified};
use crate::fields::engine_view;

/// A request going on to the origin: why, for `Cache-Status`, and the validators of a
/// revalidation it carries.
pub(super) struct Onward {
    forwarded: Forwarded,
    conditional: Option<HeaderMap>,
}

impl HttpStreamingCache {
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

    pub(super) fn pending(
        &self,
        parts: &request::Parts,
        key: String,
        mode: CacheMode,
        action: Action,
    ) -> Pending {
        Pending {
            cache: self.clone(),
            request: crate::head::request_head(parts),
            key,
            mode,
            action,
            range: None,
            partial: None,
            background: false,
            request_ttl: parts.extensions.get::<super::Ttl>().copied().map(Box::new),
        }
    }

    /// Looks the request up and decides: answer from the store, revalidate, or fetch.
    pub(super) async fn plan(&self, parts: &request::Parts, key: String, mode: CacheMode) -> Plan {
        self.bust(parts, &key).await;
        // The request's `Cache-Control`, read once for the decisions of this plan.
        let asked = CacheControl::of(&parts.headers);
        let only_if_cached = mode == CacheMode::OnlyIfCached || asked.has("only-if-cached");
        let found = if mode == CacheMode::Reload {
            // No lookup opens the store: opening it now tells whether the answer can be
            // stored (`Cache-Status` says so).
            if let Err(error) = self.store.open().await {
                crate::log::warn_event!(%key, %error, "the store cannot be opened");
            }
            Found::Nothing { fwd: Fwd::Request }
        } else {
            self.find(parts, &key, mode).await
        };
        let (response, entry, stored_key) = match found {
            Found::Nothing { fwd } => {
                if fwd == Fwd::VaryMiss
                    && let Some(hit) = self.in_preferred_language(parts, &key, mode).await
                {
                    return Plan::Respond(hit);
                }
                if only_if_cached {
                    return Plan::Respond(self.gateway_timeout(fwd, Detail::OnlyIfCached));
                }
                if let Some(plan) = self.partial_plan(parts, &key, mode, fwd).await {
                    return plan;
                }
                return self.miss(parts, &asked, key, mode, fwd, false).await;
            }
            Found::Entry(response, entry, stored_key) => (response, entry, stored_key),
        };
        let policy = &entry.policy;

        let now = self.now();
        let stored = (entry.status, entry.version, &entry.headers);
        let judged = self.judge_stored(policy, parts, stored, now);
        let within_cap = self.within_cap(entry.status, policy, now);
        match judged {
            Verdict::Fresh if mode != CacheMode::NoCache && within_cap => {
                Plan::Respond(self.hit(parts, response, policy, now, Status::hit()))
            }
            Verdict::Fresh | Verdict::Stale if mode.ignores_staleness() && within_cap => {
                Plan::Respond(self.hit(parts, response, policy, now, Status::hit()))
            }
            Verdict::Mismatch => {
                // Stored for another variant or another host: this request's miss.
                if only_if_cached {
                    return Plan::Respond(self.gateway_timeout(Fwd::Miss, Detail::OnlyIfCached));
                }
                self.miss(parts, &asked, key, mode, Fwd::Miss, true).await
            }
            Verdict::Fresh | Verdict::Stale if only_if_cached => {
                Plan::Respond(self.gateway_timeout(Fwd::Stale, Detail::OnlyIfCached))
            }
            Verdict::Stale
                if mode == CacheMode::Default && {
                    let decided = self.decided(response.headers());
                    !must_revalidate(&decided.directives, self.options.shared)
                        && decided
                            .directives
                            .seconds("stale-while-revalidate")
                            .is_some_and(|s| stale_for_at_most(policy, now, Duration::from_secs(s)))
                        && self.was_fresh(&entry, &decided)
                } =>
            {
                self.stale_while_revalidate(parts, key, response, &entry, stored_key, now)
                    .await
            }
            Verdict::Fresh | Verdict::Stale => {
                let view = policy_view(&parts.method, parts.headers.clone());
                let revalidation = validators(policy, &view);
                let stale = Box::new(Stale {
                    response,
                    entry: Arc::clone(&entry),
                    key: stored_key,
                });
                let revalidate = |leader| Action::Fetch {
                    fwd: Fwd::Stale,
                    stale: Some(stale),
                    lookup_found: true,
                    leader,
                };
                let onward = Onward {
                    forwarded: Forwarded {
                        fwd: Fwd::Stale,
                        found: true,
                    },
                    conditional: Some(revalidation),
                };
                self.coalesced(parts, &asked, key, mode, onward, revalidate)
                    .await
            }
        }
    }

    /// Serves a stale entry within its `stale-while-revalidate` window at once, and starts
    /// its revalidation in the background unless one is under way for the key already.
    pub(super) async fn stale_while_revalidate(
        &self,
        parts: &request::Parts,
        key: String,
        response: Response<StreamingBody>,
        entry: &Arc<Entry>,
        stored_key: String,
        now: SystemTime,
    ) -> Plan {
        count(&self.counters.stale_served, Counter::StaleServed);
        let status = Status::stale_while_revalidate();
        let served = self.hit(parts, response, &entry.policy, now, status);
        let background = Some(self.options.background.clone());
        let wait = self.options.coalesce_wait;
        let Role::Leader(leader) = self.store.join_fill(&key, background, wait) else {
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
            fwd: Fwd::Stale,
            stale: Some(stale),
            lookup_found: true,
            leader: Some(leader),
        };
        Plan::Background {
            response: served,
            conditional,
            pending: Pending {
                background: true,
                ..self.pending(parts, key, CacheMode::Default, action)
            },
        }
    }

    /// A miss: lead a fill of the key, or follow the one under way and answer from it.
    pub(super) async fn miss(
        &self,
        parts: &request::Parts,
        asked: &CacheControl,
        key: String,
        mode: CacheMode,
        fwd: Fwd,
        found: bool,
    ) -> Plan {
        let fetch = |leader| Action::Fetch {
            fwd,
            stale: None,
            lookup_found: found,
            leader,
        };
        let onward = Onward {
            forwarded: Forwarded { fwd, found },
            conditional: None,
        };
        self.coalesced(parts, asked, key, mode, onward, fetch).await
    }

    /// Sends the request on to the inner service as the leader of a fill of `key`, or
    /// follows the fill under way: its response head and body, or the entry it stored.
    /// Requests that could not take a stored response, and followers the leader's
    /// response is not for, go to the inner service on their own.
    pub(super) async fn coalesced(
        &self,
        parts: &request::Parts,
        asked: &CacheControl,
        key: String,
        mode: CacheMode,
        Onward {
            forwarded: Forwarded { fwd, found },
            conditional,
        }: Onward,
        action: impl FnOnce(Option<FillLeader>) -> Action,
    ) -> Plan {
        let options = &self.options;
        // Only a request that would take a stored response may take one being stored.
        let takes_stored = matches!(
            mode,
            CacheMode::Default | CacheMode::ForceCache | CacheMode::IgnoreRules
        ) && !asked.has("no-cache")
            && !asked.has("no-store")
            && asked.value("max-age") != Some(Some("0"))
            && !crate::fields::cache_control::has_pragma_no_cache(&parts.headers);
        if !options.coalesce || parts.method != Method::GET || !takes_stored {
            return self.forward(parts, key, mode, action(None), conditional);
        }
        let complete = options.complete_on_disconnect.unwrap_or(options.shared);
        let background = complete.then(|| options.background.clone());
        let mut follower = match self
            .store
            .join_fill(&key, background, options.coalesce_wait)
        {
            Role::Leader(leader) => {
                let mut leader = Some(leader);
                // A plain miss: across a fleet, one node fetches it; the others stream it
                // from that node and store it as the origin's answer.
                if conditional.is_none()
                    && !parts.headers.contains_key(header::RANGE)
                    && let Some(response) = self.fleet_miss(parts, &key, &mut leader).await
                {
                    let pending = self.pending(parts, key, mode, action(leader));
                    let mut response = match pending.finish(response) {
                        Finished::Ready(response) => response,
                        Finished::Later(future) => future.await,
                        Finished::Again(pending) => pending.not_selected(),
                    };
                    self.mark_from_peer(response.headers_mut());
                    return Plan::Respond(response);
                }
                let mut plan = self.forward(parts, key, mode, action(leader), conditional);
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
        match follower.head().await {
            Followed::Head(head) if same_variant(&head, &parts.headers) => {
                let (mut head_parts, policy) = (head.parts.clone(), head.policy.clone());
                head_parts.version = parts.version;
                // Followers are many: smaller reads keep each one's memory small.
                let chunk = 64 * 1024;
                let body = StreamingBody::follow(follower.body(chunk));
                let mut response = Response::from_parts(head_parts, body);
                let ttl = self.ttl(response.status(), &policy, self.now());
                let status = Status::forward(fwd).collapsed().ttl(ttl);
                self.annotate(response.headers_mut(), &status, false, found);
                count(&self.counters.misses, Counter::Misses);
                Plan::Respond(response)
            }
            Followed::Stored => {
                drop(follower);
                // Stored or revalidated while this request waited: a hit, unless the
                // request wants more than the entry now offers.
                if let Found::Entry(response, entry, _) = self.find(parts, &key, mode).await {
                    let now = self.now();
                    let stored = (entry.status, entry.version, &entry.headers);
                    if let Verdict::Fresh = self.judge_stored(&entry.policy, parts, stored, now) {
                        let status = Status::hit().collapsed();
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

    pub(super) fn forward(
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
    pub(super) async fn find(&self, parts: &request::Parts, key: &str, mode: CacheMode) -> Found {
        let Some((response, entry)) = self.lookup(key).await else {
            return Found::Nothing { fwd: Fwd::UriMiss };
        };
        let Some(generation) = variants_generation(response.headers()) else {
            if !self.admits(&entry, mode) {
                return Found::Nothing { fwd: Fwd::UriMiss };
            }
            return Found::Entry(response, entry, key.to_owned());
        };
        let Some(names) = key::vary_names(response.headers()) else {
            return Found::Nothing { fwd: Fwd::VaryMiss };
        };
        let variant = key::variant_key(key, &generation, &names, &parts.headers);
        match self.lookup(&variant).await {
            Some((response, entry)) if self.admits(&entry, mode) => {
                Found::Entry(response, entry, variant)
            }
            _ => Found::Nothing { fwd: Fwd::VaryMiss },
        }
    }

    /// Whether a stored response may be served by this cache: one that its storing rules
    /// would have refused or kept otherwise (written by a private cache into a shared tier
    /// or directory, by an earlier version, or edited there: `private` or a `Set-Cookie` in a
    /// shared cache, `no-store` anywhere, a field that a qualified `no-cache` or `private`
    /// names) is not. Nothing is trusted for being on disk or in a bucket. A mode that
    /// ignores the rules serves it, but never with another client's cookie.
    pub(super) fn admits(&self, entry: &Entry, mode: CacheMode) -> bool {
        let shared = self.options.shared;
        if mode == CacheMode::IgnoreRules {
            return !shared_cookie(shared, &entry.headers);
        }
        // What may be served is decided by the origin's fields (a targeted one in place of
        // `Cache-Control`); a `Ttl`'s outcome speaks of freshness only, so it is not read
        // here (nor paid for: this runs on every hit).
        let targeted = crate::fields::targeted::targeted(&entry.headers, self.options.targeted());
        let headers = targeted.as_ref().unwrap_or(&entry.headers);
        // Read once: this runs on every hit.
        let directives = CacheControl::of(headers);
        let has = |name: &str| directives.has(name);
        let understood = has("must-understand") && engine_view::understands(entry.status);
        // A field the stored copy must not hold, in its headers or its trailers.
        let holds = |name: &HeaderName| {
            entry.headers.contains_key(name)
                || entry
                    .trailers
                    .as_ref()
                    .is_some_and(|t| t.contains_key(name))
        };
        let (mut whole_private, mut names_kept) = (false, false);
        if has("private") || has("no-cache") {
            // The origin's own field, when a targeted one stood in for it.
            let origins;
            let raw = match &targeted {
                Some(_) => {
                    origins = CacheControl::of(&entry.headers);
                    &origins
                }
                None => &directives,
            };
            whole_private = shared
                && [raw, &directives]
                    .iter()
                    .any(|d| *d.private() == Qualified::Whole);
            names_kept = withheld(raw, &directives, shared)
                .iter()
                .filter(|name| **name != header::SET_COOKIE)
                .any(holds);
        }
        let refused = (has("no-store") && !understood)
            || whole_private
            || (shared && holds(&header::SET_COOKIE))
            || names_kept
            || self.options.refuses_error(entry.status);
        if refused {
            crate::log::debug_event!(key = %entry.key, "a stored response this cache may not serve: a miss");
        }
        !refused
    }

    /// A store lookup; a store that fails is a miss, never a failed request.
    pub(super) async fn lookup(&self, key: &str) -> Option<(Response<StreamingBody>, Arc<Entry>)> {
        match self.store.lookup(key).await {
            Ok(found) => found,
            Err(error) => {
                count(&self.counters.errors, Counter::Errors);
                crate::log::warn_event!(%key, %error, "cache lookup failed; forwarding the request");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::HttpStreamingCache;
    use crate::testing::{Clock, MemoryStore, Origin, bytes, field, request, serve};

    const URL: &str = "http://example.com/a";

    /// A cache over memory and an origin answering `fields` and `hello` after `delay`.
    fn setup(
        clock: &Clock,
        fields: &'static [(&'static str, &'static str)],
        delay: u64,
    ) -> (HttpStreamingCache, MemoryStore, Origin) {
        let (cache, store) = HttpStreamingCache::in_memory(clock.options());
        let clock = clock.clone();
        let origin = Origin::later(move |_| {
            let response = clock.response(200, fields, "hello");
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                response
            })
        });
        (cache, store, origin)
    }

    #[tokio::test]
    async fn a_requests_own_directives_decide_what_a_stored_response_may_answer() {
        let clock = Clock::default();
        let (cache, _, origin) = setup(&clock, &[("cache-control", "max-age=60")], 0);
        let cached = serve(
            &cache,
            &origin,
            request("GET", URL, &[("cache-control", "only-if-cached")]),
        )
        .await;
        assert_eq!(
            (cached.status().as_u16(), origin.calls()),
            (504, 0),
            "nothing stored: a 504"
        );
        // A response stored 30 s ago, fresh for 30 s more, asked for with each directive.
        for (asked, reaches_origin) in [
            ("only-if-cached", false),
            ("max-age=40", false),
            ("max-age=20", true),
            ("min-fresh=40", true),
            ("no-cache", true),
        ] {
            let (cache, _, origin) = setup(&clock, &[("cache-control", "max-age=60")], 0);
            bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await;
            clock.advance(30);
            let directive = [("cache-control", asked)];
            let answer = serve(&cache, &origin, request("GET", URL, &directive)).await;
            assert_eq!(answer.status(), 200, "{asked}");
            assert_eq!(origin.calls(), 1 + usize::from(reaches_origin), "{asked}");
        }
    }

    #[tokio::test]
    async fn requests_for_a_key_being_fetched_wait_for_that_fetch() {
        let clock = Clock::default();
        let (cache, store, origin) = setup(&clock, &[("cache-control", "max-age=60")], 200);
        let clients = (0..8).map(|_| {
            let (cache, origin) = (cache.clone(), origin.clone());
            tokio::spawn(async move {
                bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await
            })
        });
        for client in clients.collect::<Vec<_>>() {
            assert_eq!(client.await.expect("answered"), "hello");
        }
        assert_eq!((origin.calls(), store.keys().len()), (1, 1));
    }

    #[tokio::test]
    async fn within_stale_while_revalidate_the_stale_response_answers_and_is_refreshed_behind() {
        let clock = Clock::default();
        let fields = &[("cache-control", "max-age=60, stale-while-revalidate=30")];
        let (cache, store, origin) = setup(&clock, fields, 0);
        bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await;
        clock.advance(70);
        let stale = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert_eq!(field(&stale, "age"), ["70"]);
        let status = field(&stale, "cache-status").concat();
        assert!(status.contains("detail=stale-while-revalidate"), "{status}");
        let stored = || store.stored("GET:http://example.com/a").expect("kept").0;
        let before = stored();
        for _ in 0..100 {
            if !std::sync::Arc::ptr_eq(&before, &stored()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(origin.calls(), 2, "revalidated in the background");
        let fresh = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert_eq!(field(&fresh, "age"), ["0"], "the refreshed response");
        assert_eq!(origin.calls(), 2);
    }
}
