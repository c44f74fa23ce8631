//! `http-cache-proxy`: a caching reverse proxy in front of one origin, as nginx or Varnish
//! are run, built on http-cache-streaming's layer.
//!
//! ```text
//! cargo install http-cache-streaming --features proxy
//! http-cache-proxy --upstream https://origin.example --listen 0.0.0.0:8080 \
//!     --cache-dir /var/cache/http-cache-proxy --max-size 20G --admin-listen 127.0.0.1:9090
//! ```
//!
//! `http-cache-proxy --help` lists every flag; each is also an environment variable
//! (`HTTP_CACHE_PROXY_MAX_SIZE=20G`). What it does for clients and against them:
//! - It is a shared cache, keyed on what is fetched (the upstream's scheme and authority,
//!   the path and the query), never the client's `Host`. A request whose `Host` is not a
//!   valid `host[:port]`, or that has several, or none in HTTP/1.1, is answered `400`;
//!   `CONNECT` is `405`.
//! - Slow and many clients cannot take it down: headers (and a new connection's first
//!   request) must arrive within `--header-timeout`, a connection with nothing sent or no
//!   request in flight is closed after `--idle-timeout`, a client that takes no byte for
//!   `--send-timeout` is dropped, at most `--max-connections` are served at once and
//!   `--max-connections-per-client` from one address (on the admin and fleet listeners
//!   too), and of the fills whose clients left at most `--background-fills` go on.
//! - It adds `Via`, `X-Forwarded-For` and `Forwarded`; client-sent `Forwarded` and
//!   `X-Forwarded-*` are removed unless `--trust-forwarded`; `X-Original-URL` and the
//!   method-override headers always are.
//! - With `--purge-token TOKEN`, `PURGE /path` with `Authorization: Bearer TOKEN` removes
//!   what is stored for the path, and with `Surrogate-Key: TAG…` every entry carrying one of
//!   the tags.
//! - The upstream may be `https://` (system roots, plus `--upstream-ca FILE`; HTTP/2 when it
//!   offers it); clients may connect with TLS (`--tls-cert`, `--tls-key`; HTTP/2 by ALPN).
//! - Logs go to stderr through `tracing` (`RUST_LOG`, `--log-format json`), one access line
//!   per response when its body ends; `--admin-listen` serves `/metrics`, `/stats` and
//!   `/healthz`, and with the purge token `POST /purge` (tags) and `GET /entries` (what is
//!   stored).
//! - With `--s3-bucket`, proxies share a bucket behind their disks: a purge on one reaches
//!   all within a second (`--purge-log-every`), and with `--fleet-listen ADDR
//!   --fleet-secret SECRET` a new object is fetched from the upstream by one of them, the
//!   others streaming it from that one.
//! - The store is opened before anything is accepted: an unusable cache directory is an
//!   error with the reason. SIGTERM and SIGINT stop accepting, let responses in flight finish
//!   (at most `--shutdown-timeout`), write the index snapshot (so that the next start has
//!   its whole index at once), and exit 0.

mod access;
mod admin;
mod args;
mod clients;
mod connections;
mod fleet;
mod tls;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt as _;
use http_cache_streaming::{
    CacheMode, FleetFills, HttpCacheOptions, HttpCacheStreaming, HttpCacheStreamingLayer,
    StreamingManager,
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tower::{ServiceBuilder, ServiceExt as _};

use args::{Args, LogFormat};
use clients::{ClientLimits, Watched};
use upstream::{CONNECTION_BUFFER, RequestBody, Upstream};

/// Any error the proxy reports and exits with.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Threads for lookups and reads of hits (Tokio's default is 512).
const BLOCKING_THREADS: usize = 32;

fn main() {
    let args = Args::parse();
    if let Err(error) = args.check_secrets() {
        eprintln!("error: {error}");
        std::process::exit(2);
    }
    init_logging(args.log_format);
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
        tracing::error!("{error}");
        eprintln!("http-cache-proxy: {error}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The cache in front of the upstream, as the flags ask.
fn cache(
    args: &Args,
    upstream: &Upstream,
    fleet_address: Option<String>,
) -> Result<HttpCacheStreamingLayer, Error> {
    let tag_fields = args.tag_fields.iter().filter_map(|field| field.0.clone());
    let mut manager = StreamingManager::builder(args.cache_dir.clone())
        .tag_fields(tag_fields)
        .max_size(args.max_size)
        .eviction(args.eviction.into())
        .min_uses(args.min_uses)
        .max_writes_in_flight(args.max_writes_in_flight)
        .memory_bodies(
            usize::try_from(args.memory_max_body).unwrap_or(usize::MAX),
            usize::try_from(args.memory_size).unwrap_or(usize::MAX),
        );
    if let Some(bytes) = args.max_body_size {
        manager = manager.max_body_size(bytes);
    }
    if let Some(entries) = args.max_entries {
        manager = manager.max_entries(entries);
    }
    if let Some(bucket) = &args.s3_bucket {
        manager = manager
            .shared_tier(s3_tier(bucket, args.s3_endpoint.as_deref())?)
            .purge_log_every(args.purge_log_every.0)
            .purge_log_retention(args.purge_log_retention);
    }
    if let (Some(advertise), Some(secret)) = (fleet_address, &args.fleet_secret) {
        let fills = FleetFills::new(&advertise, secret, fleet::peers())
            .map_err(|e| format!("--fleet-advertise/--fleet-secret: {e}"))?
            .lease_ttl(args.fleet_lease_ttl);
        manager = manager.fleet_fills(fills);
    }
    let mut options = HttpCacheOptions::default()
        .shared(true)
        .mode(args.mode)
        .cache_key(upstream::key(upstream.base()))
        .cache_status(Some(&args.cache_status))
        .coalesce_wait(args.coalesce_wait)
        .background_fills(args.background_fills, 1 << 30);
    if let Some(window) = args.stale_on_error {
        options = options.stale_on_error(window);
    }
    options = options
        .store_set_cookie(args.store_set_cookie)
        .forward_tags(args.forward_tags)
        .store_errors(args.store_errors)
        .fleet_invalidation_rate(u32::try_from(args.fleet_invalidation_rate).unwrap_or(u32::MAX));
    if let Some(cap) = args.max_ttl {
        options = options.max_ttl(cap);
    }
    if let Some(lifetime) = args.default_ttl {
        options = options.default_ttl(lifetime);
    }
    if let Some(lifetime) = args.min_ttl {
        options = options.min_ttl(lifetime);
    }
    Ok(HttpCacheStreamingLayer::with_options(
        manager.build(),
        options,
    ))
}

async fn run(args: Args) -> Result<(), Error> {
    let metrics = admin::recorder()?;
    let upstream = Upstream::new(
        &args.upstream,
        args.upstream_ca.as_deref(),
        args.upstream_timeout,
    )?;
    let fleet_listener = match args.fleet_listen {
        Some(addr) => {
            let listener = fleet::bind(addr).await?;
            let advertise =
                fleet::advertise(args.fleet_advertise.as_deref(), listener.local_addr()?)?;
            Some((listener, advertise))
        }
        None => None,
    };
    let layer = cache(
        &args,
        &upstream,
        fleet_listener
            .as_ref()
            .map(|(_, advertise)| advertise.clone()),
    )?;
    let service: HttpCacheStreaming<Upstream> =
        ServiceBuilder::new().layer(layer).service(upstream);
    // Before anything is accepted: a directory the store cannot use is an error now.
    let cache_dir = args.cache_dir.display();
    service
        .cache()
        .manager()
        .open()
        .await
        .map_err(|e| format!("the cache directory {cache_dir} cannot be used: {e}"))?;
    let limits = ClientLimits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        send_timeout: args.send_timeout,
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
        max_request_headers: usize::try_from(args.max_request_headers).unwrap_or(usize::MAX),
    };
    if let Some((listener, advertise)) = fleet_listener {
        fleet::serve(listener, service.cache().clone(), limits);
        tracing::info!(%advertise, "serving fills to the fleet");
    }
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    if let Some(addr) = args.admin_listen {
        let admin = admin::Admin {
            cache: service.cache().clone(),
            metrics,
            max_size: args.max_size,
            purge_token: args.purge_token.as_deref().map(Arc::from),
        };
        let bound = admin::serve(addr, args.admin_allow_remote, admin, limits).await?;
        tracing::info!(%bound, "admin endpoints: /metrics /stats /healthz, POST /purge, GET /entries");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let local = listener.local_addr()?;
    // The first line on stdout says where clients connect (scripts and tests read it).
    println!(
        "proxying {scheme}://{local} -> {} (cache in {cache_dir})",
        args.upstream
    );
    tracing::info!(listen = %local, upstream = %args.upstream, cache_dir = %cache_dir, "proxying");

    let shared = Arc::new(Shared {
        service,
        purge_token: args.purge_token.as_deref().map(Arc::from),
        trust_forwarded: args.trust_forwarded,
        quiet: args.quiet,
        acceptor,
        limits,
        gate: connections::Gate::new(
            limits.max_connections,
            limits.max_connections_per_client,
            "clients",
        ),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    accept(listener, Arc::clone(&shared), &graceful).await;
    tracing::info!(timeout = ?args.shutdown_timeout, "shutting down: no new connections; finishing the responses in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every response in flight finished"),
        () = tokio::time::sleep(args.shutdown_timeout) => {
            tracing::warn!("--shutdown-timeout passed: the responses still in flight are cut off");
        }
    }
    // The index snapshot, so that the next start has its whole index at once.
    let manager = shared.service.cache().manager();
    match tokio::time::timeout(args.shutdown_timeout, manager.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no index snapshot: the next start reads the records in")
        }
        Err(_) => tracing::warn!(
            "no index snapshot within --shutdown-timeout: the next start reads the records in"
        ),
    }
    Ok(())
}

/// What every connection's task shares.
struct Shared {
    service: HttpCacheStreaming<Upstream>,
    purge_token: Option<Arc<str>>,
    trust_forwarded: bool,
    quiet: bool,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: ClientLimits,
    gate: Arc<connections::Gate>,
}

/// Accepts connections until SIGTERM or SIGINT, serving each on a task of its own watched
/// by `graceful`.
async fn accept(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
) {
    let connection = Arc::new(connections_builder(&shared.limits));
    let mut last_complaint: Option<Instant> = None;
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        // Past the cap, connections wait in the listen backlog until one closes.
        let slot = tokio::select! {
            () = &mut stop => return,
            slot = shared.gate.slot() => slot,
        };
        let Some(slot) = slot else { return };
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or memory: retrying at once would spin. Wait for
                // connections to close, and say so at most once a second.
                if last_complaint.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(%error, "accept failed; retrying in 100 ms");
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
        let Some(admitted) = shared.gate.admit(peer.ip(), slot) else {
            continue;
        };
        // A response's last short segment goes out at once, not after the client's
        // acknowledgement of the one before (Nagle's algorithm), as nginx's `tcp_nodelay`.
        let _ = stream.set_nodelay(true);
        let (connection, shared) = (Arc::clone(&connection), Arc::clone(&shared));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let limits = shared.limits;
            let (first, idle) = (limits.header_timeout, limits.idle_timeout);
            let activity = connections::Activity::new();
            let stream = Watched::new(stream, limits);
            let served = match &shared.acceptor {
                None => {
                    let service =
                        per_request(Arc::clone(&shared), peer, "http", Arc::clone(&activity));
                    let conn = connection.serve_connection(TokioIo::new(stream), service);
                    connections::within_bounds(watcher.watch(conn), &activity, first, idle).await
                }
                // The handshake is part of the first request's time.
                Some(acceptor) => {
                    match tokio::time::timeout(first, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let service = per_request(
                                Arc::clone(&shared),
                                peer,
                                "https",
                                Arc::clone(&activity),
                            );
                            let conn = connection.serve_connection(TokioIo::new(tls), service);
                            connections::within_bounds(watcher.watch(conn), &activity, first, idle)
                                .await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not done within --header-timeout");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection error");
            }
            drop(admitted);
        });
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// How client connections are served: HTTP/1.1 with its header timeout and buffer, HTTP/2
/// with keep-alive pings (a peer that answers none is dropped) and a header list bound.
pub(crate) fn connections_builder(limits: &ClientLimits) -> auto::Builder<TokioExecutor> {
    let headers = limits.max_request_headers.saturating_add(8 << 10);
    let mut connection = auto::Builder::new(TokioExecutor::new());
    connection
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(CONNECTION_BUFFER.max(headers));
    connection
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_STREAMS)
        .max_header_list_size(u32::try_from(headers.max(16 << 10)).unwrap_or(u32::MAX));
    connection
}

/// How often an HTTP/2 connection is pinged, and how long an answer may take.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Streams one HTTP/2 connection may have open at once (hyper's default, said here).
const H2_STREAMS: u32 = 200;

type Tracked = connections::Tracked<access::Logged>;

/// The service of one client connection.
fn per_request(
    shared: Arc<Shared>,
    peer: SocketAddr,
    proto: &'static str,
    activity: Arc<connections::Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Tracked>, Infallible>> + Send,
> + Clone {
    let forwarding = clients::Peer::new(peer, proto);
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let in_flight = activity.begin();
        let shared = Arc::clone(&shared);
        let forwarding = forwarding.clone();
        async move {
            let started = Instant::now();
            // With --quiet no line is written: the URI is not copied for one.
            let uri = if shared.quiet {
                String::new()
            } else {
                request.uri().to_string()
            };
            let method = request.method().clone();
            let max_headers = shared.limits.max_request_headers;
            let response = if let Some(refused) = clients::refuse(&request, max_headers) {
                refused
            } else if request.method().as_str() == "PURGE" {
                let token = shared.purge_token.as_deref();
                clients::purge(&shared.service, &request, token).await
            } else {
                // What names the connection goes first, so that the cache keys on what the
                // upstream receives and no client removes the forwarding headers added next.
                http_cache_streaming::strip_hop_by_hop(request.headers_mut());
                clients::forwarded_for(&mut request, &forwarding, shared.trust_forwarded);
                // A GET or HEAD with a body, however framed (HTTP/2 DATA frames carry no
                // length): an origin may answer by its body, which no key names.
                let read = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
                if read && !http_body::Body::is_end_stream(request.body()) {
                    request.extensions_mut().insert(CacheMode::NoStore);
                }
                let request = request.map(boxed);
                let mut response = send(shared.service.clone(), request).await;
                response
                    .headers_mut()
                    .append(header::VIA, HeaderValue::from_static(clients::VIA_1_1));
                response
            };
            let (parts, body) = response.into_parts();
            let cache_status = parts
                .headers
                .get(CACHE_STATUS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let from_cache = cache_status.contains("; hit");
            let cache_status = if shared.quiet {
                String::new()
            } else {
                cache_status.to_owned()
            };
            let line = access::Line {
                method,
                uri,
                peer,
                status: parts.status.as_u16(),
                from_cache,
                cache_status,
                started,
                head_sent: Instant::now(),
                quiet: shared.quiet,
            };
            let body = access::Logged::new(body, line);
            Ok(Response::from_parts(parts, Tracked::new(body, in_flight)))
        }
    })
}

fn boxed(body: Incoming) -> RequestBody {
    body.map_err(std::io::Error::other).boxed_unsync()
}

/// One request through the cache. (Boxed: the compiler cannot otherwise prove the future
/// `Send` here.)
fn send(
    service: HttpCacheStreaming<Upstream>,
    request: Request<RequestBody>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Response<http_cache_streaming::StreamingBody>> + Send>,
> {
    Box::pin(async move {
        match service.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    })
}

/// The bucket behind the cache directory: credentials and region from the `AWS_*`
/// environment variables, the endpoint from `--s3-endpoint` when given.
fn s3_tier(
    bucket: &str,
    endpoint: Option<&str>,
) -> Result<Arc<dyn http_cache_streaming::storage::Storage>, Error> {
    let mut builder = http_cache_streaming::object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket);
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let store = builder.build()?;
    Ok(Arc::new(http_cache_streaming::storage::ObjectStorage::new(
        Arc::new(store),
    )))
}
