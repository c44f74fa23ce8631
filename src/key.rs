//! Cache keys: the primary key of a request (method, scheme, authority, path and query) and
//! the secondary key of a variant chosen by the request headers that `Vary` names.

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

/// The digest of the values a request has for the varying headers `names` (absent and
/// empty differ), as 32 hex digits.
pub(crate) fn variant_digest(names: &[HeaderName], request: &HeaderMap) -> String {
    let mut hasher = Sha256::new();
    for name in names {
        hasher.update(name.as_str());
        let mut values = request.get_all(name).iter().peekable();
        if values.peek().is_none() {
            hasher.update(b"\x00absent");
        }
        for value in values {
            hasher.update(b"\x00=");
            hasher.update(value.as_bytes());
        }
        hasher.update(b"\x00\x00");
    }
    let digest: [u8; 32] = hasher.finalize().into();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves a `Location` or `Content-Location` value against the request URI, returning the
/// primary GET key of the target when it is on the same origin.
pub(crate) fn same_origin_key(parts: &Parts, location: &str) -> Option<String> {
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
    Some(primary_key(&request.into_parts().0))
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
        assert_eq!(
            same_origin_key(&post, "/items/7").as_deref(),
            Some("GET:http://example.com/items/7")
        );
        assert_eq!(
            same_origin_key(&post, "http://example.com/x").as_deref(),
            Some("GET:http://example.com/x")
        );
        assert_eq!(same_origin_key(&post, "https://other.example/x"), None);
    }
}
