//! Odd and hostile input: huge header sets, long URLs, opaque header bytes, every kind of
//! status code, `Vary` naming a hundred headers, keys that look like paths, and requests
//! crafted to poison what other users receive. The cache answers cleanly, stores only what
//! reads back whole, and never lets a key or header reach a file path.

mod common;

use std::path::Path;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{HttpCacheOptions, HttpCacheStreamingLayer, StreamingManager};
use tower::ServiceBuilder;
use url::Url;

fn request(url: &str, headers: &[(String, HeaderValue)]) -> Request<Full<Bytes>> {
    let mut request = Request::get(url).body(Full::default()).unwrap();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().append(name, value.clone());
    }
    request
}

/// The odd responses of the origin, by path.
fn odd_response(parts: &http::request::Parts, n: usize) -> Response<AxumBody> {
    let path = parts.uri.path().to_owned();
    let mut response = Response::new(AxumBody::from(format!("n{n} {}", path.len())));
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
    match path.as_str() {
        "/many-headers" => {
            for i in 0..300 {
                let name = HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap();
                let value = "v".repeat(1000);
                headers.insert(name, HeaderValue::from_str(&value).unwrap());
            }
            for i in 0..50 {
                headers.append("x-rep", HeaderValue::from(i));
            }
        }
        "/opaque" => {
            headers.insert(
                "x-latin1",
                HeaderValue::from_bytes(b"caf\xe9 \xff\x80").unwrap(),
            );
            headers.insert("x-tab", HeaderValue::from_bytes(b"a\tb").unwrap());
            headers.insert("x-empty", HeaderValue::from_static(""));
        }
        "/vary-many" => {
            let names: Vec<String> = (0..100).map(|i| format!("x-v{i}")).collect();
            headers.insert("vary", HeaderValue::from_str(&names.join(", ")).unwrap());
        }
        _ => {}
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_responses_pass_through_and_what_is_stored_reads_back_whole() {
    // The router in process: hyper's own limits (100 headers by default) would refuse these
    // responses before the cache saw them.
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let n = 1 + counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { odd_response(&request.into_parts().0, n) }
    });
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service(app);
    let origin_hits = || hits.load(std::sync::atomic::Ordering::SeqCst);
    let url_of = |path: &str| format!("http://example.com{path}");

    let long = format!("/{}", "long-segment/".repeat(1200));
    let vary_headers: Vec<(String, HeaderValue)> = (0..100)
        .map(|i| (format!("x-v{i}"), HeaderValue::from(i)))
        .collect();
    let huge_request: Vec<(String, HeaderValue)> = (0..200)
        .map(|i| {
            let value = HeaderValue::from_bytes(&[b'r'; 500]).unwrap();
            (format!("x-req{i}"), value)
        })
        .collect();
    let cases: [(&str, &[(String, HeaderValue)]); 5] = [
        ("/many-headers", &[]),
        ("/opaque", &[]),
        ("/vary-many", &vary_headers),
        (&long, &[]),
        ("/huge-request", &huge_request),
    ];
    for (path, headers) in cases {
        let url = url_of(path);
        let first = send(&mut cache, request(&url, headers)).await;
        let second = send(&mut cache, request(&url, headers)).await;
        let label = &path[..path.len().min(30)];
        assert_eq!(first.status, StatusCode::OK, "{label}");
        assert!(second.hit(), "{label}: stored and served back");
        assert_eq!(second.body, first.body, "{label}");
        assert_eq!(
            second.origin_headers(),
            first.origin_headers(),
            "{label}: every header back as it was sent"
        );
    }

    // A request that differs in one of the hundred headers Vary names is another variant.
    let mut other = vary_headers.clone();
    other[57].1 = HeaderValue::from_static("changed");
    let url = url_of("/vary-many");
    let before = origin_hits();
    let got = send(&mut cache, request(&url, &other)).await;
    assert!(!got.hit());
    assert_eq!(origin_hits(), before + 1);
    let again = send(&mut cache, request(&url, &vary_headers)).await;
    assert!(again.hit(), "the first variant is still there");
}

#[tokio::test]
async fn every_status_code_from_100_to_999_is_passed_on_and_any_entry_reads_back() {
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let code: u16 = request.uri().path()[1..].parse().unwrap();
        let mut response = Response::new(AxumBody::from(format!("status {code}")));
        *response.status_mut() = StatusCode::from_u16(code).unwrap();
        response
            .headers_mut()
            .insert("cache-control", HeaderValue::from_static("max-age=60"));
        response
    });
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager.clone()))
        .service(app);
    let mut stored = 0;
    for code in (100u16..1000)
        .step_by(7)
        .chain([200, 203, 206, 304, 404, 410, 501, 999])
    {
        let url = format!("http://example.com/{code}");
        let first = send(&mut cache, request(&url, &[])).await;
        assert_eq!(first.status.as_u16(), code);
        let second = send(&mut cache, request(&url, &[])).await;
        assert_eq!(second.status.as_u16(), code);
        if second.hit() {
            stored += 1;
            assert_eq!(second.body, first.body, "{code}");
        }
    }
    // Whatever was stored reads back from disk too, after a restart.
    let reopened = StreamingManager::new(dir.path().to_path_buf());
    let stats = reopened.stats().await.unwrap();
    assert_eq!(stats.entries, manager.stats().await.unwrap().entries);
    assert!(
        stored > 0,
        "the heuristically or explicitly cacheable codes are stored"
    );
    for code in [200u16, 404, 410] {
        let key = format!("GET:http://example.com/{code}");
        let (response, _) = reopened.get(&key).await.unwrap().expect("stored");
        assert_eq!(response.status().as_u16(), code);
    }
    let (response, _) = reopened
        .get("GET:http://example.com/206")
        .await
        .unwrap()
        .map_or(
            (
                Response::new(http_cache_streaming::StreamingBody::empty()),
                None,
            ),
            |(r, p)| (r, Some(p)),
        );
    assert_ne!(
        response.status(),
        StatusCode::PARTIAL_CONTENT,
        "a 206 is never stored as a response"
    );
}

/// Every path under `root`, relative to it.
fn all_paths(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn no_key_or_header_reaches_a_file_path() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    let manager = StreamingManager::new(dir.clone());
    let keys = [
        "../../escape".to_owned(),
        "/etc/passwd".to_owned(),
        "a\0b".to_owned(),
        "..\\..\\windows".to_owned(),
        "con".to_owned(),
        "\u{202e}gpj.exe".to_owned(),
        "k".repeat(100_000),
        String::new(),
    ];
    let url = Url::parse("https://example.com/").unwrap();
    for (i, key) in keys.iter().enumerate() {
        let mut response = Response::new(Full::new(Bytes::from(format!("body {i}"))));
        response.headers_mut().insert(
            "content-location",
            HeaderValue::from_static("../../../../tmp/x"),
        );
        manager
            .put(
                key.clone(),
                response,
                policy("https://example.com/"),
                url.clone(),
            )
            .await
            .unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let (response, _) = manager.get(key).await.unwrap().expect("stored");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("body {i}"));
    }
    let is_hex = |name: &str, suffix: &str| {
        name.strip_suffix(suffix)
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    for path in all_paths(root.path()) {
        if path == "cache" || path == "cache/cache-v2" {
            continue;
        }
        let mut parts = path.split('/');
        assert_eq!(parts.next(), Some("cache"), "{path}");
        assert_eq!(parts.next(), Some("cache-v2"), "{path}");
        match (parts.next(), parts.next()) {
            (Some("metadata"), Some(name)) => assert!(is_hex(name, ".json"), "{path}"),
            (Some("content"), Some(name)) => assert!(is_hex(name, ""), "{path}"),
            // A tag purge's note: its time and a name of the store's making.
            (Some("purges-pending"), Some(name)) => {
                assert!(
                    name.ends_with(".json") && name.as_bytes()[..13].iter().all(u8::is_ascii_digit),
                    "{path}"
                )
            }
            (Some("metadata" | "content" | "tmp" | "access.log" | "purges-pending"), None)
            | (Some("tmp"), _) => {}
            _ => panic!("unexpected path {path}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_requests_cannot_change_what_other_users_receive() {
    // The origin reflects what it was asked, so that anything an attacker's request could
    // smuggle into a stored response would show.
    let origin = Origin::start(|parts, n| {
        let reflected = format!(
            "n{n} host={:?} evil={:?} lang={:?}",
            parts.headers.get("host"),
            parts.headers.get("x-evil"),
            parts.headers.get("accept-language"),
        );
        let mut response = Response::new(AxumBody::from(reflected));
        let headers = response.headers_mut();
        let cc = match parts.uri.path() {
            "/s-maxage" => "s-maxage=60",
            "/must-revalidate" => "max-age=60, must-revalidate",
            _ => "max-age=60",
        };
        headers.insert("cache-control", HeaderValue::from_static(cc));
        if parts.uri.path() == "/lang" {
            headers.insert("vary", HeaderValue::from_static("accept-language"));
        }
        if let Some(range) = parts.headers.get("range") {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let _ = range;
            response
                .headers_mut()
                .insert("content-range", HeaderValue::from_static("bytes 0-1/20"));
        }
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(
            manager,
            HttpCacheOptions::default(),
        ))
        .service(client());
    let url = origin.url("/page");
    let h = |name: &str, value: &str| (name.to_owned(), HeaderValue::from_str(value).unwrap());

    let victim = send(&mut cache, request(&url, &[])).await;
    // Another Host is another resource: it neither reads nor replaces the victim's entry.
    let spoofed = send(&mut cache, request(&url, &[h("host", "evil.example")])).await;
    assert!(!spoofed.hit());
    assert!(String::from_utf8_lossy(&spoofed.body).contains("evil.example"));
    // A request that goes past the cache and refuses storage: its answer (smuggled header
    // and all) is not stored.
    let refused = [h("cache-control", "no-cache, no-store"), h("x-evil", "1")];
    let smuggled = send(&mut cache, request(&url, &refused)).await;
    assert!(String::from_utf8_lossy(&smuggled.body).contains("evil=Some"));
    // Nor is a forced revalidation's, unless the origin says the entry changed: the stored
    // response is refreshed from the origin, never from the attacker's request.
    let range = send(&mut cache, request(&url, &[h("range", "bytes=0-1")])).await;
    assert!(range.status == StatusCode::PARTIAL_CONTENT || range.hit());
    let later = send(&mut cache, request(&url, &[])).await;
    assert!(later.hit(), "the victim's entry is still there");
    assert_eq!(later.body, victim.body, "and still the victim's");

    // A variant for one language does not replace another's.
    let lang = origin.url("/lang");
    let en = send(&mut cache, request(&lang, &[h("accept-language", "en")])).await;
    send(
        &mut cache,
        request(&lang, &[h("accept-language", "xx-evil")]),
    )
    .await;
    let en_again = send(&mut cache, request(&lang, &[h("accept-language", "en")])).await;
    assert!(en_again.hit());
    assert_eq!(en_again.body, en.body);

    // RFC 9111 §3.5: a response to an authorized request is stored by a shared cache only
    // when the response allows it (public, s-maxage, must-revalidate).
    let authorized = [h("authorization", "Bearer token")];
    for (path, stored) in [
        ("/plain", false),
        ("/s-maxage", true),
        ("/must-revalidate", true),
    ] {
        let url = origin.url(path);
        send(&mut cache, request(&url, &authorized)).await;
        let second = send(&mut cache, request(&url, &authorized)).await;
        assert_eq!(second.hit(), stored, "{path}");
    }
}
