//! The cache inside a `ServiceBuilder` stack with a buffer, a concurrency limit of one and a
//! timeout: readiness reserved by the limit is the readiness the cache uses.
//!
//! `cargo run --example service_builder`

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::HttpCacheStreamingLayer;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    // Opened now: a directory the store cannot use is an error here, with its reason.
    let layer = HttpCacheStreamingLayer::open(dir.path()).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = ServiceBuilder::new()
        .buffer(64)
        .concurrency_limit(1)
        .timeout(Duration::from_secs(10))
        .layer(layer)
        .service_fn(move |request: Request<Full<Bytes>>| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let body = format!("{} (computed {n})", request.uri().path());
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(Full::new(Bytes::from(body)))
                        .expect("static headers are valid"),
                )
            }
        });

    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut service = service.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("http://example.com/item/{}", i % 4);
            let request = Request::get(path).body(Full::default())?;
            let response = service.ready().await?.call(request).await?;
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(body)
        }));
    }
    for task in tasks {
        println!("{}", String::from_utf8_lossy(&task.await??));
    }
    println!(
        "16 requests for 4 URLs, inner service called {} times",
        calls.load(Ordering::SeqCst)
    );
    Ok(())
}
