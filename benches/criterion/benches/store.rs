//! The store on its own: storing and serving bodies of 4 KiB and 1 MiB.
//!
//! `cargo bench --bench store`

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_semantics::CachePolicy;
use http_cache_streaming::StreamingManager;
use url::Url;

const URL: &str = "https://example.com/object";

fn response(len: usize) -> Response<Full<Bytes>> {
    Response::builder()
        .header("cache-control", "max-age=3600, public")
        .header("content-length", len)
        .body(Full::new(Bytes::from(vec![b'x'; len])))
        .expect("static headers are valid")
}

fn policy() -> CachePolicy {
    let request = Request::get(URL).body(()).expect("valid URI");
    CachePolicy::new(&request, &response(0))
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let url = Url::parse(URL).expect("valid URL");

    let mut group = c.benchmark_group("store");
    for len in [4 << 10, 1 << 20] {
        group.throughput(Throughput::Bytes(len as u64));
        let key = format!("GET:{URL}/{len}");
        group.bench_with_input(BenchmarkId::new("put", len), &len, |b, &len| {
            b.to_async(&runtime).iter(|| async {
                let stored = manager
                    .put(key.clone(), response(len), policy(), url.clone())
                    .await
                    .expect("put");
                drop(stored);
            })
        });
        group.bench_with_input(BenchmarkId::new("get", len), &len, |b, &len| {
            b.to_async(&runtime).iter(|| async {
                let (hit, _) = manager.get(&key).await.expect("get").expect("a hit");
                let body = hit.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(body.len(), len);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
