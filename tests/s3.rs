//! The store on a real S3 API: the one `HCS_S3_ENDPOINT` names, or else `moto_server` (PyPI's
//! `moto[server]`, an S3 emulator) started here on loopback, installed on first use into a
//! virtual environment under the temp directory. Without Python and PyPI these tests fail,
//! saying so: none of them passes without an S3 API to run against.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::contract::{bytes_of, contract, manager_contract, response, two_nodes_share_one_tier};
use common::s3::{ENDPOINT, PROXY_ENV, bucket, endpoint, new_bucket};
use common::{Generated, drain, policy};
use http::Response;
use http_cache_streaming::ObjectStoreManager;
use http_cache_streaming::storage::{ObjectStorage, Storage};
use url::Url;

const BUCKET: &str = "HCS_S3_BUCKET";
const ROLE: &str = "HCS_S3_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_s3() {
    let endpoint = endpoint();
    let name = new_bucket(&endpoint, "contract").await;
    contract(Arc::new(ObjectStorage::new(bucket(&endpoint, &name)))).await;
    let name = new_bucket(&endpoint, "manager").await;
    manager_contract(Arc::new(ObjectStorage::new(bucket(&endpoint, &name)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layer_nodes_on_one_bucket() {
    let endpoint = endpoint();
    let name = new_bucket(&endpoint, "layers").await;
    two_nodes_share_one_tier(Arc::new(ObjectStorage::new(bucket(&endpoint, &name)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_node_stores_another_serves() {
    let endpoint = endpoint();
    let name = new_bucket(&endpoint, "fleet").await;
    // Two nodes: two clients of their own on one bucket.
    let first = ObjectStoreManager::new(bucket(&endpoint, &name));
    let second = ObjectStoreManager::new(bucket(&endpoint, &name));
    let url = Url::parse("https://example.com/video").unwrap();
    let body = bytes_of(20 << 20, 4);
    first
        .put(
            "GET:https://example.com/video".into(),
            response(body.clone()),
            policy("https://example.com/video"),
            url,
        )
        .await
        .unwrap();
    let (hit, _) = second
        .get("GET:https://example.com/video")
        .await
        .unwrap()
        .expect("stored by the first node");
    let (digest, len, _) = drain(hit.into_body()).await.unwrap();
    assert_eq!((digest, len), (common::sha256(&body), body.len() as u64));
    let (part, _) = second
        .get_range("GET:https://example.com/video", 9 << 20, 1000)
        .await
        .unwrap()
        .unwrap();
    let (digest, _, _) = drain(part.into_body()).await.unwrap();
    assert_eq!(digest, common::sha256(&body[9 << 20..(9 << 20) + 1000]));
}

/// Runs this test binary again as a child in `role`, on `bucket`.
fn child(role: &str, endpoint: &str, bucket: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "s3_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(ENDPOINT, endpoint)
        .env(BUCKET, bucket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "entry point of the child processes the other tests start"]
fn s3_child() {
    let (Ok(role), Ok(endpoint), Ok(name)) = (
        std::env::var(ROLE),
        std::env::var(ENDPOINT),
        std::env::var(BUCKET),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if role == "layer" {
        runtime.block_on(layer_child(&endpoint, &name));
        return;
    }
    runtime.block_on(async move {
        let manager = ObjectStoreManager::new(bucket(&endpoint, &name));
        let url = Url::parse("https://example.com/big").unwrap();
        let len: u64 = if role == "endless" {
            64 << 30
        } else {
            256 << 20
        };
        let big = Response::new(Generated::new(len, 6));
        println!("child-started");
        let put = manager
            .put(
                "GET:https://example.com/big".into(),
                big,
                policy("https://example.com/big"),
                url,
            )
            .await;
        put.unwrap();
        let (hit, _) = manager
            .get("GET:https://example.com/big")
            .await
            .unwrap()
            .unwrap();
        let (digest, got, _) = drain(hit.into_body()).await.unwrap();
        assert_eq!((digest, got), (Generated::digest(len, 6), len));
        print_peak_rss();
    });
}

fn print_peak_rss() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .to_owned();
    println!("peak-rss {peak}");
}

const LAYER_BODY: u64 = 256 << 20;

/// A node: the layer over a local disk in front of the bucket, and an origin in process.
/// One 256 MiB miss through it, then it waits for its copy to reach the bucket.
async fn layer_child(endpoint: &str, name: &str) {
    use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
    use tower::{ServiceBuilder, ServiceExt};
    let origin = common::Origin::start(|_, _| {
        let mut response =
            http::Response::new(axum::body::Body::new(Generated::new(LAYER_BODY, 8)));
        response.headers_mut().insert(
            "cache-control",
            http::HeaderValue::from_static("max-age=600"),
        );
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(ObjectStorage::new(bucket(endpoint, name)));
    let manager = StreamingManager::builder(dir.path())
        .shared_tier(Arc::clone(&tier))
        .build();
    let node = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service(common::client());
    let request = http::Request::get(origin.url("/big"))
        .body(http_body_util::Full::default())
        .unwrap();
    let response = node.oneshot(request).await.unwrap();
    let (digest, got, _) = drain(response.into_body()).await.unwrap();
    assert_eq!(
        (digest, got),
        (Generated::digest(LAYER_BODY, 8), LAYER_BODY)
    );
    // 256 MiB into a Python S3 emulator: a minute or so on a busy machine, five allowed.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while tier.list_records().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not copied up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tier.list_records().await.unwrap().len(), 1, "copied up");
    println!("origin-url {}", origin.url("/big"));
    print_peak_rss();
}

/// Runs a child in `role` on a new bucket and returns its output lines and peak RSS (KiB).
fn run_child(role: &str, endpoint: &str, name: &str) -> (Vec<String>, u64) {
    let mut process = child(role, endpoint, name);
    let output = BufReader::new(process.stdout.take().unwrap());
    let lines: Vec<String> = output.lines().map(Result::unwrap).collect();
    assert!(process.wait().unwrap().success(), "{lines:?}");
    let peak = lines
        .iter()
        .find_map(|l| l.split("peak-rss ").nth(1))
        .and_then(|p| p.trim_end_matches("kB").trim().parse().ok())
        .expect("the child reports its peak memory");
    (lines, peak)
}

#[test]
fn a_256_mib_miss_through_the_layer_reaches_the_bucket_in_bounded_memory() {
    let endpoint = endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let name = runtime.block_on(new_bucket(&endpoint, "layer"));
    let (lines, peak_kib) = run_child("layer", &endpoint, &name);
    println!(
        "256 MiB miss through the layer, stored on disk and copied to S3: peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    // Another node, cold, serves it from the bucket: the origin went with the child.
    let url = lines
        .iter()
        .find_map(|l| l.split("origin-url ").nth(1))
        .expect("the child says where its origin was")
        .to_owned();
    runtime.block_on(async {
        use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
        use tower::{ServiceBuilder, ServiceExt};
        let dir = tempfile::tempdir().unwrap();
        let manager = StreamingManager::builder(dir.path())
            .shared_tier(Arc::new(ObjectStorage::new(bucket(&endpoint, &name))))
            .build();
        let node = ServiceBuilder::new()
            .layer(HttpCacheStreamingLayer::new(manager))
            .service(common::client());
        let request = http::Request::get(&url)
            .body(http_body_util::Full::default())
            .unwrap();
        let response = node.oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert!(
            response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .contains("hit")
        );
        let (digest, got, _) = drain(response.into_body()).await.unwrap();
        assert_eq!(
            (digest, got),
            (Generated::digest(LAYER_BODY, 8), LAYER_BODY)
        );
    });
}

#[test]
fn a_256_mib_body_goes_up_and_down_in_bounded_memory() {
    let endpoint = endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let name = runtime.block_on(new_bucket(&endpoint, "big"));
    let (_, peak_kib) = run_child("big", &endpoint, &name);
    println!(
        "256 MiB put to S3 and read back: peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
}

#[test]
fn a_node_killed_mid_upload_leaves_no_record_of_missing_content() {
    let endpoint = endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let name = runtime.block_on(new_bucket(&endpoint, "killed"));
    let mut process = child("endless", &endpoint, &name);
    let mut output = BufReader::new(process.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("child-started") {
        line.clear();
        assert!(output.read_line(&mut line).unwrap() > 0, "the child starts");
    }
    std::thread::spawn(move || std::io::copy(&mut output, &mut std::io::sink()));
    // Parts are going up by now.
    std::thread::sleep(Duration::from_secs(2));
    process.kill().unwrap();
    process.wait().unwrap();
    runtime.block_on(async {
        let storage = ObjectStorage::new(bucket(&endpoint, &name));
        assert!(storage.list_records().await.unwrap().is_empty());
        assert!(storage.list_bodies().await.unwrap().is_empty());
        let manager = ObjectStoreManager::new(bucket(&endpoint, &name));
        assert!(
            manager
                .get("GET:https://example.com/big")
                .await
                .unwrap()
                .is_none()
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reverse_proxies_share_one_bucket() {
    let endpoint = endpoint();
    let name = new_bucket(&endpoint, "proxies").await;
    let origin = common::Origin::start(|_, n| {
        let mut response = http::Response::new(axum::body::Body::from(format!("n{n}")));
        response.headers_mut().insert(
            "cache-control",
            http::HeaderValue::from_static("max-age=60"),
        );
        response
    })
    .await;
    let env = PROXY_ENV;
    let args = [
        "--s3-bucket",
        name.as_str(),
        "--s3-endpoint",
        endpoint.as_str(),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let proxies: Vec<_> = dirs
        .iter()
        .map(|dir| common::start_proxy_with_env(&origin.url(""), dir.path(), &args, &env))
        .collect();
    let get = |proxy: usize| {
        let request = http::Request::get(format!("http://{}/page", proxies[proxy].addr))
            .header("host", "site.example")
            .body(http_body_util::Full::default())
            .unwrap();
        async move {
            let got = common::send(&mut common::client(), request).await;
            (got.cache_status(), got.body)
        }
    };
    let (_, first) = get(0).await;
    assert_eq!(first, "n1");
    let tier = ObjectStorage::new(bucket(&endpoint, &name));
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while tier.list_records().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not copied up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, second) = get(1).await;
    assert_eq!(
        second, "n1",
        "the second proxy serves what the first fetched"
    );
    assert!(status.contains("hit"), "{status}");
    assert_eq!(origin.hits(), 1);
}
