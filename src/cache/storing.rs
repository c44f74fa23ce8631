//! Storing what the origin answers: whether it may be stored and why not, its `Ttl`, the
//! fields only its own client gets, and the tee into the store.

use crate::Counter;
use crate::cache_store::CacheStore as _;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body::Body;
use http_cache_semantics::CachePolicy;

use super::directives::{shared_cookie, take_fields, why_not_storable};
use super::mode::CacheMode;
use super::pending::{add_fields, keepable};
use super::status::{Detail, Fwd, NotStored, Status};
use super::variants::names_as_vary;
use super::{Finished, Pending, count};
use crate::body::StreamingBody;
use crate::collapse::{FillHead, FillLeader};
use crate::error::BoxError;
use crate::fields::engine_view;
use crate::key;

impl Pending {
    /// A response from the origin: tee'd into the store when it may be stored, else passed
    /// with the reason.
    pub(super) fn store<B>(
        self,
        response: Response<B>,
        fwd: Fwd,
        found: bool,
        leader: Option<FillLeader>,
    ) -> Finished
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cache = &self.cache;
        if !self.background {
            // A response the origin sent anew (for nothing stored, or in place of a stale
            // one): this client's answer is a miss.
            count(&cache.counters.misses, Counter::Misses);
        }
        let (mut parts, body) = response.into_parts();
        keepable(&mut parts.headers);
        let now = cache.now();
        let options = cache.options.semantics();
        let status = parts.status;
        let (shared, rules) = (cache.options.shared, self.mode != CacheMode::IgnoreRules);
        let rule = cache.ttl_rule(&self.request, &parts, self.request_ttl.as_deref().copied());
        let mut decided = cache.decided(&parts.headers);
        // The head the policy engine reads, made for the storing rules and kept for the
        // stored policy while the stored copy stays the same message.
        let mut head = None;
        // Why the storing rules refuse it, if they do; then what this cache refuses that
        // the origin allowed.
        let refused = if self.request.method != Method::GET {
            Some(NotStored::Method)
        } else if status == StatusCode::PARTIAL_CONTENT {
            Some(NotStored::PartialContent)
        } else if !rules {
            (!status.is_success()).then_some(NotStored::Status)
        } else {
            let (request, response) = (
                engine_view::request(&self.request),
                cache.policy_response((status, parts.version, &parts.headers), &decided),
            );
            let policy = CachePolicy::new_options(&request, &response, now, options);
            let refused = if !policy.is_storable() {
                Some(why_not_storable(&request, &response, shared))
            } else if shared_cookie(shared, &parts.headers) && !cache.options.store_set_cookie {
                Some(NotStored::SetCookie)
            } else if cache.options.refuses_error(status) {
                Some(NotStored::ErrorStatus)
            } else {
                None
            };
            head = Some(response);
            refused
        };
        let refused = refused.or((!rule.stores()).then_some(NotStored::Ttl));
        // The fields only this response's client gets (its cookie, what a qualified
        // `no-cache` or `private` names): never in the stored copy, nor to followers.
        let withheld = if refused.is_none() {
            let names = cache.withheld(&parts.headers, &decided);
            take_fields(&mut parts.headers, &names)
        } else {
            HeaderMap::new()
        };
        let url = url::Url::parse(&key::effective_uri(&self.request));
        let names = key::vary_names(&parts.headers);
        let refused = refused
            .or(url.is_err().then_some(NotStored::InvalidUrl))
            .or(names.is_none().then_some(NotStored::Vary));
        let (Some(names), Ok(url), None) = (names, url, refused) else {
            let refused = refused.unwrap_or(NotStored::Vary);
            let response = Response::from_parts(parts, body);
            return Finished::Ready(self.not_stored(response, fwd, refused, withheld, found));
        };
        let stored_request = self.stored_request(&names_as_vary(&names));
        // The stored copy is another message when fields were withheld from it or a `Ttl`'s
        // outcome was written into it: decided anew.
        if !withheld.is_empty() {
            decided = cache.decided(&parts.headers);
            head = None;
        }
        if cache.apply_ttl(rule, &mut parts, &stored_request, &decided) {
            decided = cache.decided(&parts.headers);
            head = None;
        }
        let stored = (status, parts.version, &parts.headers);
        // A response with neither freshness nor a validator can never be reused: storing it
        // would cost a write per request and risk serving one user's page stale to the next.
        let never_fresh = rules
            && !parts.headers.contains_key(header::ETAG)
            && !parts.headers.contains_key(header::LAST_MODIFIED)
            && cache
                .freshness_lifetime(stored, &decided, &stored_request)
                .is_zero();
        let refused = if never_fresh {
            Some(NotStored::NoFreshness)
        } else if cache.store.known_unusable() {
            count(&cache.counters.errors, Counter::Errors);
            Some(NotStored::StoreUnavailable)
        } else if !cache.store.admits(&self.key) {
            // Asked for too few times yet (`min_uses`): passed, and counted.
            Some(NotStored::MinUses)
        } else {
            None
        };
        if let Some(refused) = refused {
            let response = Response::from_parts(parts, body);
            return Finished::Ready(self.not_stored(response, fwd, refused, withheld, found));
        }
        let head = head.unwrap_or_else(|| cache.policy_response(stored, &decided));
        let response = Response::from_parts(parts, body);
        let policy = CachePolicy::new_options(&stored_request, &head, now, options);
        let leader = leader.map(|leader| {
            let (status, version) = (response.status(), response.version());
            let head = FillHead {
                parts: crate::head::response_head(status, version, response.headers()),
                policy: policy.clone(),
                varying: stored_request.headers,
                entry: None,
            };
            (leader, head)
        });
        let ttl = cache.ttl(status, &policy, now);
        let stored = Status::forward(fwd).fwd_status(status).stored().ttl(ttl);
        if names.is_empty() {
            let (key, leading) = (self.key.clone(), leader.is_some());
            let response = match cache
                .store
                .tee_or_refuse(key, response, policy, url, leader)
            {
                (passed, Some(error)) => {
                    let refused = self.refused_by_store(&error);
                    return Finished::Ready(self.not_stored(passed, fwd, refused, withheld, found));
                }
                (teed, None) if leading => self.answer_range(teed),
                (teed, None) => teed,
            };
            return Finished::Ready(self.stored(response, &stored, withheld, found));
        }
        Finished::Later(Box::pin(async move {
            let cache = &self.cache;
            let generation = cache
                .variant_generation(&self.key, &names, &url, &policy)
                .await;
            let digest = key::variant_digest(&names, &self.request.headers);
            let language =
                super::languages::line(&names, &self.request.headers, response.headers(), &digest);
            let listed = match &generation {
                Some(generation) => {
                    cache
                        .list_variant(&self.key, generation, &digest, language)
                        .await
                }
                None => false,
            };
            // A URL keeps at most so many variants, each named by its list so that they go
            // with it: past that (an attacker varying a header at will) they pass.
            let Some(generation) = generation.filter(|_| listed) else {
                let refused = NotStored::TooManyVariants;
                return self.not_stored(response, fwd, refused, withheld, found);
            };
            let key = key::variant_key_of(&self.key, &generation, &digest);
            match cache
                .store
                .tee_or_refuse(key, response, policy, url, leader)
            {
                (passed, Some(error)) => {
                    let refused = self.refused_by_store(&error);
                    self.not_stored(passed, fwd, refused, withheld, found)
                }
                (teed, None) => self.stored(teed, &stored, withheld, found),
            }
        }))
    }

    /// A response being stored, as its client gets it: its withheld fields given back, its
    /// `Cache-Status` saying `stored`.
    fn stored(
        &self,
        mut response: Response<StreamingBody>,
        status: &Status,
        withheld: HeaderMap,
        found: bool,
    ) -> Response<StreamingBody> {
        add_fields(&self.cache, response.headers_mut(), withheld);
        self.cache
            .annotate(response.headers_mut(), status, false, found);
        response
    }

    /// A response passed through unstored: `Cache-Status` says why (`detail`), and so does
    /// its [`NotStored`] extension.
    fn not_stored<B>(
        &self,
        response: Response<B>,
        fwd: Fwd,
        why: NotStored,
        withheld: HeaderMap,
        found: bool,
    ) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let status = Status::forward(fwd)
            .fwd_status(response.status())
            .detail(Detail::NotStored(why));
        let mut response = response.map(StreamingBody::pass);
        self.cache
            .annotate(response.headers_mut(), &status, false, found);
        add_fields(&self.cache, response.headers_mut(), withheld);
        response.extensions_mut().insert(why);
        response
    }

    /// Why the store refused a body at once, counted as an error when the store itself
    /// failed.
    fn refused_by_store(&self, error: &crate::Error) -> NotStored {
        match error.kind() {
            crate::ErrorKind::TooLarge => NotStored::TooLarge,
            crate::ErrorKind::NoRoom => NotStored::StoreBusy,
            _ => {
                count(&self.cache.counters.errors, Counter::Errors);
                NotStored::StoreUnavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::HttpStreamingCache;
    use crate::testing::{Clock, Origin, bytes, field, request, serve};

    const URL: &str = "http://example.com/a";
    const KEY: &str = "GET:http://example.com/a";

    /// Serves two `GET`s of [`URL`] from an origin answering `fields` and `hello`: the
    /// origin's calls and the second answer's `Cache-Status` and body.
    async fn twice(
        options: impl FnOnce(&Clock) -> crate::HttpCacheOptions,
        fields: &'static [(&'static str, &'static str)],
        asked: &'static [(&'static str, &'static str)],
    ) -> (usize, Vec<String>, bytes::Bytes, Vec<String>) {
        let clock = Clock::default();
        let (cache, store) = HttpStreamingCache::in_memory(options(&clock));
        let origin = Origin::new({
            let clock = clock.clone();
            move |_| clock.response(200, fields, "hello")
        });
        let first = serve(&cache, &origin, request("GET", URL, asked)).await;
        assert_eq!(
            bytes(first).await,
            "hello",
            "the first client gets the body whole"
        );
        let second = serve(&cache, &origin, request("GET", URL, asked)).await;
        let status = field(&second, "cache-status");
        (origin.calls(), status, bytes(second).await, store.keys())
    }

    #[tokio::test]
    async fn a_fresh_response_is_stored_and_the_next_request_is_a_hit() {
        let (calls, status, body, keys) =
            twice(Clock::options, &[("cache-control", "max-age=60")], &[]).await;
        assert_eq!(calls, 1);
        assert_eq!(status, ["http-cache-streaming; hit; ttl=60"]);
        assert_eq!(body, "hello");
        assert_eq!(keys, [KEY]);
    }

    #[tokio::test]
    async fn what_a_shared_cache_must_not_store_reaches_the_origin_every_time() {
        for (fields, asked, why) in [
            (
                &[("cache-control", "no-store, max-age=60")][..],
                &[][..],
                "no-store",
            ),
            (&[("cache-control", "private, max-age=60")], &[], "private"),
            (
                &[("cache-control", "max-age=60")],
                &[("authorization", "Basic eA==")],
                "authorization",
            ),
            (
                &[("cache-control", "max-age=60"), ("set-cookie", "id=1")],
                &[],
                "set-cookie",
            ),
            (&[], &[], "no-freshness"),
        ] {
            let (calls, status, body, keys) = twice(Clock::options, fields, asked).await;
            assert_eq!(calls, 2, "{why}");
            assert_eq!(
                status,
                [format!(
                    "http-cache-streaming; fwd=uri-miss; fwd-status=200; detail={why}"
                )]
            );
            assert_eq!(body, "hello", "{why}");
            assert!(keys.is_empty(), "{why}: {keys:?}");
        }
    }

    #[tokio::test]
    async fn a_private_cache_stores_what_is_private_and_a_shared_one_what_is_public() {
        let private = |clock: &Clock| clock.options().shared(false);
        let (calls, _, _, keys) =
            twice(private, &[("cache-control", "private, max-age=60")], &[]).await;
        assert_eq!((calls, keys.len()), (1, 1));
        let authorized = &[("authorization", "Basic eA==")];
        let public = &[("cache-control", "public, max-age=60")];
        let (calls, _, _, keys) = twice(Clock::options, public, authorized).await;
        assert_eq!(
            (calls, keys.len()),
            (1, 1),
            "public allows a response to Authorization"
        );
    }

    #[tokio::test]
    async fn a_stored_cookie_stays_with_the_client_it_was_set_for() {
        let clock = Clock::default();
        let (cache, store) = HttpStreamingCache::in_memory(clock.options().store_set_cookie(true));
        let fields = &[("cache-control", "max-age=60"), ("set-cookie", "id=1")];
        let origin = Origin::new({
            let clock = clock.clone();
            move |_| clock.response(200, fields, "hello")
        });
        let first = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert_eq!(
            field(&first, "set-cookie"),
            ["id=1"],
            "its own client gets it"
        );
        assert!(store.keys().is_empty(), "stored once its body has ended");
        assert_eq!(bytes(first).await, "hello");
        let (entry, body) = store.stored(KEY).expect("stored");
        assert!(
            !entry.headers.contains_key("set-cookie"),
            "{:?}",
            entry.headers
        );
        assert_eq!(body, "hello");
        let second = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert!(field(&second, "set-cookie").is_empty());
        assert_eq!(origin.calls(), 1);
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_content_length_is_passed_and_not_stored() {
        let fields = &[("cache-control", "max-age=60"), ("content-length", "10")];
        let (calls, _, body, keys) = twice(Clock::options, fields, &[]).await;
        assert_eq!((calls, body.as_ref()), (2, &b"hello"[..]));
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[tokio::test]
    async fn a_response_stays_fresh_for_its_lifetime_and_no_longer() {
        let clock = Clock::default();
        let (cache, _) = HttpStreamingCache::in_memory(clock.options());
        let origin = Origin::new({
            let clock = clock.clone();
            move |_| clock.response(200, &[("cache-control", "max-age=60")], "hello")
        });
        serve(&cache, &origin, request("GET", URL, &[])).await;
        clock.advance(59);
        let hit = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert_eq!(field(&hit, "age"), ["59"]);
        assert_eq!(origin.calls(), 1);
        clock.advance(1);
        let stale = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert_eq!(origin.calls(), 2, "stale at 60 s: fetched again");
        assert_eq!(field(&stale, "age"), Vec::<String>::new());
    }
}
