//! The cache's counters as `metrics` counters (the `metrics` feature).
#![cfg(feature = "metrics")]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Service, ServiceBuilder, ServiceExt};

#[test]
fn hits_and_misses_are_metrics_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let manager = StreamingManager::new(dir.path().to_path_buf());
            let mut service = ServiceBuilder::new()
                .layer(HttpCacheStreamingLayer::new(manager))
                .service_fn(|_request: Request<Full<Bytes>>| async {
                    let response = Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(Full::new(Bytes::from("counted")))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
            for _ in 0..3 {
                let request = Request::get("http://example.com/m")
                    .body(Full::default())
                    .unwrap();
                let response = service.ready().await.unwrap().call(request).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
            let stats = service.cache().stats().await.unwrap();
            assert_eq!((stats.hits, stats.misses), (2, 1));
        });
    });
    let counters: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((key.key().name().to_owned(), n)),
            _ => None,
        })
        .collect();
    let value = |name: &str| counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(
        value("http_cache_streaming_hits_total"),
        Some(2),
        "{counters:?}"
    );
    assert_eq!(
        value("http_cache_streaming_misses_total"),
        Some(1),
        "{counters:?}"
    );
}
