//! Conditional requests answered from the store: a client's `If-None-Match` or
//! `If-Modified-Since` against a stored `200` it selects gets a `304` without the origin
//! (RFC 9110 §13.1.2, §13.1.3, §15.4.5; RFC 9111 §4.3.2).

use http::header::{self, HeaderMap, HeaderName};
use http::{StatusCode, response};

/// Whether a `GET` or `HEAD` with `request` headers is answered `304` by a stored `200`
/// with `stored` headers: its `If-None-Match` names the stored entity tag (weak
/// comparison) or is `*`; without `If-None-Match`, its `If-Modified-Since` is a valid date
/// no earlier than the stored `Last-Modified` (or, lacking one, `Date`, as RFC 9111 §4.3.2
/// says). An `If-Modified-Since` of more than one field line is no date (RFC 9110 §13.1.3).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(tag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return request
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        let tag = opaque(tag.trim());
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|listed| listed == "*" || opaque(listed) == tag);
    }
    let Some(since) = date(request, header::IF_MODIFIED_SINCE)
        .filter(|_| request.get_all(header::IF_MODIFIED_SINCE).iter().count() == 1)
    else {
        return false;
    };
    date(stored, header::LAST_MODIFIED)
        .or_else(|| date(stored, header::DATE))
        .is_some_and(|modified| modified <= since)
}

/// An entity tag without its weakness indicator: what the weak comparison compares.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

fn date(headers: &HeaderMap, name: HeaderName) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// Header fields a `304` carries from the `200` it stands for (RFC 9110 §15.4.5), with
/// `Last-Modified` for a response without an entity tag, and `Age`.
const KEPT: [HeaderName; 8] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
    header::AGE,
];

/// The head of the `304` standing for the `200` with head `ok`.
pub(crate) fn not_modified_head(ok: response::Parts) -> response::Parts {
    let mut headers = HeaderMap::new();
    for name in KEPT {
        for value in ok.headers.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    crate::head::response_head(StatusCode::NOT_MODIFIED, ok.version, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fields::test_headers as headers;

    #[test]
    fn if_none_match_is_a_weak_comparison_and_wins_over_if_modified_since() {
        let stored = headers(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let asks = |fields: &[(&str, &str)]| not_modified(&headers(fields), &stored);
        assert!(asks(&[("if-none-match", "\"v1\"")]));
        assert!(asks(&[("if-none-match", "\"x\", W/\"v1\"")]));
        assert!(asks(&[("if-none-match", "*")]));
        assert!(!asks(&[("if-none-match", "\"v2\"")]));
        assert!(!asks(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
        ]));
        assert!(asks(&[(
            "if-modified-since",
            "Sun, 06 Nov 1994 08:49:37 GMT"
        )]));
        assert!(asks(&[(
            "if-modified-since",
            "Mon, 07 Nov 1994 08:49:37 GMT"
        )]));
        assert!(!asks(&[(
            "if-modified-since",
            "Sat, 05 Nov 1994 08:49:37 GMT"
        )]));
        assert!(!asks(&[("if-modified-since", "yesterday")]));
        // Two lines are no date, even two that would each be met.
        assert!(!asks(&[
            ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT"),
            ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")
        ]));
        assert!(!asks(&[]));
    }

    #[test]
    fn without_last_modified_the_stored_date_is_what_if_modified_since_meets() {
        let stored = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let since = |date: &str| not_modified(&headers(&[("if-modified-since", date)]), &stored);
        assert!(since("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(since("Mon, 07 Nov 1994 08:49:37 GMT"));
        // Asked about a copy older than the stored one: it may have changed since.
        assert!(!since("Sun, 06 Nov 1994 07:59:37 GMT"));
        // Neither date: nothing to compare.
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")]),
            &HeaderMap::new()
        ));
    }
}
