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
use crate::layer::HttpCacheStreamingLayer;

/// A service that answers from the HTTP cache where it can and from `S` where it must. Made
/// by [`HttpCacheStreamingLayer`].
///
/// Its error is `S`'s: the cache adds no failure of its own. A store that cannot be read or
/// written is logged and the request passes through to `S`.
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

    /// A layer that wraps services in `cache`.
    pub fn layer(cache: HttpStreamingCache) -> HttpCacheStreamingLayer {
        HttpCacheStreamingLayer::from(cache)
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
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let (parts, body) = request.into_parts();
        match self.cache.start(parts) {
            // A hit on a body in memory: the ready service stays ready for the next call.
            Start::Ready(response) => ResponseFuture::ready(response),
            Start::Forward(parts, pending) => {
                let future = self.take_ready().call(Request::from_parts(parts, body));
                ResponseFuture::forwarded(future, pending)
            }
            Start::Lookup(lookup) => ResponseFuture::lookup(lookup, self.take_ready(), body),
        }
    }
}

impl<S: Clone> HttpCacheStreaming<S> {
    /// Takes the service that was made ready, leaving a clone behind: the readiness
    /// reserved is the one used.
    fn take_ready(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}
