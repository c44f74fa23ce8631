//! http-cache-reqwest's `StreamingCache` middleware over http-cache-streaming's store (feature
//! `http-cache`; these tests need `interop-tests`), a reqwest client against a loopback
//! origin: a miss, a hit from disk, a `304` that freshens, and a 256 MiB body in bounded
//! memory.

mod common;

use std::time::Duration;

use axum::body::Body as AxumBody;
use common::Origin;
use http::Response;
use http_cache_reqwest::{CacheMode, StreamingCache};
use http_cache_streaming::StreamingManager;

/// `/big` is 256 MiB; `/etag` is stale at once with an `ETag`, and a `304` to its
/// revalidation; the rest `max-age=60`.
async fn origin() -> Origin {
    Origin::start(|parts, n| {
        let builder = Response::builder();
        match parts.uri.path() {
            "/big" => builder
                .header("cache-control", "max-age=60")
                .header("content-length", 256u64 << 20)
                .body(AxumBody::new(common::Generated::new(256 << 20, 7))),
            "/etag" if parts.headers.contains_key("if-none-match") => builder
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=0")
                .body(AxumBody::empty()),
            "/etag" => builder
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=0")
                .body(AxumBody::from("tagged")),
            path => builder
                .header("cache-control", "max-age=60")
                .body(AxumBody::from(format!("{path} #{n}"))),
        }
        .unwrap()
    })
    .await
}

fn client(manager: StreamingManager) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(StreamingCache::new(manager, CacheMode::Default))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_with_http_cache_misses_hits_and_freshens_over_this_store() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let client = client(manager.clone());
    let text = |path: &str| {
        let request = client.get(origin.url(path));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(text("/page").await, "/page #1");
    assert_eq!(text("/page").await, "/page #1", "a hit from disk");
    assert_eq!(origin.hits(), 1);
    let records = std::fs::read_dir(dir.path().join("cache-v2/metadata"))
        .unwrap()
        .count();
    assert_eq!(records, 1, "stored in this crate's layout");

    assert_eq!(text("/etag").await, "tagged");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        text("/etag").await,
        "tagged",
        "the stored body, after a 304"
    );
    assert_eq!(origin.hits(), 3, "a miss, then a revalidation");
    assert!(
        origin.last_request().headers.contains_key("if-none-match"),
        "revalidated"
    );
    let key = format!("GET:{}", origin.url("/etag"));
    let (_, policy) = manager.get(&key).await.unwrap().expect("still stored");
    let age = policy.age(std::time::SystemTime::now());
    assert!(
        age < Duration::from_secs(1),
        "freshened by the 304: {age:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_body_goes_through_reqwest_in_bounded_memory() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(StreamingManager::new(dir.path().to_path_buf()));
    let before = common::rss_kib();
    for round in 0..2 {
        let mut response = client.get(origin.url("/big")).send().await.unwrap();
        let (mut len, mut peak) = (0u64, 0u64);
        while let Some(chunk) = response.chunk().await.unwrap() {
            len += chunk.len() as u64;
            peak = peak.max(common::rss_kib());
        }
        assert_eq!(len, 256 << 20, "round {round}");
        let grown = peak.saturating_sub(before) / 1024;
        assert!(
            grown < 96,
            "round {round}: memory grew by {grown} MiB for a 256 MiB body"
        );
    }
    assert_eq!(origin.hits(), 1, "the second round is a hit");
}
