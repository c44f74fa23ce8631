//! `ReqwestCache` (feature `reqwest`): this crate's own cache in front of a reqwest client,
//! against a loopback origin. The same `Cache-Status`, stats and purges as the layer; the
//! middlewares after it still see every request sent to the origin; a 256 MiB body in
//! bounded memory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body as AxumBody;
use common::Origin;
use http::Response;
use http_cache_streaming::{
    HttpCacheOptions, HttpCacheStreamingLayer, ReqwestCache, StreamingManager,
};

/// `/big` is 256 MiB; the rest `max-age=60`, numbered.
async fn origin() -> Origin {
    Origin::start(|parts, n| {
        let builder = Response::builder().header("cache-control", "max-age=60");
        match parts.uri.path() {
            "/big" => builder
                .header("content-length", 256u64 << 20)
                .body(AxumBody::new(common::Generated::new(256 << 20, 7))),
            path => builder.body(AxumBody::from(format!("{path} #{n}"))),
        }
        .unwrap()
    })
    .await
}

/// A middleware placed after the cache: counts the requests that reach it.
struct Counting(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Counting {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(request, extensions).await
    }
}

async fn cached_client(
    dir: &std::path::Path,
) -> (
    reqwest_middleware::ClientWithMiddleware,
    ReqwestCache,
    Arc<AtomicUsize>,
) {
    let options = HttpCacheOptions::default().shared(false);
    let manager = StreamingManager::new(dir.to_path_buf());
    let layer = HttpCacheStreamingLayer::open_with(manager, options)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let cache = ReqwestCache::new(layer.cache().clone(), client.clone());
    let after = Arc::new(AtomicUsize::new(0));
    let cached = reqwest_middleware::ClientBuilder::new(client)
        .with(cache.clone())
        .with(Counting(after.clone()))
        .build();
    (cached, cache, after)
}

fn cache_status(response: &reqwest::Response) -> String {
    response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reqwest_client_gets_the_layers_cache_status_stats_and_purges() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (client, cache, after) = cached_client(dir.path()).await;
    let url = origin.url("/page");

    let first = client.get(&url).send().await.unwrap();
    assert!(
        cache_status(&first).contains("fwd=uri-miss; fwd-status=200; stored; ttl=60"),
        "{}",
        cache_status(&first)
    );
    assert_eq!(first.url().as_str(), url);
    assert_eq!(first.text().await.unwrap(), "/page #1");
    let second = client.get(&url).send().await.unwrap();
    assert!(
        cache_status(&second).starts_with("http-cache-streaming; hit"),
        "{}",
        cache_status(&second)
    );
    assert_eq!(second.url().as_str(), url);
    assert_eq!(second.text().await.unwrap(), "/page #1");
    assert_eq!(origin.hits(), 1);
    assert_eq!(
        after.load(Ordering::SeqCst),
        1,
        "the middleware after the cache saw the miss only"
    );

    let stats = cache.cache().stats().await.unwrap();
    assert_eq!(
        (stats.hits, stats.misses, stats.origin.total()),
        (1, 1, 1),
        "{stats:?}"
    );
    assert!(cache.cache().purge(&url).await.unwrap());
    let third = client.get(&url).send().await.unwrap();
    assert_eq!(third.text().await.unwrap(), "/page #2");
    assert_eq!(after.load(Ordering::SeqCst), 2);

    // An unsafe request goes through, and invalidates.
    let posted = client.post(&url).body("change").send().await.unwrap();
    assert!(
        cache_status(&posted).contains("fwd=request"),
        "{}",
        cache_status(&posted)
    );
    assert_eq!(
        client.get(&url).send().await.unwrap().text().await.unwrap(),
        "/page #4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_body_goes_through_the_middleware_in_bounded_memory() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (client, _cache, _after) = cached_client(dir.path()).await;
    let before = common::rss_kib();
    let mut digests = Vec::new();
    for round in 0..2 {
        let mut response = client.get(origin.url("/big")).send().await.unwrap();
        let (mut len, mut peak) = (0u64, 0u64);
        let mut hasher = sha2::Sha256::default();
        while let Some(chunk) = response.chunk().await.unwrap() {
            sha2::Digest::update(&mut hasher, &chunk);
            len += chunk.len() as u64;
            peak = peak.max(common::rss_kib());
        }
        assert_eq!(len, 256 << 20, "round {round}");
        digests.push(<[u8; 32]>::from(sha2::Digest::finalize(hasher)));
        let grown = peak.saturating_sub(before) / 1024;
        // A buffered body would grow it by 256 MiB; streamed it stays within a few MiB.
        assert!(
            grown < 96,
            "round {round}: memory grew by {grown} MiB for a 256 MiB body"
        );
    }
    assert_eq!(digests[0], common::Generated::digest(256 << 20, 7));
    assert_eq!(digests[1], digests[0]);
    assert_eq!(origin.hits(), 1, "the second round is a hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_in_the_background_reaches_the_origin_after_the_request_ends() {
    let origin = Origin::start(|_, n| {
        Response::builder()
            .header("cache-control", "max-age=60, stale-while-revalidate=600")
            .body(AxumBody::from(format!("swr #{n}")))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let skew = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let now = skew.clone();
    let options = HttpCacheOptions::default().shared(false).clock(move || {
        std::time::SystemTime::now() + std::time::Duration::from_secs(now.load(Ordering::SeqCst))
    });
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let layer = HttpCacheStreamingLayer::open_with(manager, options)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let cached = reqwest_middleware::ClientBuilder::new(client.clone())
        .with(ReqwestCache::new(layer.cache().clone(), client))
        .build();
    let url = origin.url("/swr");
    assert_eq!(
        cached.get(&url).send().await.unwrap().text().await.unwrap(),
        "swr #1"
    );
    skew.store(120, Ordering::SeqCst);
    let stale = cached.get(&url).send().await.unwrap();
    assert!(
        cache_status(&stale).contains("stale-while-revalidate"),
        "{}",
        cache_status(&stale)
    );
    assert_eq!(stale.text().await.unwrap(), "swr #1");
    common::eventually("the background revalidation at the origin", || {
        origin.hits() == 2
    })
    .await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let body = cached.get(&url).send().await.unwrap().text().await.unwrap();
        if body == "swr #2" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
