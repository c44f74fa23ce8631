//! The layer in the stacks users build: an axum router, a concurrency limit and a buffer.

use super::*;

#[tokio::test]
async fn the_layer_serves_an_axum_router() {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let app = axum::Router::new()
        .route(
            "/page",
            axum::routing::get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { ([("cache-control", "max-age=60")], format!("page {n}")) }
            }),
        )
        .layer(HttpCacheStreamingLayer::new(manager.clone()));
    let routed = axum::Router::new()
        .route(
            "/routed",
            axum::routing::get(|| async { ([("cache-control", "max-age=60")], "routed") }),
        )
        .route_layer(HttpCacheStreamingLayer::new(manager));
    let app = app.merge(routed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut plain = client();
    for round in 0..3 {
        let response = plain
            .ready()
            .await
            .unwrap()
            .call(get(&format!("http://{addr}/page")))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"page 1");
        let routed = send(&mut plain, get(&format!("http://{addr}/routed"))).await;
        assert_eq!(&routed.body[..], b"routed");
        let expected = if round == 0 { "fwd=uri-miss" } else { "hit" };
        assert!(
            routed.cache_status().contains(expected),
            "{}",
            routed.cache_status()
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_layer_works_under_a_concurrency_limit_and_a_buffer() {
    let origin = Origin::start(|_, _| reply(&[("cache-control", "max-age=60")], "limited")).await;
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let service = ServiceBuilder::new()
        .buffer(16)
        .concurrency_limit(1)
        .layer(HttpCacheStreamingLayer::new(manager))
        .timeout(Duration::from_secs(30))
        .service(client());
    let url = origin.url("/limited");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut service = service.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(get(&url))
                .await
                .unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    for task in tasks {
        assert_eq!(&task.await.unwrap()[..], b"limited");
    }
    assert!(origin.hits() >= 1);
}

/// The stack README's "Layer order" writes, outermost first: tracing, compression, the
/// cache, a timeout, a concurrency limit, the origin (an axum app over loopback). Clients
/// get gzip while the store keeps one identity body; a hit is answered while the origin's
/// only permit is held by a slow request; a revalidation the origin is too slow for times
/// out, and `stale_on_error` answers it stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_tower_http_stack() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::new(AtomicU64::new(0));
    let page_calls = Arc::new(AtomicU64::new(0));
    let app = {
        let (gate, arrived, page_calls) = (gate.clone(), arrived.clone(), page_calls.clone());
        let waits = move || {
            arrived.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            async move { gate.notified().await }
        };
        let slow = waits.clone();
        axum::Router::new()
            .route(
                "/page",
                axum::routing::get(move || {
                    // Its first answer at once; later ones once the test opens the gate.
                    let first = page_calls.fetch_add(1, Ordering::SeqCst) == 0;
                    let wait = (!first).then(&waits);
                    async move {
                        if let Some(wait) = wait {
                            wait.await;
                        }
                        ([("cache-control", "max-age=60")], "a page ".repeat(200))
                    }
                }),
            )
            .route(
                "/slow",
                axum::routing::get(move || {
                    let wait = slow();
                    async move {
                        wait.await;
                        "slow"
                    }
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::default();
    let now = clock.clone();
    let options = HttpCacheOptions::default()
        .stale_on_error(Duration::from_secs(600))
        .clock(move || now.now());
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let cache = HttpCacheStreamingLayer::open_with(manager, options)
        .await
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(cache)
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
        .concurrency_limit(1)
        .service(client());
    let url = |path: &str| format!("http://{addr}{path}");
    let gzip = |path: &str| with("GET", &url(path), &[("accept-encoding", "gzip")]);

    let miss = service.clone().oneshot(gzip("/page")).await.unwrap();
    assert_eq!(miss.headers()["content-encoding"], "gzip");
    let status = miss.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(status.contains("stored"), "{status}");
    let compressed = miss.into_body().collect().await.unwrap().to_bytes();
    let mut page = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut page,
    )
    .unwrap();
    assert_eq!(page, "a page ".repeat(200));
    // One identity body on disk, whatever encodings clients asked for.
    eventually("the page stored", || content_files(dir.path()).len() == 1).await;
    let content = dir
        .path()
        .join("cache-v2/content")
        .join(&content_files(dir.path())[0]);
    assert_eq!(std::fs::read(content).unwrap(), page.as_bytes());

    // The origin's one permit held by a slow request...
    let slow = tokio::spawn(service.clone().oneshot(get(&url("/slow"))));
    eventually("the slow request at the origin", || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    // ...a hit is answered meanwhile: it never waits for the limit behind the cache (it
    // takes milliseconds; the slow request holds the permit until its 2 s timeout).
    let hit = service.clone().oneshot(get(&url("/page"))).await.unwrap();
    assert!(
        !slow.is_finished(),
        "the hit waited for the slow request's permit"
    );
    let status = hit.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(status.contains("; hit"), "{status}");
    assert!(
        !hit.headers().contains_key("content-encoding"),
        "identity for a client that asked none"
    );
    let timed_out = slow.await.unwrap();
    assert!(timed_out.is_err(), "the slow request times out");

    // Stale now, and the origin too slow for its revalidation: the timeout fails it, and
    // the stale copy stands in.
    clock.advance(61);
    let stale = service.clone().oneshot(get(&url("/page"))).await.unwrap();
    let status = stale.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(
        status.contains("fwd=stale") && status.contains("detail=stale-on-error"),
        "{status}"
    );
    assert_eq!(stale.into_body().collect().await.unwrap().to_bytes(), page);
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        2,
        "the revalidation reached the origin"
    );
    gate.notify_waiters();
}
