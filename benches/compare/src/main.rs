//! Side-by-side figures: http-cache-streaming, http-cache-tower's streaming layer (pinned at
//! 1.0.0-alpha.9) and a plain sequential `std::fs` read, each run in a child process of its
//! own so that its peak memory is its own.
//!
//! ```text
//! cd benches/compare && cargo run --release -- [--mib 1024] [--small 2000]
//! ```

use std::convert::Infallible;
use std::io::{Read, Write};
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

const IMPLS: [&str; 3] = ["ours", "http-cache-tower", "std::fs"];
const ROUNDS: usize = 3;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let (which, mib, small) = (&args[2], args[3].parse()?, args[4].parse()?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(child(which, mib, small));
    }
    let mut mib = 1024u64;
    let mut small = 2000usize;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let value = rest.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--mib" => mib = value.parse()?,
            "--small" => small = value.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    // Rounds interleave the implementations, and each run starts with no dirty pages of
    // the previous one being written back: this machine's disk is shared and slow to flush.
    let mut runs: Vec<Vec<(String, f64)>> = vec![Vec::new(); IMPLS.len()];
    for round in 1..=ROUNDS {
        for (i, which) in IMPLS.iter().enumerate() {
            eprintln!("round {round}/{ROUNDS}: {which} ...");
            let _ = Command::new("sync").status();
            let out = Command::new(std::env::current_exe()?)
                .args(["child", which, &mib.to_string(), &small.to_string()])
                .output()?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(format!("{which} failed: {stderr}").into());
            }
            let stdout = String::from_utf8(out.stdout)?;
            runs[i].extend(stdout.lines().filter_map(|l| {
                let (k, v) = l.split_once('\t')?;
                Some((k.to_owned(), v.parse().ok()?))
            }));
        }
    }
    // The median of the rounds, per figure.
    let rows: Vec<(String, Vec<(String, String)>)> = IMPLS
        .iter()
        .zip(runs)
        .map(|(which, figures)| {
            let mut names: Vec<&String> = figures.iter().map(|(k, _)| k).collect();
            names.dedup();
            let medians = names
                .into_iter()
                .map(|name| {
                    let mut values: Vec<f64> = figures
                        .iter()
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| *v)
                        .collect();
                    values.sort_by(f64::total_cmp);
                    (name.clone(), values[values.len() / 2].to_string())
                })
                .collect();
            (which.to_string(), medians)
        })
        .collect();
    print_table(&rows, mib);
    Ok(())
}

fn print_table(rows: &[(String, Vec<(String, String)>)], mib: u64) {
    let metrics = [
        (
            "miss_first_byte_ms",
            format!("{mib} MiB miss: first body byte (ms)"),
        ),
        (
            "miss_mb_s",
            format!("{mib} MiB miss: MB/s to the client while storing"),
        ),
        (
            "miss_stored_ms",
            format!("{mib} MiB miss: stored, a hit from the request on (ms)"),
        ),
        ("hit_mb_s", format!("{mib} MiB hit: MB/s, body drained")),
        ("small_hit_median_us", "4 KiB hit: median µs".to_owned()),
        ("peak_rss_mib", "peak RSS of the run (MiB)".to_owned()),
    ];
    print!("| workload |");
    for (which, _) in rows {
        print!(" {which} |");
    }
    println!(" ours ÷ http-cache-tower |");
    println!("|---|{}---|", "---|".repeat(rows.len()));
    for (metric, label) in metrics {
        print!("| {label} |");
        let values: Vec<Option<f64>> = rows
            .iter()
            .map(|(_, figures)| {
                figures
                    .iter()
                    .find(|(k, _)| k == metric)
                    .and_then(|(_, v)| v.parse().ok())
            })
            .collect();
        for value in &values {
            match value {
                Some(v) => print!(" {v:.1} |"),
                None => print!(" – |"),
            }
        }
        match (values[0], values[1]) {
            (Some(ours), Some(theirs)) if theirs > 0.0 => println!(" {:.2} |", ours / theirs),
            _ => println!(" – |"),
        }
    }
    let ours = |metric: &str| {
        rows[0]
            .1
            .iter()
            .find(|(k, _)| k == metric)
            .and_then(|(_, v)| v.parse::<f64>().ok())
    };
    if let (Some(hit), Some(fs), Some(ratio)) = (
        ours("hit_mb_s_interleaved"),
        ours("std_fs_mb_s_interleaved"),
        ours("hit_over_std_fs"),
    ) {
        println!(
            "\n{mib} MiB hit alternating with a std::fs read loop of its own content file, \
             {HIT_ROUNDS} of each in one process (medians): ours {hit:.0} MB/s, \
             std::fs {fs:.0} MB/s, ours ÷ std::fs {ratio:.2}"
        );
    }
}

/// Runs one implementation's workloads and prints `metric<TAB>value` lines.
async fn child(which: &str, mib: u64, small: usize) -> Result<(), Error> {
    let len = mib << 20;
    let dir = tempfile::tempdir()?;
    match which {
        "std::fs" => {
            let path = dir.path().join("body");
            let mut file =
                std::io::BufWriter::with_capacity(256 << 10, std::fs::File::create(&path)?);
            let mut body = Pattern::new(len);
            while let Some(chunk) = body.next_frame() {
                file.write_all(&chunk)?;
            }
            file.flush()?;
            drop(file);
            report("hit_mb_s", mb_per_s(len, read_loop(&path)?));
        }
        "ours" => {
            use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
            let mut builder = StreamingManager::builder(dir.path());
            if let Some(chunk) = std::env::var("COMPARE_READ_CHUNK").ok() {
                builder = builder.read_chunk_size(chunk.parse()?);
            }
            let manager = builder.build();
            let mut service =
                HttpCacheStreamingLayer::new(manager).layer(tower::service_fn(origin));
            workloads(&mut service, len, small).await?;
            hits_beside_std_fs(&mut service, dir.path(), len).await?;
        }
        "http-cache-tower" => {
            use http_cache::{HttpCacheOptions, StreamingManager};
            use http_cache_tower::HttpCacheStreamingLayer;
            let manager =
                StreamingManager::with_max_body_size(dir.path().to_path_buf(), 10_000, len * 2)
                    .await?;
            let layer = HttpCacheStreamingLayer::with_options(manager, HttpCacheOptions::default());
            let mut service = tower::Layer::layer(&layer, tower::service_fn(origin));
            workloads(&mut service, len, small).await?;
        }
        other => return Err(format!("unknown implementation {other}").into()),
    }
    report("peak_rss_mib", peak_rss_kib() as f64 / 1024.0);
    Ok(())
}

/// The origin: a generated body of the length the path names, cacheable for an hour.
async fn origin(request: Request<Full<Bytes>>) -> Result<Response<Pattern>, Infallible> {
    let len: u64 = request
        .uri()
        .path()
        .trim_start_matches('/')
        .parse()
        .unwrap_or(0);
    let mut response = Response::new(Pattern::new(len));
    let headers = response.headers_mut();
    headers.insert(
        "cache-control",
        http::HeaderValue::from_static("max-age=3600, public"),
    );
    headers.insert("content-length", http::HeaderValue::from(len));
    Ok(response)
}

async fn workloads<S, B>(service: &mut S, len: u64, small: usize) -> Result<(), Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<Error>,
    B: Body,
    B::Error: Into<Error>,
{
    let big = format!("http://origin.test/{len}");
    let (first_byte, total, bytes) = fetch(service, &big).await?;
    report("miss_first_byte_ms", first_byte.as_secs_f64() * 1e3);
    report("miss_mb_s", mb_per_s(bytes, total));
    // The first hit's first byte comes once the miss is stored (committed under its digest).
    let (stored, _, _) = fetch(service, &big).await?;
    report("miss_stored_ms", (total + stored).as_secs_f64() * 1e3);
    let (_, total, bytes) = fetch(service, &big).await?;
    report("hit_mb_s", mb_per_s(bytes, total));

    let small_url = "http://origin.test/4096";
    fetch(service, small_url).await?;
    let mut times = Vec::with_capacity(small);
    for _ in 0..small {
        let (_, total, bytes) = fetch(service, small_url).await?;
        assert_eq!(bytes, 4096);
        times.push(total);
    }
    times.sort();
    if let Some(median) = times.get(times.len() / 2) {
        report("small_hit_median_us", median.as_secs_f64() * 1e6);
    }
    Ok(())
}

/// The big hit again, alternating with a plain read loop of the very content file it is
/// served from, in this one process: the two see the same page cache, the same neighbours on
/// this shared machine and the same moment, so their ratio holds still where the figures
/// of separate runs do not.
async fn hits_beside_std_fs<S, B>(
    service: &mut S,
    dir: &std::path::Path,
    len: u64,
) -> Result<(), Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<Error>,
    B: Body,
    B::Error: Into<Error>,
{
    let content = std::fs::read_dir(dir.join("cache-v2/content"))?
        .filter_map(Result::ok)
        .find(|e| e.metadata().is_ok_and(|m| m.len() == len))
        .ok_or("no content file of the big body")?
        .path();
    let big = format!("http://origin.test/{len}");
    let (mut ours, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..HIT_ROUNDS {
        let fs = mb_per_s(len, read_loop(&content)?);
        let (_, total, bytes) = fetch(service, &big).await?;
        let hit = mb_per_s(bytes, total);
        ratios.push(hit / fs);
        ours.push(hit);
        plain.push(fs);
    }
    report("hit_mb_s_interleaved", median(ours));
    report("std_fs_mb_s_interleaved", median(plain));
    report("hit_over_std_fs", median(ratios));
    Ok(())
}

const HIT_ROUNDS: usize = 7;

/// A plain sequential read of `path` through one 256 KiB buffer.
fn read_loop(path: &std::path::Path) -> Result<Duration, Error> {
    let started = Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 << 10];
    while file.read(&mut buf)? != 0 {}
    Ok(started.elapsed())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One request: time to the first body byte, time to the end, bytes.
async fn fetch<S, B>(service: &mut S, url: &str) -> Result<(Duration, Duration, u64), Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<Error>,
    B: Body,
    B::Error: Into<Error>,
{
    let started = Instant::now();
    let request = Request::get(url).body(Full::default())?;
    let ready = service.ready().await.map_err(Into::into)?;
    let response = ready.call(request).await.map_err(Into::into)?;
    let mut body = std::pin::pin!(response.into_body());
    let mut first = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Some(data) = frame.data_ref() {
            first.get_or_insert_with(|| started.elapsed());
            bytes += bytes::Buf::remaining(data) as u64;
        }
    }
    let total = started.elapsed();
    Ok((first.unwrap_or(total), total, bytes))
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn report(metric: &str, value: f64) {
    println!("{metric}\t{value}");
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A body of `len` generated bytes in 256 KiB frames.
struct Pattern {
    block: Bytes,
    left: u64,
}

impl Pattern {
    const FRAME: usize = 256 << 10;

    fn new(len: u64) -> Self {
        let block: Vec<u8> = (0..Self::FRAME + 251).map(|i| (i % 251) as u8).collect();
        Pattern {
            block: Bytes::from(block),
            left: len,
        }
    }

    fn next_frame(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let n = (Self::FRAME as u64).min(self.left) as usize;
        let start = (self.left % 251) as usize;
        self.left -= n as u64;
        Some(self.block.slice(start..start + n))
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next_frame().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
