//! Hit latency as the store grows: the median time of a 1 KiB hit through the layer with
//! 1 000 entries stored, then with many more (100 000 by default), and how long opening the
//! store takes at that size.
//!
//! `cargo run --release --example scale -- [entries]`

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{HttpCacheStreaming, HttpCacheStreamingLayer, StreamingManager};
use tower::{ServiceExt, service_fn};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Origin = tower::util::ServiceFn<
    fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>,
>;

fn origin(
    request: Request<Full<Bytes>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let body = format!("{:>1024}", request.uri().path());
    let response = Response::builder()
        .header("cache-control", "max-age=86400")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid");
    std::future::ready(Ok(response))
}

fn cache(dir: &std::path::Path) -> HttpCacheStreaming<Origin> {
    let manager = StreamingManager::new(dir.to_path_buf());
    HttpCacheStreamingLayer::new(manager).layer(service_fn(origin as fn(_) -> _))
}

async fn get(cache: &HttpCacheStreaming<Origin>, i: u64) -> Result<Duration, Error> {
    let started = Instant::now();
    let request = Request::get(format!("http://example.com/{i}")).body(Full::default())?;
    let response = cache.clone().oneshot(request).await?;
    response.into_body().collect().await?;
    Ok(started.elapsed())
}

/// Stores entries `from..to`, 64 at a time.
async fn fill(cache: &HttpCacheStreaming<Origin>, from: u64, to: u64) -> Result<(), Error> {
    let mut i = from;
    while i < to {
        let batch: Vec<_> = (i..to.min(i + 64))
            .map(|n| {
                let cache = cache.clone();
                tokio::spawn(async move { get(&cache, n).await })
            })
            .collect();
        for task in batch {
            task.await??;
        }
        let before = i;
        i = to.min(i + 64);
        if i / 50_000 != before / 50_000 {
            eprintln!("  {i} entries stored");
        }
    }
    Ok(())
}

/// Median latency of hits on keys spread over `0..entries` (each warmed once first).
async fn median_hit(cache: &HttpCacheStreaming<Origin>, entries: u64) -> Result<Duration, Error> {
    let keys: Vec<u64> = (0..2000u64).map(|n| (n * 7919) % entries).collect();
    for &k in &keys {
        get(cache, k).await?;
    }
    let mut times = Vec::with_capacity(keys.len());
    for &k in &keys {
        times.push(get(cache, k).await?);
    }
    times.sort();
    Ok(times[times.len() / 2])
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let large: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("entries is a number, not {arg:?}"))?,
        None => 100_000,
    };
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path());
    fill(&cache, 0, 1000).await?;
    let small = median_hit(&cache, 1000).await?;
    println!(
        "1 000 entries: median 1 KiB hit {:.1} µs",
        small.as_secs_f64() * 1e6
    );
    let started = Instant::now();
    fill(&cache, 1000, large).await?;
    println!(
        "stored {} more entries in {:.1} s",
        large - 1000,
        started.elapsed().as_secs_f64()
    );
    let big = median_hit(&cache, large).await?;
    println!(
        "{large} entries: median 1 KiB hit {:.1} µs ({:.2}× the 1 000-entry figure)",
        big.as_secs_f64() * 1e6,
        big.as_secs_f64() / small.as_secs_f64()
    );
    drop(cache);
    let started = Instant::now();
    let reopened = StreamingManager::new(dir.path().to_path_buf());
    let stats = reopened.stats().await?;
    println!(
        "opening a store of {} entries: {:.2} s",
        stats.entries,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
