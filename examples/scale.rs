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

/// Latencies of 2 000 hits on 1 000 keys spread over `0..entries` (each warmed first): the
/// same number of keys in use, and as often, whatever the size of the store.
async fn hits(cache: &HttpCacheStreaming<Origin>, entries: u64) -> Result<Vec<f64>, Error> {
    let keys: Vec<u64> = (0..2000u64).map(|n| (n % 1000 * 7919) % entries).collect();
    for &k in &keys {
        get(cache, k).await?;
    }
    let mut times = Vec::with_capacity(keys.len());
    for &k in &keys {
        times.push(get(cache, k).await?.as_secs_f64());
    }
    Ok(times)
}

/// The value below which `share` of `values` lie.
fn quantile(values: &mut [f64], share: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * share) as usize]
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
    // The file system writes back what the fill left dirty (gigabytes at a million entries)
    // in the background, its threads taking a core of a small machine: hits are measured
    // once that is done.
    let synced = Instant::now();
    let _ = std::process::Command::new("sync").status();
    println!(
        "written back to disk in {:.1} s",
        synced.elapsed().as_secs_f64()
    );
    // A body held in memory is checked against the disk (two `stat`s) at most every 100 ms
    // per entry; a loop over the same keys checks them all in the same pass, so a pass's
    // median is either without checks or with: the hits of all turns are pooled.
    let (mut smalls, mut bigs) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        smalls.extend(hits(&small, 1000).await?);
        bigs.extend(hits(&cache, large).await?);
    }
    let (small_median, big_median) = (quantile(&mut smalls, 0.5), quantile(&mut bigs, 0.5));
    println!(
        "1 KiB hits on 1 000 keys, 10 turns of 2 000: median {:.1} µs with 1 000 entries, {:.1} µs \
         with {large} ({:.2}×); 99th percentile {:.1} and {:.1} µs",
        small_median * 1e6,
        big_median * 1e6,
        big_median / small_median,
        quantile(&mut smalls, 0.99) * 1e6,
        quantile(&mut bigs, 0.99) * 1e6,
    );
    drop(cache);
    // A restart: requests are served while the records are read in.
    let started = Instant::now();
    let reopened = StreamingManager::new(dir.path().to_path_buf());
    let cache = layered(reopened.clone());
    let first = get(&cache, large / 2).await?;
    let mut after = hits(&cache, large).await?;
    let served = started.elapsed();
    let stats = reopened.stats().await?;
    println!(
        "after a restart: first hit in {:.1} ms, 4 000 more (median {:.1} µs) done after \
         {:.2} s; all {} records read in after {:.2} s",
        first.as_secs_f64() * 1e3,
        quantile(&mut after, 0.5) * 1e6,
        served.as_secs_f64(),
        stats.entries,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
