//! A plain hyper server whose service is wrapped in the cache.
//!
//! `cargo run --example hyper_server` requests its own server twice and exits.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use http_cache_streaming::HttpCacheStreamingLayer;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

async fn handler(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("you asked for {}\n", request.uri().path());
    Ok(Response::builder()
        .header("cache-control", "max-age=30")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    // Opened now: a directory the store cannot use is an error here, with its reason.
    let layer = HttpCacheStreamingLayer::open(dir.path()).await?;
    let service = ServiceBuilder::new().layer(layer).service_fn(handler);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let connection = auto::Builder::new(TokioExecutor::new());
                if let Err(error) = connection
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    eprintln!("connection error: {error}");
                }
            });
        }
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for _ in 0..2 {
        let response = client.get(format!("http://{addr}/hello").parse()?).await?;
        let status = response.headers()["cache-status"].to_str()?.to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        print!("[{status}] {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
