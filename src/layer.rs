//! [`HttpCacheStreamingLayer`]: the Tower layer that puts the cache in front of a service.

use std::path::PathBuf;

use tower_layer::Layer;

use crate::cache::{HttpCacheOptions, HttpStreamingCache};
use crate::service::HttpCacheStreaming;
use crate::store::StreamingManager;

/// A [`Layer`] that wraps a service in an HTTP cache backed by a [`StreamingManager`].
///
/// Open it at start-up with [`open`](Self::open) (or [`open_with`](Self::open_with)), so
/// that a directory the store cannot use (missing rights, writable by every user, on a
/// full disk) is an error then, with its reason, rather than requests passing through
/// unstored:
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_cache_streaming::HttpCacheStreamingLayer;
/// use tower::ServiceBuilder;
///
/// # let dir = tempfile::tempdir()?;
/// # let cache_dir = dir.path().join("cache");
/// let layer = HttpCacheStreamingLayer::open(cache_dir).await?;
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_request: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
///     });
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct HttpCacheStreamingLayer {
    cache: HttpStreamingCache,
}

impl HttpCacheStreamingLayer {
    /// Opens a store in `cache_dir` (see [`StreamingManager::open`]) and returns a layer
    /// caching in it with default options (a shared cache). Fails, saying why, when the
    /// directory cannot be used.
    pub async fn open(cache_dir: impl Into<PathBuf>) -> crate::Result<Self> {
        let manager = StreamingManager::new(cache_dir.into());
        Self::open_with(manager, HttpCacheOptions::default()).await
    }

    /// Opens `manager` (see [`StreamingManager::open`]) and returns a layer caching in it
    /// with `options`. Fails, saying why, when its directory cannot be used.
    pub async fn open_with(
        manager: StreamingManager,
        options: HttpCacheOptions,
    ) -> crate::Result<Self> {
        manager.open().await?;
        Ok(Self::with_options(manager, options))
    }

    /// A layer caching in `manager` with default options (a shared cache). The store is
    /// opened on first use: prefer [`open`](Self::open) at start-up.
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

impl<S> HttpCacheStreaming<S> {
    /// A layer that wraps services in `cache`. (Written here, beside the layer, so that the
    /// service knows nothing of the layer that makes it.)
    pub fn layer(cache: HttpStreamingCache) -> HttpCacheStreamingLayer {
        HttpCacheStreamingLayer::from(cache)
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
