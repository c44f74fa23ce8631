//! What the cache does with the inner service's answer: store it, freshen a stored entry
//! with a `304`, serve stale on an error, invalidate, or pass it on.

use crate::Counter;
use crate::cache_store::CacheStore as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, request};
use http_body::Body;
use http_cache_semantics::{AfterResponse, CachePolicy};

use super::decided::Decided;
use super::mode::CacheMode;
use crate::body::StreamingBody;
use crate::collapse::{FillEnd, FillLeader, Role};
use crate::error::BoxError;
use crate::fields::range;
use crate::key;

use super::directives::{
    head_selects, is_conditional, is_origin_failure, must_revalidate, policy_view, selects,
    stale_for_at_most, strip_hop_by_hop, take_fields,
};
use super::status::{Detail, Fwd, Status};
use super::ttl::TTL_FIELD;
use super::variants::INTERNAL;
use super::{Action, Finished, Pending, Stale, count};
use crate::fields::cache_control::CacheControl;
use crate::fields::engine_view;

impl Pending {
    /// What the cache does with the inner service's response.
    pub(crate) fn finish<B>(mut self, response: Response<B>) -> Finished
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.count_request(Some(response.status()));
        match std::mem::replace(&mut self.action, Action::Pass) {
            Action::Pass => Finished::Ready(self.pass(response, Status::forward(Fwd::Request))),
            Action::Invalidate => Finished::Later(Box::pin(self.invalidate(response))),
            Action::Fetch {
                fwd,
                stale,
                lookup_found,
                leader,
            } => match stale {
                // A 304 naming another representation selects nothing the client asked for
                // (RFC 9111 §4.3.4): the request goes again, unconditionally, and what it
                // answers is stored as on a miss.
                Some(stale)
                    if response.status() == StatusCode::NOT_MODIFIED
                        && !is_conditional(&self.request.headers)
                        && !selects(stale.response.headers(), response.headers()) =>
                {
                    crate::log::warn_event!(
                        key = %stale.key,
                        "a 304 to a revalidation named another representation; fetching again"
                    );
                    self.action = Action::Fetch {
                        fwd,
                        stale: None,
                        lookup_found,
                        leader,
                    };
                    Finished::Again(self)
                }
                Some(stale) if response.status() == StatusCode::NOT_MODIFIED => {
                    Finished::Later(Box::pin(self.revalidated(stale, response, leader)))
                }
                // A 200 to a HEAD freshens the stored GET it selects (RFC 9111 §4.3.5): its
                // headers are updated as a 304's would be, the body left as it is. One that
                // does not select it says the representation changed: it is not kept.
                Some(stale)
                    if self.request.method == Method::HEAD
                        && response.status() == StatusCode::OK =>
                {
                    if head_selects(stale.response.headers(), response.headers()) {
                        Finished::Later(Box::pin(self.revalidated(stale, response, leader)))
                    } else {
                        Finished::Later(Box::pin(self.changed_under_head(stale, response)))
                    }
                }
                Some(stale) if response.status().is_server_error() => {
                    let decided = self.cache.decided(stale.response.headers());
                    match self.stale_on_error(&stale, &decided, Some(response.status())) {
                        Some(detail) => {
                            let status = Status::forward(Fwd::Stale)
                                .fwd_status(response.status())
                                .detail(detail);
                            Finished::Ready(self.serve_stale(*stale, status))
                        }
                        None => self.store(response, fwd, lookup_found, leader),
                    }
                }
                Some(_) => self.store(response, fwd, lookup_found, leader),
                None if self.partial.is_some()
                    && response.status() == StatusCode::PARTIAL_CONTENT =>
                {
                    self.partial_answer(response, fwd)
                }
                None => {
                    self.partial_gives_way();
                    self.store(response, fwd, lookup_found, leader)
                }
            },
        }
    }

    /// Counts a request sent to the origin by its cause, and (but for a revalidation in the
    /// background) what its client is answered where that is known now: a pass, or a
    /// stale response the origin replaced (a miss). `status` is the origin's, `None` when
    /// the inner service failed.
    fn count_request(&self, status: Option<StatusCode>) {
        let counters = &self.cache.counters;
        let (trip, name) = match &self.action {
            Action::Pass | Action::Invalidate => {
                if !self.background {
                    count(&counters.passes, Counter::Passes);
                }
                (&counters.trip_passes, "passes")
            }
            Action::Fetch { stale: None, .. } => (&counters.trip_misses, "misses"),
            Action::Fetch { stale: Some(_), .. } if status == Some(StatusCode::NOT_MODIFIED) => {
                (&counters.trip_revalidated, "revalidated")
            }
            Action::Fetch { stale: Some(_), .. } => (&counters.trip_stale, "stale"),
        };
        trip.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(Counter::OriginRequests.name(), "cause" => name).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = name;
    }

    /// The answer when a 304 selected nothing and the request cannot be sent again (its
    /// body type cannot be made anew; see [`HttpCacheStreaming`](crate::HttpCacheStreaming)):
    /// a `502`, never the 304 to a client that did not ask conditionally.
    pub(crate) fn not_selected(self) -> Response<StreamingBody> {
        let status = Status::forward(Fwd::Stale)
            .fwd_status(StatusCode::NOT_MODIFIED)
            .detail(Detail::RevalidationNotSelected);
        self.cache.bad_gateway(status)
    }

    /// Whether the request goes to the inner service without its `Range`: a ranged miss
    /// that fetches the whole response.
    pub(crate) fn fetches_whole(&self) -> bool {
        self.range.is_some()
    }

    /// What the cache answers when the inner service fails: a stored response that must not
    /// be served stale becomes a 504; otherwise the error stands.
    pub(crate) fn on_error<E>(mut self, error: E) -> Result<Response<StreamingBody>, E> {
        self.count_request(None);
        let Action::Fetch {
            stale: Some(stale), ..
        } = std::mem::replace(&mut self.action, Action::Pass)
        else {
            return Err(error);
        };
        let decided = self.cache.decided(stale.response.headers());
        if must_revalidate(&decided.directives, self.cache.options.shared) {
            return Ok(self
                .cache
                .gateway_timeout(Fwd::Stale, Detail::OriginUnreachable));
        }
        if let Some(detail) = self.stale_on_error(&stale, &decided, None) {
            return Ok(self.serve_stale(*stale, Status::forward(Fwd::Stale).detail(detail)));
        }
        Err(error)
    }

    /// Whether `stale` may stand in for an origin that failed (`status` it answered, or
    /// none when the inner service failed), and the `Cache-Status` detail that says why:
    /// `stale-if-error` within such a window of the response or the request (RFC 5861:
    /// errors, 500, 502, 503, 504), `stale-on-error` within the layer's window (errors and
    /// every 5xx). Never when the response must be revalidated. `decided`: the stored
    /// response's headers as the cache decides by them.
    pub(super) fn stale_on_error(
        &self,
        stale: &Stale,
        decided: &Decided,
        status: Option<StatusCode>,
    ) -> Option<Detail> {
        let directives = &decided.directives;
        if must_revalidate(directives, self.cache.options.shared)
            || !self.cache.was_fresh(&stale.entry, decided)
        {
            return None;
        }
        let within =
            |window: Duration| stale_for_at_most(&stale.entry.policy, self.cache.now(), window);
        let seconds = |directives: &CacheControl| {
            directives
                .seconds("stale-if-error")
                .map(Duration::from_secs)
        };
        let asked = CacheControl::of(&self.request.headers);
        let directive = [seconds(directives), seconds(&asked)]
            .into_iter()
            .flatten()
            .max();
        if status.is_none_or(is_origin_failure) && directive.is_some_and(within) {
            return Some(Detail::StaleIfError);
        }
        let option = self.cache.options.stale_on_error;
        let failed = status.is_none_or(|status| status.is_server_error());
        (failed && option.is_some_and(within)).then_some(Detail::StaleOnError)
    }

    /// A stale response served in place of the origin's answer, saying so in
    /// `Cache-Status`.
    pub(super) fn serve_stale(&self, stale: Stale, status: Status) -> Response<StreamingBody> {
        count(&self.cache.counters.stale_served, Counter::StaleServed);
        let now = self.cache.now();
        self.cache.hit(
            &self.request,
            stale.response,
            &stale.entry.policy,
            now,
            status,
        )
    }

    pub(super) fn pass<B>(&self, response: Response<B>, status: Status) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut response = response.map(StreamingBody::pass);
        self.cache
            .annotate(response.headers_mut(), &status, false, false);
        response
    }

    pub(super) async fn invalidate<B>(self, response: Response<B>) -> Response<StreamingBody>
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
            // The first of each only: an answer cannot make one request wipe more.
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let target = response.headers().get(name).and_then(|v| v.to_str().ok());
                if let Some(get) = target.and_then(|t| key::same_origin_get(&self.request, t)) {
                    cache.delete(&cache.key(&get)).await;
                }
            }
        }
        if let Some(get) = self.post_as_get(response.headers()) {
            return match get.store(response, Fwd::Request, false, None) {
                Finished::Ready(response) => response,
                Finished::Later(future) => future.await,
                Finished::Again(pending) => pending.not_selected(),
            };
        }
        self.pass(response, Status::forward(Fwd::Request))
    }

    /// The `GET` of this `POST`'s URI, to store its answer under, when that answer says it
    /// is the URI's current representation (RFC 9110 §9.3.3): explicit freshness and one
    /// `Content-Location` naming the URI itself. What makes a `POST` (its body's fields) is
    /// not the `GET`'s.
    fn post_as_get(&self, response: &HeaderMap) -> Option<Pending> {
        let cache = &self.cache;
        if self.request.method != Method::POST
            || !cache.options.reuse_post
            || self.mode != CacheMode::Default
            || !cache
                .decided(response)
                .explicit_freshness(response, cache.options.shared)
        {
            return None;
        }
        let mut locations = response.get_all(header::CONTENT_LOCATION).iter();
        let (Some(location), None) = (locations.next(), locations.next()) else {
            return None;
        };
        let named = key::same_origin_get(&self.request, location.to_str().ok()?)?;
        let mut get = self.request.clone();
        get.method = Method::GET;
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
        ] {
            get.headers.remove(name);
        }
        let key = cache.key(&get);
        if cache.key(&named) != key {
            return None;
        }
        let action = Action::Fetch {
            fwd: Fwd::Request,
            stale: None,
            lookup_found: false,
            leader: None,
        };
        Some(Pending {
            // Counted once, as the pass it is.
            background: true,
            ..cache.pending(&get, key, self.mode, action)
        })
    }

    /// A `200` to a `HEAD` that names another representation than the stored `GET`
    /// response's: that response is removed (RFC 9111 §4.3.5 has it stale at least), and
    /// the `HEAD`'s answer passed on.
    async fn changed_under_head<B>(
        self,
        stale: Box<Stale>,
        response: Response<B>,
    ) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.cache.delete(&stale.key).await;
        let status = Status::forward(Fwd::Stale).fwd_status(response.status());
        self.pass(response, status)
    }

    /// A `304` to a revalidation: the stored response, with the `304`'s headers, served
    /// from disk and stored with them.
    pub(super) async fn revalidated<B>(
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
        let fresh = (
            fresh_parts.status,
            fresh_parts.version,
            &fresh_parts.headers,
        );
        let fresh_view = cache.policy_response(fresh, &cache.decided(fresh.2));
        let after = stale.entry.policy.after_response(
            &engine_view::request(&self.request),
            &fresh_view,
            now,
        );
        // A 304 that may answer validators of the client's own is the client's. (One that
        // selects nothing never reaches here for an unconditional client: see `finish`.)
        if matches!(after, AfterResponse::Modified(..)) && is_conditional(&self.request.headers) {
            if !self.background {
                count(&cache.counters.misses, Counter::Misses);
            }
            let status = Status::forward(Fwd::Stale).fwd_status(fresh_parts.status);
            let empty = http_body_util::Empty::<Bytes>::new();
            return self.pass(Response::from_parts(fresh_parts, empty), status);
        }
        if !self.background {
            count(&cache.counters.revalidations, Counter::Revalidations);
        }
        let Stale {
            response: stored,
            entry: _,
            key: stored_key,
        } = *stale;
        let (stored_parts, stored_body) = stored.into_parts();
        let mut fresh_headers = fresh_parts.headers;
        // Neither hop-by-hop fields nor the cache's own, which no origin writes.
        keepable(&mut fresh_headers);
        let mut merged = super::freshen::freshened(&stored_parts.headers, &fresh_headers, now);
        // What the 304 says to the client that caused it alone (in a shared cache a cookie
        // set on one user's revalidation would be replayed to every user), and what the
        // freshened headers name in a qualified `no-cache` or `private`: never stored.
        let mut decided = cache.decided(&merged);
        let names = cache.withheld(&merged, &decided);
        if !take_fields(&mut merged, &names).is_empty() {
            decided = cache.decided(&merged);
        }
        let to_client_only = take_fields(&mut fresh_headers, &names);
        // The route's `Ttl` decides anew from the freshened headers (the 304's own
        // extensions standing for the response's).
        let mut freshened = Response::new(()).into_parts().0;
        freshened.status = stored_parts.status;
        freshened.version = stored_parts.version;
        freshened.headers = merged;
        freshened.headers.remove(TTL_FIELD);
        freshened.extensions = fresh_parts.extensions;
        let rule = cache.ttl_rule(
            &self.request,
            &freshened,
            self.request_ttl.as_deref().copied(),
        );
        let stored_request = self.stored_request(&freshened.headers);
        if cache.apply_ttl(rule, &mut freshened, &stored_request, &decided) {
            decided = cache.decided(&freshened.headers);
        }
        let merged = freshened.headers;
        let mut head = Response::new(());
        *head.status_mut() = stored_parts.status;
        *head.headers_mut() =
            engine_view::normalized_by(decided.headers(&merged), &decided.directives);
        let policy = CachePolicy::new_options(
            &self.stored_request(&merged),
            &head,
            now,
            cache.options.semantics(),
        );
        let status = Status::forward(Fwd::Stale).fwd_status(fresh_parts.status);
        // Freshened headers the storing rules refuse (a 304 that makes the response
        // `private` or `no-store` for this cache) are served, and the entry goes.
        let storable = policy.is_storable();
        let served = merged.clone();
        let updated = if storable || self.mode == CacheMode::IgnoreRules {
            cache
                .store
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
                // Serve the body already open, with the headers the origin just confirmed
                // (as they are stored, not as the policy engine reads them).
                let (mut parts, ()) = head.into_parts();
                parts.version = stored_parts.version;
                parts.headers = served;
                cache.hit(
                    &self.request,
                    Response::from_parts(parts, stored_body),
                    &policy,
                    now,
                    status,
                )
            }
        };
        add_fields(cache, response.headers_mut(), to_client_only);
        response
    }

    /// For a ranged miss that fetched the whole response: reads the whole body into the
    /// store on a task of its own and answers the client's range from the file as it is
    /// written. Anything it cannot do that for (no `Content-Length`, several ranges, no
    /// fill to follow) is answered with the whole response.
    pub(super) fn answer_range(&self, teed: Response<StreamingBody>) -> Response<StreamingBody> {
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
        let wait = self.cache.options.coalesce_wait;
        let Role::Follower(follower) = self.cache.store.join_fill(&self.key, background, wait)
        else {
            return teed;
        };
        let (mut head, body) = teed.into_parts();
        if !crate::body::complete_in_background(body) {
            return Response::from_parts(head, StreamingBody::empty());
        }
        if len == 0 {
            range::unsatisfiable(&mut head, length);
            return Response::from_parts(head, StreamingBody::empty());
        }
        range::partial(&mut head, start, len, length);
        head.headers
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let reader = follower.body(256 * 1024).narrow(start, len);
        Response::from_parts(head, StreamingBody::follow(reader))
    }

    /// The request as the stored policy sees it: only the headers the response's `Vary`
    /// names, so that no credential or cookie is stored.
    pub(super) fn stored_request(&self, response_headers: &HeaderMap) -> request::Parts {
        let names = key::vary_names(response_headers).unwrap_or_default();
        let mut headers = HeaderMap::new();
        for name in &names {
            for value in self.request.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let headers = key::normalize_selecting(&names, &headers);
        policy_view(&self.request.method, headers)
    }
}

/// Gives back to a response the fields `taken` from it for its own client.
pub(super) fn add_fields(
    cache: &super::HttpStreamingCache,
    headers: &mut HeaderMap,
    taken: HeaderMap,
) {
    let stripped = |name: &http::HeaderName| {
        cache.options.strips_tags() && cache.store.tag_fields().contains(name)
    };
    let mut last = None;
    for (name, value) in taken {
        if let Some(name) = name {
            last = Some(name);
        }
        if let Some(name) = &last
            && !stripped(name)
        {
            headers.append(name, value);
        }
    }
}

/// An origin's headers as the cache keeps them: without hop-by-hop headers and without the
/// headers it uses for itself.
pub(super) fn keepable(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for name in INTERNAL {
        headers.remove(name);
    }
}
