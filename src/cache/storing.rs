//! Storing what the origin answers: whether it may be stored and why not, its `Ttl`, the
//! fields only its own client gets, and the tee into the store.

use crate::Counter;
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
                cache.policy_response(status, parts.version, &parts.headers),
            );
            let policy = CachePolicy::new_options(&request, &response, now, options);
            if !policy.is_storable() {
                Some(why_not_storable(&request, &response, shared))
            } else if shared_cookie(shared, &parts.headers) && !cache.options.store_set_cookie {
                Some(NotStored::SetCookie)
            } else if cache.options.refuses_error(status) {
                Some(NotStored::ErrorStatus)
            } else {
                None
            }
        };
        let refused = refused.or((!rule.stores()).then_some(NotStored::Ttl));
        // The fields only this response's client gets (its cookie, what a qualified
        // `no-cache` or `private` names): never in the stored copy, nor to followers.
        let withheld = if refused.is_none() {
            let names = cache.withheld(&parts.headers);
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
        cache.apply_ttl(rule, &mut parts, &stored_request);
        let response = Response::from_parts(parts, body);
        // A response with neither freshness nor a validator can never be reused: storing it
        // would cost a write per request and risk serving one user's page stale to the next.
        let never_fresh = rules
            && !response.headers().contains_key(header::ETAG)
            && !response.headers().contains_key(header::LAST_MODIFIED)
            && cache
                .freshness_lifetime(
                    status,
                    response.version(),
                    response.headers(),
                    &stored_request,
                )
                .is_zero();
        let refused = if never_fresh {
            Some(NotStored::NoFreshness)
        } else if cache.manager.known_unusable() {
            count(&cache.counters.errors, Counter::Errors);
            Some(NotStored::StoreUnavailable)
        } else if !cache.manager.admits(&self.key) {
            // Asked for too few times yet (`min_uses`): passed, and counted.
            Some(NotStored::MinUses)
        } else {
            None
        };
        if let Some(refused) = refused {
            return Finished::Ready(self.not_stored(response, fwd, refused, withheld, found));
        }
        let head = cache.policy_response(status, response.version(), response.headers());
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
                .manager
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
                .manager
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
        add_fields(response.headers_mut(), withheld);
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
        add_fields(response.headers_mut(), withheld);
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
