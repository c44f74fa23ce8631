//! [`ReqwestCache`]: this crate's cache as a `reqwest-middleware` middleware.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Extensions;
use http_body::{Body, Frame, SizeHint};
use reqwest_middleware::{Middleware, Next};
use tokio::sync::{mpsc, oneshot};
use tower_service::Service;

use crate::body::StreamingBody;
use crate::cache::HttpStreamingCache;
use crate::error::BoxError;
use crate::service::HttpCacheStreaming;

/// This crate's cache in front of a reqwest client, as a
/// [`reqwest-middleware`](https://docs.rs/reqwest-middleware) middleware (feature
/// `reqwest`): the same store, rules, `Cache-Status`, [`stats`](HttpStreamingCache::stats)
/// and purges as the layer, bodies streamed to and from disk in bounded memory.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_cache_streaming::{HttpCacheOptions, HttpCacheStreamingLayer, ReqwestCache};
/// use http_cache_streaming::StreamingManager;
///
/// // A client's cache serves one user: `private` responses may be stored.
/// let options = HttpCacheOptions::default().shared(false);
/// let manager = StreamingManager::new("./http-cache".into());
/// let layer = HttpCacheStreamingLayer::open_with(manager, options).await?;
/// let client = reqwest::Client::new();
/// let cached = reqwest_middleware::ClientBuilder::new(client.clone())
///     .with(ReqwestCache::new(layer.cache().clone(), client))
///     .build();
/// let response = cached.get("https://example.com/").send().await?;
/// println!("{:?}", response.headers().get("cache-status"));
/// # Ok(()) }
/// ```
///
/// Requests go on through the middlewares after this one (a retry, a tracing
/// middleware). A revalidation in the background (`stale-while-revalidate`), which outlives
/// the request that started it, is sent with the client given to [`new`](Self::new)
/// directly.
#[derive(Debug, Clone)]
pub struct ReqwestCache {
    cache: HttpStreamingCache,
    client: reqwest::Client,
}

impl ReqwestCache {
    /// A middleware caching in `cache` (a layer's, from
    /// [`HttpCacheStreamingLayer::cache`](crate::HttpCacheStreamingLayer::cache)), sending
    /// revalidations in the background with `client`.
    pub fn new(cache: HttpStreamingCache, client: reqwest::Client) -> Self {
        ReqwestCache { cache, client }
    }

    /// The cache: its stats and purges.
    pub fn cache(&self) -> &HttpStreamingCache {
        &self.cache
    }
}

/// A request the cache sends to the origin, and where its answer goes.
type Sent = (
    http::Request<reqwest::Body>,
    oneshot::Sender<reqwest_middleware::Result<http::Response<reqwest::Body>>>,
);

/// The service the cache wraps: it hands each request to the middleware's `handle`, which
/// runs it through the rest of the chain; once `handle` has returned, to the client.
#[derive(Clone)]
struct Onward {
    handle: mpsc::UnboundedSender<Sent>,
    client: reqwest::Client,
}

impl Service<http::Request<reqwest::Body>> for Onward {
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest_middleware::Error;
    type Future = crate::storage::BoxFuture<'static, reqwest_middleware::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<reqwest_middleware::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<reqwest::Body>) -> Self::Future {
        let (reply, answer) = oneshot::channel();
        let client = self.client.clone();
        match self.handle.send((request, reply)) {
            Ok(()) => Box::pin(async move {
                answer
                    .await
                    .map_err(reqwest_middleware::Error::middleware)?
            }),
            Err(mpsc::error::SendError((request, _))) => {
                Box::pin(async move { execute(&client, request).await })
            }
        }
    }
}

/// Sends `request` with `client` itself, past the middlewares.
async fn execute(
    client: &reqwest::Client,
    request: http::Request<reqwest::Body>,
) -> reqwest_middleware::Result<http::Response<reqwest::Body>> {
    let request = reqwest::Request::try_from(request)?;
    Ok(http::Response::from(client.execute(request).await?))
}

#[async_trait::async_trait]
impl Middleware for ReqwestCache {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let url = request.url().clone();
        let request = http::Request::<reqwest::Body>::try_from(request)?;
        let (handle, mut sent) = mpsc::unbounded_channel::<Sent>();
        let onward = Onward {
            handle,
            client: self.client.clone(),
        };
        let mut service = HttpCacheStreaming::new(onward, self.cache.clone());
        let call = service.call(request);
        drop(service);
        tokio::pin!(call);
        let answered = loop {
            tokio::select! {
                answered = &mut call => break answered,
                Some((request, reply)) = sent.recv() => {
                    let answer = match reqwest::Request::try_from(request) {
                        Ok(request) => next
                            .clone()
                            .run(request, &mut *extensions)
                            .await
                            .map(http::Response::from),
                        Err(error) => Err(error.into()),
                    };
                    let _ = reply.send(answer);
                }
            }
        };
        // What is sent from now on (a revalidation in the background) goes to the client
        // directly; what was sent meanwhile too.
        sent.close();
        while let Ok((request, reply)) = sent.try_recv() {
            let client = self.client.clone();
            tokio::spawn(async move {
                let _ = reply.send(execute(&client, request).await);
            });
        }
        let response = answered?;
        let (mut parts, body) = response.into_parts();
        let with_url = http::Response::builder();
        let with_url = reqwest::ResponseBuilderExt::url(with_url, url);
        if let Ok(head) = with_url.body(()) {
            parts.extensions.extend(head.into_parts().0.extensions);
        }
        let body = reqwest::Body::wrap(SyncBody(Mutex::new(body)));
        Ok(reqwest::Response::from(http::Response::from_parts(
            parts, body,
        )))
    }
}

/// A [`StreamingBody`] that reqwest may share between threads (it asks `Sync` of bodies):
/// polled through a lock no one else takes.
struct SyncBody(Mutex<StreamingBody>);

impl Body for SyncBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let body = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        Pin::new(body).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().is_ok_and(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .map_or_else(|_| SizeHint::default(), |body| body.size_hint())
    }
}
