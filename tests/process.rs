//! The store across process boundaries: a writer killed with SIGKILL mid-write, and peak
//! memory of gigabyte bodies measured in a child process of its own.
//!
//! Each test runs this test binary again as a child with `HCS_CHILD` naming its role; the
//! `child` test below is that entry point and does nothing in a normal run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Response;
use http_body_util::BodyExt;
use http_cache_streaming::StreamingManager;
use url::Url;

const ROLE: &str = "HCS_CHILD";
const DIR: &str = "HCS_DIR";
/// What a child prints once it has stored its first entry (the harness prints on the same line).
const READY: &str = "child-ready";

/// A child process that is killed when dropped, so that a failing test leaves no writer
/// running behind it.
struct ChildProcess(Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(role: &str, dir: &Path) -> ChildProcess {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    ChildProcess(child)
}

fn response(len: u64, seed: u8) -> Response<Generated> {
    Response::builder()
        .header("x-len", len.to_string())
        .header("x-seed", seed.to_string())
        .body(Generated::new(len, seed))
        .unwrap()
}

fn url() -> Url {
    Url::parse("https://example.com/").unwrap()
}

#[test]
#[ignore = "entry point of the child processes the other tests start"]
fn child() {
    let (Ok(role), Ok(dir)) = (std::env::var(ROLE), std::env::var(DIR)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let manager = StreamingManager::new(dir.into());
        match role.as_str() {
            // Stores a small entry, then writes a huge body until killed.
            "put" | "tee" => {
                manager
                    .put(
                        "GET:done".into(),
                        response(100_000, 1),
                        policy("https://example.com/"),
                        url(),
                    )
                    .await
                    .unwrap();
                println!("{READY}");
                let big = response(64 << 30, 2);
                if role == "put" {
                    let _ = manager
                        .put("GET:big".into(), big, policy("https://example.com/"), url())
                        .await;
                } else {
                    let teed =
                        manager.tee("GET:big".into(), big, policy("https://example.com/"), url());
                    let _ = drain(teed.into_body()).await;
                }
            }
            // Commits entry after entry, so that a kill lands in the middle of commits.
            "churn" => {
                println!("{READY}");
                for i in 0u64.. {
                    let len = 1000 + (i * 7919) % 300_000;
                    let key = format!("GET:churn{}", i % 16);
                    manager
                        .put(
                            key,
                            response(len, i as u8),
                            policy("https://example.com/"),
                            url(),
                        )
                        .await
                        .unwrap();
                }
            }
            // Puts and reads back 1 GiB, then reports peak memory.
            "memory" => {
                let len = 1 << 30;
                let put = manager
                    .put(
                        "GET:huge".into(),
                        response(len, 9),
                        policy("https://example.com/"),
                        url(),
                    )
                    .await
                    .unwrap();
                drop(put);
                let teed = manager.tee(
                    "GET:teed".into(),
                    response(len, 10),
                    policy("https://example.com/"),
                    url(),
                );
                let (digest, got, _) = drain(teed.into_body()).await.unwrap();
                assert_eq!((digest, got), (Generated::digest(len, 10), len));
                let (hit, _) = manager.get("GET:huge").await.unwrap().unwrap();
                let (digest, got, _) = drain(hit.into_body()).await.unwrap();
                assert_eq!((digest, got), (Generated::digest(len, 9), len));
                print_peak_memory();
            }
            // A 1 GiB miss and then a 1 GiB hit through the layer, from a loopback origin.
            "layer" => {
                use http_cache_streaming::HttpCacheStreamingLayer;
                use tower::{Service, ServiceBuilder, ServiceExt};
                let len = 1 << 30;
                let origin = Origin::start(move |_, _| {
                    let mut response = Response::new(axum::body::Body::new(Generated::new(len, 3)));
                    response
                        .headers_mut()
                        .insert("cache-control", "max-age=3600".parse().unwrap());
                    response
                })
                .await;
                let mut cache = ServiceBuilder::new()
                    .layer(HttpCacheStreamingLayer::new(manager))
                    .service(client());
                for expected in ["fwd=uri-miss", "hit"] {
                    let request = http::Request::get(origin.url("/big"))
                        .body(http_body_util::Full::default())
                        .unwrap();
                    let response = cache.ready().await.unwrap().call(request).await.unwrap();
                    let status = response.headers()["cache-status"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    assert!(status.contains(expected), "{status}");
                    let (digest, got, _) = drain(response.into_body()).await.unwrap();
                    assert_eq!((digest, got), (Generated::digest(len, 3), len));
                }
                assert_eq!(origin.hits(), 1);
                print_peak_memory();
            }
            // 50 clients at once for one fresh 256 MiB response through the layer.
            "coalesce" => {
                use http_cache_streaming::HttpCacheStreamingLayer;
                use tower::{Service, ServiceBuilder, ServiceExt};
                let len = 256 << 20;
                let origin = Origin::start(move |_, _| {
                    let mut response = Response::new(axum::body::Body::new(Generated::new(len, 5)));
                    response
                        .headers_mut()
                        .insert("cache-control", "max-age=3600".parse().unwrap());
                    response
                })
                .await;
                let cache = ServiceBuilder::new()
                    .layer(HttpCacheStreamingLayer::new(manager))
                    .service(client());
                let url = origin.url("/shared");
                let clients: Vec<_> = (0..50)
                    .map(|_| {
                        let mut cache = cache.clone();
                        let request = http::Request::get(&url)
                            .body(http_body_util::Full::default())
                            .unwrap();
                        tokio::spawn(async move {
                            let response =
                                cache.ready().await.unwrap().call(request).await.unwrap();
                            drain(response.into_body()).await.unwrap()
                        })
                    })
                    .collect();
                let expected = Generated::digest(len, 5);
                for client in clients {
                    let (digest, got, _) = client.await.unwrap();
                    assert_eq!((digest, got), (expected, len), "every body is the origin's");
                }
                assert_eq!(origin.hits(), 1, "one origin request for 50 clients");
                print_peak_memory();
            }
            other => panic!("unknown role {other}"),
        }
    });
}

fn print_peak_memory() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    println!("{hwm}");
}

/// Everything a fresh store serves must be complete and the bytes the writer sent.
async fn check_after_kill(dir: &Path) {
    let manager = StreamingManager::new(dir.to_path_buf());
    manager.stats().await.unwrap(); // opens the store, sweeping tmp/
    assert_eq!(
        temp_files(dir),
        Vec::<String>::new(),
        "tmp/ is cleared on open"
    );
    for key in (0..16)
        .map(|i| format!("GET:churn{i}"))
        .chain(["GET:done".into(), "GET:big".into()])
    {
        let Some((hit, _)) = manager.get(&key).await.unwrap() else {
            continue;
        };
        let len: u64 = hit.headers()["x-len"].to_str().unwrap().parse().unwrap();
        let seed: u8 = hit.headers()["x-seed"].to_str().unwrap().parse().unwrap();
        let (digest, got, _) = drain(hit.into_body()).await.unwrap();
        assert_eq!(
            (got, digest),
            (len, Generated::digest(len, seed)),
            "{key} is complete"
        );
    }
}

/// Waits for the child's "ready" line; the test harness prints lines of its own before it.
fn wait_ready(child: &mut ChildProcess) {
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains(READY) {
        line.clear();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "the child ended before it was ready");
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
}

fn temp_bytes(dir: &Path) -> u64 {
    let tmp = dir.join("cache-v2/tmp");
    temp_files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(tmp.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn a_writer_killed_mid_body_leaves_no_partial_entry() {
    for role in ["put", "tee"] {
        for kill_after in [1u64 << 20, 48 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let mut child = spawn_child(role, dir.path());
            wait_ready(&mut child);
            let started = Instant::now();
            while temp_bytes(dir.path()) < kill_after && started.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            assert!(
                temp_bytes(dir.path()) >= kill_after,
                "{role}: the child is writing"
            );
            child.0.kill().unwrap(); // SIGKILL
            child.0.wait().unwrap();

            check_after_kill(dir.path()).await;
            let manager = StreamingManager::new(dir.path().to_path_buf());
            assert!(
                manager.get("GET:big").await.unwrap().is_none(),
                "{role}: nothing partial"
            );
            let (done, _) = manager
                .get("GET:done")
                .await
                .unwrap()
                .expect("the complete entry survives");
            assert_eq!(
                done.into_body().collect().await.unwrap().to_bytes().len(),
                100_000
            );
        }
    }
}

#[tokio::test]
async fn a_writer_killed_between_commits_leaves_only_whole_entries() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..6u64 {
        let mut child = spawn_child("churn", dir.path());
        wait_ready(&mut child);
        std::thread::sleep(Duration::from_millis(150 + round * 37));
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        check_after_kill(dir.path()).await;
    }
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let stats = manager.stats().await.unwrap();
    assert!(stats.entries > 0, "the children stored entries");
    // Every record's content is there; content no record uses is only what the last kill
    // may have left between a content rename and its record (swept once old).
    assert!(content_files(dir.path()).len() as u64 >= stats.content_files);
}

/// Runs a child in `role` and returns its peak RSS in KiB.
fn peak_rss_of(role: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(role, dir.path());
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "the child failed; it printed:\n{stdout}");
    // The harness prints "test child ... " on the line the child's report goes on.
    stdout
        .split("VmHWM:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the child reports VmHWM; it printed:\n{stdout}"))
}

#[test]
fn gigabyte_bodies_stream_in_constant_memory() {
    let kib = peak_rss_of("memory");
    eprintln!(
        "peak RSS for put, tee and get of 1 GiB each: {} MiB",
        kib / 1024
    );
    assert!(kib <= 64 * 1024, "peak RSS {kib} KiB exceeds 64 MiB");
}

#[test]
fn a_gigabyte_miss_and_hit_through_the_layer_stay_small() {
    let kib = peak_rss_of("layer");
    eprintln!(
        "peak RSS for a 1 GiB miss and a 1 GiB hit through the layer, origin in process: {} MiB",
        kib / 1024
    );
    assert!(kib <= 64 * 1024, "peak RSS {kib} KiB exceeds 64 MiB");
}

#[test]
fn fifty_collapsed_clients_cost_one_origin_request_and_flat_memory() {
    let kib = peak_rss_of("coalesce");
    eprintln!(
        "peak RSS for 50 concurrent clients of one 256 MiB response, origin in process: {} MiB",
        kib / 1024
    );
    assert!(kib <= 64 * 1024, "peak RSS {kib} KiB exceeds 64 MiB");
}
