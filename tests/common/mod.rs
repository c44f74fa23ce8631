//! Helpers shared by the integration tests: generated bodies that are never held in memory,
//! bodies fed from a channel, and digests.
#![allow(dead_code, reason = "each test binary uses some of these")]

pub mod contract;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "proxy")]
pub mod tls;

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_cache_semantics::CachePolicy;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// A body of `len` deterministic bytes, produced in 64 KiB slices of one pattern block.
pub struct Generated {
    block: Bytes,
    pos: u64,
    len: u64,
}

const BLOCK: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

impl Generated {
    pub fn new(len: u64, seed: u8) -> Self {
        // A block whose length is not a multiple of the chunk, so that chunks differ.
        let block: Vec<u8> = (0..BLOCK + 4099)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(seed as u32 % 32) as u8
            })
            .collect();
        Generated {
            block: Bytes::from(block),
            pos: 0,
            len,
        }
    }

    /// The SHA-256 of the whole body, computed by generating it once more.
    pub fn digest(len: u64, seed: u8) -> [u8; 32] {
        let mut g = Generated::new(len, seed);
        let mut hasher = Sha256::new();
        while let Some(chunk) = g.next_chunk() {
            hasher.update(&chunk);
        }
        hasher.finalize().into()
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.pos >= self.len {
            return None;
        }
        let n = (CHUNK as u64).min(self.len - self.pos) as usize;
        let start = (self.pos % (self.block.len() - CHUNK) as u64) as usize;
        self.pos += n as u64;
        Some(self.block.slice(start..start + n))
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next_chunk().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.pos)
    }
}

/// A body whose frames a test sends through a channel, so it controls when each arrives,
/// whether the body fails, and when it ends (when the sender is dropped).
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
}

pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

pub fn channel_body() -> (FrameSender, ChannelBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// Drains a body, returning the SHA-256 and length of its data and its trailers.
pub async fn drain<B>(body: B) -> Result<([u8; 32], u64, Option<HeaderMap>), B::Error>
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut hasher = Sha256::new();
    let mut len = 0;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            len += data.len() as u64;
        } else if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    Ok((hasher.finalize().into(), len, trailers))
}

/// Bytes of the files under `dir`.
pub fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            // Temp files come and go while this looks.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// This process's resident memory, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The SHA-256 of `bytes` in lowercase hex: the name of a content file, and of a record
/// file (without `.json`) when `bytes` is a key.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A cacheable response's policy for `url`.
pub fn policy(url: &str) -> CachePolicy {
    let req = Request::get(url).body(()).unwrap();
    let res = Response::builder()
        .header("cache-control", "max-age=3600, public")
        .body(())
        .unwrap();
    CachePolicy::new(&req, &res)
}

/// Names of the files in `dir` (none when it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|items| {
            items
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn content_files(cache: &Path) -> Vec<String> {
    files_in(&cache.join("cache-v2/content"))
}

pub fn record_files(cache: &Path) -> Vec<String> {
    files_in(&cache.join("cache-v2/metadata"))
}

/// Every file below the instance directories of `tmp/` (temp files being or left written).
pub fn temp_files(cache: &Path) -> Vec<String> {
    let tmp = cache.join("cache-v2/tmp");
    let mut out = Vec::new();
    for name in files_in(&tmp) {
        let path = tmp.join(&name);
        if path.is_dir() {
            out.extend(files_in(&path).into_iter().map(|f| format!("{name}/{f}")));
        }
    }
    out
}

/// Runs the tests that hold it one at a time within their binary: those that measure
/// time or memory, or load the machine (cargo runs a binary's tests in parallel).
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ALONE.lock().await
}

/// How long a test waits for what happens on its own time (a background commit, a copy to
/// the bucket, a purge reaching another node) before it says it never came: a bound on
/// liveness, far above the fraction of a second each takes on a busy 2-core machine.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits (bounded by [`PATIENCE`]) until `check` holds; background commits finish on their
/// own time.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A loopback origin server (axum) that counts the requests it answers and keeps their heads.
pub struct Origin {
    pub addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<http::request::Parts>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    /// Serves `handler` on a loopback port; it gets each request's head and its number
    /// (1 for the first).
    pub async fn start<F>(handler: F) -> Origin
    where
        F: Fn(&http::request::Parts, usize) -> Response<axum::body::Body> + Send + Sync + 'static,
    {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = std::sync::Arc::new(handler);
        let (state_hits, state_seen) = (hits.clone(), seen.clone());
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (hits, seen, handler) = (state_hits.clone(), state_seen.clone(), handler.clone());
            async move {
                let (parts, _) = request.into_parts();
                let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                seen.lock().unwrap().push(parts.clone());
                handler(&parts, n)
            }
        });
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = signal.await;
                })
                .await
                .unwrap();
        });
        Origin {
            addr,
            hits,
            seen,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The heads of the requests answered so far, in order.
    pub fn requests(&self) -> Vec<http::request::Parts> {
        self.seen.lock().unwrap().clone()
    }

    /// The head of the last request answered.
    pub fn last_request(&self) -> http::request::Parts {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }

    /// Stops serving and closes the port.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// An origin whose every answer differs: `<path> #<n>`, cacheable for ten minutes.
pub async fn numbered_origin() -> Origin {
    Origin::start(|parts, n| {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(axum::body::Body::from(format!("{} #{n}", parts.uri.path())))
            .unwrap()
    })
    .await
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// A hyper client that opens a connection per request, so that a stopped origin is
/// unreachable at once.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Sends `n` GETs for one URL through the layer, over an in-process origin answering
/// `max-age=60`, on a runtime on this thread (so thread-local recorders and subscribers see
/// everything). Returns the cache's stats afterwards.
pub fn requests_on_this_thread(dir: &Path, n: usize) -> http_cache_streaming::CacheStats {
    use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
    use tower::{Service, ServiceBuilder, ServiceExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let manager = StreamingManager::new(dir.to_path_buf());
        let mut service = ServiceBuilder::new()
            .layer(HttpCacheStreamingLayer::new(manager))
            .service_fn(|_request: Request<http_body_util::Full<Bytes>>| async {
                let response = Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(http_body_util::Full::new(Bytes::from("an answer")))
                    .unwrap();
                Ok::<_, Infallible>(response)
            });
        for _ in 0..n {
            let request = Request::get("http://example.com/t")
                .body(http_body_util::Full::default())
                .unwrap();
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        service.cache().stats().await.unwrap()
    })
}

/// A free loopback port, for a listener of a proxy's whose address the test needs first
/// (an admin or fleet listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

/// The purge token the proxies of the tests are started with.
pub const PURGE_TOKEN: &str = "test-purge-token";

/// The proxy process, killed when the test ends.
pub struct Proxy {
    pub child: std::process::Child,
    pub addr: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_proxy(upstream: &str, cache_dir: &std::path::Path, extra: &[&str]) -> Proxy {
    start_proxy_with_env(upstream, cache_dir, extra, &[])
}

/// [`start_proxy`], with environment variables of its own.
pub fn start_proxy_with_env(
    upstream: &str,
    cache_dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proxy {
    try_start_proxy(upstream, cache_dir, extra, env).expect("the proxy starts")
}

/// [`start_proxy_with_env`], or what the proxy printed when it did not start.
pub fn try_start_proxy(
    upstream: &str,
    cache_dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Proxy, String> {
    let cache_dir = cache_dir.to_str().expect("a UTF-8 temp path");
    let mut args = vec!["--upstream", upstream, "--cache-dir", cache_dir];
    args.extend(["--purge-token", PURGE_TOKEN]);
    // Long enough that a busy machine never cuts a body off; the tests of the timeout
    // itself give their own.
    if !extra.contains(&"--upstream-timeout") {
        args.extend(["--upstream-timeout", "20s"]);
    }
    args.extend(extra);
    spawn_proxy(&args, env)
}

/// The reverse proxy example as a process of its own with exactly `args` (and a listening
/// address of its choice): the proxy once it says where it listens, or what it printed
/// before it exited.
pub fn spawn_proxy(args: &[&str], env: &[(&str, &str)]) -> Result<Proxy, String> {
    let mut command = std::process::Command::new(proxy_binary());
    command.args(["--listen", "127.0.0.1:0"]).args(args);
    command.envs(env.iter().copied());
    spawn_proxy_command(command)
}

/// The `http-cache-proxy` binary, which `cargo test` builds for the tests that need it
/// (they require the `proxy` feature).
pub fn proxy_binary() -> std::path::PathBuf {
    match option_env!("CARGO_BIN_EXE_http-cache-proxy") {
        Some(binary) => binary.into(),
        None => panic!("the http-cache-proxy binary is built with --features proxy"),
    }
}

/// Runs `command`, which starts the proxy (perhaps through a shell that sets something
/// up first), as [`spawn_proxy`] does.
pub fn spawn_proxy_command(mut command: std::process::Command) -> Result<Proxy, String> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    // "proxying http://127.0.0.1:PORT -> ..."
    let Some(addr) = line.split_whitespace().nth(1).and_then(|url| {
        url.strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
    }) else {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        return Err(format!("{status}: {line}{stderr}"));
    };
    let addr = addr.to_owned();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::stderr()));
    Ok(Proxy { child, addr })
}

/// A response as a test reads it: status, headers, the whole body.
pub struct Got {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// Every `Cache-Status` value, joined.
    pub fn cache_status(&self) -> String {
        self.headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Whether the cache answered it (`Cache-Status: …; hit`).
    pub fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }

    /// The headers the origin sent: without those the cache adds.
    pub fn origin_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        for name in ["age", "cache-status", "date", "accept-ranges"] {
            headers.remove(name);
        }
        headers
    }
}

/// Sends a request through `service` and reads the whole response.
pub async fn send<S, B>(service: &mut S, request: Request<http_body_util::Full<Bytes>>) -> Got
where
    S: tower::Service<Request<http_body_util::Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A clock the tests move forward, for `HttpCacheOptions::clock`.
#[derive(Clone, Default)]
pub struct Clock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Clock {
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn now(&self) -> std::time::SystemTime {
        let skew = self.0.load(std::sync::atomic::Ordering::SeqCst);
        std::time::SystemTime::now() + std::time::Duration::from_secs(skew)
    }
}
