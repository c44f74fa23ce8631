//! A crawler through the proxy: one request each for hundreds of URLs, while other clients
//! keep asking for a few popular ones. With the default eviction (S3-FIFO) the scan does not
//! push the popular entries out of a full cache; with `--min-uses 2` it costs no disk write
//! at all, and a URL is stored on its second request. And misses answered faster than the
//! disk commits them queue at most `--max-writes-in-flight` writes: past that they pass.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Full};

struct Got {
    cache_status: String,
    body: String,
}

async fn get(proxy: &Proxy, path: &str) -> Got {
    let response = client()
        .request(
            Request::get(format!("http://{}{path}", proxy.addr))
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Got {
        cache_status,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Waits until the store holds `n` records (commits land just after a response ends).
async fn records(dir: &std::path::Path, n: usize) {
    eventually(&format!("{n} records"), || record_files(dir).len() == n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_does_not_push_the_popular_entries_out_of_a_full_cache() {
    let origin = numbered_origin().await;
    for (eviction, popular_kept) in [("lru", false), ("s3-fifo", true)] {
        let dir = tempfile::tempdir().unwrap();
        let proxy = start_proxy(
            &origin.url(""),
            dir.path(),
            &["--quiet", "--max-entries", "50", "--eviction", eviction],
        );
        // Ten popular URLs, each asked for three times.
        for round in 0..3 {
            for i in 0..10 {
                let got = get(&proxy, &format!("/{eviction}/popular/{i}")).await;
                let hit = got.cache_status.contains("hit");
                assert_eq!(hit, round > 0, "{}", got.cache_status);
            }
            records(dir.path(), 10).await;
        }
        // A crawler: 200 URLs once each, through a cache that holds 50.
        for i in 0..200 {
            get(&proxy, &format!("/{eviction}/crawl/{i}")).await;
        }
        eventually("at most 50 records", || {
            record_files(dir.path()).len() <= 50
        })
        .await;
        let before = origin.hits();
        let mut kept = 0;
        for i in 0..10 {
            let got = get(&proxy, &format!("/{eviction}/popular/{i}")).await;
            assert!(got.body.starts_with(&format!("/{eviction}/popular/{i} #")));
            kept += usize::from(got.cache_status.contains("hit"));
        }
        let fetched = origin.hits() - before;
        assert_eq!(
            fetched,
            10 - kept,
            "{eviction}: every miss went to the origin"
        );
        if popular_kept {
            assert_eq!(kept, 10, "{eviction}: the popular entries stayed");
        } else {
            assert_eq!(kept, 0, "{eviction}: the crawl pushed them all out");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_uses_a_url_is_stored_on_its_second_request_and_a_crawl_writes_nothing() {
    let origin = numbered_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet", "--min-uses", "2"]);
    let first = get(&proxy, "/a").await;
    assert_eq!(first.body, "/a #1");
    assert!(
        first.cache_status.contains("detail=min-uses"),
        "{}",
        first.cache_status
    );
    let second = get(&proxy, "/a").await;
    assert_eq!(
        second.body, "/a #2",
        "the second request goes to the origin too"
    );
    assert!(
        second.cache_status.contains("stored"),
        "{}",
        second.cache_status
    );
    records(dir.path(), 1).await;
    let third = get(&proxy, "/a").await;
    assert_eq!(third.body, "/a #2");
    assert!(third.cache_status.contains("hit"), "{}", third.cache_status);
    assert_eq!(origin.hits(), 2);

    // A crawl of 300 URLs asked for once: nothing more reaches the disk.
    for i in 0..300 {
        let got = get(&proxy, &format!("/crawl/{i}")).await;
        assert_eq!(got.body, format!("/crawl/{i} #{}", 3 + i));
    }
    assert_eq!(record_files(dir.path()).len(), 1);
    assert_eq!(content_files(dir.path()).len(), 1);
    // ...and "/a" is still served from the cache.
    assert!(get(&proxy, "/a").await.cache_status.contains("hit"));
    assert_eq!(origin.hits(), 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_writes_in_flight_a_miss_passes_through_unstored() {
    // "/slow" sends its first bytes, then the rest only when the test opens its gate (its
    // write stays under way until then); the rest at once.
    let (open, gate) = tokio::sync::watch::channel(false);
    let origin = Origin::start(move |parts, n| {
        let body = if parts.uri.path() == "/slow" {
            let (tx, body) = channel_body();
            let mut gate = gate.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("slow ")))).await;
                let _ = gate.wait_for(|open| *open).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("end")))).await;
            });
            axum::body::Body::new(body)
        } else {
            axum::body::Body::from(format!("{} #{n}", parts.uri.path()))
        };
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(body)
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(
        &origin.url(""),
        dir.path(),
        &["--quiet", "--max-writes-in-flight", "1"],
    );
    let (started, first_bytes) = tokio::sync::oneshot::channel();
    let mut started = Some(started);
    let slow = {
        let addr = proxy.addr.clone();
        tokio::spawn(async move {
            let request = Request::get(format!("http://{addr}/slow"))
                .body(Full::<Bytes>::default())
                .unwrap();
            let mut body = client().request(request).await.unwrap().into_body();
            let mut got = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    got.extend_from_slice(&data);
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                }
            }
            got
        })
    };
    // Its first bytes reached the client: "/slow"'s write is under way.
    first_bytes.await.unwrap();
    // The one write allowed is "/slow"'s: "/fast" is served whole and not stored.
    assert_eq!(get(&proxy, "/fast").await.body, "/fast #2");
    assert_eq!(get(&proxy, "/fast").await.body, "/fast #3", "not a hit");
    assert!(record_files(dir.path()).is_empty());
    open.send_replace(true);
    assert_eq!(slow.await.unwrap(), b"slow end");
    records(dir.path(), 1).await;
    // Its write done, the next miss is stored, and a hit after it.
    assert_eq!(get(&proxy, "/fast").await.body, "/fast #4");
    records(dir.path(), 2).await;
    let hit = get(&proxy, "/fast").await;
    assert_eq!(hit.body, "/fast #4");
    assert!(hit.cache_status.contains("hit"), "{}", hit.cache_status);
    assert_eq!(origin.hits(), 4);
}
