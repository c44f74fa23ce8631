//! The seed document's "Basic Usage" example: a manager and the cache over it.
//!
//! `cargo run --example basic` (it stores under `./streaming-cache` once used).
// The seed imports `StreamingBody` and keeps `cache` without using either.
#![allow(unused_imports, unused_variables)]

use http_cache_streaming::{HttpStreamingCache, StreamingBody, StreamingManager};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Create a file-based streaming cache manager
    let cache_dir = PathBuf::from("./streaming-cache");
    let manager = StreamingManager::new(cache_dir);

    // Use with streaming cache
    let cache = HttpStreamingCache::new(manager);

    Ok(())
}
