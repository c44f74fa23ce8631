//! A response's header fields as this cache decides by them ([`Decided`]): a targeted
//! field of its own (`CDN-Cache-Control`) in place of `Cache-Control`, a [`Ttl`]'s outcome
//! in place of the origin's freshness, and the `Cache-Control` decided by parsed once, for
//! every decision about that message to read: storability, freshness, the fields withheld,
//! whether it may be served stale. A stored response is decided anew where it is looked up
//! and judged (its parse is not kept with the entry, which would cost memory per entry).
//!
//! [`Ttl`]: super::Ttl

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, request, response};
use http_cache_semantics::CachePolicy;

use super::HttpStreamingCache;
use super::directives::{self, Verdict, judge};
use super::ttl::{TTL_FIELD, Ttl};
use crate::fields::cache_control::CacheControl;
use crate::format::record::Entry;

/// The fields of one response as the cache decides by them, its `Cache-Control` parsed. It
/// holds no reference to the message: each use is given the headers it was made from.
pub(super) struct Decided {
    /// The fields decided by, when they are not the message's own (a targeted field or the
    /// cache's own freshness field stands in).
    view: Option<HeaderMap>,
    /// The `Cache-Control` decided by, parsed.
    pub(super) directives: CacheControl,
}

impl Decided {
    /// The fields decided by, of `message` (the headers this was made from).
    pub(super) fn headers<'a>(&'a self, message: &'a HeaderMap) -> &'a HeaderMap {
        self.view.as_ref().unwrap_or(message)
    }

    /// The message's own `Cache-Control`: the one decided by, unless a field stood in
    /// for it (then parsed now; only the fields withheld from a stored copy ask for it).
    fn own<'a>(&'a self, message: &HeaderMap) -> Cow<'a, CacheControl> {
        match self.view {
            None => Cow::Borrowed(&self.directives),
            Some(_) => Cow::Owned(CacheControl::of(message)),
        }
    }

    /// Whether the message has explicit freshness as decided: `max-age`, `s-maxage` in a
    /// shared cache, or `Expires`.
    pub(super) fn explicit_freshness(&self, message: &HeaderMap, shared: bool) -> bool {
        self.headers(message).contains_key(header::EXPIRES)
            || self.directives.has("max-age")
            || (shared && self.directives.has("s-maxage"))
    }
}

impl HttpStreamingCache {
    /// `headers` as this cache decides a response's freshness and storability by, parsed.
    pub(super) fn decided(&self, headers: &HeaderMap) -> Decided {
        let targeted = self.options.targeted();
        match super::ttl::decided(headers, targeted, self.options.shared) {
            Cow::Borrowed(_) => Decided {
                view: None,
                directives: CacheControl::of(headers),
            },
            Cow::Owned(view) => Decided {
                directives: CacheControl::of(&view),
                view: Some(view),
            },
        }
    }

    /// The fields of a response with `headers` (`decided` as the cache decides by them)
    /// that only its own client gets, never the stored copy ([`directives::withheld`]).
    pub(super) fn withheld(&self, headers: &HeaderMap, decided: &Decided) -> Vec<HeaderName> {
        let own = decided.own(headers);
        directives::withheld(&own, &decided.directives, self.options.shared)
    }

    /// How long a response of `status`, `version` and `headers` (`decided` as the cache
    /// decides by them) to `request` stays fresh from its arrival (explicit or heuristic
    /// freshness, RFC 9111 §4.2.1), whatever `Age` it came with: zero for one that never
    /// was fresh.
    pub(super) fn freshness_lifetime(
        &self,
        (status, version, headers): (StatusCode, http::Version, &HeaderMap),
        decided: &Decided,
        request: &request::Parts,
    ) -> Duration {
        let now = self.now();
        let mut view = decided.headers(headers).clone();
        view.remove(header::AGE);
        let head =
            crate::fields::engine_view::policy_head(status, version, &view, &decided.directives);
        CachePolicy::new_options(request, &head, now, self.options.semantics()).time_to_live(now)
    }

    /// Whether a stored response had a freshness lifetime when it was stored: only such a
    /// response may be served stale (stale-on-error, `stale-while-revalidate`,
    /// `stale-if-error`). One that never was fresh answered one request; served stale it
    /// would be the previous client's page.
    pub(super) fn was_fresh(&self, entry: &Entry, decided: &Decided) -> bool {
        let request = directives::policy_view(&Method::GET, HeaderMap::new());
        let stored = (entry.status, entry.version, &entry.headers);
        !self.freshness_lifetime(stored, decided, &request).is_zero()
    }

    /// How a stored response of `status`, `version` and `headers` stands for a request
    /// ([`judge`]), but never fresh once it is stale and may not be served stale at all:
    /// it must be revalidated (`no-cache`, `must-revalidate`, …), or it never had a
    /// freshness lifetime. A request's `max-stale` asks for what the origin allowed, no
    /// more (the policy engine would serve either for it).
    pub(super) fn judge_stored(
        &self,
        policy: &CachePolicy,
        parts: &request::Parts,
        (status, version, headers): (StatusCode, http::Version, &HeaderMap),
        now: SystemTime,
    ) -> Verdict {
        let judged = judge(policy, parts, headers, now);
        if matches!(judged, Verdict::Fresh) && policy.is_stale(now) {
            let request = directives::policy_view(&Method::GET, HeaderMap::new());
            let decided = self.decided(headers);
            let never_fresh = self
                .freshness_lifetime((status, version, headers), &decided, &request)
                .is_zero();
            if never_fresh || directives::must_revalidate(&decided.directives, self.options.shared)
            {
                return Verdict::Stale;
            }
        }
        judged
    }

    /// Writes `rule`'s outcome for a response (`head`, as stored, `decided` as the cache
    /// decides by its headers) into its headers as the cache's own field, replacing any
    /// there, or leaves none when the origin's freshness stands as it is. Whether the
    /// headers changed: then they are decided anew.
    pub(super) fn apply_ttl(
        &self,
        rule: Ttl,
        head: &mut response::Parts,
        request: &request::Parts,
        decided: &Decided,
    ) -> bool {
        let removed = head.headers.remove(TTL_FIELD).is_some();
        if rule == Ttl::default() {
            return removed;
        }
        let anew;
        let decided = if removed {
            anew = self.decided(&head.headers);
            &anew
        } else {
            decided
        };
        let shared = self.options.shared;
        let explicit = decided.explicit_freshness(&head.headers, shared);
        let stored = (head.status, head.version, &head.headers);
        let origin = self.freshness_lifetime(stored, decided, request);
        let Some(outcome) = rule.outcome(explicit, origin) else {
            return removed;
        };
        match HeaderValue::try_from(outcome) {
            Ok(value) => {
                head.headers.insert(TTL_FIELD, value);
                true
            }
            Err(_) => removed,
        }
    }

    /// A response head as the policy engine is to read it, for this cache: `headers` as
    /// `decided` says the cache decides by them.
    pub(super) fn policy_response(
        &self,
        (status, version, headers): (StatusCode, http::Version, &HeaderMap),
        decided: &Decided,
    ) -> http::response::Parts {
        let view = decided.headers(headers);
        crate::fields::engine_view::policy_head(status, version, view, &decided.directives)
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::HttpStreamingCache;
    use crate::fields::test_headers as headers;
    use crate::testing::{Clock, Origin, bytes, field, request, serve};

    #[test]
    fn a_targeted_field_stands_in_for_cache_control_and_the_origins_own_is_kept_for_withholding() {
        let (cache, _) = HttpStreamingCache::in_memory(Clock::default().options());
        let message = headers(&[
            ("cache-control", "no-cache=\"set-cookie\", max-age=5"),
            ("cdn-cache-control", "max-age=600"),
            ("set-cookie", "id=1"),
        ]);
        let decided = cache.decided(&message);
        assert_eq!(decided.directives.seconds("max-age"), Some(600));
        assert!(decided.explicit_freshness(&message, true));
        let withheld = cache.withheld(&message, &decided);
        assert!(
            withheld.iter().all(|name| name == "set-cookie"),
            "{withheld:?}"
        );
        let named = headers(&[
            ("cache-control", "private=\"x-user\", max-age=5"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        let withheld = cache.withheld(&named, &cache.decided(&named));
        assert!(
            withheld.iter().any(|name| name == "x-user"),
            "named by the origin's own"
        );
        let plain = headers(&[("cache-control", "max-age=5")]);
        let decided = cache.decided(&plain);
        assert_eq!(decided.directives.seconds("max-age"), Some(5));
        assert!(
            std::ptr::eq(decided.headers(&plain), &plain),
            "no copy of the fields"
        );
    }

    #[tokio::test]
    async fn a_ttl_written_into_the_stored_copy_decides_its_freshness() {
        let clock = Clock::default();
        let options = clock
            .options()
            .default_ttl(std::time::Duration::from_secs(100));
        let (cache, store) = HttpStreamingCache::in_memory(options);
        let origin = Origin::new({
            let clock = clock.clone();
            move |_| clock.response(200, &[("etag", "\"v1\"")], "hello")
        });
        let url = "http://example.com/a";
        let first = serve(&cache, &origin, request("GET", url, &[])).await;
        assert!(
            field(&first, "cache-status")
                .concat()
                .contains("stored; ttl=100")
        );
        bytes(first).await;
        let (entry, _) = store.stored("GET:http://example.com/a").expect("stored");
        assert!(
            !entry.headers.contains_key("cache-control"),
            "the origin's fields as sent"
        );
        clock.advance(99);
        bytes(serve(&cache, &origin, request("GET", url, &[])).await).await;
        assert_eq!(origin.calls(), 1, "fresh for the Ttl's 100 s");
    }
}
