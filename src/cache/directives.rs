//! Header rules that need no store: `Cache-Control` directives, freshness judged for a
//! request, validators, hop-by-hop and shared-cache header rules.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, StatusCode, request};
use http_cache_semantics::{BeforeRequest, CachePolicy};

use crate::format::record::Entry;

use super::status::NotStored;
use super::variants::variants_generation;
use crate::fields::cache_control::{CacheControl, Qualified};
use crate::fields::engine_view;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1; RFC 9112 §6.1
/// for `Transfer-Encoding`, which the next hop frames anew).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Header fields a `304` may not change in the stored response, since the stored body stays.
pub(super) const KEPT_ON_REVALIDATION: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// A request as cache policies see it. The cache key already names the resource (and a
/// custom key may name one resource for several URLs), so every view has the same URI and no
/// `Host`: what a policy still matches is the method and the headers `Vary` names. A HEAD is
/// judged as the GET it is answered from.
pub(super) fn policy_view(method: &Method, mut headers: HeaderMap) -> request::Parts {
    headers.remove(header::HOST);
    let headers = engine_view::normalized(&headers);
    let mut request = Request::new(());
    *request.method_mut() = if *method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    *request.uri_mut() = http::Uri::from_static("/");
    *request.headers_mut() = headers;
    request.into_parts().0
}

/// Why the storing rules (RFC 9111 §3) refuse a response (`response`, as the policy engine
/// reads it) to `request` (likewise), in a cache `shared` or not.
pub(super) fn why_not_storable(
    request: &request::Parts,
    response: &http::response::Parts,
    shared: bool,
) -> NotStored {
    let directives = CacheControl::of(&response.headers);
    if request.method != Method::GET {
        NotStored::Method
    } else if CacheControl::of(&request.headers).has("no-store") || directives.has("no-store") {
        NotStored::NoStore
    } else if shared && directives.has("private") {
        NotStored::Private
    } else if shared && request.headers.contains_key(header::AUTHORIZATION) {
        NotStored::Authorization
    } else {
        NotStored::Status
    }
}

pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether a shared cache would hand one user's cookie to the next by storing a response
/// with `headers` as it is: it sets a cookie (`public` or not: nginx, Varnish, Fastly and
/// Cloudflare do not store such a response unless told to).
pub(super) fn shared_cookie(shared: bool, headers: &HeaderMap) -> bool {
    shared && headers.contains_key(header::SET_COOKIE)
}

/// The fields of a response that a cache keeps only for the client whose request fetched
/// it, never in the stored copy: those a qualified `no-cache` names (they may not be served
/// from it without a revalidation, so they are not kept at all), and in a shared cache those
/// a qualified `private` names and `Set-Cookie` (one user's, whatever else the response
/// says). Read from a response's `Cache-Control` and from the one it is `decided` by (a
/// targeted field standing in for it): what either names is withheld.
pub(super) fn withheld(
    directives: &CacheControl,
    decided: &CacheControl,
    shared: bool,
) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for directives in [directives, decided] {
        if let Qualified::Fields(fields) = directives.no_cache() {
            names.extend(fields.iter().cloned());
        }
        if shared && let Qualified::Fields(fields) = directives.private() {
            names.extend(fields.iter().cloned());
        }
    }
    if shared {
        names.push(header::SET_COOKIE);
    }
    names
}

/// Removes the fields `names` from `headers`; what was removed.
pub(super) fn take_fields(headers: &mut HeaderMap, names: &[HeaderName]) -> HeaderMap {
    let mut taken = HeaderMap::new();
    for name in names {
        if let http::header::Entry::Occupied(entry) = headers.entry(name) {
            let (name, values) = entry.remove_entry_mult();
            for value in values {
                taken.append(name.clone(), value);
            }
        }
    }
    taken
}

/// Removes the headers that describe one connection, not the message: `Connection`, every
/// header it names, and the hop-by-hop headers of RFC 9110 §7.6.1 (`Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`). The cache does this to every response before it stores
/// or forwards it; a proxy in front of it does the same to what it forwards either way.
///
/// ```
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", "close, x-session".parse().unwrap());
/// headers.insert("x-session", "abc".parse().unwrap());
/// headers.insert("transfer-encoding", "chunked".parse().unwrap());
/// headers.insert("cache-control", "max-age=60".parse().unwrap());
/// http_cache_streaming::strip_hop_by_hop(&mut headers);
/// assert_eq!(headers.len(), 1);
/// assert!(headers.contains_key("cache-control"));
/// ```
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP.map(HeaderName::from_static)) {
        headers.remove(name);
    }
}

/// Whether a request carries validators of its own (`If-None-Match`, `If-Modified-Since`).
pub(super) fn is_conditional(headers: &HeaderMap) -> bool {
    headers.contains_key(header::IF_NONE_MATCH) || headers.contains_key(header::IF_MODIFIED_SINCE)
}

/// Whether a `304` with `fresh` headers selects the stored response with `stored` headers
/// for update (RFC 9111 §4.3.4): the same strong entity tag, the same weak one, the same
/// `Last-Modified`, or no validator at all (then it answers the one response validated).
pub(super) fn selects(stored: &HeaderMap, fresh: &HeaderMap) -> bool {
    fn value(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
        headers.get(name)?.to_str().ok().map(str::trim)
    }
    match (
        value(fresh, header::ETAG),
        value(fresh, header::LAST_MODIFIED),
    ) {
        (Some(fresh_tag), _) => {
            let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_owned();
            match value(stored, header::ETAG) {
                // A strong tag selects only the same strong tag; a weak one, either form.
                Some(stored_tag) if !fresh_tag.starts_with("W/") => stored_tag == fresh_tag,
                Some(stored_tag) => opaque(stored_tag) == opaque(fresh_tag),
                None => false,
            }
        }
        (None, Some(modified)) => value(stored, header::LAST_MODIFIED) == Some(modified),
        (None, None) => true,
    }
}

/// Whether a `200` to a `HEAD` with `head` headers selects the stored `GET` response with
/// `stored` headers for update (RFC 9111 §4.3.5): every validator it carries (`ETag`,
/// `Last-Modified`) is the stored one's, and so is its `Content-Length` where both have one.
/// A validator the stored response has and the `HEAD`'s lacks is one that changed. Entity
/// tags compare weakly: a `HEAD` answered without the compression its `GET` had may carry
/// the strong form of the stored weak tag, and still name the same content.
pub(super) fn head_selects(stored: &HeaderMap, head: &HeaderMap) -> bool {
    let value = |headers: &HeaderMap, name: &header::HeaderName| {
        let value = headers.get(name)?.as_bytes().trim_ascii();
        let opaque = (*name == header::ETAG)
            .then(|| value.strip_prefix(b"W/"))
            .flatten();
        Some(opaque.unwrap_or(value).to_vec())
    };
    let validators_agree = [header::ETAG, header::LAST_MODIFIED]
        .iter()
        .all(|name| value(stored, name) == value(head, name));
    let lengths_agree = match (
        value(stored, &header::CONTENT_LENGTH),
        value(head, &header::CONTENT_LENGTH),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    validators_agree && lengths_agree
}

/// Whether a stored response may never be served stale, only after a successful
/// revalidation (RFC 9111 §4.2.4): `must-revalidate`, `no-cache`, and in a shared cache
/// `proxy-revalidate` and `s-maxage`, which carries its semantics there (§5.2.2.10).
pub(super) fn must_revalidate(directives: &CacheControl, shared: bool) -> bool {
    directives.has("must-revalidate")
        || *directives.no_cache() == Qualified::Whole
        || (shared && (directives.has("proxy-revalidate") || directives.has("s-maxage")))
}

/// Whether a stored response can no longer be used: stale, without a validator to
/// revalidate it, and past every window in which it could be served stale.
/// Its stale windows are read as this cache reads them, from a `targeted` field if it has one.
pub(super) fn unusable(
    entry: &Entry,
    now: SystemTime,
    default_window: Option<Duration>,
    targeted: &[HeaderName],
    shared: bool,
) -> bool {
    let decided = super::ttl::decided(&entry.headers, targeted, shared);
    let headers = &*decided;
    if !entry.policy.is_stale(now)
        || headers.contains_key(header::ETAG)
        || headers.contains_key(header::LAST_MODIFIED)
        || variants_generation(headers).is_some()
    {
        return false;
    }
    let directives = CacheControl::of(headers);
    let window = ["stale-while-revalidate", "stale-if-error"]
        .iter()
        .filter_map(|d| directives.seconds(d))
        .map(Duration::from_secs)
        .chain(default_window)
        .max();
    !window.is_some_and(|window| stale_for_at_most(&entry.policy, now, window))
}

/// Whether the origin's answer is a failure that a stale response may stand in for.
pub(super) fn is_origin_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Whether the response `policy` describes has been stale for no longer than `window`
/// (its age past its freshness lifetime, RFC 9111 §4.2).
///
/// The lifetime is read as the time to live plus the age on arrival (`Age`; a time before
/// arrival counts no resident time). A response that arrived already stale (`Age` past its
/// lifetime) hides its lifetime; it is taken as zero, so that such a response is never
/// served staler than `window`.
pub(super) fn stale_for_at_most(policy: &CachePolicy, now: SystemTime, window: Duration) -> bool {
    let before_arrival = SystemTime::UNIX_EPOCH;
    let lifetime = match policy.time_to_live(before_arrival) {
        Duration::ZERO => Duration::ZERO,
        left => left + policy.age(before_arrival),
    };
    policy.age(now).saturating_sub(lifetime) <= window
}

/// How a stored response stands for a request.
pub(super) enum Verdict {
    Fresh,
    Stale,
    /// Stored for other request headers than the ones `Vary` names in this request.
    Mismatch,
}

/// Judges a stored response for a request. A request without `Cache-Control` or `Pragma`
/// asks nothing but freshness, and the key (and variant key) already matched it, so its
/// answer is `is_stale`; any other request is judged by http-cache-semantics in full.
pub(super) fn judge(
    policy: &CachePolicy,
    parts: &request::Parts,
    stored: &HeaderMap,
    now: SystemTime,
) -> Verdict {
    let plain = !parts.headers.contains_key(header::CACHE_CONTROL)
        && !parts.headers.contains_key(header::PRAGMA);
    if plain {
        return if policy.is_stale(now) {
            Verdict::Stale
        } else {
            Verdict::Fresh
        };
    }
    // Compared with the request the response was stored for as the variant was chosen.
    let names = crate::key::vary_names(stored).unwrap_or_default();
    let headers = crate::key::normalize_selecting(&names, &parts.headers);
    let view = policy_view(&parts.method, headers);
    match policy.before_request(&view, now) {
        BeforeRequest::Fresh(_) => Verdict::Fresh,
        BeforeRequest::Stale { matches: true, .. } => Verdict::Stale,
        BeforeRequest::Stale { matches: false, .. } => Verdict::Mismatch,
    }
}

/// The validators (`If-None-Match`, `If-Modified-Since`) to revalidate a stored response
/// with, as http-cache-semantics computes them.
pub(super) fn validators(policy: &CachePolicy, parts: &request::Parts) -> HeaderMap {
    // Judged a century on, every stored response is stale, and the answer carries the
    // revalidation request this response allows, whether or not it is stale now.
    let later = SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut validators = HeaderMap::new();
    if let BeforeRequest::Stale { request, .. } = policy.before_request(parts, later) {
        for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
            for value in request.headers.get_all(&name) {
                validators.append(name.clone(), value.clone());
            }
        }
    }
    validators
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::test_headers as headers;
    use http_cache_semantics::CacheOptions;

    const AT: u64 = 1_780_000_000;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(AT + seconds)
    }

    fn request(method: Method, fields: &[(&str, &str)]) -> request::Parts {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = http::Uri::from_static("http://example.com/a");
        *request.headers_mut() = headers(fields);
        request.into_parts().0
    }

    fn response(fields: &[(&str, &str)]) -> http::response::Parts {
        let mut response = http::Response::new(());
        *response.headers_mut() = headers(fields);
        response.into_parts().0
    }

    /// The policy of a response with `fields` to a `GET` with `asked`, received at [`AT`]
    /// by a shared cache (the request as policies see it: [`policy_view`]).
    fn stored(asked: &[(&str, &str)], fields: &[(&str, &str)]) -> CachePolicy {
        let options = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let asked = policy_view(&Method::GET, headers(asked));
        CachePolicy::new_options(&asked, &response(fields), at(0), options)
    }

    #[test]
    fn storing_is_refused_for_the_reason_rfc_9111_gives() {
        let get = request(Method::GET, &[]);
        let why = |request: &request::Parts, fields: &[(&str, &str)], shared| {
            why_not_storable(request, &response(fields), shared)
        };
        let post = request(Method::POST, &[]);
        assert_eq!(
            why(&post, &[("cache-control", "max-age=60")], true),
            NotStored::Method
        );
        let asked_no_store = request(Method::GET, &[("cache-control", "no-store")]);
        assert_eq!(why(&asked_no_store, &[], true), NotStored::NoStore);
        assert_eq!(
            why(&get, &[("cache-control", "No-Store")], true),
            NotStored::NoStore
        );
        assert_eq!(
            why(&get, &[("cache-control", "private")], true),
            NotStored::Private
        );
        assert_eq!(
            why(&get, &[("cache-control", "private")], false),
            NotStored::Status,
            "a private cache may keep a private response"
        );
        let authorized = request(Method::GET, &[("authorization", "Basic eDp5")]);
        assert_eq!(why(&authorized, &[], true), NotStored::Authorization);
    }

    #[test]
    fn must_revalidate_holds_for_each_directive_and_the_shared_ones_in_a_shared_cache() {
        let holds = |value: &str, shared| {
            must_revalidate(
                &CacheControl::of(&headers(&[("cache-control", value)])),
                shared,
            )
        };
        assert!(holds("max-age=5, must-revalidate", false));
        assert!(holds("no-cache", false));
        assert!(
            !holds(r#"no-cache="set-cookie""#, true),
            "naming a field, not the response"
        );
        assert!(holds("proxy-revalidate", true) && !holds("proxy-revalidate", false));
        assert!(holds("s-maxage=60", true) && !holds("s-maxage=60", false));
        assert!(!holds("max-age=60, stale-if-error=30", true));
    }

    #[test]
    fn a_304_selects_the_stored_response_by_its_validators() {
        let selects = |stored: &[(&str, &str)], fresh: &[(&str, &str)]| {
            selects(&headers(stored), &headers(fresh))
        };
        let strong = [("etag", "\"v1\"")];
        assert!(selects(&strong, &strong));
        assert!(!selects(&strong, &[("etag", "\"v2\"")]));
        assert!(
            selects(&strong, &[("etag", "W/\"v1\"")]),
            "a weak tag compares weakly (RFC 9110 §8.8.3.2)"
        );
        assert!(selects(&[("etag", "W/\"v1\"")], &[("etag", "W/\"v1\"")]));
        assert!(
            !selects(&[("etag", "W/\"v1\"")], &[("etag", "\"v1\"")]),
            "a strong tag selects only the same strong tag (RFC 9111 §4.3.4)"
        );
        assert!(!selects(&[], &strong), "a tag the stored response lacks");
        let modified = [("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")];
        assert!(selects(&modified, &modified));
        assert!(!selects(
            &modified,
            &[("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")]
        ));
        assert!(
            selects(&strong, &[]),
            "no validator: the one response validated"
        );
    }

    #[test]
    fn a_head_selects_the_stored_get_only_with_its_validators_and_length() {
        let selects = |stored: &[(&str, &str)], head: &[(&str, &str)]| {
            head_selects(&headers(stored), &headers(head))
        };
        let stored = [("etag", "W/\"v1\""), ("content-length", "10")];
        assert!(selects(
            &stored,
            &[("etag", "\"v1\""), ("content-length", "10")]
        ));
        assert!(
            selects(&stored, &[("etag", "W/\"v1\"")]),
            "no length to compare"
        );
        assert!(!selects(
            &stored,
            &[("etag", "W/\"v1\""), ("content-length", "11")]
        ));
        assert!(
            !selects(&stored, &[("content-length", "10")]),
            "its tag changed"
        );
        assert!(!selects(&stored, &[("etag", "\"v2\"")]));
    }

    #[test]
    fn freshness_is_judged_for_the_request() {
        let policy = stored(&[], &[("cache-control", "max-age=60")]);
        let judge = |asked: &[(&str, &str)], seconds| {
            judge(
                &policy,
                &request(Method::GET, asked),
                &HeaderMap::new(),
                at(seconds),
            )
        };
        assert!(matches!(judge(&[], 10), Verdict::Fresh));
        assert!(matches!(judge(&[], 61), Verdict::Stale));
        assert!(
            matches!(judge(&[("cache-control", "max-age=5")], 10), Verdict::Stale),
            "older than the request accepts"
        );
        assert!(matches!(
            judge(&[("cache-control", "max-stale=60")], 100),
            Verdict::Fresh
        ));
        assert!(matches!(
            judge(&[("cache-control", "no-cache")], 10),
            Verdict::Stale
        ));
    }

    #[test]
    fn a_variant_stored_for_other_request_headers_is_a_mismatch() {
        let asked = [("accept-language", "en")];
        let fields = [("cache-control", "max-age=60"), ("vary", "Accept-Language")];
        let policy = stored(&asked, &fields);
        let other = request(
            Method::GET,
            &[("accept-language", "fr"), ("cache-control", "max-age=30")],
        );
        let verdict = judge(&policy, &other, &headers(&fields), at(10));
        assert!(matches!(verdict, Verdict::Mismatch));
    }

    #[test]
    fn stale_windows_count_the_age_past_the_lifetime() {
        let policy = stored(&[], &[("cache-control", "max-age=60")]);
        let window = Duration::from_secs(30);
        assert!(stale_for_at_most(&policy, at(80), window));
        assert!(!stale_for_at_most(&policy, at(100), window));
        // Arrived older than its lifetime: its lifetime is taken as zero, and its whole age
        // as staleness.
        let old = stored(&[], &[("cache-control", "max-age=60"), ("age", "100")]);
        assert!(!stale_for_at_most(&old, at(0), window));
        let longer = Duration::from_secs(200);
        assert!(stale_for_at_most(&old, at(90), longer));
        assert!(!stale_for_at_most(&old, at(110), longer));
    }

    #[test]
    fn a_stale_entry_without_validators_is_unusable_past_its_stale_windows() {
        let entry = |fields: &[(&str, &str)]| Entry {
            key: String::new(),
            url: String::new(),
            status: StatusCode::OK,
            version: http::Version::HTTP_11,
            headers: headers(fields),
            trailers: None,
            policy: stored(&[], fields),
            digest: crate::format::layout::Hash32::of(b""),
            length: 0,
            stored_at: at(0),
            tags: Default::default(),
        };
        let unusable =
            |entry: &Entry, seconds, default| unusable(entry, at(seconds), default, &[], true);
        let plain = entry(&[("cache-control", "max-age=60")]);
        assert!(!unusable(&plain, 30, None), "fresh");
        assert!(unusable(&plain, 61, None));
        assert!(
            !unusable(&plain, 61, Some(Duration::from_secs(30))),
            "the cache's window"
        );
        let windowed = entry(&[("cache-control", "max-age=60, stale-if-error=100")]);
        assert!(!unusable(&windowed, 150, None));
        assert!(unusable(&windowed, 170, None));
        let tagged = entry(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
        assert!(!unusable(&tagged, 1000, None), "it can be revalidated");
    }

    #[test]
    fn revalidation_asks_with_the_stored_validators() {
        let policy = stored(
            &[],
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
        );
        let asked = policy_view(&Method::GET, HeaderMap::new());
        let validators = validators(&policy, &asked);
        assert_eq!(validators[header::IF_NONE_MATCH], "\"v1\"");
        assert_eq!(
            validators[header::IF_MODIFIED_SINCE],
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn withheld_fields_are_those_only_the_fetching_client_gets() {
        let of = |value: &str| CacheControl::of(&headers(&[("cache-control", value)]));
        let names = withheld(&of(r#"no-cache="x-a""#), &of(r#"private="X-B""#), true);
        assert_eq!(names, ["x-a", "x-b", "set-cookie"]);
        let names = withheld(&of(r#"private="x-b""#), &of(""), false);
        assert!(names.is_empty(), "a private cache keeps them: {names:?}");
    }
}
