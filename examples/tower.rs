//! The "Usage with Tower" example of http-cache's `StreamingManager` documentation.
//!
//! `cargo run --example tower` (it stores under `./cache`). Its handler uses `?` on
//! `Response::builder()` inside a block that returns `Result<_, Infallible>`, which cannot
//! compile; here that block's error type is `http::Error`.
#![expect(
    clippy::needless_question_mark,
    reason = "`Ok(...?)` is kept as the documentation writes it"
)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
use std::path::PathBuf;
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Create streaming cache manager
    let cache_dir = PathBuf::from("./cache");
    let manager = StreamingManager::new(cache_dir);

    // Create streaming cache layer
    let cache_layer = HttpCacheStreamingLayer::new(manager);

    // Your base service
    let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, http::Error>(
            Response::builder()
                .status(StatusCode::OK)
                .header("cache-control", "max-age=3600")
                .body(Full::new(Bytes::from("Large response data...")))?,
        )
    });

    // Wrap with caching
    let cached_service = cache_layer.layer(service);

    // Make requests
    let request = Request::builder()
        .uri("https://example.com/large-file")
        .body(Full::new(Bytes::new()))?;

    let response = cached_service.oneshot(request).await?;
    println!("Response status: {}", response.status());

    Ok(())
}
