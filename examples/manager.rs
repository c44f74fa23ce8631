//! The "Working with the manager directly" code of http-cache's `StreamingManager`
//! documentation, run as one program: create a manager, cache a 10 MB response, read it back
//! as a stream, delete it.
//!
//! `cargo run --example manager` (it stores under `./cache`).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_cache_semantics::CachePolicy;
use http_cache_streaming::StreamingManager;
use std::path::PathBuf;
use url::Url;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Creating a manager
    {
        // Create with custom cache directory
        let cache_dir = PathBuf::from("./my-streaming-cache");
        let _manager = StreamingManager::new(cache_dir);
    }

    // Caching a streaming response
    let manager = StreamingManager::new(PathBuf::from("./cache"));

    // Create a large response to cache
    let large_data = vec![b'X'; 10_000_000]; // 10MB response
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("cache-control", "max-age=3600, public")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(large_data)))?;

    // Create cache policy
    let request = Request::builder()
        .method("GET")
        .uri("https://example.com/large-file")
        .body(())?;
    let policy = CachePolicy::new(
        &request,
        &Response::builder()
            .status(200)
            .header("cache-control", "max-age=3600, public")
            // The documentation writes `vec![]`, whose element type Rust cannot infer here.
            .body(Vec::<u8>::new())?,
    );

    // Cache the response (content stored to disk, metadata separate)
    let url = Url::parse("https://example.com/large-file")?;
    let _cached_response = manager
        .put(
            "GET:https://example.com/large-file".to_string(),
            response,
            policy,
            url,
        )
        .await?;

    println!("Cached response without loading into memory!");

    // Retrieving a streaming response
    // Retrieve from cache - returns a streaming body
    let cached = manager.get("GET:https://example.com/large-file").await?;

    if let Some((response, _policy)) = cached {
        println!("Cache hit! Status: {}", response.status());

        // The response body streams directly from disk
        let body = response.into_body();

        // Process the streaming body without loading it all into memory
        let mut body_stream = std::pin::pin!(body);
        while let Some(frame_result) = body_stream.frame().await {
            let frame = frame_result?;
            if let Some(chunk) = frame.data_ref() {
                // Process chunk without accumulating in memory
                println!("Processing chunk of {} bytes", chunk.len());
            }
        }
    } else {
        println!("Cache miss");
    }

    // Deleting cached entries
    // Remove from cache (deletes both metadata and content files)
    manager.delete("GET:https://example.com/large-file").await?;

    Ok(())
}
