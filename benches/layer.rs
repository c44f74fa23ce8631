//! The layer in process, around a `service_fn` origin: hits and misses of 4 KiB and 1 MiB.
//!
//! `cargo bench --bench layer`

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
use tower::{Service, ServiceBuilder, ServiceExt};

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let service = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service_fn(|request: Request<Full<Bytes>>| async move {
            let len: usize = request
                .uri()
                .path()
                .trim_start_matches("/len/")
                .parse()
                .unwrap_or(0);
            let response = Response::builder()
                .header("cache-control", "max-age=3600")
                .header("content-length", len)
                .body(Full::new(Bytes::from(vec![b'x'; len])))
                .expect("static headers are valid");
            Ok::<_, Infallible>(response)
        });
    let fetch = |uri: String| {
        let mut service = service.clone();
        async move {
            let request = Request::get(uri).body(Full::default()).expect("valid URI");
            let response = service
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("answered");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        }
    };

    let mut group = c.benchmark_group("layer");
    let misses = AtomicU64::new(0);
    for len in [4 << 10, 1 << 20] {
        group.throughput(Throughput::Bytes(len as u64));
        let hit = format!("http://example.com/len/{len}");
        runtime.block_on(fetch(hit.clone()));
        group.bench_with_input(BenchmarkId::new("hit", len), &len, |b, &len| {
            b.to_async(&runtime).iter(|| async {
                assert_eq!(fetch(hit.clone()).await.len(), len);
            })
        });
        group.bench_with_input(BenchmarkId::new("miss", len), &len, |b, &len| {
            b.to_async(&runtime).iter(|| async {
                let n = misses.fetch_add(1, Ordering::Relaxed);
                let uri = format!("http://example.com/len/{len}?miss={n}");
                assert_eq!(fetch(uri).await.len(), len);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
