//! [`CacheKey`]: the default key, and the common edits of it as builder calls.

use http::HeaderName;
use http::request::Parts;

use crate::key;

/// The key a request's response is stored under, as the layer makes it by default, with the
/// common edits: query parameters dropped, kept or sorted, and a request header or a cookie
/// added. Set it with [`HttpCacheOptions::cache_key_from`](crate::HttpCacheOptions::cache_key_from).
///
/// The default key is `GET:https://example.com/path?query`: the method (a `HEAD` keyed as
/// the `GET` it is answered from), the scheme, the authority (the URI's, or the `Host`
/// header lowercased on a server, whose URIs carry none), the path and the query. Every key
/// this type makes starts with it, edits applied; what it adds is written unambiguously
/// (values percent-encoded), so that no client can make its request's key another's.
///
/// ```
/// use http_cache_streaming::{CacheKey, HttpCacheOptions};
///
/// let key = CacheKey::new()
///     .drop_query(["utm_*", "fbclid", "gclid"])
///     .sort_query()
///     .cookie("region");
/// let request = http::Request::get("/items?utm_source=mail&b=2&a=1")
///     .header("host", "Shop.Example")
///     .header("cookie", "session=abc; region=eu")
///     .body(())
///     .unwrap();
/// let (parts, _) = request.into_parts();
/// assert_eq!(key.key(&parts), "GET:http://shop.example/items?a=1&b=2 cookie:region=eu");
/// assert_eq!(CacheKey::default_key(&parts), "GET:http://shop.example/items?utm_source=mail&b=2&a=1");
///
/// let options = HttpCacheOptions::default().cache_key_from(key);
/// ```
///
/// A key that names a header or a cookie stores one response per value: prefer a `Vary`
/// from the origin where it can send one (the cache then keeps the variants of one URL
/// together, and purges them together).
#[derive(Debug, Clone, Default)]
pub struct CacheKey {
    dropped: Vec<String>,
    kept: Option<Vec<String>>,
    sorted: bool,
    headers: Vec<HeaderName>,
    cookies: Vec<String>,
}

impl CacheKey {
    /// The default key, no edits.
    pub fn new() -> Self {
        CacheKey::default()
    }

    /// The key the layer makes when no [`cache_key`](crate::HttpCacheOptions::cache_key)
    /// is set: `GET:https://example.com/path?query` (see above).
    pub fn default_key(parts: &Parts) -> String {
        key::primary_key(parts)
    }

    /// Leaves the query parameters named out of the key (`utm_source`; a name ending in `*`
    /// names every parameter starting with the rest: `utm_*`). Names are compared as
    /// written in the URL.
    pub fn drop_query<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dropped.extend(names.into_iter().map(Into::into));
        self
    }

    /// Keeps only the query parameters named (with `*` as in
    /// [`drop_query`](Self::drop_query)) in the key.
    pub fn keep_query<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.kept
            .get_or_insert_with(Vec::new)
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Sorts the query parameters, so that `?a=1&b=2` and `?b=2&a=1` share a key.
    pub fn sort_query(mut self) -> Self {
        self.sorted = true;
        self
    }

    /// Adds the request header `name`'s values to the key (none is a value too).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.headers.push(name);
        self
    }

    /// Adds the value of the cookie `name` to the key (none is a value too).
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.cookies.push(name.into());
        self
    }

    /// The key of a request.
    pub fn key(&self, parts: &Parts) -> String {
        let mut key = CacheKey::default_key(parts);
        if let Some(start) = key.find('?').filter(|_| self.edits_query()) {
            let query = self.query(&key[start + 1..]);
            key.truncate(start);
            if !query.is_empty() {
                key.push('?');
                key.push_str(&query);
            }
        }
        for name in &self.headers {
            let values: Vec<&[u8]> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            key.push_str(&format!(" header:{name}="));
            encode_into(&mut key, &values.join(&b","[..]));
        }
        for name in &self.cookies {
            key.push_str(" cookie:");
            encode_into(&mut key, name.as_bytes());
            key.push('=');
            encode_into(&mut key, &cookie(parts, name).join(&b","[..]));
        }
        key
    }

    fn edits_query(&self) -> bool {
        self.sorted || self.kept.is_some() || !self.dropped.is_empty()
    }

    fn query(&self, query: &str) -> String {
        let matches = |names: &[String], pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            names.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == n,
            })
        };
        // A parameter holding a `;` (which some origins split on too) is never dropped: what
        // follows it could be a parameter the origin reads.
        let mut pairs: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| pair.contains(';') || !matches(&self.dropped, pair))
            .filter(|pair| self.kept.as_ref().is_none_or(|kept| matches(kept, pair)))
            .collect();
        if self.sorted {
            pairs.sort_unstable();
        }
        pairs.join("&")
    }
}

/// Every value of the cookie `name` among the request's `Cookie` fields, in order (names
/// compared with the whitespace around them trimmed): an origin may read the first or the
/// last of several, so the key holds them all.
fn cookie<'p>(parts: &'p Parts, name: &str) -> Vec<&'p [u8]> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|field| field.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let at = pair.iter().position(|&b| b == b'=')?;
            (pair[..at].trim_ascii() == name.as_bytes()).then(|| pair[at + 1..].trim_ascii())
        })
        .collect()
}

/// Appends `bytes` to `key`, every byte but letters, digits and `-._~` percent-encoded: no
/// value can write a separator of the key.
fn encode_into(key: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            key.push(b as char);
        } else {
            key.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn no_header_or_cookie_value_can_write_another_requests_key() {
        let key = CacheKey::new()
            .header(HeaderName::from_static("x-a"))
            .cookie("c");
        let forged = parts("https://e.com/", &[("x-a", "1 cookie:c=2")]);
        let honest = parts("https://e.com/", &[("x-a", "1"), ("cookie", "c=2")]);
        assert_ne!(key.key(&forged), key.key(&honest));
        assert_eq!(
            key.key(&honest),
            "GET:https://e.com/ header:x-a=1 cookie:c=2"
        );
        let none = parts("https://e.com/", &[]);
        assert_eq!(key.key(&none), "GET:https://e.com/ header:x-a= cookie:c=");
        // Several cookies of the name (an origin may read the last), or a name with spaces
        // around it (an origin may trim it), are never keyed as the first alone.
        let key = CacheKey::new().cookie("region");
        let one = parts("https://e.com/", &[("cookie", "region=eu")]);
        for other in [
            "region=eu; region=evil",
            "region=eu; region =evil",
            "region=eu; region= evil",
        ] {
            let twice = parts("https://e.com/", &[("cookie", other)]);
            assert_ne!(key.key(&twice), key.key(&one), "{other}");
        }
    }

    #[test]
    fn query_edits() {
        let p = parts(
            "https://e.com/s?q=1&utm_source=x&b=2&utm_medium=y&gclid=9",
            &[],
        );
        let dropped = CacheKey::new().drop_query(["utm_*", "gclid"]);
        assert_eq!(dropped.key(&p), "GET:https://e.com/s?q=1&b=2");
        let kept = CacheKey::new().keep_query(["q", "b"]).sort_query();
        assert_eq!(kept.key(&p), "GET:https://e.com/s?b=2&q=1");
        let nothing = CacheKey::new().keep_query(["none"]);
        assert_eq!(nothing.key(&p), "GET:https://e.com/s");
        // A parameter an origin splitting on `;` would read behind a dropped one stays.
        let hidden = parts("https://e.com/s?utm_source=x;lang=evil", &[]);
        assert_eq!(
            dropped.key(&hidden),
            "GET:https://e.com/s?utm_source=x;lang=evil"
        );
        // HEAD shares GET's key, edited the same way.
        let mut head = p.clone();
        head.method = http::Method::HEAD;
        assert_eq!(dropped.key(&head), dropped.key(&p));
    }
}
