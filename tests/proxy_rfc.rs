//! RFC 9111 behaviours as a proxy's clients see them: the `reverse_proxy` binary between a
//! client and a loopback origin, for each row of README's "RFC 9111 behaviours" table that
//! is about what a proxy answers. (The same rules are tested through the layer, with a
//! clock of their own, in tests/layer.)
//!
//! Entries are made stale without waiting: the origin sends an `Age` past their `max-age`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::{Got, Origin, Proxy, client, send, start_proxy};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

/// A response with `headers` and `body`.
fn reply(headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::from(body.into()));
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        response.headers_mut().append(name, value.parse().unwrap());
    }
    response
}

fn with_status(mut response: Response<AxumBody>, status: u16) -> Response<AxumBody> {
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// A proxy in front of `origin`, with `extra` flags, and its cache directory.
fn proxy(origin: &Origin, extra: &[&str]) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), extra);
    (proxy, dir)
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    request(proxy, "GET", path, headers).await
}

async fn request(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(&mut client(), request.body(Full::default()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconditional_client_never_gets_a_304_even_when_the_origin_sends_a_stray_one() {
    // Revalidations get a 304 naming another representation; plain requests a new version.
    let origin = Origin::start(|parts, n| {
        if parts.headers.contains_key("if-none-match") {
            return with_status(reply(&[("etag", "\"other\"")], ""), 304);
        }
        let tag = format!("\"v{n}\"");
        let headers = [
            ("cache-control", "max-age=60"),
            ("age", "100"),
            ("etag", &tag),
        ];
        reply(&headers, format!("version {n}"))
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    assert_eq!(get(&proxy, "/v", &[]).await.body, "version 1");
    let got = get(&proxy, "/v", &[]).await;
    assert_eq!(
        (got.status, &got.body[..]),
        (StatusCode::OK, &b"version 3"[..]),
        "{}",
        got.cache_status()
    );
    assert_eq!(origin.hits(), 3, "the revalidation, then the request again");
    assert!(!origin.last_request().headers.contains_key("if-none-match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directive_names_are_case_insensitive_and_malformed_freshness_is_not_trusted() {
    let origin = Origin::start(|parts, n| {
        let headers: &[(&str, &str)] = match parts.uri.path() {
            "/mixed-max-age" => &[("cache-control", "MaX-AgE=3600")],
            "/mixed-no-cache" => &[("cache-control", "max-age=3600, No-CaChE")],
            "/bad-age" => &[("cache-control", "max-age=3600"), ("age", "old, 0")],
            "/minus-age" => &[("cache-control", "max-age=3600"), ("age", "-5000")],
            "/decimal-age" => &[("cache-control", "max-age=3600"), ("age", "7200.5")],
            "/huge-age" => &[("cache-control", "max-age=3600"), ("age", "99999999999999")],
            "/bad-expires" => &[("expires", "Fri,  01 Jan 2049 00:00:00 GMT")],
            "/spaced" => &[("cache-control", "max-age = 3600")],
            _ => &[("cache-control", "max-age=3600")],
        };
        reply(headers, format!("n{n}"))
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    let mut expected_hits = 0;
    for (path, reused) in [
        ("/plain", true),
        ("/mixed-max-age", true),
        ("/mixed-no-cache", false),
        // An `Age` that is no non-negative integer is ignored (§5.1): fresh as it says;
        // one too large to hold is the largest value: stale.
        ("/bad-age", true),
        ("/minus-age", true),
        ("/decimal-age", true),
        ("/huge-age", false),
        ("/bad-expires", false),
        ("/spaced", false),
    ] {
        get(&proxy, path, &[]).await;
        let again = get(&proxy, path, &[]).await;
        expected_hits += if reused { 1 } else { 2 };
        assert_eq!(again.hit(), reused, "{path}: {}", again.cache_status());
        assert_eq!(origin.hits(), expected_hits, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_cache_control_decides_for_the_proxy_and_cache_control_still_reaches_clients() {
    let origin = Origin::start(|_, n| {
        let headers = [
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=3600"),
        ];
        reply(&headers, format!("n{n}"))
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    get(&proxy, "/cdn", &[]).await;
    let again = get(&proxy, "/cdn", &[]).await;
    assert!(again.hit(), "{}", again.cache_status());
    assert_eq!(again.body, "n1");
    assert_eq!(again.header("cache-control"), Some("no-store"));
    assert_eq!(origin.hits(), 1);
}

/// A targeted field with a member of the wrong type (RFC 9213 §2.1) is ignored as a whole:
/// `Cache-Control` decides, whichever way it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cdn_cache_control_falls_back_to_cache_control() {
    let origin = Origin::start(|parts, n| {
        let headers: &[(&str, &str)] = match parts.uri.path() {
            // Would store for an hour if it were read; Cache-Control forbids it.
            "/string" => &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=\"3600\""),
            ],
            "/decimal" => &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=3600.5"),
            ],
            // Would forbid storing if it were read; Cache-Control allows an hour.
            "/boolean" => &[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "no-store=5"),
            ],
            _ => &[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "max-age=sixty, no-store"),
            ],
        };
        reply(headers, format!("n{n}"))
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    let mut expected_hits = 0;
    for (path, reused) in [
        ("/string", false),
        ("/decimal", false),
        ("/boolean", true),
        ("/token", true),
    ] {
        get(&proxy, path, &[]).await;
        let again = get(&proxy, path, &[]).await;
        expected_hits += if reused { 1 } else { 2 };
        assert_eq!(again.hit(), reused, "{path}: {}", again.cache_status());
        assert_eq!(origin.hits(), expected_hits, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_and_understood_error_statuses_are_answered_from_the_cache() {
    let origin = Origin::start(|parts, n| {
        let headers = [("cache-control", "max-age=3600"), ("etag", "\"v1\"")];
        let response = reply(&headers, format!("n{n}"));
        match parts.uri.path() {
            "/gone" => with_status(response, 404),
            "/down" => with_status(response, 503),
            _ => response,
        }
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &["--store-errors", "1h"]);
    get(&proxy, "/page", &[]).await;
    let conditional = get(&proxy, "/page", &[("if-none-match", "W/\"v1\", \"v0\"")]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert!(conditional.body.is_empty());
    assert_eq!(conditional.header("etag"), Some("\"v1\""));
    let changed = get(&proxy, "/page", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(
        (changed.status, &changed.body[..]),
        (StatusCode::OK, &b"n1"[..])
    );
    assert_eq!(origin.hits(), 1, "both answered without the origin");

    for (path, status) in [("/gone", 404), ("/down", 503)] {
        let first = get(&proxy, path, &[]).await;
        let again = get(&proxy, path, &[]).await;
        assert_eq!(again.status.as_u16(), status);
        assert!(again.hit(), "{path}: {}", again.cache_status());
        assert_eq!(again.body, first.body);
    }
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_to_head_freshens_the_stored_get_and_vary_compares_normalised_values() {
    let origin = Origin::start(|parts, n| {
        if parts.uri.path() == "/lang" {
            let headers = [
                ("cache-control", "max-age=3600"),
                ("vary", "Accept-Language"),
            ];
            return reply(&headers, format!("n{n}"));
        }
        // The GET arrives stale; the HEAD's answer is fresh.
        let age = if parts.method == http::Method::HEAD {
            "0"
        } else {
            "100"
        };
        let headers = [
            ("cache-control", "max-age=60"),
            ("age", age),
            ("etag", "\"v1\""),
        ];
        reply(&headers, format!("n{n}"))
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    assert_eq!(get(&proxy, "/head", &[]).await.body, "n1");
    let head = request(&proxy, "HEAD", "/head", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(origin.last_request().method, http::Method::HEAD);
    let after = get(&proxy, "/head", &[]).await;
    assert!(after.hit(), "{}", after.cache_status());
    assert_eq!(after.body, "n1", "the body is the stored one");
    assert_eq!(origin.hits(), 2);

    get(&proxy, "/lang", &[("accept-language", "en-GB, fr;q=0.5")]).await;
    let reordered = get(&proxy, "/lang", &[("accept-language", "FR;q=0.5,en-gb")]).await;
    assert!(reordered.hit(), "{}", reordered.cache_status());
    let other = get(&proxy, "/lang", &[("accept-language", "de")]).await;
    assert!(!other.hit());
    assert_eq!(origin.hits(), 4);
}

/// An origin whose `/page` is `n<request number>`, stale on arrival (`max-age=10`, `Age:
/// 20`) plus `extra` directives, until `failure` holds a status to answer instead.
async fn failing_origin(extra: &'static str) -> (Origin, Arc<AtomicU16>) {
    let failure = Arc::new(AtomicU16::new(0));
    let fail = failure.clone();
    let origin = Origin::start(move |_, n| match fail.load(Ordering::SeqCst) {
        0 => {
            let control = format!("max-age=10{extra}");
            reply(
                &[("cache-control", &control), ("age", "20")],
                format!("n{n}"),
            )
        }
        // Slow: four times the --upstream-timeout of the proxies that fail on it.
        1 => {
            std::thread::sleep(std::time::Duration::from_millis(4000));
            reply(&[], "too late")
        }
        code => with_status(reply(&[], "origin error"), code),
    })
    .await;
    (origin, failure)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_on_error_serves_stale_for_5xx_timeouts_and_refusals_only_when_allowed() {
    let (mut origin, failure) = failing_origin("").await;
    let extra = ["--stale-on-error", "60", "--upstream-timeout", "1s"];
    let (proxy, _dir) = proxy(&origin, &extra);
    let (off, _off_dir) = self::proxy(&origin, &[]);
    assert_eq!(get(&proxy, "/page", &[]).await.body, "n1");
    assert_eq!(get(&off, "/page", &[]).await.body, "n2");

    failure.store(503, Ordering::SeqCst);
    let got = get(&proxy, "/page", &[]).await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"n1"[..]));
    assert!(
        got.cache_status()
            .contains("fwd=stale; fwd-status=503; detail=stale-on-error"),
        "{}",
        got.cache_status()
    );
    assert_eq!(
        get(&off, "/page", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    failure.store(1, Ordering::SeqCst);
    let timed_out = get(&proxy, "/page", &[]).await;
    assert_eq!(timed_out.body, "n1");
    assert!(
        timed_out.cache_status().contains("fwd-status=504"),
        "{}",
        timed_out.cache_status()
    );

    origin.stop().await;
    let refused = get(&proxy, "/page", &[]).await;
    assert_eq!(refused.body, "n1");
    assert!(
        refused.cache_status().contains("fwd-status=502"),
        "{}",
        refused.cache_status()
    );
    assert_eq!(
        get(&off, "/page", &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_on_error_never_serves_what_must_be_revalidated() {
    for extra in [
        ", must-revalidate",
        ", proxy-revalidate",
        ", s-maxage=10",
        ", no-cache",
    ] {
        let (origin, failure) = failing_origin(extra).await;
        let (proxy, _dir) = proxy(&origin, &["--stale-on-error", "60"]);
        get(&proxy, "/page", &[]).await;
        failure.store(503, Ordering::SeqCst);
        let got = get(&proxy, "/page", &[]).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{extra}");
        assert_eq!(got.body, "origin error", "{extra}");
    }
}

/// An origin serving `body` with a strong `ETag`, honouring one byte range `a-b` or `a-`.
fn ranged_origin(body: Vec<u8>) -> impl Fn(&http::request::Parts, usize) -> Response<AxumBody> {
    move |parts, _| {
        let headers = [("cache-control", "max-age=3600"), ("etag", "\"v1\"")];
        let range = parts
            .headers
            .get("range")
            .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-'))
            .map(|(first, last)| {
                let start: usize = first.parse().unwrap();
                let end = match last {
                    "" => body.len(),
                    last => last.parse::<usize>().unwrap() + 1,
                };
                (start, end.min(body.len()))
            });
        let Some((start, end)) = range else {
            return reply(&headers, body.clone());
        };
        let mut response = with_status(reply(&headers, body[start..end].to_vec()), 206);
        let content_range = format!("bytes {start}-{}/{}", end - 1, body.len());
        response
            .headers_mut()
            .insert("content-range", content_range.parse().unwrap());
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_content_is_kept_completed_from_missing_spans_and_stored_whole() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let origin = Origin::start(ranged_origin(body.clone())).await;
    let (proxy, dir) = proxy(&origin, &[]);
    let first = get(&proxy, "/movie", &[("range", "bytes=0-39999")]).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(first.body.as_ref(), &body[..40_000]);
    let inside = get(&proxy, "/movie", &[("range", "bytes=1000-1999")]).await;
    assert!(inside.hit(), "{}", inside.cache_status());
    assert_eq!(inside.body.as_ref(), &body[1000..2000]);
    let across = get(&proxy, "/movie", &[("range", "bytes=30000-69999")]).await;
    assert_eq!(
        across.header("content-range"),
        Some("bytes 30000-69999/100000")
    );
    assert_eq!(across.body.as_ref(), &body[30_000..70_000]);
    let fetched = origin.last_request().headers["range"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(fetched, "bytes=40000-69999", "only the missing span");
    get(&proxy, "/movie", &[("range", "bytes=70000-")]).await;
    assert_eq!(origin.hits(), 3);
    // Whole now: stored as a complete entry, served to a request without a range.
    let cache = dir.path().to_path_buf();
    common::eventually("the complete entry", || {
        !common::content_files(&cache).is_empty()
    })
    .await;
    let whole = get(&proxy, "/movie", &[]).await;
    assert!(whole.hit(), "{}", whole.cache_status());
    assert_eq!(
        (whole.status, whole.body.as_ref()),
        (StatusCode::OK, &body[..])
    );
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_entries_are_neither_shared_from_authorized_requests_nor_past_max_size() {
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let origin = Origin::start(ranged_origin(body.clone())).await;
    // A range fetched for a client with credentials is never kept for the next client.
    let (shared, _dir) = proxy(&origin, &[]);
    let private = [("range", "bytes=0-999"), ("authorization", "Bearer alice")];
    get(&shared, "/private-movie", &private).await;
    let other = get(&shared, "/private-movie", &[("range", "bytes=0-999")]).await;
    assert!(!other.hit(), "{}", other.cache_status());
    assert_eq!(origin.hits(), 2);
    // Partial entries take room within --max-size: a 2 MB range into a 256 KiB cache.
    let (small, dir) = proxy(&origin, &["--max-size", "256k"]);
    let whole = get(&small, "/movie", &[("range", "bytes=0-")]).await;
    assert_eq!(whole.body.as_ref(), &body[..], "the client gets every byte");
    let on_disk = common::disk_bytes(dir.path());
    assert!(
        on_disk <= 256 * 1024,
        "{on_disk} bytes in the cache directory"
    );
    let start = get(&small, "/movie", &[("range", "bytes=0-9999")]).await;
    assert!(start.hit(), "what fitted is held: {}", start.cache_status());
    assert_eq!(start.body.as_ref(), &body[..10_000]);
}

/// An origin's `206` that disagrees with itself (its `Content-Range` names six bytes, its
/// body has five) is answered with a clean `502` saying why, every time, and nothing of it
/// is kept: never a connection dropped under a client, never a mismatch stored for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_206_that_disagrees_with_itself_is_a_clean_502() {
    let origin = Origin::start(|parts, _| {
        let range: &[(&str, &str)] = match parts.uri.path() {
            // Six bytes named, five sent (with a Content-Length of five).
            "/short" => &[("content-range", "bytes 0-5/10")],
            // A span that ends before it starts, or past the whole length.
            "/backwards" => &[("content-range", "bytes 5-2/10")],
            _ => &[("content-range", "bytes 0-4/3")],
        };
        let mut response = reply(range, "abcde");
        *response.status_mut() = http::StatusCode::PARTIAL_CONTENT;
        for (name, value) in [("etag", "\"v1\""), ("cache-control", "max-age=600")] {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    })
    .await;
    let (proxy, dir) = proxy(&origin, &[]);
    for path in ["/short", "/backwards", "/beyond"] {
        for _ in 0..2 {
            let got = get(&proxy, path, &[("range", "bytes=0-5")]).await;
            assert_eq!(
                got.status,
                http::StatusCode::BAD_GATEWAY,
                "{path}: {}",
                got.cache_status()
            );
            assert!(
                got.cache_status().contains("detail=malformed-partial"),
                "{path}: {}",
                got.cache_status()
            );
            assert!(got.body.is_empty());
        }
    }
    assert!(common::record_files(dir.path()).is_empty());
}

/// A final status the cache does not know, with explicit freshness, is reused as the origin
/// asked (RFC 9111 §3); under `must-understand` it is not stored at all (§5.2.2.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_statuses_are_reused_as_asked_unless_they_must_be_understood() {
    let origin = Origin::start(|parts, n| {
        let control = match parts.uri.path() {
            "/must" => "max-age=600, must-understand",
            _ => "max-age=600",
        };
        let mut response = reply(&[("cache-control", control)], format!("n{n}"));
        *response.status_mut() = http::StatusCode::from_u16(418).unwrap();
        response
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    for (path, reused) in [("/plain", true), ("/must", false)] {
        let first = get(&proxy, path, &[]).await;
        let again = get(&proxy, path, &[]).await;
        assert_eq!(again.status.as_u16(), 418);
        assert_eq!(again.hit(), reused, "{path}: {}", again.cache_status());
        assert_eq!(again.body == first.body, reused, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_answers_languages_dates_and_heads_without_validators_as_the_rfc_allows() {
    let origin = Origin::start(|parts, n| {
        let body = format!("n{n}");
        match (parts.method.as_str(), parts.uri.path()) {
            ("POST", path) => reply(
                &[("cache-control", "max-age=60"), ("content-location", path)],
                body,
            ),
            (_, "/lang") => {
                let asked = parts.headers["accept-language"].to_str().unwrap();
                let lang = if asked.starts_with("fr") { "fr" } else { "de" };
                let headers = [
                    ("cache-control", "max-age=60"),
                    ("vary", "Accept-Language"),
                    ("content-language", lang),
                ];
                reply(&headers, format!("{lang} {body}"))
            }
            // asctime, and a day's name that is not the date's (2 Jan 2099 is a Friday).
            (_, "/asctime") => reply(&[("expires", "Mon Jan  2 00:00:00 2099")], body),
            // Stale on arrival, no validator; the HEAD's answer is fresh.
            ("HEAD", "/head") => reply(&[("cache-control", "max-age=60")], "body"),
            (_, "/head") => reply(&[("cache-control", "max-age=60"), ("age", "100")], "body"),
            _ => reply(&[], body),
        }
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    let posted = request(&proxy, "POST", "/form", &[]).await;
    let after = get(&proxy, "/form", &[]).await;
    assert!(after.hit(), "{}", after.cache_status());
    assert_eq!(after.body, posted.body);

    let stored = get(&proxy, "/lang", &[("accept-language", "en, de")]).await;
    let preferring = get(
        &proxy,
        "/lang",
        &[("accept-language", "fr;q=0.5, de;q=1.0")],
    )
    .await;
    assert!(preferring.hit(), "{}", preferring.cache_status());
    assert_eq!(preferring.body, stored.body);

    let first = get(&proxy, "/asctime", &[]).await;
    let again = get(&proxy, "/asctime", &[]).await;
    assert!(again.hit(), "{}", again.cache_status());
    assert_eq!(again.body, first.body);

    get(&proxy, "/head", &[]).await;
    let hits = origin.hits();
    assert_eq!(
        request(&proxy, "HEAD", "/head", &[]).await.status,
        StatusCode::OK
    );
    let freshened = get(&proxy, "/head", &[]).await;
    assert!(freshened.hit(), "{}", freshened.cache_status());
    assert_eq!(freshened.body, "body");
    assert_eq!(origin.hits(), hits + 1, "the HEAD alone");
}

/// An origin that answers every request on a connection with a `103 Early Hints` and then
/// a fresh `200`, as nginx does with `early_hints`: written by hand, since hyper's server
/// sends no interim response but `100 Continue`.
async fn early_hints_origin() -> (String, Arc<AtomicU16>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicU16::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Ok(read) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        request.drain(..end + 4);
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        let body = format!("final {n}");
                        let answer = format!(
                            "HTTP/1.1 103 Early Hints\r\nlink: </hint.css>; rel=preload\r\n\r\n\
                             HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                             content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_never_stored_nor_lend_their_fields_to_the_final_one() {
    let (upstream, served) = early_hints_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&upstream, dir.path(), &[]);
    let get = |proxy: &Proxy| {
        let request = Request::get(format!("http://{}/page", proxy.addr))
            .body(Full::default())
            .unwrap();
        async move { send(&mut client(), request).await }
    };
    let first = get(&proxy).await;
    assert_eq!(
        (first.status, &first.body[..]),
        (StatusCode::OK, &b"final 1"[..])
    );
    assert_eq!(first.header("link"), None, "the 103's fields are the 103's");
    // The 200 was stored, not the 103; the hit carries none of the 103's fields either.
    let second = get(&proxy).await;
    assert!(second.hit(), "{}", second.cache_status());
    assert_eq!(
        (second.status, &second.body[..]),
        (StatusCode::OK, &b"final 1"[..])
    );
    assert_eq!(second.header("link"), None);
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_cannot_forge_the_variant_lists_language_lines() {
    // Every answer carries the line the cache writes in a variant list, naming a digest of
    // the origin's choosing: it is dropped before anything is stored or served.
    let origin = Origin::start(|parts, n| {
        let asked = parts.headers["accept-language"].to_str().unwrap();
        let lang = if asked.starts_with("fr") { "fr" } else { "de" };
        let headers = [
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Language"),
            ("content-language", lang),
            ("x-http-cache-streaming-languages", "0 0 =fr"),
            ("x-http-cache-streaming-stored", "0"),
        ];
        reply(&headers, format!("{lang} n{n}"))
    })
    .await;
    let (proxy, _dir) = proxy(&origin, &[]);
    let de = get(&proxy, "/page", &[("accept-language", "de, en")]).await;
    assert_eq!(de.body, "de n1");
    assert_eq!(de.header("x-http-cache-streaming-languages"), None);
    let hit = get(&proxy, "/page", &[("accept-language", "de;q=0.9")]).await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert_eq!(hit.header("x-http-cache-streaming-languages"), None);
    assert_eq!(hit.header("x-http-cache-streaming-stored"), None);
    // French is asked of the origin, never answered with the German page.
    let fr = get(&proxy, "/page", &[("accept-language", "fr")]).await;
    assert_eq!(fr.body, "fr n2");
    assert_eq!(origin.hits(), 2);
}
