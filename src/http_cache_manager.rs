//! [`StreamingManager`] as http-cache's [`StreamingCacheManager`](http_cache::StreamingCacheManager)
//! (feature `http-cache`), so that the http-cache family (http-cache-tower's streaming layer,
//! http-cache-reqwest's `StreamingCache`, and anything else built on http-cache's streaming
//! interface) can keep its responses in this store.
//!
//! The store is the same: entries written through this trait are read by this crate's layer
//! and the other way round, under the keys each side makes (http-cache's are
//! `METHOD:URL`, as this crate's default keys are; a layer with a `cache_key` of its own
//! shares nothing with http-cache). This crate's layer keeps no `Host` in what it stores
//! (the key names the site), so http-cache serves such an entry to requests without a
//! `Host` header (a client's middleware); one with a `Host` (a server's) fetches and
//! replaces it. What does not carry over either: http-cache's
//! per-entry user metadata (`put`'s `metadata`) is not kept, and the token that guards
//! `update_metadata` against a concurrent replacement is the body's SHA-256, so an entry
//! replaced by one with the same body takes the headers meant for the one it replaced (the
//! same bytes, freshened).

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt as _;
use http_cache::{CacheEntryToken, StreamingCacheManager, StreamingError};
use http_cache_semantics::CachePolicy;
use url::Url;

use crate::{BoxError, StreamingBody, StreamingManager};
use bytes::Buf as _;

#[cfg_attr(docsrs, doc(cfg(feature = "http-cache")))]
impl From<crate::Error> for StreamingError {
    fn from(error: crate::Error) -> Self {
        StreamingError::new(error)
    }
}

fn cache_error(error: crate::Error) -> BoxError {
    Box::new(error)
}

/// `policy` as http-cache matches requests against it: with the URL it was stored for.
/// This crate's layer keeps its policies without it (the key names the URL), and http-cache
/// would find no request matching such a policy. The response time, and so the age, are
/// kept. (Done through the policy's serde form, the only way to its fields; any surprise
/// there leaves the policy as it is.)
fn for_http_cache(policy: &CachePolicy, url: &str) -> CachePolicy {
    let retarget = || -> Option<CachePolicy> {
        let mut value = serde_json::to_value(policy).ok()?;
        let object = value.as_object_mut()?;
        if object.get("uri")?.as_str() != Some("/") {
            return None; // stored with its URL already (by http-cache)
        }
        object.insert("uri".into(), serde_json::Value::String(url.to_owned()));
        serde_json::from_value(value).ok()
    };
    retarget().unwrap_or_else(|| policy.clone())
}

/// A body of http-cache's bounds, as this crate's store takes one.
fn storable<B>(body: B) -> impl Body<Data = Bytes, Error = BoxError> + Send + 'static
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StreamingError>,
{
    body.map_frame(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
        .map_err(|error| Box::new(error.into()) as BoxError)
}

#[cfg_attr(docsrs, doc(cfg(feature = "http-cache")))]
impl StreamingCacheManager for StreamingManager {
    type Body = StreamingBody;

    async fn get(
        &self,
        cache_key: &str,
    ) -> http_cache::Result<Option<(Response<StreamingBody>, CachePolicy)>> {
        let found = self.lookup(cache_key).await.map_err(cache_error)?;
        Ok(found.map(|(mut response, entry)| {
            response
                .extensions_mut()
                .insert(CacheEntryToken(entry.digest.0.to_vec()));
            (response, for_http_cache(&entry.policy, &entry.url))
        }))
    }

    async fn put<B>(
        &self,
        cache_key: String,
        response: Response<B>,
        policy: CachePolicy,
        request_url: Url,
        _metadata: Option<Vec<u8>>,
    ) -> http_cache::Result<Response<StreamingBody>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<StreamingError>,
    {
        let response = response.map(storable);
        StreamingManager::put(self, cache_key, response, policy, request_url)
            .await
            .map_err(cache_error)
    }

    async fn update_metadata(
        &self,
        cache_key: &str,
        headers: &http::HeaderMap,
        policy: CachePolicy,
        _user_metadata: Option<Vec<u8>>,
        token: Option<&CacheEntryToken>,
    ) -> http_cache::Result<bool> {
        if let Some(token) = token {
            let current = self.lookup(cache_key).await.map_err(cache_error)?;
            let replaced = current.is_none_or(|(_, entry)| entry.digest.0.as_slice() != token.0);
            if replaced {
                return Ok(false);
            }
        }
        let updated = self
            .update_headers(cache_key, headers.clone(), policy)
            .await
            .map_err(cache_error)?;
        Ok(updated.is_some())
    }

    async fn convert_body<B>(
        &self,
        response: Response<B>,
    ) -> http_cache::Result<Response<StreamingBody>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<StreamingError>,
    {
        Ok(response.map(|body| StreamingBody::pass(storable(body))))
    }

    async fn delete(&self, cache_key: &str) -> http_cache::Result<()> {
        StreamingManager::delete(self, cache_key)
            .await
            .map_err(cache_error)
    }

    fn empty_body(&self) -> StreamingBody {
        StreamingBody::empty()
    }

    fn body_to_bytes_stream(
        body: StreamingBody,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send
    {
        futures_util::stream::unfold(body, |mut body| async move {
            loop {
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => return Some((Ok(data), body)),
                        Err(_trailers) => continue,
                    },
                    Err(error) => return Some((Err(Box::new(error) as BoxError), body)),
                }
            }
        })
    }
}
