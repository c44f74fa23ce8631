//! Purges: what an application or an operator removes from the cache, by URL, by the
//! request a handler holds, or by prefix.

use crate::Counter;
use crate::cache_store::CacheStore as _;
use http::{Method, Request, Uri, request};

use super::HttpStreamingCache;
use crate::key;

impl HttpStreamingCache {
    /// Removes what is stored for `url` (every variant of its GET, which HEAD shares), and
    /// says whether anything was. The key is computed as for a GET of `url`, with the
    /// custom [`cache_key`](crate::HttpCacheOptions::cache_key) when there is one.
    ///
    /// `url` must be absolute (`https://example.com/items`): keys name the site. A path
    /// alone is refused with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput);
    /// a handler purges a path of the site it was asked for with
    /// [`purge_path`](Self::purge_path), or every site's with
    /// [`purge_prefix`](Self::purge_prefix).
    pub async fn purge(&self, url: &str) -> crate::Result<bool> {
        let key = self.key_of_url(url)?;
        self.remove(&key, true).await
    }

    /// The key of a GET of `url`, an absolute URL (anything else is
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)).
    pub(super) fn key_of_url(&self, url: &str) -> crate::Result<String> {
        let invalid = |why: &str| {
            crate::Error::new(crate::ErrorKind::InvalidInput).with_subject(format!("{url:?} {why}"))
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| invalid("is not a URL").with_source(e))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(invalid(
                "is not an absolute URL: keys name the site (use purge_path with the \
                 request's parts, or purge_prefix for every site)",
            ));
        }
        let request = Request::get(uri)
            .body(())
            .map_err(|e| invalid("").with_source(e))?;
        Ok(self.key(&request.into_parts().0))
    }

    /// Removes what is stored for the GET of `request`'s URL (its method is not read: a
    /// `POST` handler's own parts purge the page of its URL), with the key computed exactly
    /// as the layer computes it for a request (its `Host`, custom `cache_key` and all).
    ///
    /// A request the layer would not key (an authority that is not a valid `host[:port]`,
    /// a `Host` that differs from the URI's, several `Host` fields) is refused with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput): a client's odd `Host`
    /// purges nothing. With a shared tier, these purges reach the fleet within
    /// [`fleet_invalidation_rate`](crate::HttpCacheOptions::fleet_invalidation_rate), as
    /// invalidations do (clients can make a handler purge at will); past it they purge
    /// this node and the tier only.
    pub async fn purge_request(&self, request: &request::Parts) -> crate::Result<bool> {
        let mut get = crate::head::request_head(request);
        get.method = Method::GET;
        if key::host_conflict(&get) || !key::authority_is_valid(&get) {
            return Err(crate::Error::new(crate::ErrorKind::InvalidInput)
                .with_subject(format!("{} names no site the cache keys", get.uri)));
        }
        self.remove_within_budget(&self.key(&get), true).await
    }

    /// Removes what is stored for the GET of `path_and_query` on the site `request` was
    /// sent to (its scheme, authority or `Host`): what a handler of `POST /items` calls to
    /// purge `GET /items/7` of the same site.
    ///
    /// ```
    /// use axum::{extract::State, http::request::Parts, routing::post, Router};
    /// use http_cache_streaming::HttpStreamingCache;
    ///
    /// async fn update(State(cache): State<HttpStreamingCache>, parts: Parts) -> &'static str {
    ///     // ...store the change, then:
    ///     let _ = cache.purge_path(&parts, "/items").await;
    ///     "updated"
    /// }
    /// # fn app(cache: HttpStreamingCache) -> Router {
    /// Router::new().route("/items", post(update)).with_state(cache)
    /// # }
    /// ```
    pub async fn purge_path(
        &self,
        request: &request::Parts,
        path_and_query: &str,
    ) -> crate::Result<bool> {
        let invalid = || {
            crate::Error::new(crate::ErrorKind::InvalidInput)
                .with_subject(format!("{path_and_query:?} is not a path"))
        };
        if !path_and_query.starts_with('/') {
            return Err(invalid());
        }
        let mut parts = request.uri.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|e| invalid().with_source(e))?,
        );
        let uri = Uri::from_parts(parts).map_err(|e| invalid().with_source(e))?;
        let mut get = crate::head::request_head(request);
        get.uri = uri;
        self.purge_request(&get).await
    }

    /// Removes what is stored under `key`: the response, or the variant list and the
    /// variants it names. `true` when something was stored.
    ///
    /// With a shared tier, the key is purged on every node through the tier's purge log:
    /// always when `everywhere` (an operator's purge: another node may hold what this one
    /// never had), else when it is stored here or in the tier (an invalidation, which
    /// most unsafe requests are: one of a key stored nowhere costs the log nothing).
    pub(super) async fn remove(&self, key: &str, everywhere: bool) -> crate::Result<bool> {
        let stored = self.store.stored_headers(key).await;
        if let Some(list) = &stored {
            self.remove_variants(key, list).await?;
        }
        if stored.is_some() || everywhere {
            self.store.delete(key).await?;
        } else {
            self.store.forget(key).await?;
        }
        Ok(stored.is_some())
    }

    /// [`remove`](Self::remove) within the fleet's budget of invalidations
    /// ([`FleetInvalidations`](crate::fleet::invalidations::FleetInvalidations)): past it, or for a
    /// key removed within the second, from this node and the shared tier only (counted).
    pub(super) async fn remove_within_budget(
        &self,
        key: &str,
        everywhere: bool,
    ) -> crate::Result<bool> {
        let rate = self.options.fleet_invalidation_rate;
        if !self.store.shares_purges() || self.invalidations.admit(key, rate) {
            return self.remove(key, everywhere).await;
        }
        super::count(
            &self.counters.invalidations_here,
            Counter::InvalidationsNotShared,
        );
        self.remove_here(key).await
    }

    /// [`remove`](Self::remove) from this node and the shared tier only, without reading
    /// the tier or writing to the purge log. `true` when something was stored here.
    async fn remove_here(&self, key: &str) -> crate::Result<bool> {
        let stored = self.store.stored_headers_here(key).await;
        if let Some(list) = &stored {
            self.remove_variants(key, list).await?;
        }
        self.store.forget(key).await?;
        Ok(stored.is_some())
    }

    /// Removes every stored response under `prefix` (every method and variant), and
    /// returns how many there were here. It visits every entry. `prefix` is the start of a
    /// URL (`https://example.com/items/`), or, starting with `/`, of a path on every site
    /// (`/items/`).
    ///
    /// With a shared tier, the purge is written to its purge log, so every node drops its
    /// entries under `prefix` within a second, and the tier's records under it are removed
    /// in the background (each record is read: a prefix purge costs a listing and a read
    /// per record of the tier).
    pub async fn purge_prefix(&self, prefix: &str) -> crate::Result<u64> {
        let owned = prefix.to_owned();
        let removed = self
            .store
            .remove_where(move |entry| entry.is_under(&owned))
            .await?;
        self.store.publish_prefix_purge(prefix).await?;
        Ok(removed)
    }

    /// Removes every stored response that carries `tag` (every variant and method), and
    /// returns how many there were here: [`purge_tags`](Self::purge_tags) of one tag.
    pub async fn purge_tag(&self, tag: &str) -> crate::Result<u64> {
        self.purge_tags([tag]).await
    }

    /// Removes every stored response that carries one of `tags`, and returns how many there
    /// were here. A response's tags are read from its `Surrogate-Key` and `Cache-Tag`
    /// fields when it is stored (see
    /// [`tag_fields`](crate::StreamingManagerBuilder::tag_fields)): an application tags
    /// each page with what it shows (`product-42 category-7 home`) and purges a tag when
    /// that changes, without knowing the pages' URLs. The entries are found in memory; a
    /// response carrying one of them that is being stored now is not kept.
    ///
    /// A tag is 1 to 1024 bytes of visible ASCII without a comma; anything else is
    /// refused with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), as is
    /// an empty list. With a shared tier, the tier's copies are removed in the background,
    /// and with its purge log (on by default,
    /// [`purge_log_every`](crate::StreamingManagerBuilder::purge_log_every)) the purge
    /// reaches every node. Responses stored before this version kept tags carry none.
    ///
    /// ```
    /// # async fn run(cache: http_cache_streaming::HttpStreamingCache) -> http_cache_streaming::Result<()> {
    /// // Product 42 changed: its page, the category pages and the home page that show it go.
    /// let purged = cache.purge_tags(["product-42"]).await?;
    /// println!("{purged} responses purged");
    /// # Ok(()) }
    /// ```
    pub async fn purge_tags<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a str>,
    ) -> crate::Result<u64> {
        let tags: Vec<&str> = tags.into_iter().collect();
        crate::format::tags::check_purge(&tags)?;
        self.store.purge_tags(&tags).await
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::HttpStreamingCache;
    use crate::testing::{Clock, Origin, bytes, request, serve};

    const URL: &str = "http://example.com/a";

    #[tokio::test]
    async fn an_unsafe_request_that_succeeds_removes_what_is_stored_for_its_url() {
        for (method, status, removed) in [
            ("POST", 200, true),
            ("DELETE", 204, true),
            ("POST", 500, false),
        ] {
            let clock = Clock::default();
            let (cache, store) = HttpStreamingCache::in_memory(clock.options());
            let origin = Origin::new(move |parts| match parts.method.as_str() {
                "GET" => clock.response(200, &[("cache-control", "max-age=60")], "hello"),
                _ => clock.response(status, &[], ""),
            });
            bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await;
            bytes(serve(&cache, &origin, request(method, URL, &[])).await).await;
            assert_eq!(
                store.keys().is_empty(),
                removed,
                "{method} answered {status}"
            );
            bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await;
            assert_eq!(
                origin.calls(),
                2 + usize::from(removed),
                "{method} answered {status}"
            );
        }
    }
}
