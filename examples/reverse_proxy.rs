//! A caching reverse proxy in one file: the layer between a hyper server and a hyper client.
//!
//! ```text
//! cargo run --release --example reverse_proxy -- \
//!     --upstream http://127.0.0.1:8080 --listen 127.0.0.1:3000 --cache-dir ./proxy-cache \
//!     [--max-size BYTES] [--quiet]
//! ```
//!
//! This is how the pieces compose; for production use, run the `http-cache-proxy` binary
//! (`cargo install http-cache-streaming --features proxy`), which adds what an operator
//! needs around them: limits against slow and many clients, TLS on both sides, HTTPS and
//! HTTP/2 upstreams, logs, metrics, purging and a graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use http_cache_streaming::{
    HttpCacheOptions, HttpCacheStreamingLayer, StreamingManager, strip_hop_by_hop,
};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tower::{ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies are boxed: a body type the cache can make anew, so that a request whose
/// revalidation the origin answers with a stray `304` can be sent again.
type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

struct Args {
    upstream: Uri,
    listen: SocketAddr,
    cache_dir: PathBuf,
    max_size: u64,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: reverse_proxy --upstream http://HOST[:PORT] --listen ADDR:PORT \
                 --cache-dir DIR [--max-size BYTES] [--quiet]";
    let (mut upstream, mut listen, mut cache_dir) = (None, None, None);
    let (mut max_size, mut quiet) = (10 << 30, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{usage}"));
        match arg.as_str() {
            "--upstream" => upstream = Some(value()?),
            "--listen" => listen = Some(value()?),
            "--cache-dir" => cache_dir = Some(value()?),
            "--max-size" => {
                let bytes = value()?;
                max_size = bytes
                    .parse()
                    .map_err(|_| format!("--max-size {bytes:?}: bytes"))?;
            }
            "--quiet" => quiet = true,
            _ => return Err(format!("unknown argument {arg:?}\n{usage}")),
        }
    }
    let upstream: Uri = upstream
        .ok_or(format!("--upstream is required\n{usage}"))?
        .parse()
        .map_err(|e| format!("--upstream: {e}"))?;
    if upstream.scheme() != Some(&Scheme::HTTP) || upstream.authority().is_none() {
        return Err("--upstream must be http://HOST[:PORT] (http-cache-proxy speaks https)".into());
    }
    Ok(Args {
        upstream,
        listen: listen
            .ok_or(format!("--listen is required\n{usage}"))?
            .parse()
            .map_err(|e| format!("--listen: {e}"))?,
        cache_dir: cache_dir
            .ok_or(format!("--cache-dir is required\n{usage}"))?
            .into(),
        max_size,
        quiet,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = parse_args().unwrap_or_else(|message| {
        eprintln!("{message}");
        std::process::exit(2);
    });
    let Some(authority) = args.upstream.authority().cloned() else {
        return Err("the upstream has no host".into());
    };
    // A shared cache keyed on what is fetched, never on the Host a client sends.
    let base = format!("http://{}", authority.as_str().to_ascii_lowercase());
    let options = HttpCacheOptions::default()
        .shared(true)
        .cache_key(move |parts| {
            let method = if parts.method == http::Method::HEAD {
                "GET"
            } else {
                parts.method.as_str()
            };
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            format!("{method}:{base}{path}")
        });
    let manager = StreamingManager::builder(&args.cache_dir)
        .max_size(args.max_size)
        .build();
    // Opened now: a directory the store cannot use is an error here, with its reason.
    let layer = HttpCacheStreamingLayer::open_with(manager, options).await?;
    let client: Client<HttpConnector, RequestBody> =
        Client::builder(TokioExecutor::new()).build_http();
    let upstream = tower::service_fn(move |request: Request<RequestBody>| {
        forward(client.clone(), authority.clone(), request)
    });
    let cache = ServiceBuilder::new().layer(layer).service(upstream);

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "proxying http://{} -> {} (cache in {})",
        listener.local_addr()?,
        args.upstream,
        args.cache_dir.display()
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let (cache, quiet) = (cache.clone(), args.quiet);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let line = format!("{} {}", request.method(), request.uri());
                let request =
                    request.map(|body| body.map_err(std::io::Error::other).boxed_unsync());
                let cache = cache.clone();
                async move {
                    let response = cache.oneshot(request).await?;
                    if !quiet {
                        let status = response.headers().get("cache-status");
                        println!("{line} -> {} {status:?}", response.status().as_u16());
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends a request to the upstream: its path and query, with the upstream as `Host`, and
/// neither way a hop-by-hop header. An unreachable upstream is a `502`.
async fn forward(
    client: Client<HttpConnector, RequestBody>,
    authority: Authority,
    request: Request<RequestBody>,
) -> Result<Response<UnsyncBoxBody<Bytes, Error>>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path)
        .build();
    let Ok(uri) = uri else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "request target cannot be forwarded",
        ));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        parts.headers.insert(header::HOST, host);
    }
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                body.map_err(Error::from).boxed_unsync(),
            ))
        }
        Err(_) => Ok(text(StatusCode::BAD_GATEWAY, "upstream unreachable")),
    }
}

fn text(status: StatusCode, message: &str) -> Response<UnsyncBoxBody<Bytes, Error>> {
    let body = Full::new(Bytes::from(format!("{message}\n")));
    let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}
