//! Hit latency as the store grows: the median time of a 1 KiB hit through the layer with
//! 1 000 entries stored, then with many more (100 000 by default); then, after a restart, how
//! soon hits are served and how long reading in every record takes at that size.
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

fn layered(manager: StreamingManager) -> HttpCacheStreaming<Origin> {
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
        // A miss is answered before its entry is committed: keep the commits within 512 of
        // the answers (past `max_writes_in_flight`, 1 024 by default, a miss is not stored).
        let manager = cache.cache().manager();
        while manager.stats().await?.entries + 512 < i - from {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let large: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("entries is a number, not {arg:?}"))?,
        None => 100_000,
    };
    // Two stores: one of 1 000 entries, one grown to `large`. Their hits are measured in
    // turns, so that both see the same moments of this shared machine.
    let small_dir = tempfile::tempdir()?;
    let small = layered(StreamingManager::new(small_dir.path().to_path_buf()));
    fill(&small, 0, 1000).await?;
    let dir = tempfile::tempdir()?;
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let cache = layered(manager.clone());
    let started = Instant::now();
    fill(&cache, 0, large).await?;
    // A miss is answered before its entry is committed: wait for every commit, so that the
    // store measured (and reopened below) holds all of them.
    while manager.stats().await?.entries < large {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(manager);
    println!(
        "stored {large} entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (mut smalls, mut bigs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let s = median_hit(&small, 1000).await?.as_secs_f64();
        let b = median_hit(&cache, large).await?.as_secs_f64();
        smalls.push(s);
        bigs.push(b);
        ratios.push(b / s);
    }
    println!(
        "median 1 KiB hit, 5 turns each: {:.1} µs with 1 000 entries, {:.1} µs with {large} \
         ({:.2}×, the median of the turns' ratios)",
        median(smalls) * 1e6,
        median(bigs) * 1e6,
        median(ratios)
    );
    drop(cache);
    // A restart: requests are served while the records are read in.
    let started = Instant::now();
    let reopened = StreamingManager::new(dir.path().to_path_buf());
    let cache = layered(reopened.clone());
    let first = get(&cache, large / 2).await?;
    let hits = median_hit(&cache, large).await?;
    let served = started.elapsed();
    let stats = reopened.stats().await?;
    println!(
        "after a restart: first hit in {:.1} ms, 4 000 more (median {:.1} µs) done after \
         {:.2} s; all {} records read in after {:.2} s",
        first.as_secs_f64() * 1e3,
        hits.as_secs_f64() * 1e6,
        served.as_secs_f64(),
        stats.entries,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
