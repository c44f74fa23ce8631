//! The `reverse_proxy` example as users run it: its binary between a client and a loopback
//! upstream, checked for what a proxy must pass, strip, cache and answer.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::client;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

/// The proxy process, killed when the test ends.
struct Proxy {
    child: Child,
    addr: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(upstream: &str, cache_dir: &std::path::Path) -> Proxy {
    // Cargo builds the examples beside the test binaries: target/<profile>/examples/.
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let binary = examples.join(format!("reverse_proxy{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is built by cargo test",
        binary.display()
    );
    let mut child = Command::new(binary)
        .args([
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
        ])
        .arg(cache_dir)
        .args(["--timeout-secs", "1", "--allow-purge"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // "proxying http://127.0.0.1:PORT -> ..."
    let addr = line
        .split_whitespace()
        .nth(1)
        .and_then(|url| url.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("the proxy says where it listens: {line:?}"))
        .to_owned();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Proxy { child, addr }
}

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
    let proxy = start_proxy(&upstream_url, dir.path());
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
