//! A stored response freshened by a `304` (or by the `200` to a `HEAD`): which of its
//! headers the new response replaces (RFC 9111 §3.2, §4.3.4).

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};

use super::directives::{KEPT_ON_REVALIDATION, is_hop_by_hop};
use super::variants::is_internal;

/// The stored headers `stored` freshened by `fresh`, the headers of a response received at
/// `now` that validated it (hop-by-hop fields and the cache's own already taken out):
/// every field `fresh` carries replaces the stored one, except those that describe the
/// stored body (`Content-Length`, `Content-Encoding`, …), which stays. `Age` and `Date`
/// speak of the response they came with: the freshened response is as old as the new one
/// says, not as the first one was (a stored `Age: 100` kept under a `max-age=60` would have
/// every later request revalidate), and one without a `Date` is dated when it was received
/// (RFC 9110 §6.6.1).
pub(super) fn freshened(stored: &HeaderMap, fresh: &HeaderMap, now: SystemTime) -> HeaderMap {
    let mut merged = stored.clone();
    for name in fresh.keys() {
        if KEPT_ON_REVALIDATION.contains(name) || is_hop_by_hop(name) || is_internal(name) {
            continue;
        }
        merged.remove(name);
        for value in fresh.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    if !fresh.contains_key(header::AGE) {
        merged.remove(header::AGE);
    }
    if !fresh.contains_key(header::DATE)
        && let Ok(date) = HeaderValue::try_from(httpdate::fmt_http_date(now))
    {
        merged.insert(header::DATE, date);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::HttpStreamingCache;
    use crate::fields::test_headers as headers;
    use crate::testing::{Clock, MemoryStore, Origin, bytes, field, request, serve};
    use std::time::Duration;

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        let values = headers.get_all(name).iter();
        values.map(|v| v.to_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn a_304_replaces_the_fields_it_carries_and_not_those_of_the_stored_body() {
        let stored = headers(&[
            ("cache-control", "max-age=60"),
            ("content-length", "5"),
            ("content-encoding", "gzip"),
            ("etag", "\"v1\""),
            ("x-a", "old"),
            ("x-a", "older"),
            ("x-kept", "yes"),
        ]);
        let fresh = headers(&[
            ("cache-control", "max-age=600"),
            ("content-length", "0"),
            ("content-encoding", "br"),
            ("x-a", "new"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let merged = freshened(&stored, &fresh, SystemTime::now());
        assert_eq!(values(&merged, "cache-control"), ["max-age=600"]);
        assert_eq!(values(&merged, "x-a"), ["new"], "every stored value goes");
        assert_eq!(values(&merged, "x-kept"), ["yes"]);
        assert_eq!(values(&merged, "etag"), ["\"v1\""]);
        assert_eq!(
            values(&merged, "content-length"),
            ["5"],
            "the stored body's"
        );
        assert_eq!(values(&merged, "content-encoding"), ["gzip"]);
        assert_eq!(values(&merged, "date"), ["Sun, 06 Nov 1994 08:49:37 GMT"]);
    }

    #[test]
    fn age_and_date_are_those_of_the_validating_response() {
        let stored = headers(&[("age", "100"), ("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let merged = freshened(&stored, &HeaderMap::new(), now);
        assert!(merged.get("age").is_none(), "an age of the first response");
        assert_eq!(values(&merged, "date"), [httpdate::fmt_http_date(now)]);
        let merged = freshened(&stored, &headers(&[("age", "3")]), now);
        assert_eq!(values(&merged, "age"), ["3"]);
    }

    #[test]
    fn hop_by_hop_fields_and_the_caches_own_are_never_merged() {
        let stored = headers(&[("x-http-cache-streaming-variants", "2")]);
        let fresh = headers(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("x-http-cache-streaming-variants", "9"),
        ]);
        let merged = freshened(&stored, &fresh, SystemTime::now());
        assert!(merged.get("connection").is_none());
        assert!(merged.get("transfer-encoding").is_none());
        assert_eq!(values(&merged, "x-http-cache-streaming-variants"), ["2"]);
    }

    /// A cache on `clock` over memory, and an origin whose first `200` is `hello`, tagged
    /// `"v1"`, whose answer to `If-None-Match` is a `304` with `not_modified`'s fields, and
    /// whose `200`s after that are `bye`, tagged `"v2"`.
    fn revalidated(
        clock: &Clock,
        not_modified: &'static [(&'static str, &'static str)],
    ) -> (HttpStreamingCache, MemoryStore, Origin) {
        let (cache, store) = HttpStreamingCache::in_memory(clock.options());
        let changed = std::sync::atomic::AtomicBool::new(false);
        let origin = Origin::new({
            let clock = clock.clone();
            move |parts| {
                use std::sync::atomic::Ordering::SeqCst;
                if parts.headers.contains_key("if-none-match") {
                    changed.store(true, SeqCst);
                    clock.response(304, not_modified, "")
                } else if changed.load(SeqCst) {
                    let fields = &[("cache-control", "max-age=60"), ("etag", "\"v2\"")];
                    clock.response(200, fields, "bye")
                } else {
                    let fields = &[
                        ("cache-control", "max-age=60"),
                        ("etag", "\"v1\""),
                        ("x-a", "old"),
                    ];
                    clock.response(200, fields, "hello")
                }
            }
        });
        (cache, store, origin)
    }

    const URL: &str = "http://example.com/a";

    #[tokio::test]
    async fn a_stale_response_revalidated_by_a_304_is_served_with_its_headers_merged() {
        let clock = Clock::default();
        let fields = &[("cache-control", "max-age=120"), ("x-a", "new")];
        let (cache, store, origin) = revalidated(&clock, fields);
        bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await;
        clock.advance(61);
        let freshened = serve(&cache, &origin, request("GET", URL, &[])).await;
        let asked = origin.asked();
        assert_eq!(asked[1].headers["if-none-match"], "\"v1\"");
        assert_eq!(freshened.status(), 200);
        assert_eq!(
            field(&freshened, "cache-status"),
            ["http-cache-streaming; fwd=stale; fwd-status=304; ttl=120"]
        );
        assert_eq!(field(&freshened, "x-a"), ["new"]);
        assert_eq!(
            field(&freshened, "etag"),
            ["\"v1\""],
            "the stored body's tag stays"
        );
        assert_eq!(bytes(freshened).await, "hello");
        let (entry, _) = store.stored("GET:http://example.com/a").expect("kept");
        assert_eq!(entry.headers["cache-control"], "max-age=120");
        clock.advance(119);
        let hit = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert_eq!(
            (origin.calls(), bytes(hit).await.as_ref()),
            (2, &b"hello"[..])
        );
    }

    #[tokio::test]
    async fn a_304_naming_another_representation_is_fetched_again_unconditionally() {
        let clock = Clock::default();
        let (cache, store, origin) = revalidated(&clock, &[("etag", "\"v2\"")]);
        bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await;
        clock.advance(61);
        let again = serve(&cache, &origin, request("GET", URL, &[])).await;
        assert_eq!(bytes(again).await, "bye");
        let asked = origin.asked();
        assert_eq!(asked.len(), 3);
        assert!(
            !asked[2].headers.contains_key("if-none-match"),
            "{:?}",
            asked[2].headers
        );
        let (_, body) = store.stored("GET:http://example.com/a").expect("replaced");
        assert_eq!(body, "bye");
    }
}
