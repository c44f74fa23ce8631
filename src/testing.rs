//! Support for the crate's unit tests of the cache rules: requests answered through an
//! [`HttpStreamingCache`] by the layer's own service (over a store in memory, see
//! `HttpStreamingCache::in_memory`), an origin closure counting what it is asked, and a
//! clock the test moves.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, request};
use http_body_util::{BodyExt as _, Full};

use crate::body::StreamingBody;
use crate::cache::{HttpCacheOptions, HttpStreamingCache};
pub(crate) use crate::cache_store::memory::MemoryStore;
use crate::rt::lock;

/// An origin's answer to come.
type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// An origin for the tests: answers each request with what its closure makes of it, and
/// keeps the requests it was sent.
#[derive(Clone)]
pub(crate) struct Origin {
    answer: Arc<dyn Fn(&request::Parts) -> Answer + Send + Sync>,
    asked: Arc<Mutex<Vec<request::Parts>>>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    /// An origin answering at once with what `answer` makes of each request.
    pub(crate) fn new(
        answer: impl Fn(&request::Parts) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        Origin::later(move |parts| {
            let response = answer(parts);
            Box::pin(async move { response })
        })
    }

    /// An origin whose answers are futures (a slow origin).
    pub(crate) fn later(
        answer: impl Fn(&request::Parts) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Origin {
            answer: Arc::new(answer),
            asked: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// How many requests reached the origin.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The requests the origin was sent, in order.
    pub(crate) fn asked(&self) -> Vec<request::Parts> {
        lock(&self.asked).clone()
    }

    fn answer(&self, parts: request::Parts) -> Answer {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = (self.answer)(&parts);
        lock(&self.asked).push(parts);
        answer
    }
}

/// Answers `request` through `cache` with the layer's own service, `origin` as the
/// service it wraps; a revalidation in the background runs on a task of its own, as the
/// layer runs it.
pub(crate) async fn serve(
    cache: &HttpStreamingCache,
    origin: &Origin,
    request: Request<()>,
) -> Response<StreamingBody> {
    let service = crate::service::HttpCacheStreaming::new(origin.clone(), cache.clone());
    match tower::ServiceExt::oneshot(service, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The origin as the service the layer wraps.
impl tower_service::Service<Request<()>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let answer = self.answer(request.into_parts().0);
        Box::pin(async move { Ok(answer.await) })
    }
}

/// A body's bytes, read to its end.
pub(crate) async fn bytes(response: Response<StreamingBody>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default()
}

/// A clock a test moves forward, for the cache and its origin's `Date`.
#[derive(Clone, Default)]
pub(crate) struct Clock(Arc<AtomicU64>);

impl Clock {
    /// Now, as the test has moved it: whole seconds from a fixed start.
    pub(crate) fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + self.0.load(Ordering::SeqCst))
    }

    /// Moves the clock `seconds` on.
    pub(crate) fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }

    /// Default options, on this clock.
    pub(crate) fn options(&self) -> HttpCacheOptions {
        let clock = self.clone();
        HttpCacheOptions::default().clock(move || clock.now())
    }

    /// A response of `status` with `fields`, `body` and a `Date` of now.
    pub(crate) fn response(
        &self,
        status: u16,
        fields: &[(&str, &str)],
        body: &'static str,
    ) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        *response.headers_mut() = crate::fields::test_headers(fields);
        if let Ok(date) = http::HeaderValue::try_from(httpdate::fmt_http_date(self.now())) {
            response.headers_mut().insert(http::header::DATE, date);
        }
        response
    }
}

/// A request of `method` for `uri` with `fields`.
pub(crate) fn request(method: &str, uri: &str, fields: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = http::Method::from_bytes(method.as_bytes()).unwrap_or_default();
    *request.uri_mut() = uri.parse().unwrap_or_default();
    *request.headers_mut() = crate::fields::test_headers(fields);
    request
}

/// The values of `name` in `response`, as text.
pub(crate) fn field(response: &Response<StreamingBody>, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect()
}
