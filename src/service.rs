//! [`HttpCacheStreaming`]: the service the layer makes.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::StreamingBody;
use crate::cache::{HttpStreamingCache, Start};
use crate::error::BoxError;
use crate::future::ResponseFuture;

/// A service that answers from the HTTP cache where it can and from `S` where it must. Made
/// by [`HttpCacheStreamingLayer`](crate::HttpCacheStreamingLayer).
///
/// Its error is `S`'s: the cache adds no failure of its own. A store that cannot be read or
/// written is logged and the request passes through to `S`.
///
/// It is always ready: `S` is made ready (on a clone) in the response future, only when a
/// request goes to it. A hit never waits for `S`, so a concurrency limit, a rate limit or a
/// `Buffer` placed between the cache and the origin bounds what reaches the origin, not the
/// hits; placed in front of the cache, it bounds every request.
///
/// # Sending a request again
///
/// When the origin answers a revalidation with a `304` that names another representation
/// than the one stored (RFC 9111 §4.3.4), the request is sent to `S` a second time, without
/// the cache's validators. That needs a new (empty) request body, which the cache can make
/// for these body types: `http_body_util::{Empty<Bytes>, Full<Bytes>}`,
/// `BoxBody<Bytes, E>` and `UnsyncBoxBody<Bytes, E>` with `E` one of `BoxError`,
/// `std::io::Error` or `Infallible`, `String`, `Vec<u8>`, `Bytes`, `()`, and with the
/// `axum` feature (a default) `axum::body::Body`. With any other (hyper's `Incoming`) the
/// client gets a `502` with `Cache-Status: …; detail=revalidation-not-selected`; box the
/// body before the layer to avoid it.
#[derive(Debug, Clone)]
pub struct HttpCacheStreaming<S> {
    inner: S,
    cache: HttpStreamingCache,
}

impl<S> HttpCacheStreaming<S> {
    /// Wraps `inner` in `cache`.
    pub fn new(inner: S, cache: HttpStreamingCache) -> Self {
        HttpCacheStreaming { inner, cache }
    }

    /// The cache in front of the service: its [`stats`](HttpStreamingCache::stats) and
    /// [`purge`](HttpStreamingCache::purge).
    pub fn cache(&self) -> &HttpStreamingCache {
        &self.cache
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HttpCacheStreaming<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<StreamingBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let (parts, body) = request.into_parts();
        match self.cache.start(parts) {
            // A hit on a body in memory: the inner service is not involved.
            Start::Ready(response) => ResponseFuture::ready(response),
            Start::Forward(parts, pending) => {
                let request = Request::from_parts(parts, body);
                ResponseFuture::forwarded(self.inner.clone(), request, pending)
            }
            Start::Lookup(lookup) => ResponseFuture::lookup(lookup, self.inner.clone(), body),
        }
    }
}
