//! The "Basic Usage" example of http-cache's `StreamingManager` documentation: a manager and
//! the cache over it. The documentation also imports `StreamingBody` (the body of every
//! response the cache gives) without using it; here the cache is printed so that it is used.
//!
//! `cargo run --example basic` (it stores under `./streaming-cache` once used).

use http_cache_streaming::{HttpStreamingCache, StreamingManager};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Create a file-based streaming cache manager
    let cache_dir = PathBuf::from("./streaming-cache");
    let manager = StreamingManager::new(cache_dir);

    // Use with streaming cache
    let cache = HttpStreamingCache::new(manager);
    println!("{cache:?}");

    Ok(())
}
