//! HTTP fields as the cache reads them, apart from what it decides with them: `Cache-Control`
//! parsed once into a typed value ([`cache_control`]), targeted fields (RFC 9213,
//! [`targeted`]), HTTP-dates in any form ([`dates`]), what the policy engine is shown of a
//! message ([`engine_view`]), a request's conditions against a stored response
//! ([`conditional`]), and `Range` with its `206`/`416` heads ([`range`]). It knows the body
//! type and the message heads, and nothing of the cache or the store.

pub(crate) mod cache_control;
pub(crate) mod conditional;
pub(crate) mod dates;
pub(crate) mod engine_view;
pub(crate) mod range;
pub(crate) mod targeted;

/// A header map of `fields`, each appended in order: for the unit tests of the rules.
#[cfg(test)]
pub(crate) fn test_headers(fields: &[(&str, &str)]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in fields {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        headers.append(name, http::HeaderValue::from_str(value).unwrap());
    }
    headers
}
