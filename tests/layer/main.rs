//! The layer over a real loopback origin: what is served, what the origin sees, and what is
//! stored, for each rule of RFC 9111 the cache follows.

#[path = "../common/mod.rs"]
mod common;

mod bodies;
mod freshness;
mod options;
mod partial;
mod range;
mod stacks;
mod stale;
mod storability;
mod tags;
mod variants;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{
    CacheMode, HttpCacheOptions, HttpCacheStreaming, HttpCacheStreamingLayer, StreamingBody,
    StreamingManager,
};
use tower::{Service, ServiceBuilder, ServiceExt};

struct Setup {
    origin: Origin,
    cache: HttpCacheStreaming<Client>,
    dir: tempfile::TempDir,
    clock: Clock,
}

async fn setup<F>(options: HttpCacheOptions, handler: F) -> Setup
where
    F: Fn(&http::request::Parts, usize) -> Response<AxumBody> + Send + Sync + 'static,
{
    setup_sized(options, None, handler).await
}

/// [`setup`], with a store of at most `max_size` bytes.
async fn setup_sized<F>(options: HttpCacheOptions, max_size: Option<u64>, handler: F) -> Setup
where
    F: Fn(&http::request::Parts, usize) -> Response<AxumBody> + Send + Sync + 'static,
{
    let origin = Origin::start(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::default();
    let now = clock.clone();
    let options = options.clock(move || now.now());
    let mut manager = StreamingManager::builder(dir.path());
    if let Some(bytes) = max_size {
        manager = manager.max_size(bytes);
    }
    let manager = manager.build();
    let cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(manager, options))
        .service(client());
    Setup {
        origin,
        cache,
        dir,
        clock,
    }
}

/// A response an origin sends: status 200, these headers, this body.
fn reply(headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::from(body.into()));
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        response.headers_mut().append(name, value.parse().unwrap());
    }
    response
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn with(method: &str, url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::default()).unwrap()
}
