//! The `reverse_proxy` example as users run it: its binary between a client and a loopback
//! upstream, checked for what a proxy must pass, strip, cache and answer.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::{PURGE_TOKEN, Proxy, client, start_proxy};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

async fn upstream() -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let mut response = Response::new(AxumBody::from(format!(
            "{} {} body={} x-custom={:?} host={:?} te={:?}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body),
            parts.headers.get_all("x-custom").iter().collect::<Vec<_>>(),
            parts.headers.get("host"),
            parts.headers.get("x-hop-request"),
        )));
        let headers = response.headers_mut();
        headers.insert("cache-control", "max-age=60".parse().unwrap());
        headers.append("x-multi", "one".parse().unwrap());
        headers.append("x-multi", "two".parse().unwrap());
        headers.insert("connection", "x-hop".parse().unwrap());
        headers.insert("x-hop", "connection-only".parse().unwrap());
        match parts.uri.path() {
            "/599" => *response.status_mut() = StatusCode::from_u16(599).unwrap(),
            "/299" => *response.status_mut() = StatusCode::from_u16(299).unwrap(),
            "/slow" => tokio::time::sleep(Duration::from_secs(3)).await,
            _ => {}
        }
        response
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), task)
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send(request: Request<Full<Bytes>>) -> Got {
    let response = client().ready().await.unwrap().call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_proxy_forwards_strips_caches_and_fails_cleanly() {
    let (upstream_url, upstream_task) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // `/slow` answers after 3 s: past this timeout, well inside it on a busy machine.
    let proxy = start_proxy(&upstream_url, dir.path(), &["--upstream-timeout", "1s"]);
    let url = |path: &str| format!("http://{}{path}", proxy.addr);

    let request = Request::get(url("/page?q=1"))
        .header("x-custom", "a")
        .header("x-custom", "b")
        .header("connection", "x-hop-request")
        .header("x-hop-request", "1")
        .body(Full::default())
        .unwrap();
    let first = send(request).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.body.starts_with("GET /page?q=1 body="),
        "{}",
        first.body
    );
    assert!(
        first.body.contains(r#"x-custom=["a", "b"]"#),
        "repeated request headers: {}",
        first.body
    );
    assert!(
        first.body.contains("te=None"),
        "hop-by-hop request headers are removed: {}",
        first.body
    );
    let upstream_host = upstream_url.trim_start_matches("http://");
    assert!(
        first
            .body
            .contains(&format!("host=Some({upstream_host:?})")),
        "{}",
        first.body
    );
    let multi: Vec<_> = first.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"], "repeated response headers");
    assert!(
        !first.headers.contains_key("x-hop"),
        "hop-by-hop response headers are removed"
    );
    assert!(
        first.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=uri-miss")
    );

    let second = send(
        Request::get(url("/page?q=1"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(second.body, first.body, "served from the cache");
    assert!(
        second.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );

    let purged = send(
        Request::builder()
            .method("PURGE")
            .uri(url("/page?q=1"))
            .header("authorization", format!("Bearer {PURGE_TOKEN}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);
    let after = send(
        Request::get(url("/page?q=1"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(
        after.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=uri-miss"),
        "purged"
    );

    for code in [599, 299] {
        let got = send(
            Request::get(url(&format!("/{code}")))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(got.status.as_u16(), code);
    }

    let posted = send(
        Request::post(url("/form"))
            .body(Full::new(Bytes::from("a=1")))
            .unwrap(),
    )
    .await;
    assert!(
        posted.body.starts_with("POST /form body=a=1"),
        "{}",
        posted.body
    );

    let slow = send(Request::get(url("/slow")).body(Full::default()).unwrap()).await;
    assert_eq!(
        slow.status,
        StatusCode::GATEWAY_TIMEOUT,
        "an upstream that does not answer in time"
    );

    upstream_task.abort();
    let _ = upstream_task.await;
    let down = send(
        Request::get(url("/never-seen"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        down.status,
        StatusCode::BAD_GATEWAY,
        "an unreachable upstream"
    );
}

/// An upstream that speaks HTTP/1.1 by hand, so that it can break the protocol: by path,
/// `/reset` sends 30 000 of its 100 000 announced bytes and resets the connection, `/short`
/// sends 500 of 1 000 and closes, `/drip` sends its 200 bytes ten at a time 30 ms apart,
/// `/stall` sends 100 of 1 000 bytes and goes quiet for 5 s, and `/endless` sends a body with
/// no length that never ends, until the connection is closed on it.
struct RawUpstream {
    addr: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    endless_closed: Arc<AtomicBool>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let endless_closed = Arc::new(AtomicBool::new(false));
        let (task_hits, task_closed) = (hits.clone(), endless_closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (hits, closed) = (task_hits.clone(), task_closed.clone());
                tokio::spawn(async move {
                    let _ = RawUpstream::answer(stream, hits, closed).await;
                });
            }
        });
        RawUpstream {
            addr,
            hits,
            endless_closed,
        }
    }

    async fn answer(
        mut stream: tokio::net::TcpStream,
        hits: Arc<Mutex<HashMap<String, usize>>>,
        endless_closed: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut reader = tokio::io::BufReader::new(&mut stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).await?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
                break;
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        // One response per connection, said so, so that no client reuses it.
        let head = |length: Option<usize>| {
            let length = length.map_or(String::new(), |n| format!("content-length: {n}\r\n"));
            format!(
                "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\nconnection: close\r\n{length}\r\n"
            )
        };
        let byte = |i: usize| b'a' + (i % 26) as u8;
        let body = |from: usize, len: usize| (from..from + len).map(byte).collect::<Vec<u8>>();
        match path.as_str() {
            "/reset" => {
                stream.write_all(head(Some(100_000)).as_bytes()).await?;
                stream.write_all(&body(0, 30_000)).await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // A zero linger makes the close a reset (and a drop that does not block).
                #[allow(deprecated, reason = "a zero linger is what makes the close a reset")]
                stream.set_linger(Some(Duration::ZERO))?;
            }
            "/short" => {
                stream.write_all(head(Some(1000)).as_bytes()).await?;
                stream.write_all(&body(0, 500)).await?;
            }
            "/drip" => {
                stream.write_all(head(Some(200)).as_bytes()).await?;
                for i in 0..20 {
                    stream.write_all(&body(i * 10, 10)).await?;
                    stream.flush().await?;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            "/stall" => {
                stream.write_all(head(Some(1000)).as_bytes()).await?;
                stream.write_all(&body(0, 100)).await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                stream.write_all(&body(100, 900)).await?;
            }
            "/endless" => {
                stream.write_all(head(None).as_bytes()).await?;
                let mut sent = 0;
                let written = loop {
                    if let Err(e) = stream.write_all(&body(sent, 64 * 1024)).await {
                        break e;
                    }
                    sent += 64 * 1024;
                };
                endless_closed.store(true, Ordering::SeqCst);
                return Err(written);
            }
            _ => {
                stream.write_all(head(Some(2)).as_bytes()).await?;
                stream.write_all(b"ok").await?;
            }
        }
        Ok(())
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Sends a GET through the proxy; the body as far as it came, and whether it completed.
async fn fetch(proxy: &Proxy, path: &str, limit: usize) -> (StatusCode, Vec<u8>, bool) {
    let request = Request::get(format!("http://{}{path}", proxy.addr))
        .body(Full::default())
        .unwrap();
    let response = client().ready().await.unwrap().call(request).await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut got = Vec::new();
    loop {
        match body.frame().await {
            None => return (status, got, true),
            Some(Err(_)) => return (status, got, false),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
                if got.len() >= limit {
                    return (status, got, false);
                }
            }
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_reach_the_client_cleanly_and_nothing_is_stored() {
    let upstream = RawUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(
        &format!("http://{}", upstream.addr),
        dir.path(),
        &["--max-body-size", "1048576", "--upstream-timeout", "1s"],
    );

    for (path, announced) in [("/reset", 100_000), ("/short", 1000), ("/stall", 1000)] {
        for attempt in 1..=2 {
            let (status, got, complete) = fetch(&proxy, path, usize::MAX).await;
            assert_eq!(status, StatusCode::OK, "{path}: the upstream's status");
            assert!(
                !complete,
                "{path}: a body cut short is not passed off as whole"
            );
            assert!(got.len() < announced, "{path}");
            assert_eq!(
                got,
                pattern(got.len()),
                "{path}: the bytes the upstream sent"
            );
            assert_eq!(upstream.hits(path), attempt, "{path}: nothing was stored");
        }
    }

    let (status, got, complete) = fetch(&proxy, "/drip", usize::MAX).await;
    assert_eq!(
        (status, complete),
        (StatusCode::OK, true),
        "a slow body arrives"
    );
    assert_eq!(got, pattern(200));
    let (_, again, _) = fetch(&proxy, "/drip", usize::MAX).await;
    assert_eq!(again, pattern(200));
    assert_eq!(upstream.hits("/drip"), 1, "and is stored");

    // A body that never ends: the client takes 2 MiB of it and leaves; the proxy, which
    // stores no body over 1 MiB, stops reading it too.
    let (status, got, _) = fetch(&proxy, "/endless", 2 << 20).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, pattern(got.len()));
    for _ in 0..100 {
        if upstream.endless_closed.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        upstream.endless_closed.load(Ordering::SeqCst),
        "the endless body is abandoned once its client and the store are done with it"
    );

    let path = dir.path().to_path_buf();
    common::eventually("the abandoned body's temp file removed", || {
        common::temp_files(&path).is_empty()
    })
    .await;
    assert_eq!(
        common::record_files(dir.path()).len(),
        1,
        "only /drip is stored"
    );
}

/// The short `reverse_proxy` example (the layer between a hyper server and client), which
/// `cargo test` builds beside the test binaries: a miss, then a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_example_caches_between_a_hyper_server_and_client() {
    let (upstream_url, _task) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(format!("reverse_proxy{}", std::env::consts::EXE_SUFFIX));
    let mut command = std::process::Command::new(example);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--quiet",
            "--upstream",
            &upstream_url,
        ])
        .arg("--cache-dir")
        .arg(dir.path());
    let proxy = common::spawn_proxy_command(command).expect("the example starts");
    let url = format!("http://{}/page", proxy.addr);
    let first = send(Request::get(&url).body(Full::default()).unwrap()).await;
    let second = send(Request::get(&url).body(Full::default()).unwrap()).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.body, first.body);
    let status = |got: &Got| got.headers["cache-status"].to_str().unwrap().to_owned();
    assert!(
        status(&first).contains("fwd=uri-miss"),
        "{}",
        status(&first)
    );
    assert!(status(&second).contains("hit"), "{}", status(&second));
}
