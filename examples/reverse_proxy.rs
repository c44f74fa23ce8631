//! A caching reverse proxy: every request goes to one upstream through the cache.
//!
//! ```text
//! cargo run --release --example reverse_proxy -- \
//!     --upstream http://127.0.0.1:8080 --listen 127.0.0.1:3000 --cache-dir ./proxy-cache \
//!     [--timeout-secs 30] [--max-size BYTES (10 GiB)] [--max-body-size BYTES]
//!     [--s3-bucket NAME [--s3-endpoint URL]] [--purge-token TOKEN] [--trust-forwarded]
//!     [--max-entries N] [--background-fills 8] [--max-connections 4096]
//!     [--header-timeout-secs 30] [--idle-timeout-secs 75] [--send-timeout-secs 60]
//!     [--stale-on-error SECS] [--quiet]
//! ```
//!
//! Slow and many clients cannot take it down, as with nginx: request headers must arrive
//! within `--header-timeout-secs`, a connection with nothing read or written for
//! `--idle-timeout-secs` is closed, a client that takes no byte of a response for
//! `--send-timeout-secs` is dropped (the response is abandoned like any whose client left),
//! at most `--max-connections` are served at once (more wait in the listen backlog), and an
//! accept that fails for want of file descriptors waits instead of spinning. Of the fills
//! whose clients left, at most `--background-fills` are still read to their end at once.
//!
//! It forwards every method, every end-to-end request and response header (repeated headers
//! kept; hop-by-hop headers removed, RFC 9110 §7.6.1) and any status code the upstream sends.
//! It adds no freshness of its own: what is stored and for how long is the upstream's say.
//! An unreachable upstream is a `502`, one that does not answer in time a `504`; a body
//! that stalls for as long is cut off (the client sees a truncated response, nothing is
//! stored). With `--stale-on-error SECS` (off by default, like nginx's
//! `proxy_cache_use_stale`), a stored response stale for at most that long is served in place
//! of such a failure or of any `5xx`, unless it must not be served stale (`must-revalidate`,
//! `proxy-revalidate`, `no-cache`, `s-maxage`); `Cache-Status` says `fwd=stale;
//! fwd-status=502; detail=stale-on-error`. Bodies over `--max-body-size` are passed through without being stored. With
//! `--s3-bucket` (built with `--features s3`), the cache directory is a fast local
//! tier in front of that bucket, which proxies on other ports or machines share: credentials
//! and region come from the usual `AWS_*` environment variables, and `--s3-endpoint` names
//! an S3-compatible server instead of AWS. Each
//! request is logged on one line with what the cache did (`--quiet` turns that off, for
//! load tests).
//!
//! It is a shared cache in front of one upstream, and no client can change what another
//! receives:
//! - Entries are keyed on what is fetched: the upstream's scheme and authority, the path and
//!   the query (as nginx's `$scheme$proxy_host$request_uri`), never the client's `Host`. A
//!   request whose `Host` (or URI authority) is not a valid `host[:port]`, or that has several
//!   `Host` headers, or none in HTTP/1.1, is answered `400`; `CONNECT` is answered `405`.
//! - It adds `Via` to requests and responses, and the client's address to `X-Forwarded-For`
//!   and `Forwarded`. Client-sent `Forwarded`, `X-Forwarded-Host`, `X-Forwarded-Proto` (and
//!   the other `X-Forwarded-*`) are removed unless `--trust-forwarded` says the clients are
//!   proxies of your own; headers that make an upstream serve another path or method
//!   (`X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override`) are always removed.
//! - With `--purge-token TOKEN`, `PURGE /path` with `Authorization: Bearer TOKEN` removes what
//!   is stored for the path (`200`; `404` when nothing was; `401` without the token).
//!   Without the flag `PURGE` is `405`. A `PURGE` is never forwarded.
//! - There is no private mode: a proxy serves many users, and a private cache would serve one
//!   user's private pages to the next (private mode is for a client's own cache, as in
//!   `examples/hyper_client.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Either, Full};
use http_cache_streaming::{
    HttpCacheOptions, HttpCacheStreaming, HttpCacheStreamingLayer, StreamingBody, StreamingManager,
    is_valid_authority, strip_hop_by_hop,
};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tower::{Service, ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = Either<Idle, Full<Bytes>>;
/// A client's request body, boxed: a body type the cache can make anew (empty), so that a
/// request whose revalidation the origin answers with a stray `304` is sent again.
type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// What the command line asks for.
struct Args {
    upstream: Uri,
    listen: SocketAddr,
    cache_dir: PathBuf,
    timeout: Duration,
    quiet: bool,
    max_size: Option<u64>,
    max_body_size: Option<u64>,
    s3_bucket: Option<String>,
    s3_endpoint: Option<String>,
    purge_token: Option<String>,
    trust_forwarded: bool,
    max_entries: Option<usize>,
    clients: ClientLimits,
    background_fills: usize,
    stale_on_error: Option<Duration>,
}

/// What one client may hold, so that slow or many clients cannot take the proxy down.
#[derive(Clone, Copy)]
struct ClientLimits {
    /// Time to send a request's headers (HTTP/1): nginx's `client_header_timeout`.
    header_timeout: Duration,
    /// A connection with nothing read or written for this long is closed (keep-alive idle).
    idle_timeout: Duration,
    /// A client that takes no byte of a response for this long is dropped (nginx's
    /// `send_timeout`): what it was sent is abandoned like any response whose client left.
    send_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    max_connections: usize,
}

const USAGE: &str = "usage: reverse_proxy --upstream http://HOST[:PORT] --listen ADDR:PORT \
                     --cache-dir DIR [--timeout-secs N] [--max-size BYTES] [--max-body-size BYTES] \
                     [--s3-bucket NAME [--s3-endpoint URL]] [--purge-token TOKEN] \
                     [--trust-forwarded] [--max-entries N] [--background-fills N] \
                     [--max-connections N] [--header-timeout-secs N] [--idle-timeout-secs N] \
                     [--send-timeout-secs N] [--stale-on-error SECS] [--quiet]";

/// A number of bytes given on the command line.
fn bytes_arg(name: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{name} takes a number of bytes, not {value:?}"))
}

/// A count given on the command line: at least one.
fn count_arg(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name} takes a number above zero, not {value:?}"))
}

/// Whole seconds given on the command line: at least one.
fn secs_arg(name: &str, value: &str) -> Result<Duration, String> {
    let secs = value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name} takes whole seconds above zero, not {value:?}"))?;
    Ok(Duration::from_secs(secs))
}

fn parse_args() -> Result<Args, String> {
    let mut upstream = None;
    let mut listen = None;
    let mut cache_dir = None;
    let mut quiet = false;
    // A proxy keeps its disk bounded by default; the store also keeps 5 % of the file
    // system (at most 1 GiB) free whatever this says.
    let mut max_size = Some(10 << 30);
    let mut max_body_size = None;
    let mut s3_bucket = None;
    let mut s3_endpoint = None;
    let mut purge_token = None;
    let mut trust_forwarded = false;
    let mut max_entries = None;
    let mut background_fills = 8;
    let mut stale_on_error = None;
    let mut clients = ClientLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(75),
        send_timeout: Duration::from_secs(60),
        max_connections: 4096,
    };
    let mut timeout = Duration::from_secs(30);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--upstream" => upstream = Some(value("--upstream")?),
            "--listen" => listen = Some(value("--listen")?),
            "--cache-dir" => cache_dir = Some(value("--cache-dir")?),
            "--quiet" => quiet = true,
            "--trust-forwarded" => trust_forwarded = true,
            "--purge-token" => {
                let token = value(&arg)?;
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("--purge-token takes a token of visible ASCII characters".into());
                }
                purge_token = Some(token);
            }
            "--private" => {
                return Err(
                    "--private was removed: a proxy serves many users, and a private \
                            cache keyed without the user serves one user's private pages to \
                            the next"
                        .into(),
                );
            }
            "--allow-purge" => {
                return Err(
                    "--allow-purge was replaced by --purge-token TOKEN: a PURGE is \
                            honoured with `Authorization: Bearer TOKEN` only"
                        .into(),
                );
            }
            "--max-size" => max_size = Some(bytes_arg(&arg, &value(&arg)?)?),
            "--max-body-size" => max_body_size = Some(bytes_arg(&arg, &value(&arg)?)?),
            "--s3-bucket" => s3_bucket = Some(value(&arg)?),
            "--s3-endpoint" => s3_endpoint = Some(value(&arg)?),
            "--timeout-secs" => timeout = secs_arg(&arg, &value(&arg)?)?,
            "--max-entries" => max_entries = Some(count_arg(&arg, &value(&arg)?)?),
            "--background-fills" => background_fills = count_arg(&arg, &value(&arg)?)?,
            "--max-connections" => clients.max_connections = count_arg(&arg, &value(&arg)?)?,
            "--header-timeout-secs" => clients.header_timeout = secs_arg(&arg, &value(&arg)?)?,
            "--idle-timeout-secs" => clients.idle_timeout = secs_arg(&arg, &value(&arg)?)?,
            "--send-timeout-secs" => clients.send_timeout = secs_arg(&arg, &value(&arg)?)?,
            "--stale-on-error" => stale_on_error = Some(secs_arg(&arg, &value(&arg)?)?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let upstream = upstream.ok_or(format!("--upstream is required\n{USAGE}"))?;
    let upstream: Uri = upstream
        .parse()
        .map_err(|e| format!("--upstream {upstream:?} is not a URL: {e}"))?;
    if upstream.scheme() != Some(&Scheme::HTTP) || upstream.authority().is_none() {
        return Err(format!(
            "--upstream must be an http:// URL with a host (TLS upstreams are not supported \
             by this example), not {upstream}"
        ));
    }
    let listen = listen.ok_or(format!("--listen is required\n{USAGE}"))?;
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen {listen:?} is not ADDR:PORT: {e}"))?;
    let cache_dir = cache_dir
        .ok_or(format!("--cache-dir is required\n{USAGE}"))?
        .into();
    Ok(Args {
        upstream,
        listen,
        cache_dir,
        timeout,
        quiet,
        max_size,
        max_body_size,
        s3_bucket,
        s3_endpoint,
        purge_token,
        trust_forwarded,
        max_entries,
        clients,
        background_fills,
        stale_on_error,
    })
}

/// The inner service: sends a request to the upstream and returns its answer, or a 502/504.
#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, RequestBody>,
    authority: Authority,
    timeout: Duration,
}

impl Upstream {
    async fn forward(self, request: Request<RequestBody>) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "request target cannot be forwarded",
            );
        };
        parts.uri = uri;
        let client_version = parts.version;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        let sent = self.client.request(Request::from_parts(parts, body));
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // The client's connection speaks its own version, whatever the upstream spoke.
                parts.version = client_version;
                Response::from_parts(parts, Either::Left(Idle::new(body, self.timeout)))
            }
            Ok(Err(error)) => {
                eprintln!("upstream error: {error}");
                error_response(StatusCode::BAD_GATEWAY, "upstream unreachable")
            }
            Err(_) => error_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
        }
    }
}

impl Service<Request<RequestBody>> for Upstream {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(request).await) })
    }
}

/// An upstream body that fails when no frame arrives for `timeout`: a stalled upstream
/// does not hold a client (or the cache's writer) forever.
struct Idle {
    inner: Incoming,
    timeout: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Idle {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl hyper::body::Body for Idle {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.timer.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err("upstream body stalled".into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{message}\n"
    )))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    // Lookups and hit reads are short jobs on the blocking pool: hundreds of requests at
    // once queue for a bounded set of threads rather than start one each.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(error) => Err(error.into()),
    };
    if let Err(error) = result {
        eprintln!("reverse_proxy: {error}");
        std::process::exit(1);
    }
}

/// Threads for lookups and reads of hits (Tokio's default is 512).
const BLOCKING_THREADS: usize = 32;

/// What hyper buffers per connection, each way: at most this much of a response waits for a
/// client that reads slowly, or of an upstream body for a tee that is not polled.
const CONNECTION_BUFFER: usize = 64 * 1024;

async fn run(args: Args) -> Result<(), Error> {
    let mut manager = StreamingManager::builder(args.cache_dir.clone());
    if let Some(bytes) = args.max_size {
        manager = manager.max_size(bytes);
    }
    if let Some(bytes) = args.max_body_size {
        manager = manager.max_body_size(bytes);
    }
    if let Some(entries) = args.max_entries {
        manager = manager.max_entries(entries);
    }
    if let Some(bucket) = &args.s3_bucket {
        manager = manager.shared_tier(s3_tier(bucket, args.s3_endpoint.as_deref())?);
    }
    let manager = manager.build();
    let Some(authority) = args.upstream.authority().cloned() else {
        return Err("the upstream has no host".into());
    };
    let mut options = HttpCacheOptions::default()
        .shared(true)
        .cache_key(upstream_key(&authority))
        .background_fills(args.background_fills, 1 << 30);
    if let Some(window) = args.stale_on_error {
        options = options.stale_on_error(window);
    }
    let upstream = Upstream {
        client: Client::builder(TokioExecutor::new())
            .http1_max_buf_size(CONNECTION_BUFFER)
            .build_http(),
        authority,
        timeout: args.timeout,
    };
    let service: HttpCacheStreaming<Upstream> = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(manager, options))
        .service(upstream);

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "proxying http://{} -> {} (cache in {})",
        listener.local_addr()?,
        args.upstream,
        args.cache_dir.display(),
    );
    let purge_token: Option<Arc<str>> = args.purge_token.as_deref().map(Arc::from);
    let limits = args.clients;
    let mut connection = auto::Builder::new(TokioExecutor::new());
    connection
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(CONNECTION_BUFFER);
    connection.http2().timer(TokioTimer::new());
    let connection = Arc::new(connection);
    // Past the cap, connections wait in the listen backlog until one closes.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut last_complaint: Option<Instant> = None;
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or memory: retrying at once would spin. Wait for
                // connections to close, and say so at most once a second.
                if last_complaint.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    eprintln!("accept failed: {error}; retrying in 100 ms");
                    last_complaint = Some(Instant::now());
                }
                if !matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let connection = Arc::clone(&connection);
        let service = service.clone();
        let (quiet, trust_forwarded) = (args.quiet, args.trust_forwarded);
        let purge_token = purge_token.clone();
        tokio::spawn(async move {
            let per_request = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let service = service.clone();
                let purge_token = purge_token.clone();
                async move {
                    if let Some(refused) = refuse(&request) {
                        return Ok::<_, Infallible>(refused);
                    }
                    if request.method().as_str() == "PURGE" {
                        return Ok(purge(&service, &request, purge_token.as_deref()).await);
                    }
                    forwarded_for(&mut request, peer, trust_forwarded);
                    let request =
                        request.map(|body| body.map_err(std::io::Error::other).boxed_unsync());
                    let mut response = log_request(service, request, quiet).await?;
                    response
                        .headers_mut()
                        .append(header::VIA, HeaderValue::from_static(VIA_1_1));
                    Ok(response)
                }
            });
            let stream = Watched::new(stream, limits);
            let served = connection
                .serve_connection(TokioIo::new(stream), per_request)
                .await;
            if let Err(error) = served
                && !quiet
            {
                eprintln!("{peer}: connection error: {error}");
            }
            drop(slot);
        });
    }
}

/// A client connection that is dropped when the client takes no byte of a response for
/// `send_timeout`, or when nothing is read or written for `idle_timeout`: a slow or silent
/// client holds neither a connection slot nor the response being sent to it for ever.
struct Watched {
    stream: tokio::net::TcpStream,
    limits: ClientLimits,
    /// Armed when a write finds the client's window full; disarmed by any write.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Reset by every byte read or written.
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Watched {
    fn new(stream: tokio::net::TcpStream, limits: ClientLimits) -> Self {
        Watched {
            stream,
            limits,
            stalled: None,
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        }
    }

    fn active(&mut self) {
        let deadline = tokio::time::Instant::now() + self.limits.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    fn timed_out(what: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned())
    }

    /// What a write to the client came to, with the send timeout applied.
    fn written(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future as _;
        use std::task::Poll;
        match written {
            Poll::Ready(Ok(n)) => {
                self.stalled = None;
                self.active();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let send_timeout = self.limits.send_timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Self::timed_out("client takes no bytes")));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future as _;
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.active();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idle.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(Self::timed_out("client idle")))
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write(cx, data);
        self.written(cx, written)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The bucket behind the cache directory: credentials and region from the `AWS_*`
/// environment variables, the endpoint from `--s3-endpoint` when given.
#[cfg(feature = "s3")]
fn s3_tier(
    bucket: &str,
    endpoint: Option<&str>,
) -> Result<std::sync::Arc<dyn http_cache_streaming::storage::Storage>, Error> {
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let store = builder.build()?;
    Ok(std::sync::Arc::new(
        http_cache_streaming::storage::ObjectStorage::new(std::sync::Arc::new(store)),
    ))
}

#[cfg(not(feature = "s3"))]
fn s3_tier(
    _bucket: &str,
    _endpoint: Option<&str>,
) -> Result<std::sync::Arc<dyn http_cache_streaming::storage::Storage>, Error> {
    Err("--s3-bucket needs the s3 feature: \
         cargo run --release --features s3 --example reverse_proxy -- ..."
        .into())
}

/// Removes what the cache holds for the request's path, for a client that shows the purge
/// token: `200` when something was stored, `404` when nothing was, `401` without the token,
/// `405` when purging is off. Failures are logged; the reply names no local path.
async fn purge(
    service: &HttpCacheStreaming<Upstream>,
    request: &Request<Incoming>,
    token: Option<&str>,
) -> Response<StreamingBody> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Some(token) = token else {
        let mut response = text_response(StatusCode::METHOD_NOT_ALLOWED, "purging is off\n");
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE"),
        );
        return response;
    };
    let shown = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if !shown.is_some_and(|shown| same_secret(shown, token.as_bytes())) {
        println!("PURGE {path} -> 401");
        let mut response = text_response(StatusCode::UNAUTHORIZED, "a purge token is needed\n");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    // The key names the upstream and the path, whatever the URL's host here.
    let url = format!("http://purge{path}");
    let (status, message) = match service.cache().purge(&url).await {
        Ok(true) => (StatusCode::OK, format!("purged {path}\n")),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            format!("nothing stored for {path}\n"),
        ),
        Err(error) => {
            eprintln!("PURGE {path} failed: {error}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not purge {path}\n"),
            )
        }
    };
    println!("PURGE {path} -> {}", status.as_u16());
    text_response(status, &message)
}

/// Whether `shown` is the secret, compared in time that depends on neither (digests of both,
/// compared byte by byte to the end).
fn same_secret(shown: &[u8], secret: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(shown), Sha256::digest(secret));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn text_response(status: StatusCode, message: &str) -> Response<StreamingBody> {
    let mut response = Response::new(StreamingBody::from_bytes(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The cache key of a request: what is fetched for it (the upstream's scheme and authority,
/// the path and the query), so that the Host a client sends neither splits nor poisons
/// entries, and every proxy in front of the same upstream shares them. HEAD shares GET's.
fn upstream_key(
    authority: &Authority,
) -> impl Fn(&http::request::Parts) -> String + Send + Sync + 'static {
    let base = format!("http://{}", authority.as_str().to_ascii_lowercase());
    move |parts| {
        let method = if parts.method == http::Method::HEAD {
            "GET"
        } else {
            parts.method.as_str()
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{method}:{base}{path}")
    }
}

/// A request the proxy answers itself, before the cache: `CONNECT` (`405`: it tunnels
/// nothing), and a request whose site is not a valid `host[:port]` or is named twice, or
/// an HTTP/1.1 request with no `Host` (`400`, RFC 9112 §3.2).
fn refuse(request: &Request<Incoming>) -> Option<Response<StreamingBody>> {
    if request.method() == http::Method::CONNECT {
        return Some(text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported\n",
        ));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let authority = request.uri().authority().map(|a| a.as_str().as_bytes());
    let why = match (hosts.next(), hosts.next(), authority) {
        (_, Some(_), _) => Some("more than one Host header"),
        (_, _, Some(authority)) if !is_valid_authority(authority) => Some("invalid authority"),
        (Some(host), None, _) if !is_valid_authority(host.as_bytes()) => Some("invalid Host"),
        (None, None, None) if request.version() == http::Version::HTTP_11 => Some("no Host"),
        _ => None,
    };
    why.map(|why| text_response(StatusCode::BAD_REQUEST, &format!("{why}\n")))
}

/// This proxy in `Via` (RFC 9110 §7.6.3): it speaks HTTP/1.1 to the upstream.
const VIA_1_1: &str = "1.1 http-cache-streaming";

/// Headers a client may send to make an upstream serve another path or method than the one
/// the key names: never forwarded.
const REWRITES: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers in which proxies before this one describe the client's request: forwarded only
/// from clients trusted to be such proxies (`--trust-forwarded`).
const FORWARDING: [&str; 8] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-host",
];

/// Says who asked and through what: `Via` with the client's protocol, the peer appended to
/// `X-Forwarded-For` and `Forwarded`; drops what an untrusted client claims about itself.
fn forwarded_for(request: &mut Request<Incoming>, peer: SocketAddr, trusted: bool) {
    let version = match request.version() {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let headers = request.headers_mut();
    for name in REWRITES {
        headers.remove(name);
    }
    if !trusted {
        for name in FORWARDING {
            headers.remove(name);
        }
    }
    let ip = peer.ip();
    let node = if ip.is_ipv6() {
        format!("for=\"[{ip}]\";proto=http")
    } else {
        format!("for={ip};proto=http")
    };
    let appended = [
        (header::VIA, format!("{version} http-cache-streaming")),
        (HeaderName::from_static("x-forwarded-for"), ip.to_string()),
        (header::FORWARDED, node),
    ];
    for (name, value) in appended {
        let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {value}"),
            None => value,
        };
        if let Ok(value) = HeaderValue::try_from(joined) {
            headers.insert(name, value);
        }
    }
}

/// Sends one request through the cache and logs it on one line.
async fn log_request(
    service: HttpCacheStreaming<Upstream>,
    request: Request<RequestBody>,
    quiet: bool,
) -> Result<Response<StreamingBody>, Infallible> {
    if quiet {
        return service.oneshot(request).await;
    }
    let started = Instant::now();
    let line = format!("{} {}", request.method(), request.uri());
    let response = service.oneshot(request).await?;
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    println!(
        "{line} -> {} in {:.1} ms [{cache_status}]",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(response)
}
