//! [`HttpCacheStreamingLayer`]: the Tower layer that puts the cache in front of a service.

use tower_layer::Layer;

use crate::cache::{HttpCacheOptions, HttpStreamingCache};
use crate::service::HttpCacheStreaming;
use crate::store::StreamingManager;

/// A [`Layer`] that wraps a service in an HTTP cache backed by a [`StreamingManager`].
///
/// ```
/// use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
/// use tower::ServiceBuilder;
///
/// let manager = StreamingManager::new("./cache".into());
/// let service = ServiceBuilder::new()
///     .layer(HttpCacheStreamingLayer::new(manager))
///     .service_fn(|_request: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
///     });
/// ```
#[derive(Debug, Clone)]
pub struct HttpCacheStreamingLayer {
    cache: HttpStreamingCache,
}

impl HttpCacheStreamingLayer {
    /// A layer caching in `manager` with default options (a shared cache).
    pub fn new(manager: StreamingManager) -> Self {
        HttpCacheStreamingLayer {
            cache: HttpStreamingCache::new(manager),
        }
    }

    /// A layer caching in `manager` with `options`.
    pub fn with_options(manager: StreamingManager, options: HttpCacheOptions) -> Self {
        HttpCacheStreamingLayer {
            cache: HttpStreamingCache::new(manager).with_options(options),
        }
    }

    /// Wraps `inner` in the cache, as [`Layer::layer`] does; here so that no trait import is
    /// needed.
    pub fn layer<S>(&self, inner: S) -> HttpCacheStreaming<S> {
        HttpCacheStreaming::new(inner, self.cache.clone())
    }

    /// The cache the layer's services use.
    pub fn cache(&self) -> &HttpStreamingCache {
        &self.cache
    }
}

impl From<HttpStreamingCache> for HttpCacheStreamingLayer {
    fn from(cache: HttpStreamingCache) -> Self {
        HttpCacheStreamingLayer { cache }
    }
}

impl<S> Layer<S> for HttpCacheStreamingLayer {
    type Service = HttpCacheStreaming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCacheStreamingLayer::layer(self, inner)
    }
}
