//! A fleet: `http-cache-proxy` processes sharing one bucket on a real S3 API on loopback
//! (see `common::s3`), with their defaults. What a fleet's operator relies on: a purge
//! sent to one proxy stops every proxy serving the URL within a second, and a proxy that
//! was down when it was sent never serves its old copy.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::s3::{PROXY_ENV, endpoint, new_bucket};
use common::{Got, Origin, PURGE_TOKEN, Proxy};

/// An origin whose every answer differs: `<path> #<n>`, cacheable for ten minutes.
async fn origin() -> Origin {
    Origin::start(|parts, n| {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(axum::body::Body::from(format!("{} #{n}", parts.uri.path())))
            .unwrap()
    })
    .await
}

/// A proxy of the fleet: its own cache directory, the shared bucket.
fn proxy(origin: &Origin, dir: &std::path::Path, endpoint: &str, bucket: &str) -> Proxy {
    let args = ["--s3-bucket", bucket, "--s3-endpoint", endpoint];
    common::start_proxy_with_env(&origin.url(""), dir, &args, &PROXY_ENV)
}

async fn get(proxy: &Proxy, path: &str) -> Got {
    let request = http::Request::get(format!("http://{}{path}", proxy.addr))
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    common::send(&mut common::client(), request).await
}

/// Waits until the bucket holds `records` records.
async fn copied_up(endpoint: &str, bucket: &str, records: usize) {
    use http_cache_streaming::storage::{ObjectStorage, Storage};
    let tier = ObjectStorage::new(common::s3::bucket(endpoint, bucket));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tier.list_records().await.unwrap().len() < records {
        assert!(Instant::now() < deadline, "not copied to the bucket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `proxy` until it answers `path` with something else than `old`; how long that took.
async fn until_not(proxy: &Proxy, path: &str, old: &str, since: Instant) -> (Duration, Got) {
    loop {
        let got = get(proxy, path).await;
        if got.body != old {
            return (since.elapsed(), got);
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{} still serves {old} 5 s after the purge",
            proxy.addr
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_proxy_reaches_the_fleet_within_a_second() {
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "purge").await;
    let origin = origin().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let [a, b, c] = [0, 1, 2].map(|i| proxy(&origin, dirs[i].path(), &endpoint, &bucket));
    let d = proxy(&origin, dirs[3].path(), &endpoint, &bucket);

    assert_eq!(get(&a, "/page").await.body, "/page #1");
    copied_up(&endpoint, &bucket, 1).await;
    // B, C and D serve it from the bucket, and keep it on disk.
    for node in [&b, &c, &d] {
        let got = get(node, "/page").await;
        assert!(got.hit(), "{}", got.cache_status());
        assert_eq!(got.body, "/page #1");
    }
    let fetched = origin.hits();
    assert_eq!(fetched, 1);
    // Each keeps its copy on its own disk (D's is the one that must not come back).
    common::eventually("a copy on every proxy's disk", || {
        dirs.iter()
            .all(|dir| common::record_files(dir.path()).len() == 1)
    })
    .await;
    // D goes down with its copy on disk.
    drop(d);

    let purge = http::Request::builder()
        .method("PURGE")
        .uri(format!("http://{}/page", a.addr))
        .header("authorization", format!("Bearer {PURGE_TOKEN}"))
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    let sent = Instant::now();
    let purged = common::send(&mut common::client(), purge).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    let ((b_took, b_got), (c_took, c_got)) = tokio::join!(
        until_not(&b, "/page", "/page #1", sent),
        until_not(&c, "/page", "/page #1", sent)
    );
    println!(
        "purge on A: B answered from the origin after {} ms, C after {} ms",
        b_took.as_millis(),
        c_took.as_millis()
    );
    for (took, got) in [(b_took, &b_got), (c_took, &c_got)] {
        let status = got.cache_status();
        assert!(
            status.contains("fwd=uri-miss") || status.contains("fwd=miss"),
            "{status}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    assert_eq!(origin.hits(), fetched + 2, "one fetch each for B and C");

    // D comes back after the purge: its purged copy is never served from its disk.
    let d = proxy(&origin, dirs[3].path(), &endpoint, &bucket);
    let got = get(&d, "/page").await;
    assert_ne!(got.body, "/page #1", "{}", got.cache_status());
}
