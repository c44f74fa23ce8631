//! An axum app with the cache as one layer: the handler runs once, then its response is
//! served from disk.
//!
//! `cargo run --example axum_server` requests its own server twice and exits;
//! `cargo run --example axum_server -- --serve` keeps serving on 127.0.0.1:3000.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use http_cache_streaming::HttpCacheStreamingLayer;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let dir = tempfile::tempdir()?;
    // Opened now: a directory the store cannot use is an error here, with its reason.
    let layer = HttpCacheStreamingLayer::open(dir.path()).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();

    let app = Router::new()
        .route(
            "/report",
            get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    (
                        [("cache-control", "public, max-age=60")],
                        format!("an expensive report, built {n} time(s)\n"),
                    )
                }
            }),
        )
        .layer(layer);

    let addr = if serve {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!(
        "serving http://{addr}/report (cache in {})",
        dir.path().display()
    );
    if serve {
        axum::serve(listener, app).await?;
        return Ok(());
    }
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    for _ in 0..2 {
        let response = client.get(format!("http://{addr}/report").parse()?).await?;
        let status = response.headers()["cache-status"].to_str()?.to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        print!("[{status}] {}", String::from_utf8_lossy(&body));
    }
    println!("handler calls: {}", calls.load(Ordering::SeqCst));
    Ok(())
}
