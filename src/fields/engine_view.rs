//! What the policy engine (http-cache-semantics) is shown of a message: its headers read as
//! RFC 9111 asks of a recipient, where the engine itself is lenient or strict in the wrong
//! places.
//!
//! - `Cache-Control` directive names in any case (§5.2), the first of a repeated directive,
//!   and commas inside quoted strings kept inside their directive.
//! - A delta-seconds value (`max-age`, `s-maxage`, `min-fresh`, `max-stale`,
//!   `stale-while-revalidate`, `stale-if-error`) that is not `1*DIGIT` (spaces around `=`, a
//!   decimal point, letters) gives no freshness: it is shown as 0. One past 2^31 is 2^31
//!   (§1.2.2).
//! - `Age` is its first member; one that is not a non-negative integer is ignored, and one
//!   too large to hold is 2^31 (§5.1).
//! - `Expires` and `Date` in any of the three HTTP-date forms, obsolete RFC 850 and asctime
//!   included (RFC 9110 §5.6.7); an `Expires` that is no valid date means "already
//!   expired" (§5.3).
//!
//! - A targeted field (`CDN-Cache-Control`, RFC 9213) stands in for `Cache-Control` and
//!   `Expires` when it is a valid structured dictionary ([`super::targeted`]).
//! - Error statuses the origin gives explicit freshness are shown as `200`s, and `no-store`
//!   gives way to `must-understand` on an understood status ([`policy_head`]).
//!
//! Only the copy the engine reads changes: responses are stored and served with the
//! headers and status the origin sent.

use http::HeaderMap;
use http::header::{self, HeaderValue};

use super::cache_control::{CacheControl, DELTA_SECONDS, Qualified, delta_seconds, split_list};

/// `headers` as the policy engine is to read them (see the module's documentation).
pub(crate) fn normalized(headers: &HeaderMap) -> HeaderMap {
    let directives = match headers.contains_key(header::CACHE_CONTROL) {
        true => CacheControl::of(headers),
        false => CacheControl::default(),
    };
    normalized_by(headers, &directives)
}

/// [`normalized`], `directives` being the `Cache-Control` of `headers`, parsed already.
pub(crate) fn normalized_by(headers: &HeaderMap, directives: &CacheControl) -> HeaderMap {
    let mut view = headers.clone();
    if headers.contains_key(header::CACHE_CONTROL) {
        let written: Vec<String> = directives
            .directives()
            .iter()
            .cloned()
            .filter_map(|d| {
                let delta = DELTA_SECONDS.contains(&d.name.as_str());
                Some(match d.value {
                    Some(value) if delta => {
                        let seconds = delta_seconds(&value).filter(|_| !d.malformed);
                        format!("{}={}", d.name, seconds.unwrap_or(0))
                    }
                    // `no-cache` and `private` naming fields (in every occurrence) speak of
                    // those fields only, which the cache never keeps in a stored copy: the
                    // rest of the response is judged without them.
                    _ if matches!(directives.qualified(&d.name), Qualified::Fields(_)) => {
                        return None;
                    }
                    // A name alone, or a value the engine does not read: the name keeps
                    // its meaning.
                    _ if d.name == "max-stale" || !delta => d.name,
                    _ => format!("{}=0", d.name),
                })
            })
            .collect();
        view.remove(header::CACHE_CONTROL);
        if let Ok(value) = HeaderValue::try_from(written.join(", ")) {
            view.insert(header::CACHE_CONTROL, value);
        }
    }
    // The first member of `Age` (RFC 9111 §5.1); one that is not a non-negative integer
    // (letters, a sign, a decimal point) is ignored, and one too large to hold is 2^31.
    if let Some(age) = headers.get(header::AGE) {
        let first = age
            .to_str()
            .ok()
            .and_then(|v| split_list(v).first().map(|s| s.trim().to_owned()));
        match first.as_deref().and_then(delta_seconds) {
            Some(seconds) => view.insert(header::AGE, HeaderValue::from(seconds)),
            None => view.remove(header::AGE),
        };
    }
    if headers.contains_key(header::EXPIRES) {
        let expires = super::dates::first_date(headers, header::EXPIRES);
        view.insert(
            header::EXPIRES,
            expires.unwrap_or_else(|| HeaderValue::from_static("0")),
        );
    }
    if headers.contains_key(header::DATE) {
        match super::dates::first_date(headers, header::DATE) {
            Some(date) => view.insert(header::DATE, date),
            None => view.remove(header::DATE),
        };
    }
    view
}

/// `request` as the policy engine is to read it: its head, headers normalized.
pub(crate) fn request(request: &http::request::Parts) -> http::request::Parts {
    let mut view = crate::head::request_head(request);
    view.headers = normalized(&request.headers);
    view
}

/// Statuses the policy engine stores (RFC 9111 §3, as it reads it).
const ENGINE_STORES: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Statuses this cache understands (RFC 9111 §5.2.2.3): the policy engine's, and the
/// errors RFC 9110 defines that it stores when told to. An unregistered code (`299`,
/// `599`) is not understood: with `must-understand` it is never stored.
const UNDERSTOOD: [u16; 19] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501, 400, 500, 502, 503, 504,
];

/// Whether a response of `status` with explicit freshness (`max-age`, `s-maxage`,
/// `Expires`) or `public` may be stored although the policy engine would not: any final
/// status but `206` and `304` (RFC 9111 §3 asks a cache to understand only those, and any
/// status under `must-understand`), which the origin asked to be cached.
fn stored_with_explicit_freshness(status: http::StatusCode, must_understand: bool) -> bool {
    let code = status.as_u16();
    (200..600).contains(&code)
        && code != 206
        && code != 304
        && !ENGINE_STORES.contains(&code)
        && (!must_understand || understands(status))
}

/// Whether this cache understands `status`: what lets `must-understand` override `no-store`.
pub(crate) fn understands(status: http::StatusCode) -> bool {
    UNDERSTOOD.contains(&status.as_u16())
}

/// A response head of `status`, `version` and `headers` normalized, as the policy engine is
/// to judge it. A final status the engine does not store, with explicit freshness or
/// `public`, is shown as a `200`, which the engine stores and reuses as the origin asked
/// (but under `must-understand` for a status this cache does not understand); a `no-store`
/// with `must-understand` on an understood status is dropped (§5.2.2.3), since this cache
/// understands it. `directives` is the `Cache-Control` of `headers`, parsed already.
pub(crate) fn policy_head(
    status: http::StatusCode,
    version: http::Version,
    headers: &HeaderMap,
    directives: &CacheControl,
) -> http::response::Parts {
    let mut view = normalized_by(headers, directives);
    // The directives the view keeps are those of `directives` by name: normalizing changes
    // values and drops only a qualified `no-cache` or `private`, none of those asked here.
    let has = |name: &str| directives.has(name);
    if has("must-understand") && has("no-store") && understands(status) {
        let kept: Vec<String> = CacheControl::of(&view)
            .directives()
            .iter()
            .filter(|d| d.name != "no-store")
            .map(|d| match &d.value {
                Some(value) => format!("{}={value}", d.name),
                None => d.name.clone(),
            })
            .collect();
        view.remove(header::CACHE_CONTROL);
        if let Ok(value) = HeaderValue::try_from(kept.join(", ")) {
            view.insert(header::CACHE_CONTROL, value);
        }
    }
    let explicit =
        has("max-age") || has("s-maxage") || has("public") || view.contains_key(header::EXPIRES);
    let shown = if explicit && stored_with_explicit_freshness(status, has("must-understand")) {
        http::StatusCode::OK
    } else {
        status
    };
    crate::head::response_head(shown, version, &view)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fields::test_headers as headers;

    fn shown(fields: &[(&str, &str)], name: &str) -> Option<String> {
        let view = normalized(&headers(fields));
        view.get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn directive_names_are_read_in_any_case_and_the_first_of_a_name_wins() {
        let cc = |v| shown(&[("cache-control", v)], "cache-control");
        assert_eq!(cc("No-CaChE").as_deref(), Some("no-cache"));
        assert_eq!(cc("MaX-AgE=3600").as_deref(), Some("max-age=3600"));
        assert_eq!(
            cc("max-age=60, max-age=3600").as_deref(),
            Some("max-age=60")
        );
        // Naming fields, they speak of those fields only, which no stored copy keeps.
        assert_eq!(
            cc(r#"private="a, b", max-age=5"#).as_deref(),
            Some("max-age=5")
        );
        assert_eq!(
            cc(r#"max-age=5, no-cache="Set-Cookie""#).as_deref(),
            Some("max-age=5")
        );
        assert_eq!(
            cc(r#"max-age=5, no-cache="", private"#).as_deref(),
            Some("max-age=5, no-cache, private"),
            "a list that names no field stands for the whole response"
        );
        let two = headers(&[
            ("cache-control", "max-age=1"),
            ("cache-control", "Max-Age=9"),
        ]);
        assert_eq!(
            normalized(&two)
                .get_all(header::CACHE_CONTROL)
                .iter()
                .count(),
            1
        );
        assert_eq!(
            CacheControl::of(&normalized(&two)).value("max-age"),
            Some(Some("1"))
        );
    }

    #[test]
    fn malformed_delta_seconds_give_no_freshness() {
        let cc = |v| shown(&[("cache-control", v)], "cache-control");
        for bad in [
            "max-age = 3600",
            "max-age= 3600",
            "max-age=3600.0",
            "max-age=36a0",
            "max-age=-5",
            "max-age=",
            "max-age=\"36",
        ] {
            assert_eq!(cc(bad).as_deref(), Some("max-age=0"), "{bad}");
        }
        assert_eq!(cc("max-age=\"3600\"").as_deref(), Some("max-age=3600"));
        assert_eq!(
            cc("s-maxage=99999999999").as_deref(),
            Some("s-maxage=2147483648")
        );
        assert_eq!(cc("max-stale").as_deref(), Some("max-stale"));
    }

    #[test]
    fn an_age_that_is_not_a_non_negative_integer_is_ignored() {
        let age = |v| shown(&[("age", v)], "age");
        assert_eq!(age("30").as_deref(), Some("30"));
        assert_eq!(age("30, 40").as_deref(), Some("30"));
        assert_eq!(age("99999999999999999999").as_deref(), Some("2147483648"));
        for bad in ["old, 0", "1.5", "-3", "abc", "", "+5", "0x10"] {
            assert_eq!(age(bad), None, "{bad}");
        }
    }

    #[test]
    fn expires_in_any_http_date_form_and_otherwise_expired() {
        let expires = |v| shown(&[("expires", v)], "expires");
        let imf = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(expires(imf).as_deref(), Some(imf));
        assert_eq!(
            expires("Sunday, 06-Nov-94 08:49:37 GMT").as_deref(),
            Some(imf)
        );
        assert_eq!(expires("Sun Nov  6 08:49:37 1994").as_deref(), Some(imf));
        for bad in ["Sun,  06 Nov 1994 08:49:37 GMT", "0", "tomorrow", "-1"] {
            assert_eq!(expires(bad).as_deref(), Some("0"), "{bad}");
        }
        assert_eq!(shown(&[("date", "yesterday")], "date"), None);
    }
}
