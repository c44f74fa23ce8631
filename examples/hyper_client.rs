//! A hyper client behind the cache: a private cache for one user's requests.
//!
//! `cargo run --example hyper_client` starts a small origin, fetches from it twice through
//! the cache and exits; `cargo run --example hyper_client -- http://host/path` fetches that
//! URL twice instead.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{HttpCacheOptions, HttpCacheStreamingLayer, StreamingManager};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => format!("http://{}/private-page", start_origin().await?),
    };
    let dir = tempfile::tempdir()?;
    let manager = StreamingManager::new(dir.path().to_path_buf());
    // A client's cache serves one user: `private` responses may be stored.
    let options = HttpCacheOptions::default().shared(false);
    // Opened now: a directory the store cannot use is an error here, with its reason.
    let layer = HttpCacheStreamingLayer::open_with(manager, options).await?;
    let mut client = ServiceBuilder::new()
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    for _ in 0..2 {
        let request = Request::get(url.as_str()).body(Full::default())?;
        let response = client.ready().await?.call(request).await?;
        let status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        println!("{} bytes  [{status}]", body.len());
    }
    Ok(())
}

async fn start_origin() -> Result<std::net::SocketAddr, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "private, max-age=60")
                .body(axum::body::Body::from("your account page\n"))
                .expect("static headers are valid"),
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
