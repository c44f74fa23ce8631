//! A URL's variants: the list record that names them (so they go with it), its
//! generation, and which stored variant a request selects.

use crate::cache_store::CacheStore as _;
use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_cache_semantics::CachePolicy;

use crate::collapse::FillHead;
use crate::key;

use super::HttpStreamingCache;

/// The header of a URL's variant list record: the list's generation. Origin responses that
/// carry it lose it before they are stored, so that no response can pass for a list.
pub(super) const VARIANTS: HeaderName = HeaderName::from_static("x-http-cache-streaming-variants");

/// The header of a variant list record naming (by digest) the variants stored under it, so
/// that removing the list removes them too rather than leaving them on disk.
pub(super) const STORED_VARIANTS: HeaderName =
    HeaderName::from_static("x-http-cache-streaming-stored");

/// The header of a variant list record naming, for a variant in one language, the digest a
/// request preferring that language alone would have, the variant's own digest, and the
/// `Accept-Language` it was stored for (`<alias> <digest>` then ` =<value>` when it had one):
/// how a request whose own values select nothing finds the variant in the language it
/// prefers (RFC 9110 §12.5.4).
pub(super) const LANGUAGES: HeaderName =
    HeaderName::from_static("x-http-cache-streaming-languages");

/// The most variants a URL keeps, each named by its list; more pass through unstored.
pub(super) const MAX_LISTED_VARIANTS: usize = 64;

/// The headers the cache keeps in its own records.
pub(super) const INTERNAL: [HeaderName; 4] =
    [VARIANTS, STORED_VARIANTS, LANGUAGES, super::ttl::TTL_FIELD];

impl HttpStreamingCache {
    /// Removes the variants a variant list record (`list`, under `key`) names.
    pub(super) async fn remove_variants(&self, key: &str, list: &HeaderMap) -> crate::Result<()> {
        let Some(generation) = variants_generation(list) else {
            return Ok(());
        };
        for digest in list.get_all(STORED_VARIANTS).iter() {
            if let Ok(digest) = digest.to_str() {
                let variant = key::variant_key_of(key, &generation, digest);
                // Other nodes' variants go with their list.
                self.store.forget(&variant).await?;
            }
        }
        Ok(())
    }

    /// Names a variant about to be stored in its URL's list, so that it goes with the list,
    /// with the line saying which language it is in (see [`LANGUAGES`]) when it is in one.
    /// `false`: it cannot be named (the list is full, gone or unreadable) and must not be
    /// stored.
    pub(super) async fn list_variant(
        &self,
        key: &str,
        generation: &str,
        digest: &str,
        language: Option<String>,
    ) -> bool {
        let Ok(Some((list, entry))) = self.store.lookup(key).await else {
            return false;
        };
        drop(list.into_body());
        let headers = &entry.headers;
        let listed = headers.get_all(STORED_VARIANTS);
        if variants_generation(headers).as_deref() != Some(generation) {
            return false;
        }
        let already = listed.iter().any(|d| d.as_bytes() == digest.as_bytes());
        let of_digest = |line: &HeaderValue| {
            let line = line.to_str().unwrap_or_default();
            line.split(' ').nth(1) == Some(digest)
        };
        let language_listed = match &language {
            Some(language) => headers
                .get_all(LANGUAGES)
                .iter()
                .any(|line| line.as_bytes() == language.as_bytes()),
            None => !headers.get_all(LANGUAGES).iter().any(of_digest),
        };
        if already && language_listed {
            return true;
        }
        if !already && listed.iter().count() >= MAX_LISTED_VARIANTS {
            crate::log::debug_event!(%key, "variant list full: a new variant passes unstored");
            return false;
        }
        let Ok(value) = HeaderValue::from_str(digest) else {
            return false;
        };
        let mut headers = headers.clone();
        if !already {
            headers.append(STORED_VARIANTS, value);
        }
        // One language line a variant, the newest: the same variant stored again may be in
        // another language now.
        let kept: Vec<HeaderValue> = headers
            .get_all(LANGUAGES)
            .iter()
            .filter(|line| !of_digest(line))
            .cloned()
            .collect();
        headers.remove(LANGUAGES);
        for line in kept {
            headers.append(LANGUAGES, line);
        }
        if let Some(line) = language.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.append(LANGUAGES, line);
        }
        match self
            .store
            .update_headers(key, headers, entry.policy.clone())
            .await
        {
            Ok(_) => true,
            Err(error) => {
                crate::log::warn_event!(%key, %error, "could not list a variant");
                false
            }
        }
    }

    /// The generation of a URL's variant list for `names`, writing a new list when there is
    /// none for them.
    pub(super) async fn variant_generation(
        &self,
        key: &str,
        names: &[HeaderName],
        url: &url::Url,
        policy: &CachePolicy,
    ) -> Option<String> {
        if let Some((list, _)) = self.lookup(key).await
            && let Some(generation) = variants_generation(list.headers())
        {
            if key::vary_names(list.headers()).as_deref() == Some(names) {
                return Some(generation);
            }
            // The response now varies on other headers: the old list's variants go with it.
            if let Err(error) = self.remove_variants(key, list.headers()).await {
                crate::log::warn_event!(%key, %error, "could not remove old variants");
            }
        }
        let generation = new_generation();
        let vary = names
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let list = Response::builder()
            .header(header::VARY, vary)
            .header(VARIANTS, &generation)
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        match self
            .store
            .put(key.to_owned(), list, policy.clone(), url.clone())
            .await
        {
            Ok(_) => Some(generation),
            Err(error) => {
                crate::log::warn_event!(%key, %error, "could not store a variant list");
                None
            }
        }
    }
}

/// Whether a request asks for the variant a fill is storing: the same values for every
/// header its response's `Vary` names. `Vary: *` matches nothing.
pub(super) fn same_variant(head: &FillHead, request: &HeaderMap) -> bool {
    let Some(names) = key::vary_names(&head.parts.headers) else {
        return false;
    };
    names.iter().all(|name| {
        key::selecting_value(name, &head.varying) == key::selecting_value(name, request)
    })
}

/// The generation a variant list record carries, when the response is one.
pub(super) fn variants_generation(headers: &HeaderMap) -> Option<String> {
    Some(headers.get(VARIANTS)?.to_str().ok()?.to_owned())
}

pub(super) fn new_generation() -> String {
    crate::support::unique_name()
}

pub(super) fn names_as_vary(names: &[HeaderName]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in names {
        if let Ok(value) = HeaderValue::from_str(name.as_str()) {
            headers.append(header::VARY, value);
        }
    }
    headers
}

/// Whether `name` is one of the headers the cache keeps in its own records (a variant
/// list's generation and members): never taken from an origin's response.
pub(super) fn is_internal(name: &HeaderName) -> bool {
    INTERNAL.contains(name)
}

#[cfg(test)]
mod tests {
    use crate::cache::HttpStreamingCache;
    use crate::testing::{Clock, Origin, bytes, field, request, serve};

    const URL: &str = "http://example.com/a";

    #[tokio::test]
    async fn each_value_of_a_varying_header_has_its_stored_response() {
        let clock = Clock::default();
        let (cache, store) = HttpStreamingCache::in_memory(clock.options());
        let origin = Origin::new(move |parts| {
            let fields = &[("cache-control", "max-age=60"), ("vary", "accept-language")];
            match parts.headers.get("accept-language").map(|v| v.as_bytes()) {
                Some(b"fr") => clock.response(200, fields, "bonjour"),
                _ => clock.response(200, fields, "hello"),
            }
        });
        for (language, body, calls) in [
            ("en", "hello", 1),
            ("fr", "bonjour", 2),
            ("en", "hello", 2),
            ("fr", "bonjour", 2),
        ] {
            let asked = request("GET", URL, &[("accept-language", language)]);
            let answer = serve(&cache, &origin, asked).await;
            assert_eq!(bytes(answer).await, body, "{language}");
            assert_eq!(origin.calls(), calls, "{language}");
        }
        assert_eq!(
            store.keys().len(),
            3,
            "the list and a variant each: {:?}",
            store.keys()
        );
    }

    #[tokio::test]
    async fn a_response_that_varies_on_everything_is_not_stored() {
        let clock = Clock::default();
        let (cache, store) = HttpStreamingCache::in_memory(clock.options());
        let origin = Origin::new(move |_| {
            clock.response(
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                "hello",
            )
        });
        for _ in 0..2 {
            let answer = serve(&cache, &origin, request("GET", URL, &[])).await;
            let status = field(&answer, "cache-status").concat();
            assert!(status.ends_with("detail=vary"), "{status}");
            assert_eq!(bytes(answer).await, "hello");
        }
        assert_eq!((origin.calls(), store.keys().len()), (2, 0));
    }
}
