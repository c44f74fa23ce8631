//! Bodies being stored hold no thread while they wait for bytes: hundreds of misses whose
//! origin stalls leave the process's thread count where it was.

mod common;

use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::Full;
use http_cache_streaming::{HttpCacheStreamingLayer, StreamingBody, StreamingManager};
use tower::{Service, ServiceBuilder, ServiceExt};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count())
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_stalled_fills_hold_no_threads() {
    // Every answer sends 64 KiB and then nothing until the test ends.
    let (stall, stalled) = tokio::sync::watch::channel(false);
    let origin = Origin::start(move |_, _| {
        let (tx, body) = channel_body();
        let mut stalled = stalled.clone();
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![7u8; 64 << 10]))))
                .await;
            let _ = stalled.wait_for(|done| *done).await;
        });
        Response::builder()
            .header("cache-control", "max-age=600")
            .body(AxumBody::new(body))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(StreamingManager::new(
            dir.path().to_path_buf(),
        )))
        .service(client());
    // One fill first, so that every pool the store uses has started.
    let mut held: Vec<Response<StreamingBody>> = Vec::new();
    let get = |i: usize| {
        let mut cache = cache.clone();
        let request = Request::get(origin.url(&format!("/stall?i={i}")))
            .body(Full::default())
            .unwrap();
        async move { cache.ready().await.unwrap().call(request).await.unwrap() }
    };
    held.push(get(0).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = threads();
    for i in 1..300 {
        held.push(get(i).await);
    }
    let path = dir.path().to_path_buf();
    eventually("300 bodies being stored", || temp_files(&path).len() == 300).await;
    let during = threads();
    assert!(
        during <= before + 16,
        "{before} threads before, {during} with 300 fills waiting for bytes"
    );
    stall.send_replace(true);
    drop(held);
}
