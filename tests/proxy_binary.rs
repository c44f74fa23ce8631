//! The `http-cache-proxy` binary as an operator runs it: TLS on both sides (certificates made
//! here with the `openssl` command), a miss and a hit over HTTP/2, `/metrics` counting them,
//! and a graceful shutdown on SIGTERM with a request in flight, which writes the index
//! snapshot.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// TLS settings that trust `ca` and offer HTTP/2 and HTTP/1.1.
fn client_tls(ca: &str) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An HTTPS origin on loopback: `/slow` answers after three seconds, everything else at
/// once, all `max-age=60`. Returns its URL and how many requests it answered.
async fn https_origin(cert: &str, key: &str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let port = common::tls::https_server(cert, key, move |request| {
        let hits = counted.clone();
        async move {
            let n = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if request.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let body = format!("{} #{n} over {:?}", request.uri().path(), request.version());
            http::Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    })
    .await;
    (format!("https://localhost:{port}"), hits)
}

struct Got {
    status: StatusCode,
    version: http::Version,
    cache_status: String,
    body: String,
}

async fn get(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: &str,
) -> Got {
    let response = client
        .request(Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        version: parts.version,
        cache_status: parts
            .headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_sides_metrics_and_a_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::certificates(dir.path());
    let (origin, origin_hits) = https_origin(&cert, &key).await;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{admin_port}");
    let cache_dir = dir.path().join("cache");
    let args = [
        "--upstream",
        &origin,
        "--upstream-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--cache-dir",
        cache_dir.to_str().unwrap(),
        "--admin-listen",
        &admin,
        "--shutdown-timeout",
        "10s",
    ];
    let mut proxy = common::spawn_proxy(&args, &[]).expect("the proxy starts");
    let port = proxy.addr.rsplit(':').next().unwrap().to_owned();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(&ca))
        .https_only()
        .enable_all_versions()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let url = |path: &str| format!("https://localhost:{port}{path}");

    let miss = get(&client, &url("/page")).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.version, http::Version::HTTP_2, "HTTP/2 by ALPN");
    assert!(
        miss.body.starts_with("/page #1 over HTTP/2"),
        "{}",
        miss.body
    );
    assert!(
        miss.cache_status.contains("fwd=uri-miss"),
        "{}",
        miss.cache_status
    );
    let hit = get(&client, &url("/page")).await;
    assert!(hit.cache_status.contains("hit"), "{}", hit.cache_status);
    assert_eq!(hit.body, miss.body);
    assert_eq!(origin_hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    let metrics = common::client()
        .request(
            Request::get(format!("http://{admin}/metrics"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let metrics = metrics.into_body().collect().await.unwrap().to_bytes();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("http_cache_streaming_hits_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_cache_streaming_misses_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_cache_streaming_store_entries 1"),
        "{metrics}"
    );
    // Every series the Grafana dashboard in the repository reads is there.
    let dashboard = include_str!("../contrib/grafana/http-cache-proxy.json");
    let mut read = 0;
    for name in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if name.starts_with("http_cache_") {
            assert!(
                metrics.contains(name),
                "the dashboard reads {name}: {metrics}"
            );
            read += 1;
        }
    }
    assert!(read >= 10, "{read} series read by the dashboard");

    // A request in flight when SIGTERM arrives is answered whole, then the proxy exits 0.
    let slow = {
        let client = client.clone();
        let url = url("/slow");
        tokio::spawn(async move { get(&client, &url).await })
    };
    // Once it has reached the origin (which takes 3 s to answer), it is in flight.
    let in_flight = || origin_hits.load(std::sync::atomic::Ordering::SeqCst) == 2;
    common::eventually("/slow at the origin", in_flight).await;
    let pid = proxy.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let answered = slow.await.unwrap();
    assert_eq!(answered.status, StatusCode::OK);
    assert!(answered.body.starts_with("/slow #2"), "{}", answered.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        cache_dir.join("cache-v2/index.snapshot").exists(),
        "the index snapshot is written on the way out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flag_is_also_an_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().to_str().unwrap();
    // The upstream and the cache directory from the environment; a size with a unit.
    let env = [
        ("HTTP_CACHE_PROXY_UPSTREAM", "http://127.0.0.1:9"),
        ("HTTP_CACHE_PROXY_CACHE_DIR", cache_dir),
        ("HTTP_CACHE_PROXY_MAX_SIZE", "64M"),
        ("HTTP_CACHE_PROXY_CACHE_STATUS", "edge-7"),
    ];
    let proxy = common::spawn_proxy(&["--quiet"], &env).expect("started from the environment");
    let got = common::client()
        .request(
            Request::get(format!("http://{}/x", proxy.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        got.status(),
        StatusCode::BAD_GATEWAY,
        "nothing listens on port 9"
    );
    let cache_status = got.headers()["cache-status"].to_str().unwrap();
    assert!(cache_status.starts_with("edge-7;"), "{cache_status}");
    // A value the flag refuses is refused from the environment too, saying which.
    let refused = common::spawn_proxy(
        &[],
        &[("HTTP_CACHE_PROXY_MAX_SIZE", "64 apples"), env[0], env[1]],
    )
    .err()
    .expect("refused");
    assert!(refused.contains("exit status: 2"), "{refused}");
    assert!(refused.contains("--max-size"), "{refused}");
}
