//! Cache keys: the primary key of a request (method, scheme, authority, path and query) and
//! the secondary key of a variant chosen by the request headers that `Vary` names; and
//! [`CacheKey`], the default key with its common edits. It knows nothing of the cache.

mod cache_key;

pub use cache_key::CacheKey;

use http::header::{HOST, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Method, Uri};
use sha2::{Digest, Sha256};

/// The primary key: `GET:https://example.com/path?query`. GET and HEAD share the GET key, so
/// that a HEAD is answered from a stored GET. Server-side requests carry no authority in their
/// URI; theirs is the `Host` header.
pub(crate) fn primary_key(parts: &Parts) -> String {
    let method = if parts.method == Method::HEAD {
        &Method::GET
    } else {
        &parts.method
    };
    format!("{method}:{}", effective_uri(parts))
}

/// The request's target as an absolute URI string: scheme, authority (or `Host`), path and
/// query.
pub(crate) fn effective_uri(parts: &Parts) -> String {
    let uri = &parts.uri;
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = match uri.authority() {
        Some(authority) => authority.as_str().to_ascii_lowercase(),
        None => parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{authority}{path}")
}

/// Whether the request names two sites: a URI with an authority and a `Host` header that
/// differs from it (or several `Host` headers). The key follows the URI, but an origin
/// may follow the header, so such a request is neither answered from nor stored in the cache.
pub(crate) fn host_conflict(parts: &Parts) -> bool {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let (Some(host), more) = (hosts.next(), hosts.next()) else {
        return false;
    };
    if more.is_some() {
        return true;
    }
    parts.uri.authority().is_some_and(|authority| {
        host.to_str()
            .map_or(true, |host| !authority.as_str().eq_ignore_ascii_case(host))
    })
}

/// Whether the request names its site by a valid authority, the only kind that may reach a
/// key: the URI's authority, else exactly one `Host` header, each a host of letters, digits,
/// `-`, `.`, `_` and `~` (or a bracketed IPv6 address) with an optional port, and no user
/// information. A `Host` of `victim.example/static` would otherwise store one path under
/// another's key, and `a@b` or `a\b` name one site to the cache and another to an origin.
pub(crate) fn authority_is_valid(parts: &Parts) -> bool {
    match parts.uri.authority() {
        Some(authority) => is_valid_authority(authority.as_str().as_bytes()),
        None => {
            let mut hosts = parts.headers.get_all(HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(host), None) => is_valid_authority(host.as_bytes()),
                _ => false,
            }
        }
    }
}

/// Whether `authority` (a `Host` header's value, or a URI's authority) is one the cache makes
/// keys of: `host[:port]` (RFC 9110 §7.2) with the host a name of letters, digits, `-`, `.`,
/// `_` and `~` (RFC 3986 §3.2.2 without percent-encoding or sub-delimiters, which no DNS
/// name has) or a bracketed IPv6 address, and the port at most five digits. No user
/// information, no `/`, `\`, `@`, space or control byte.
///
/// The layer passes a request whose authority fails this through uncached; a server in
/// front of the layer (a reverse proxy) can answer it `400 Bad Request` instead:
///
/// ```
/// use http_cache_streaming::is_valid_authority;
/// assert!(is_valid_authority(b"example.com:8080"));
/// assert!(!is_valid_authority(b"victim.example/static"));
/// assert!(!is_valid_authority(b"user@example.com"));
/// ```
pub fn is_valid_authority(authority: &[u8]) -> bool {
    let (host, port) = if authority.first() == Some(&b'[') {
        let Some(close) = authority.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &authority[1..close];
        let is_literal = !literal.is_empty()
            && literal.contains(&b':')
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !is_literal {
            return false;
        }
        (&authority[..=close], &authority[close + 1..])
    } else {
        match authority.iter().position(|&b| b == b':') {
            Some(colon) => (&authority[..colon], &authority[colon..]),
            None => (authority, &authority[authority.len()..]),
        }
    };
    let host_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host_ok && port_ok
}

/// Whether a GET or HEAD says it carries a body (a "fat GET"): a non-zero `Content-Length`
/// or any `Transfer-Encoding`. Such a request is neither answered from nor stored in the
/// cache, since an origin may answer it by its body, which no key names.
pub(crate) fn is_fat_read(parts: &Parts) -> bool {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return false;
    }
    parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|length| length.as_bytes().iter().any(|&b| b != b'0'))
}

/// The header names a response's `Vary` lists, lowercased, sorted and deduplicated. `None`
/// for `Vary: *`, which no request matches.
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else {
            return None; // a Vary that cannot be read cannot be matched
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The key of one variant: the primary key, the generation of the URL's variant list, and a
/// digest of the values the request has for the varying headers (absent and empty differ).
pub(crate) fn variant_key(
    primary: &str,
    generation: &str,
    names: &[HeaderName],
    request: &HeaderMap,
) -> String {
    variant_key_of(primary, generation, &variant_digest(names, request))
}

/// The key of the variant of `primary` in list `generation` whose values hash to `digest`.
pub(crate) fn variant_key_of(primary: &str, generation: &str, digest: &str) -> String {
    format!("{primary} vary={generation}:{digest}")
}

/// The value a request's `name` header selects a variant by, `None` when it has none: its
/// field lines as one list, each member without the whitespace around it (`a,b` is
/// `a , b`); for `Accept-Language` also lower-cased, without any whitespace, and sorted, so
/// that `en-US, fr;q=0.5` and `FR; q=0.5,en-us` select the same variant.
pub(crate) fn selecting_value(name: &HeaderName, request: &HeaderMap) -> Option<Vec<u8>> {
    let mut values = request.get_all(name).iter().peekable();
    values.peek()?;
    let language = name == http::header::ACCEPT_LANGUAGE;
    let mut members: Vec<Vec<u8>> = values
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|member| {
            let member = member.trim_ascii();
            if language {
                let no_space = member.iter().filter(|b| !b.is_ascii_whitespace());
                no_space.map(u8::to_ascii_lowercase).collect()
            } else {
                member.to_vec()
            }
        })
        .collect();
    if language {
        members.sort();
    }
    Some(members.join(&b","[..]))
}

/// `request`'s headers named in `names` as one normalised field each (see
/// [`selecting_value`]), for comparing a request with the one a variant was stored for.
pub(crate) fn normalize_selecting(names: &[HeaderName], request: &HeaderMap) -> HeaderMap {
    let mut headers = request.clone();
    for name in names {
        if let Some(value) = selecting_value(name, request)
            && let Ok(value) = http::HeaderValue::from_bytes(&value)
        {
            headers.insert(name.clone(), value);
        }
    }
    headers
}

/// The digest of the values a request has for the varying headers `names` (absent and
/// empty differ, values compared as [`selecting_value`] reads them), as 32 hex digits.
pub(crate) fn variant_digest(names: &[HeaderName], request: &HeaderMap) -> String {
    let mut hasher = Sha256::new();
    for name in names {
        hasher.update(name.as_str());
        match selecting_value(name, request) {
            None => hasher.update(b"\x00absent"),
            Some(value) => {
                hasher.update(b"\x00=");
                hasher.update(value);
            }
        }
        hasher.update(b"\x00\x00");
    }
    let digest: [u8; 32] = hasher.finalize().into();
    crate::support::hex(&digest[..16])
}

/// Resolves a `Location` or `Content-Location` value against the request URI, returning a
/// GET of the target, to be keyed as any request is, when it is on the same origin.
pub(crate) fn same_origin_get(parts: &Parts, location: &str) -> Option<Parts> {
    let base = url::Url::parse(&effective_uri(parts)).ok()?;
    let target = base.join(location).ok()?;
    if target.origin() != base.origin() {
        return None;
    }
    let uri: Uri = target.as_str().parse().ok()?;
    let mut request = http::Request::get(uri).body(()).ok()?;
    if let Some(host) = parts.headers.get(HOST) {
        request.headers_mut().insert(HOST, host.clone());
    }
    Some(request.into_parts().0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(request: Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn keys_name_method_scheme_authority_path_and_query() {
        let client = parts(Request::get("https://Example.com/a?b=1").body(()).unwrap());
        assert_eq!(primary_key(&client), "GET:https://example.com/a?b=1");
        let server = parts(
            Request::head("/a?b=1")
                .header("host", "example.com")
                .body(())
                .unwrap(),
        );
        assert_eq!(primary_key(&server), "GET:http://example.com/a?b=1");
        let post = parts(Request::post("http://x/").body(()).unwrap());
        assert_eq!(primary_key(&post), "POST:http://x/");
    }

    #[test]
    fn only_host_and_port_make_a_valid_authority() {
        for good in [
            "example.com",
            "Example.COM:8080",
            "127.0.0.1:3000",
            "[::1]:443",
            "[2001:db8::1]",
            "a_b~c-d.example",
            "localhost:",
        ] {
            assert!(is_valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "victim.example/static",
            "user@victim.example",
            "a\\b",
            "a b",
            "a\tb",
            "a\x00b",
            "a\x7fb",
            "example.com:80:80",
            "example.com:http",
            "example.com:123456",
            "[::1",
            "[]",
            "[example.com]",
            "[::1]x",
            "%65xample.com",
            "a,b",
            "é.example",
        ] {
            assert!(!is_valid_authority(bad.as_bytes()), "{bad:?}");
        }
        let with_host = |hosts: &[&str]| {
            let mut request = Request::get("/x");
            for host in hosts {
                request = request.header("host", *host);
            }
            authority_is_valid(&parts(request.body(()).unwrap()))
        };
        assert!(with_host(&["example.com"]));
        assert!(!with_host(&[]));
        assert!(!with_host(&["example.com", "example.com"]));
        assert!(!with_host(&["victim.example/static"]));
        let absolute = parts(Request::get("http://user@example.com/").body(()).unwrap());
        assert!(!authority_is_valid(&absolute));
    }

    #[test]
    fn vary_names_are_normalised_and_star_matches_nothing() {
        let mut headers = HeaderMap::new();
        headers.append("vary", "Accept-Encoding, accept-language".parse().unwrap());
        headers.append("vary", "Accept-Encoding".parse().unwrap());
        let names = vary_names(&headers).unwrap();
        assert_eq!(names, ["accept-encoding", "accept-language"]);
        headers.append("vary", "*".parse().unwrap());
        assert_eq!(vary_names(&headers), None);
    }

    #[test]
    fn selecting_values_ignore_spacing_and_for_languages_order_and_case() {
        let value = |name: &'static str, lines: &[&str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(name, line.parse().unwrap());
            }
            selecting_value(&HeaderName::from_static(name), &headers)
        };
        let language = |lines: &[&str]| value("accept-language", lines);
        assert_eq!(
            language(&["en-US, fr;q=0.5"]),
            language(&["FR; q=0.5,en-us"])
        );
        assert_eq!(
            language(&["en-US", "fr;q=0.5"]),
            language(&["fr;q=0.5, en-us"])
        );
        assert_ne!(language(&["en"]), language(&["de"]));
        let flavor = |lines: &[&str]| value("x-flavor", lines);
        assert_eq!(flavor(&["a , b"]), flavor(&["a,b"]));
        assert_eq!(flavor(&["a", "b"]), flavor(&["a, b"]));
        assert_ne!(flavor(&["a, b"]), flavor(&["b, a"]));
        assert_ne!(flavor(&["A"]), flavor(&["a"]));
        assert_eq!(flavor(&[]), None);
        assert_eq!(flavor(&[""]), Some(Vec::new()));
    }

    #[test]
    fn variant_keys_differ_by_value_presence_and_generation() {
        let names = [HeaderName::from_static("accept-language")];
        let mut en = HeaderMap::new();
        en.insert("accept-language", "en".parse().unwrap());
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", "fr".parse().unwrap());
        let mut empty = HeaderMap::new();
        empty.insert("accept-language", "".parse().unwrap());
        let keys = [
            variant_key("K", "1", &names, &en),
            variant_key("K", "1", &names, &fr),
            variant_key("K", "1", &names, &empty),
            variant_key("K", "1", &names, &HeaderMap::new()),
            variant_key("K", "2", &names, &en),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(keys[0], variant_key("K", "1", &names, &en));
    }

    #[test]
    fn only_same_origin_locations_are_keys() {
        let post = parts(
            Request::post("/items")
                .header("host", "example.com")
                .body(())
                .unwrap(),
        );
        let key = |location| same_origin_get(&post, location).map(|get| primary_key(&get));
        assert_eq!(
            key("/items/7").as_deref(),
            Some("GET:http://example.com/items/7")
        );
        assert_eq!(
            key("http://example.com/x").as_deref(),
            Some("GET:http://example.com/x")
        );
        assert_eq!(key("https://other.example/x"), None);
    }
}
