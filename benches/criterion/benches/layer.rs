//! The layer in process, around a `service_fn` origin that sends its body in 64 KiB frames:
//! hits and misses of 4 KiB, 1 MiB and 64 MiB, bodies drained frame by frame.
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
    // One buffer that every response's frames are slices of: the origin costs next to nothing.
    let source = Bytes::from(vec![b'x'; 64 << 20]);
    let service = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service_fn(move |request: Request<Full<Bytes>>| {
            let len: usize = request
                .uri()
                .path()
                .trim_start_matches("/len/")
                .parse()
                .unwrap_or(0);
            let body = Frames(source.slice(..len.min(source.len())));
            let response = Response::builder()
                .header("cache-control", "max-age=3600")
                .header("content-length", body.0.len())
                .body(body)
                .expect("static headers are valid");
            async move { Ok::<_, Infallible>(response) }
        });
    // Drains a response, returning how many body bytes it had.
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
            let mut body = std::pin::pin!(response.into_body());
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                len += frame.expect("body").data_ref().map_or(0, Bytes::len);
            }
            len
        }
    };

    let mut group = c.benchmark_group("layer");
    let misses = AtomicU64::new(0);
    for len in [4 << 10, 1 << 20, 64 << 20] {
        group.sample_size(if len > 1 << 20 { 10 } else { 100 });
        group.throughput(Throughput::Bytes(len as u64));
        let hit = format!("http://example.com/len/{len}");
        runtime.block_on(fetch(hit.clone()));
        group.bench_with_input(BenchmarkId::new("hit", len), &len, |b, &len| {
            b.to_async(&runtime).iter(|| async {
                assert_eq!(fetch(hit.clone()).await, len);
            })
        });
        group.bench_with_input(BenchmarkId::new("miss", len), &len, |b, &len| {
            b.to_async(&runtime).iter(|| async {
                let n = misses.fetch_add(1, Ordering::Relaxed);
                let uri = format!("http://example.com/len/{len}?miss={n}");
                assert_eq!(fetch(uri).await, len);
            })
        });
    }
    group.finish();
}

/// A body sent in frames of 64 KiB, as an origin's body arrives.
struct Frames(Bytes);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let n = self.0.len().min(64 << 10);
        std::task::Poll::Ready((n > 0).then(|| Ok(http_body::Frame::data(self.0.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.len() as u64)
    }
}

criterion_group!(benches, layer);
criterion_main!(benches);
