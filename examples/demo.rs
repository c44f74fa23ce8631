//! The cache at work: a local origin, and a hyper client behind `HttpCacheStreamingLayer`.
//! A large generated response is fetched twice (MISS, then HIT from disk), a small one many
//! times, and once more after a restart of the cache; each line shows what the cache did,
//! time to first byte, throughput and peak memory.
//!
//! ```text
//! cargo run --release --example demo            # a 1 GiB response
//! cargo run --release --example demo -- 4096    # a 4 GiB response
//! ```

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{HttpCacheStreaming, HttpCacheStreamingLayer, StreamingManager};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use support::{Pattern, hex, print_peak_memory};
use tower::{Service, ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Cached = HttpCacheStreaming<Client<HttpConnector, Full<Bytes>>>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mib: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("the response size is a number of MiB, not {arg:?}"))?,
        None => 1024,
    };
    let origin_hits = Arc::new(AtomicUsize::new(0));
    let origin = start_origin(mib << 20, origin_hits.clone()).await?;
    let dir = tempfile::tempdir()?;
    println!("origin: http://{origin}   cache: {}", dir.path().display());
    println!();

    let mut cache = cached_client(&dir);
    let video = format!("http://{origin}/video.mp4");
    let first = fetch(&mut cache, &video).await?;
    first.print("GET /video.mp4");
    let second = fetch(&mut cache, &video).await?;
    second.print("GET /video.mp4");
    if first.digest != second.digest || first.bytes != second.bytes {
        return Err("the hit differs from the response the origin sent".into());
    }
    println!(
        "  same {} bytes both times (SHA-256 {})",
        second.bytes,
        hex(&second.digest[..8])
    );
    print_peak_memory("so far");

    let api = format!("http://{origin}/api/items");
    fetch(&mut cache, &api).await?.print("GET /api/items");
    let n = 2000u32;
    let started = Instant::now();
    for _ in 0..n {
        fetch(&mut cache, &api).await?;
    }
    let each = started.elapsed() / n;
    println!(
        "GET /api/items x{n}: {:.1} µs per hit, end to end through the layer",
        each.as_secs_f64() * 1e6
    );

    // Ten clients at once for a response nobody has fetched yet: one origin request; the
    // others stream the body from the file while it is written.
    let clients = 10;
    let fresh = format!("http://{origin}/video.mp4?edition=2");
    let before = origin_hits.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mut cache = cache.clone();
            let fresh = fresh.clone();
            tokio::spawn(async move { fetch(&mut cache, &fresh).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await??);
    }
    let asked = origin_hits.load(Ordering::SeqCst) - before;
    let slowest_first_byte = results
        .iter()
        .map(|r| r.first_byte)
        .max()
        .unwrap_or_default();
    let slowest = results.iter().map(|r| r.total).max().unwrap_or_default();
    if results.iter().any(|r| r.digest != first.digest) {
        return Err("a collapsed client got other bytes than the origin sent".into());
    }
    println!(
        "{clients} clients at once, GET /video.mp4?edition=2: origin asked {asked} time(s), \
         every first byte within {:.1} ms, all done in {:.2} s, all bytes identical",
        slowest_first_byte.as_secs_f64() * 1e3,
        slowest.as_secs_f64()
    );
    print_peak_memory("so far");

    // A restart: a new manager and layer over the same directory.
    drop(cache);
    let mut cache = cached_client(&dir);
    let after = fetch(&mut cache, &video).await?;
    after.print("restart, GET /video.mp4");
    println!();
    println!(
        "origin answered {} request(s) for {} fetches",
        origin_hits.load(Ordering::SeqCst),
        n + 5 + clients
    );
    print_peak_memory("so far");
    Ok(())
}

fn cached_client(dir: &tempfile::TempDir) -> Cached {
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let client = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service(client)
}

/// What one fetch through the cache saw.
struct Fetched {
    cache_status: String,
    bytes: u64,
    first_byte: Duration,
    total: Duration,
    digest: [u8; 32],
}

impl Fetched {
    fn print(&self, what: &str) {
        let word = if self.cache_status.contains("hit") {
            "HIT "
        } else {
            "MISS"
        };
        let secs = self.total.as_secs_f64();
        println!(
            "{what:<26} {word} {:>10} bytes  first byte {:>8.2} ms  total {:>7.2} s  {:>7.0} MiB/s   [{}]",
            self.bytes,
            self.first_byte.as_secs_f64() * 1e3,
            secs,
            self.bytes as f64 / (1 << 20) as f64 / secs,
            self.cache_status
        );
    }
}

async fn fetch(cache: &mut Cached, url: &str) -> Result<Fetched, Error> {
    let started = Instant::now();
    let request = Request::get(url).body(Full::default())?;
    let response = cache.ready().await?.call(request).await?;
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = std::pin::pin!(response.into_body());
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut first_byte = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            first_byte.get_or_insert_with(|| started.elapsed());
            bytes += data.len() as u64;
            hasher.update(&data);
        }
    }
    Ok(Fetched {
        cache_status,
        bytes,
        first_byte: first_byte.unwrap_or_else(|| started.elapsed()),
        total: started.elapsed(),
        digest: hasher.finalize().into(),
    })
}

/// The origin: a generated video of `len` bytes and a small JSON reply, both cacheable.
async fn start_origin(len: u64, hits: Arc<AtomicUsize>) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            let (body, content_type) = if request.uri().path() == "/video.mp4" {
                (AxumBody::new(Pattern::new(len)), "video/mp4")
            } else {
                let json = format!("{{\"items\":[{}]}}", "1,".repeat(200) + "1");
                (AxumBody::from(json), "application/json")
            };
            Response::builder()
                .header("cache-control", "max-age=3600, public")
                .header("content-type", content_type)
                .body(body)
                .expect("static headers are valid")
        }
    });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("origin stopped: {error}");
        }
    });
    Ok(addr)
}
