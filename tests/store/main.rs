//! The store seen from outside: what `put`, `tee`, `get`, `delete` and `clear` do to bytes,
//! headers and files on disk.

#[path = "../common/mod.rs"]
mod common;

mod concurrency;
mod damage;
mod dedup;
mod eviction;
mod round_trip;
mod snapshot;
mod tee;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{ErrorKind, Eviction, StreamingManager};
use url::Url;

const URL: &str = "https://example.com/file";

fn response_with<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    *response.version_mut() = Version::HTTP_2;
    let headers = response.headers_mut();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("max-age=3600, public"),
    );
    headers.append("set-cookie", HeaderValue::from_static("a=1"));
    headers.append("set-cookie", HeaderValue::from_static("b=2"));
    headers.insert("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    response
}

fn url() -> Url {
    Url::parse(URL).unwrap()
}

fn content_bytes_on_disk(dir: &std::path::Path) -> u64 {
    let content = dir.join("cache-v2/content");
    content_files(dir)
        .iter()
        .map(|f| std::fs::metadata(content.join(f)).unwrap().len())
        .sum()
}

async fn put_body(manager: &StreamingManager, key: &str, body: Bytes) {
    manager
        .put(
            key.into(),
            Response::new(Full::new(body)),
            policy(URL),
            url(),
        )
        .await
        .unwrap();
}

async fn read(manager: &StreamingManager, key: &str) -> Option<Bytes> {
    let (hit, _) = manager.get(key).await.unwrap()?;
    Some(hit.into_body().collect().await.unwrap().to_bytes())
}
