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
    use crate::fields::test_headers as headers;
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
}
