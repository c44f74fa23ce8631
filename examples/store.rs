//! The store on its own, without HTTP: a large body stored and served from disk,
//! deduplicated, many small entries, a restart, and the figures that matter (time,
//! throughput, files, peak memory).
//!
//! ```text
//! cargo run --release --example store            # a 1 GiB body
//! cargo run --release --example store -- 4096    # a 4 GiB body
//! ```

mod support;

use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use http_cache_semantics::CachePolicy;
use http_cache_streaming::{StreamingBody, StreamingManager};
use sha2::{Digest, Sha256};
use support::{Pattern, hex, print_peak_memory};
use url::Url;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mib: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("the body size is a number of MiB, not {arg:?}"))?,
        None => 1024,
    };
    let dir = tempfile::tempdir()?;
    println!("store: {}", dir.path().display());
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let url = Url::parse("https://example.com/video.mp4")?;
    let len = mib << 20;

    // 1. A large body goes to disk as it streams, hashed on the way.
    let body = Pattern::new(len);
    let started = Instant::now();
    let stored = manager
        .put(
            "GET:https://example.com/video.mp4".into(),
            response(body, "video/mp4", len),
            policy(&url),
            url.clone(),
        )
        .await?;
    report("put", len, started);
    drop(stored);

    // 2. A hit streams it back from disk in large chunks.
    let started = Instant::now();
    let (hit, _) = manager
        .get("GET:https://example.com/video.mp4")
        .await?
        .ok_or("the stored body is a miss")?;
    let (got, digest) = drain(hit.into_body()).await?;
    report("get", got, started);
    if got != len || digest != Pattern::digest(len) {
        return Err("the hit differs from the body stored".into());
    }
    println!(
        "      every byte read back is the byte sent (SHA-256 {})",
        hex(&digest)
    );

    // 3. The same body under another key is stored once.
    let body = Pattern::new(len);
    let started = Instant::now();
    manager
        .put(
            "GET:https://cdn.example.com/video.mp4".into(),
            response(body, "video/mp4", len),
            policy(&url),
            url.clone(),
        )
        .await?;
    report("put again (dedup)", len, started);
    let stats = manager.stats().await?;
    println!(
        "      {} entries, {} content file(s), {} MiB of content on disk",
        stats.entries,
        stats.content_files,
        stats.content_bytes >> 20
    );

    print_peak_memory(&format!("after the bodies of {mib} MiB"));

    // 4. Many small responses: puts, then hits served without parsing their records again.
    let small = 10_000u32;
    let started = Instant::now();
    for i in 0..small {
        let body = Full::new(Bytes::from(format!(
            "{{\"id\":{i},\"pad\":\"{:0>900}\"}}",
            i
        )));
        let len = body.size_hint().exact().unwrap_or_default();
        manager
            .put(
                format!("GET:https://api.example.com/items/{i}"),
                response(body, "application/json", len),
                policy(&url),
                url.clone(),
            )
            .await?;
    }
    let put_time = started.elapsed();
    let started = Instant::now();
    for i in 0..small {
        let (hit, _) = manager
            .get(&format!("GET:https://api.example.com/items/{i}"))
            .await?
            .ok_or("a small body is a miss")?;
        hit.into_body().collect().await?;
    }
    let get_time = started.elapsed();
    println!(
        "small: {small} puts of ~1 KiB in {:.2} s ({:.0}/s); {small} hits in {:.2} s ({:.0}/s, {:.1} µs each)",
        put_time.as_secs_f64(),
        f64::from(small) / put_time.as_secs_f64(),
        get_time.as_secs_f64(),
        f64::from(small) / get_time.as_secs_f64(),
        get_time.as_secs_f64() * 1e6 / f64::from(small),
    );

    // 5. A restart: a new manager over the same directory finds everything.
    drop(manager);
    let started = Instant::now();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let stats = manager.stats().await?;
    println!(
        "restart: {} entries indexed in {:.0} ms",
        stats.entries,
        started.elapsed().as_secs_f64() * 1e3
    );
    let (hit, _) = manager
        .get("GET:https://cdn.example.com/video.mp4")
        .await?
        .ok_or("the deduplicated body is a miss after the restart")?;
    let started = Instant::now();
    let (got, _) = drain(hit.into_body()).await?;
    report("get after restart", got, started);

    // 6. Memory: bodies cost a few read chunks; what grows is the index of small entries.
    print_peak_memory(&format!("after {} entries", stats.entries));
    Ok(())
}

fn response<B>(body: B, content_type: &str, len: u64) -> Response<B> {
    Response::builder()
        .header("cache-control", "max-age=3600, public")
        .header("content-type", content_type)
        .header("content-length", len)
        .body(body)
        .expect("static headers are valid")
}

fn policy(url: &Url) -> CachePolicy {
    let request = Request::get(url.as_str())
        .body(())
        .expect("a parsed URL is a valid URI");
    let response = Response::builder()
        .header("cache-control", "max-age=3600, public")
        .body(())
        .expect("static headers are valid");
    CachePolicy::new(&request, &response)
}

/// Reads a body to its end, counting and hashing, never holding more than a chunk.
async fn drain(body: StreamingBody) -> Result<(u64, [u8; 32]), Error> {
    let mut body = std::pin::pin!(body);
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    Ok((len, hasher.finalize().into()))
}

fn report(what: &str, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what}: {} MiB in {secs:.2} s ({:.0} MiB/s)",
        bytes >> 20,
        (bytes as f64 / (1 << 20) as f64) / secs
    );
}
