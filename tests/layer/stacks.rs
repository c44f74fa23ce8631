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
