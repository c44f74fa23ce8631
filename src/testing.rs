//! Support for the crate's unit tests of the cache rules: a driver that answers requests
//! through an [`HttpStreamingCache`] as the layer does (over a store in memory, see
//! `HttpStreamingCache::in_memory`), an origin closure counting what it is asked, and a
//! clock the test moves.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, request};
use http_body_util::{BodyExt as _, Full};

use crate::body::StreamingBody;
use crate::cache::{Finished, HttpCacheOptions, HttpStreamingCache, Pending, Plan, Start};
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

    fn call(&self, parts: request::Parts) -> Answer {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = (self.answer)(&parts);
        lock(&self.asked).push(parts);
        answer
    }
}

/// Answers `request` through `cache` as the layer does, `origin` in the inner service's
/// place; a revalidation in the background runs on a task of its own.
pub(crate) async fn serve(
    cache: &HttpStreamingCache,
    origin: &Origin,
    request: Request<()>,
) -> Response<StreamingBody> {
    let (parts, ()) = request.into_parts();
    let (pending, onward) = match cache.start(parts) {
        Start::Ready(response) => return response,
        Start::Forward(parts, pending) => (pending, parts),
        Start::Lookup(lookup) => match lookup.await {
            (Plan::Respond(response), _) => return response,
            (
                Plan::Forward {
                    conditional,
                    pending,
                },
                mut parts,
            ) => {
                if pending.fetches_whole() {
                    parts.headers.remove(http::header::RANGE);
                    parts.headers.remove(http::header::IF_RANGE);
                }
                let again = pending.revalidates().then(|| parts.clone());
                crate::cache::replace_validators(&mut parts, conditional);
                return fetch(origin, pending, parts, again).await;
            }
            (
                Plan::Background {
                    response,
                    conditional,
                    pending,
                },
                mut parts,
            ) => {
                let again = pending.revalidates().then(|| parts.clone());
                crate::cache::replace_validators(&mut parts, conditional);
                let origin = origin.clone();
                tokio::spawn(async move {
                    let answer = fetch(&origin, pending, parts, again).await;
                    let _ = answer.into_body().collect().await;
                });
                return response;
            }
        },
    };
    let again = pending.revalidates().then(|| onward.clone());
    fetch(origin, pending, onward, again).await
}

/// The origin's answer to `parts`, as `pending` finishes it; `again` is sent when a
/// revalidation's `304` selects nothing.
async fn fetch(
    origin: &Origin,
    pending: Pending,
    parts: request::Parts,
    again: Option<request::Parts>,
) -> Response<StreamingBody> {
    let answer = origin.call(parts).await;
    match pending.finish(answer) {
        Finished::Ready(response) => response,
        Finished::Later(future) => future.await,
        Finished::Again(pending) => match again {
            Some(parts) => {
                let answer = origin.call(parts).await;
                match pending.finish(answer) {
                    Finished::Ready(response) => response,
                    Finished::Later(future) => future.await,
                    Finished::Again(pending) => pending.not_selected(),
                }
            }
            None => pending.not_selected(),
        },
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
