//! The layer over a real loopback origin: what is served, what the origin sees, and what is
//! stored, for each rule of RFC 9111 the cache follows.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{
    CacheMode, HttpCacheOptions, HttpCacheStreaming, HttpCacheStreamingLayer, StreamingBody,
    StreamingManager,
};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A clock the tests move forward.
#[derive(Clone, Default)]
struct Clock(Arc<AtomicU64>);

impl Clock {
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

struct Setup {
    origin: Origin,
    cache: HttpCacheStreaming<Client>,
    dir: tempfile::TempDir,
    clock: Clock,
}

async fn setup<F>(options: HttpCacheOptions, handler: F) -> Setup
where
    F: Fn(&http::request::Parts, usize) -> Response<AxumBody> + Send + Sync + 'static,
{
    let origin = Origin::start(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::default();
    let now = clock.clone();
    let options = options.clock(move || now.now());
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(manager, options))
        .service(client());
    Setup {
        origin,
        cache,
        dir,
        clock,
    }
}

/// A response an origin sends: status 200, these headers, this body.
fn reply(headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::from(body.into()));
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        response.headers_mut().append(name, value.parse().unwrap());
    }
    response
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn with(method: &str, url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::default()).unwrap()
}

#[tokio::test]
async fn a_fresh_response_is_served_from_disk_without_the_origin() {
    let mut s = setup(HttpCacheOptions::default(), |_, n| {
        reply(
            &[("cache-control", "max-age=60"), ("x-n", &n.to_string())],
            "hello",
        )
    })
    .await;
    let url = s.origin.url("/a");
    let first = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        (first.status, &first.body[..]),
        (StatusCode::OK, &b"hello"[..])
    );
    assert!(
        first.cache_status().contains("fwd=uri-miss"),
        "{}",
        first.cache_status()
    );
    assert!(first.cache_status().contains("stored"));

    s.clock.advance(5);
    let second = send(&mut s.cache, get(&url)).await;
    assert_eq!(&second.body[..], b"hello");
    assert_eq!(second.header("x-n"), Some("1"), "the stored response");
    assert_eq!(s.origin.hits(), 1, "the origin is not asked again");
    assert!(
        second
            .cache_status()
            .starts_with("http-cache-streaming; hit; ttl=")
    );
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!((5..=6).contains(&age), "Age is generated: {age}");
    assert_eq!(
        second.header("date"),
        first.header("date"),
        "Date is not rewritten"
    );
    assert_eq!(
        (
            record_files(s.dir.path()).len(),
            content_files(s.dir.path()).len()
        ),
        (1, 1)
    );
    let stats = s.cache.cache().stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses, stats.store.entries), (1, 1, 1));

    // Purged: the next request goes to the origin again.
    s.cache.cache().purge(&url).await.unwrap();
    assert_eq!(&send(&mut s.cache, get(&url)).await.body[..], b"hello");
    assert_eq!(s.origin.hits(), 2, "purged");

    // Purged by prefix: everything under /a goes, the rest stays.
    send(&mut s.cache, get(&s.origin.url("/a/b"))).await;
    send(&mut s.cache, get(&s.origin.url("/other"))).await;
    let dir = s.dir.path().to_path_buf();
    eventually("three entries", || record_files(&dir).len() == 3).await;
    let removed = s
        .cache
        .cache()
        .purge_prefix(&s.origin.url("/a"))
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(record_files(&dir).len(), 1);
}

#[tokio::test]
async fn stale_responses_are_revalidated_and_a_304_refreshes_headers_only() {
    let changed = Arc::new(AtomicBool::new(false));
    let origin_changed = changed.clone();
    let mut s = setup(HttpCacheOptions::default(), move |parts, n| {
        let changed = origin_changed.load(Ordering::SeqCst);
        let etag = if changed { "\"v2\"" } else { "\"v1\"" };
        if parts
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == etag)
        {
            let mut not_modified = reply(
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", etag),
                    ("x-rev", &n.to_string()),
                ],
                "",
            );
            *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
            return not_modified;
        }
        let body = if changed { "body two" } else { "body one" };
        reply(
            &[
                ("cache-control", "max-age=10"),
                ("etag", etag),
                ("x-rev", &n.to_string()),
            ],
            body,
        )
    })
    .await;
    let url = s.origin.url("/doc");
    send(&mut s.cache, get(&url)).await;
    let dir = s.dir.path().to_path_buf();
    eventually("the body is committed", || content_files(&dir).len() == 1).await;
    let content = content_files(&dir);

    s.clock.advance(20);
    let revalidated = send(&mut s.cache, get(&url)).await;
    assert_eq!(s.origin.hits(), 2);
    assert_eq!(
        s.origin
            .last_request()
            .headers
            .get("if-none-match")
            .unwrap(),
        "\"v1\"",
        "a conditional request"
    );
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(&revalidated.body[..], b"body one", "the stored body");
    assert_eq!(revalidated.header("x-rev"), Some("2"), "the 304's headers");
    assert!(
        revalidated
            .cache_status()
            .contains("fwd=stale; fwd-status=304")
    );
    assert_eq!(
        content_files(s.dir.path()),
        content,
        "the content file is kept"
    );

    assert_eq!(s.cache.cache().stats().await.unwrap().revalidations, 1);
    let fresh_again = send(&mut s.cache, get(&url)).await;
    assert_eq!(s.origin.hits(), 2, "fresh again after the 304");
    assert_eq!(
        fresh_again.header("x-rev"),
        Some("2"),
        "the updated headers are stored"
    );

    changed.store(true, Ordering::SeqCst);
    s.clock.advance(20);
    let replaced = send(&mut s.cache, get(&url)).await;
    assert_eq!(&replaced.body[..], b"body two");
    let hit = send(&mut s.cache, get(&url)).await;
    assert_eq!((&hit.body[..], s.origin.hits()), (&b"body two"[..], 3));
    let now = content_files(s.dir.path());
    assert_eq!(now.len(), 1);
    assert_ne!(now, content, "the replaced body's content is removed");
}

#[tokio::test]
async fn must_revalidate_with_an_unreachable_origin_is_a_504() {
    let mut s = setup(HttpCacheOptions::default(), |_, _| {
        reply(
            &[("cache-control", "max-age=10, must-revalidate")],
            "strict",
        )
    })
    .await;
    let url = s.origin.url("/strict");
    send(&mut s.cache, get(&url)).await;
    s.origin.stop().await;
    let fresh = send(&mut s.cache, get(&url)).await;
    assert_eq!(&fresh.body[..], b"strict", "fresh: served");
    s.clock.advance(60);
    let stale = send(&mut s.cache, get(&url)).await;
    assert_eq!(stale.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(stale.body.is_empty(), "never a stale body");
}

#[tokio::test]
async fn variants_are_chosen_by_the_headers_vary_names() {
    let mut s = setup(HttpCacheOptions::default(), |parts, _| {
        let lang = parts
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap());
        if parts.uri.path() == "/star" {
            return reply(&[("cache-control", "max-age=60"), ("vary", "*")], "star");
        }
        reply(
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            format!("lang={lang}"),
        )
    })
    .await;
    let url = s.origin.url("/v");
    let en = || with("GET", &url, &[("accept-language", "en")]);
    let fr = || with("GET", &url, &[("accept-language", "fr")]);
    assert_eq!(&send(&mut s.cache, en()).await.body[..], b"lang=en");
    let fr_first = send(&mut s.cache, fr()).await;
    assert_eq!(&fr_first.body[..], b"lang=fr");
    assert!(
        fr_first.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr_first.cache_status()
    );
    assert_eq!(s.origin.hits(), 2);
    for _ in 0..2 {
        assert_eq!(&send(&mut s.cache, en()).await.body[..], b"lang=en");
        assert_eq!(&send(&mut s.cache, fr()).await.body[..], b"lang=fr");
        assert_eq!(&send(&mut s.cache, get(&url)).await.body[..], b"lang=none");
    }
    assert_eq!(s.origin.hits(), 3, "each variant fetched once");

    let star = s.origin.url("/star");
    send(&mut s.cache, get(&star)).await;
    send(&mut s.cache, get(&star)).await;
    assert_eq!(s.origin.hits(), 5, "Vary: * is never served from the cache");

    // The list and its three variants are on disk; a POST to the URL removes all four,
    // rather than leaving the variants behind, again and again.
    eventually("the variants listed", || {
        record_files(s.dir.path()).len() == 4
    })
    .await;
    for round in 0..3 {
        let posted = send(&mut s.cache, with("POST", &url, &[])).await;
        assert_eq!(posted.status, StatusCode::OK);
        assert!(
            record_files(s.dir.path()).is_empty(),
            "round {round}: {:?}",
            record_files(s.dir.path())
        );
        for request in [en(), fr(), get(&url)] {
            send(&mut s.cache, request).await;
        }
        eventually("the variants stored again", || {
            record_files(s.dir.path()).len() == 4
        })
        .await;
    }
    let fr_again = send(&mut s.cache, fr()).await;
    assert!(fr_again.cache_status().contains("hit"));
    assert_eq!(&fr_again.body[..], b"lang=fr");
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_and_never_stored() {
    let mut s = setup(HttpCacheOptions::default(), |_, _| {
        reply(&[("cache-control", "max-age=60")], "0123456789")
    })
    .await;
    let url = s.origin.url("/h");
    send(&mut s.cache, get(&url)).await;
    // The first HEAD reads the stored body from disk; the next ones find it in memory.
    for _ in 0..3 {
        let head = send(&mut s.cache, with("HEAD", &url, &[])).await;
        assert_eq!(s.origin.hits(), 1, "HEAD from the stored GET");
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-length"), Some("10"));
        assert!(head.cache_status().contains("hit"));
    }
    assert_eq!(&send(&mut s.cache, get(&url)).await.body[..], b"0123456789");

    let other = s.origin.url("/h2");
    send(&mut s.cache, with("HEAD", &other, &[])).await;
    let body = send(&mut s.cache, get(&other)).await;
    assert_eq!(
        &body.body[..],
        b"0123456789",
        "a HEAD response never stands for a GET"
    );
    assert_eq!(s.origin.hits(), 3);
}

#[tokio::test]
async fn unsafe_methods_invalidate_their_url_and_location() {
    let mut s = setup(HttpCacheOptions::default(), |parts, n| {
        let mut response = reply(&[("cache-control", "max-age=60")], format!("v{n}"));
        match (parts.method.as_str(), parts.uri.path()) {
            ("POST", "/items") => {
                *response.status_mut() = StatusCode::CREATED;
                response
                    .headers_mut()
                    .insert("location", "/items/2".parse().unwrap());
            }
            ("POST", "/fails") => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
            _ => {}
        }
        response
    })
    .await;
    let item = s.origin.url("/items/1");
    let other = s.origin.url("/items/2");
    let fails = s.origin.url("/fails");
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let before = send(&mut s.cache, get(&item)).await.body;
        assert_eq!(send(&mut s.cache, get(&item)).await.body, before, "stored");
        send(&mut s.cache, with(method, &item, &[])).await;
        let after = send(&mut s.cache, get(&item)).await.body;
        assert_ne!(after, before, "{method} invalidates its URL");
    }

    let before = send(&mut s.cache, get(&other)).await.body;
    send(&mut s.cache, with("POST", &s.origin.url("/items"), &[])).await;
    assert_ne!(
        send(&mut s.cache, get(&other)).await.body,
        before,
        "Location is invalidated"
    );

    let before = send(&mut s.cache, get(&fails)).await.body;
    send(&mut s.cache, with("POST", &fails, &[])).await;
    assert_eq!(
        send(&mut s.cache, get(&fails)).await.body,
        before,
        "a failed POST invalidates nothing"
    );
}

/// Whether the second of two requests is answered from the store.
async fn twice(s: &mut Setup, request: fn(&str) -> Request<Full<Bytes>>, path: &str) -> bool {
    let url = s.origin.url(path);
    let a = send(&mut s.cache, request(&url)).await.body;
    let b = send(&mut s.cache, request(&url)).await.body;
    a == b
}

#[tokio::test]
async fn what_must_not_be_stored_is_not() {
    let mut s = setup(HttpCacheOptions::default(), |parts, n| {
        let cc = match parts.uri.path() {
            "/no-store" => "max-age=60, no-store",
            "/private" => "max-age=60, private",
            "/public" => "max-age=60, public",
            _ => "max-age=60",
        };
        if parts.uri.path() == "/partial" {
            let mut partial = reply(
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-1/10"),
                ],
                format!("{n}"),
            );
            *partial.status_mut() = StatusCode::PARTIAL_CONTENT;
            return partial;
        }
        if parts.uri.path() == "/found" {
            let mut found = reply(&[("location", "/elsewhere")], format!("n{n}"));
            *found.status_mut() = StatusCode::FOUND;
            return found;
        }
        if parts.uri.path() == "/cookie" {
            return reply(
                &[("cache-control", cc), ("set-cookie", "session=abc")],
                format!("n{n}"),
            );
        }
        reply(&[("cache-control", cc)], format!("n{n}"))
    })
    .await;
    assert!(!twice(&mut s, get, "/no-store").await, "no-store");
    assert!(
        !twice(&mut s, get, "/private").await,
        "private in a shared cache"
    );
    let authorized = |url: &str| with("GET", url, &[("authorization", "Bearer secret-token")]);
    assert!(
        !twice(&mut s, authorized, "/plain").await,
        "Authorization without public"
    );
    assert!(
        twice(&mut s, authorized, "/public").await,
        "Authorization with public"
    );
    let records = record_files(s.dir.path());
    for record in &records {
        let text =
            std::fs::read_to_string(s.dir.path().join("cache-v2/metadata").join(record)).unwrap();
        assert!(
            !text.contains("secret-token"),
            "credentials are never stored"
        );
    }
    assert_eq!(records.len(), 1);
}

#[tokio::test]
async fn private_responses_are_stored_by_a_private_cache() {
    let mut s = setup(HttpCacheOptions::default().shared(false), |_, n| {
        reply(
            &[
                ("cache-control", "max-age=60, private"),
                ("set-cookie", "session=mine"),
            ],
            format!("n{n}"),
        )
    })
    .await;
    let url = s.origin.url("/mine");
    send(&mut s.cache, get(&url)).await;
    let again = send(&mut s.cache, get(&url)).await;
    assert_eq!(&again.body[..], b"n1");
    assert_eq!(again.header("set-cookie"), Some("session=mine"));
}

#[tokio::test]
async fn request_cache_control_is_honoured() {
    let mut s = setup(HttpCacheOptions::default(), |parts, n| {
        let etag = "\"e\"";
        if parts
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == etag)
        {
            let mut r = reply(&[("cache-control", "max-age=60"), ("etag", etag)], "");
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            return r;
        }
        reply(
            &[("cache-control", "max-age=60"), ("etag", etag)],
            format!("n{n}"),
        )
    })
    .await;
    let url = s.origin.url("/r");
    send(&mut s.cache, get(&url)).await;
    for directive in ["no-cache", "max-age=0"] {
        let hits = s.origin.hits();
        let got = send(
            &mut s.cache,
            with("GET", &url, &[("cache-control", directive)]),
        )
        .await;
        assert_eq!(s.origin.hits(), hits + 1, "{directive} goes to the origin");
        assert!(
            s.origin
                .last_request()
                .headers
                .contains_key("if-none-match")
        );
        assert_eq!(
            &got.body[..],
            b"n1",
            "{directive}: validated, served from disk"
        );
    }
    let hits = s.origin.hits();
    let cached = send(
        &mut s.cache,
        with("GET", &url, &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(&cached.body[..], b"n1");
    let missing = send(
        &mut s.cache,
        with(
            "GET",
            &s.origin.url("/never"),
            &[("cache-control", "only-if-cached")],
        ),
    )
    .await;
    assert_eq!(missing.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        s.origin.hits(),
        hits,
        "only-if-cached never asks the origin"
    );

    // max-stale accepts a stale entry; min-fresh refuses one about to go stale.
    s.clock.advance(90);
    let stale_ok = send(
        &mut s.cache,
        with("GET", &url, &[("cache-control", "max-stale=60")]),
    )
    .await;
    assert_eq!((&stale_ok.body[..], s.origin.hits()), (&b"n1"[..], hits));
    send(&mut s.cache, get(&url)).await; // revalidated: fresh for 60 s again
    let hits = s.origin.hits();
    s.clock.advance(50);
    send(
        &mut s.cache,
        with("GET", &url, &[("cache-control", "min-fresh=30")]),
    )
    .await;
    assert_eq!(
        s.origin.hits(),
        hits + 1,
        "min-fresh=30 with 10 s left goes to the origin"
    );

    // A request's no-store keeps its response out of the store.
    let other = s.origin.url("/not-kept");
    send(
        &mut s.cache,
        with("GET", &other, &[("cache-control", "no-store")]),
    )
    .await;
    let hits = s.origin.hits();
    send(&mut s.cache, get(&other)).await;
    assert_eq!(s.origin.hits(), hits + 1, "nothing was stored");
}

#[tokio::test]
async fn each_cache_mode_and_a_per_request_override() {
    let handler = |parts: &http::request::Parts, n: usize| {
        let cc = if parts.uri.path() == "/no-store" {
            "no-store"
        } else {
            "max-age=10"
        };
        reply(&[("cache-control", cc), ("etag", "\"x\"")], format!("n{n}"))
    };
    let mode = |mode| HttpCacheOptions::default().mode(mode);

    // NoStore: neither looked up nor stored.
    let mut s = setup(mode(CacheMode::NoStore), handler).await;
    let url = s.origin.url("/m");
    send(&mut s.cache, get(&url)).await;
    send(&mut s.cache, get(&url)).await;
    assert_eq!((s.origin.hits(), record_files(s.dir.path()).len()), (2, 0));

    // Reload: always fetched, and stored.
    let mut s = setup(mode(CacheMode::Reload), handler).await;
    let url = s.origin.url("/m");
    send(&mut s.cache, get(&url)).await;
    let second = send(&mut s.cache, get(&url)).await;
    assert_eq!((s.origin.hits(), &second.body[..]), (2, &b"n2"[..]));
    let dir = s.dir.path().to_path_buf();
    eventually("the reload is stored", || record_files(&dir).len() == 1).await;

    // NoCache: a fresh entry is still revalidated.
    let mut s = setup(mode(CacheMode::NoCache), handler).await;
    let url = s.origin.url("/m");
    send(&mut s.cache, get(&url)).await;
    send(&mut s.cache, get(&url)).await;
    assert_eq!(s.origin.hits(), 2);
    assert!(
        s.origin
            .last_request()
            .headers
            .contains_key("if-none-match")
    );

    // ForceCache: a stale entry is served as it is.
    let mut s = setup(mode(CacheMode::ForceCache), handler).await;
    let url = s.origin.url("/m");
    send(&mut s.cache, get(&url)).await;
    s.clock.advance(3600);
    assert_eq!(&send(&mut s.cache, get(&url)).await.body[..], b"n1");
    assert_eq!(s.origin.hits(), 1);

    // OnlyIfCached: a stale entry is served; nothing stored is a 504 without the origin.
    let mut s = setup(HttpCacheOptions::default(), handler).await;
    let url = s.origin.url("/m");
    send(&mut s.cache, get(&url)).await;
    s.clock.advance(3600);
    let only = |url: &str| {
        let mut request = get(url);
        request.extensions_mut().insert(CacheMode::OnlyIfCached);
        request
    };
    assert_eq!(&send(&mut s.cache, only(&url)).await.body[..], b"n1");
    let missing = send(&mut s.cache, only(&s.origin.url("/none"))).await;
    assert_eq!(missing.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(s.origin.hits(), 1);

    // IgnoreRules: even no-store is stored and served.
    let mut s = setup(mode(CacheMode::IgnoreRules), handler).await;
    let url = s.origin.url("/no-store");
    send(&mut s.cache, get(&url)).await;
    assert_eq!(&send(&mut s.cache, get(&url)).await.body[..], b"n1");
    assert_eq!(s.origin.hits(), 1);

    // A request's extension overrides the layer's mode; mode_fn chooses per request.
    let options = HttpCacheOptions::default().mode_fn(|parts| {
        if parts.uri.path() == "/bypass" {
            CacheMode::NoStore
        } else {
            CacheMode::Default
        }
    });
    let mut s = setup(options, handler).await;
    let url = s.origin.url("/m");
    send(&mut s.cache, get(&url)).await;
    let mut reload = get(&url);
    reload.extensions_mut().insert(CacheMode::Reload);
    assert_eq!(&send(&mut s.cache, reload).await.body[..], b"n2");
    assert_eq!(
        &send(&mut s.cache, get(&url)).await.body[..],
        b"n2",
        "the reload was stored"
    );
    let bypass = s.origin.url("/bypass");
    send(&mut s.cache, get(&bypass)).await;
    send(&mut s.cache, get(&bypass)).await;
    assert_eq!(s.origin.hits(), 4);
}

#[tokio::test]
async fn max_ttl_caps_freshness_and_cache_bust_removes_keys() {
    let options = HttpCacheOptions::default()
        .max_ttl(Duration::from_secs(30))
        .cache_bust(|parts, _key| {
            if parts.uri.path() == "/bust" {
                vec![format!(
                    "GET:http://{}/long",
                    parts.uri.authority().unwrap()
                )]
            } else {
                Vec::new()
            }
        });
    let mut s = setup(options, |_, n| {
        reply(&[("cache-control", "max-age=3600")], format!("n{n}"))
    })
    .await;
    let url = s.origin.url("/long");
    send(&mut s.cache, get(&url)).await;
    s.clock.advance(20);
    send(&mut s.cache, get(&url)).await;
    assert_eq!(s.origin.hits(), 1, "within the cap");
    s.clock.advance(20);
    send(&mut s.cache, get(&url)).await;
    assert_eq!(s.origin.hits(), 2, "past the cap");
    send(&mut s.cache, get(&url)).await;
    assert_eq!(s.origin.hits(), 2);
    send(&mut s.cache, get(&s.origin.url("/bust"))).await;
    send(&mut s.cache, get(&url)).await;
    assert_eq!(s.origin.hits(), 4, "busted");
}

/// A cached client whose origin answers one cacheable response with a body the test feeds
/// frame by frame; returns the feed and the response, headers arrived, body unread.
async fn streaming_miss() -> (Setup, FrameSender, Response<StreamingBody>) {
    let (tx, body) = channel_body();
    let body = std::sync::Mutex::new(Some(body));
    // A client that goes away abandons the entry (unless told to complete it).
    let options = HttpCacheOptions::default().complete_on_disconnect(false);
    let mut s = setup(options, move |_, _| {
        let body = body.lock().unwrap().take().expect("one request");
        let mut response = Response::new(AxumBody::new(body));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        response
    })
    .await;
    let url = s.origin.url("/streaming");
    let response = s
        .cache
        .ready()
        .await
        .unwrap()
        .call(get(&url))
        .await
        .unwrap();
    (s, tx, response)
}

/// Waits for the partial body to be removed and checks that nothing was committed.
async fn assert_nothing_stored(s: &Setup) {
    let dir = s.dir.path().to_path_buf();
    eventually("the partial body is removed", || {
        temp_files(&dir).is_empty()
    })
    .await;
    assert!(record_files(&dir).is_empty(), "nothing committed");
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_no_entry() {
    let (s, tx, response) = streaming_miss().await;
    tx.send(Ok(http_body::Frame::data(Bytes::from("first"))))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first", "the client gets frames as they come");
    drop(body);
    drop(tx);
    assert_nothing_stored(&s).await;
}

#[tokio::test]
async fn an_origin_body_error_reaches_the_client_and_stores_nothing() {
    let (s, tx, response) = streaming_miss().await;
    tx.send(Ok(http_body::Frame::data(Bytes::from("partial"))))
        .await
        .unwrap();
    tx.send(Err(std::io::Error::other("origin failed")))
        .await
        .unwrap();
    let result = response.into_body().collect().await;
    assert!(result.is_err(), "the client sees the body fail");
    assert_nothing_stored(&s).await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut service = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service_fn(|_request: Request<Full<Bytes>>| async {
            let response = Response::builder()
                .header("cache-control", "max-age=60")
                .header("content-length", "10")
                .body(Full::new(Bytes::from_static(b"short")))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
    let got = send(&mut service, get("http://example.com/short")).await;
    assert_eq!(&got.body[..], b"short");
    eventually("the partial body is removed", || {
        temp_files(dir.path()).is_empty()
    })
    .await;
    assert!(record_files(dir.path()).is_empty(), "nothing committed");
}

#[tokio::test]
async fn a_store_that_fails_never_fails_a_request() {
    let origin =
        Origin::start(|_, n| reply(&[("cache-control", "max-age=60")], format!("n{n}"))).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    // A file where the cache directory should be: nothing can be created below it.
    let manager = StreamingManager::new(file.path().join("cache"));
    let mut cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service(client());
    for n in 1..=3 {
        let got = send(&mut cache, get(&origin.url("/x"))).await;
        assert_eq!(
            (got.status, got.body),
            (StatusCode::OK, Bytes::from(format!("n{n}")))
        );
    }
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn the_layer_serves_an_axum_router() {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let app = axum::Router::new()
        .route(
            "/page",
            axum::routing::get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { ([("cache-control", "max-age=60")], format!("page {n}")) }
            }),
        )
        .layer(HttpCacheStreamingLayer::new(manager.clone()));
    let routed = axum::Router::new()
        .route(
            "/routed",
            axum::routing::get(|| async { ([("cache-control", "max-age=60")], "routed") }),
        )
        .route_layer(HttpCacheStreamingLayer::new(manager));
    let app = app.merge(routed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut plain = client();
    for round in 0..3 {
        let response = plain
            .ready()
            .await
            .unwrap()
            .call(get(&format!("http://{addr}/page")))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"page 1");
        let routed = send(&mut plain, get(&format!("http://{addr}/routed"))).await;
        assert_eq!(&routed.body[..], b"routed");
        let expected = if round == 0 { "fwd=uri-miss" } else { "hit" };
        assert!(
            routed.cache_status().contains(expected),
            "{}",
            routed.cache_status()
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_custom_key_and_x_cache_headers() {
    // Keys without the query string: ?utm=... variations share one entry.
    let options = HttpCacheOptions::default()
        .x_cache_headers(true)
        .cache_key(|parts| format!("{}:{}", parts.method, parts.uri.path()));
    let mut s = setup(options, |_, n| {
        reply(&[("cache-control", "max-age=60")], format!("n{n}"))
    })
    .await;
    let first = send(&mut s.cache, get(&s.origin.url("/page?utm=a"))).await;
    assert_eq!(
        (first.header("x-cache"), first.header("x-cache-lookup")),
        (Some("MISS"), Some("MISS"))
    );
    let second = send(&mut s.cache, get(&s.origin.url("/page?utm=b"))).await;
    assert_eq!(&second.body[..], b"n1");
    assert_eq!(
        (second.header("x-cache"), second.header("x-cache-lookup")),
        (Some("HIT"), Some("HIT"))
    );
    assert_eq!(s.origin.hits(), 1);
}

#[tokio::test]
async fn the_layer_works_under_a_concurrency_limit_and_a_buffer() {
    let origin = Origin::start(|_, _| reply(&[("cache-control", "max-age=60")], "limited")).await;
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let service = ServiceBuilder::new()
        .buffer(16)
        .concurrency_limit(1)
        .layer(HttpCacheStreamingLayer::new(manager))
        .timeout(Duration::from_secs(30))
        .service(client());
    let url = origin.url("/limited");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut service = service.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(get(&url))
                .await
                .unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    for task in tasks {
        assert_eq!(&task.await.unwrap()[..], b"limited");
    }
    assert!(origin.hits() >= 1);
}

#[tokio::test]
async fn trailers_pass_through_and_are_replayed_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut service = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service_fn(|_request: Request<Full<Bytes>>| async {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let body = Full::new(Bytes::from_static(b"with trailers"))
                .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
            let response = Response::builder()
                .header("cache-control", "max-age=60")
                .body(body)
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
    for expected in ["fwd=uri-miss", "hit"] {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(get("http://example.com/t"))
            .await
            .unwrap();
        let status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(status.contains(expected), "{status}");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc123");
        assert_eq!(&collected.to_bytes()[..], b"with trailers");
    }
}

/// An origin that answers `max-age=10` plus `extra` until it is told to fail with `failure`.
async fn failing_later(
    options: HttpCacheOptions,
    extra: &'static str,
) -> (Setup, Arc<std::sync::atomic::AtomicU16>) {
    let failure = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let fail = failure.clone();
    let s = setup(options, move |_, n| {
        let code = fail.load(Ordering::SeqCst);
        let mut response = reply(
            &[("cache-control", &format!("max-age=10{extra}"))],
            format!("n{n}"),
        );
        if code != 0 {
            *response.status_mut() = StatusCode::from_u16(code).unwrap();
        }
        response
    })
    .await;
    (s, failure)
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_within_its_window_only() {
    let (mut s, failure) = failing_later(HttpCacheOptions::default(), ", stale-if-error=60").await;
    let url = s.origin.url("/sie");
    send(&mut s.cache, get(&url)).await;
    failure.store(503, Ordering::SeqCst);

    s.clock.advance(30); // stale for 20 s, within the window
    let within = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        (within.status, &within.body[..]),
        (StatusCode::OK, &b"n1"[..])
    );
    assert!(
        within.cache_status().contains("stale-if-error"),
        "{}",
        within.cache_status()
    );
    assert!(within.cache_status().contains("fwd-status=503"));

    assert_eq!(s.cache.cache().stats().await.unwrap().stale_served, 1);
    s.clock.advance(60); // stale for 80 s, outside it
    let outside = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        outside.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the error is passed on"
    );

    // A request's own stale-if-error widens the window.
    let asked = with("GET", &url, &[("cache-control", "stale-if-error=600")]);
    assert_eq!(&send(&mut s.cache, asked).await.body[..], b"n1");
}

#[tokio::test]
async fn stale_if_error_covers_an_unreachable_origin_and_the_layer_option() {
    let options = HttpCacheOptions::default().stale_if_error(Duration::from_secs(120));
    let (mut s, failure) = failing_later(options, "").await;
    let url = s.origin.url("/opt");
    send(&mut s.cache, get(&url)).await;
    failure.store(500, Ordering::SeqCst);
    s.clock.advance(60);
    let on_500 = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        (on_500.status, &on_500.body[..]),
        (StatusCode::OK, &b"n1"[..])
    );

    s.origin.stop().await;
    let unreachable = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        &unreachable.body[..],
        b"n1",
        "an unreachable origin, within the window"
    );
    s.clock.advance(600);
    let response = s.cache.ready().await.unwrap().call(get(&url)).await;
    assert!(response.is_err(), "outside the window the error stands");
}

#[tokio::test]
async fn must_revalidate_wins_over_stale_if_error() {
    let (mut s, failure) = failing_later(
        HttpCacheOptions::default(),
        ", must-revalidate, stale-if-error=600",
    )
    .await;
    let url = s.origin.url("/strict");
    send(&mut s.cache, get(&url)).await;
    failure.store(503, Ordering::SeqCst);
    s.clock.advance(30);
    let got = send(&mut s.cache, get(&url)).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_revalidates_once_in_the_background() {
    let mut s = setup(HttpCacheOptions::default(), |_, n| {
        reply(
            &[("cache-control", "max-age=10, stale-while-revalidate=60")],
            format!("n{n}"),
        )
    })
    .await;
    let url = s.origin.url("/swr");
    send(&mut s.cache, get(&url)).await;

    s.clock.advance(30); // stale for 20 s: within the window
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(send(&mut s.cache, get(&url)).await);
    }
    let first = &answers[0];
    assert_eq!(&first.body[..], b"n1", "the stale entry, at once");
    assert!(
        first.cache_status().contains("stale-while-revalidate"),
        "{}",
        first.cache_status()
    );
    let origin = &s.origin;
    eventually("the background revalidation reaches the origin", || {
        origin.hits() == 2
    })
    .await;
    let dir = s.dir.path().to_path_buf();
    eventually("the revalidated entry is stored", || {
        temp_files(&dir).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.origin.hits(),
        2,
        "one background revalidation for five requests"
    );
    let fresh = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        &fresh.body[..],
        b"n2",
        "the revalidated response is served next"
    );
    assert!(fresh.cache_status().contains("hit"));

    s.clock.advance(100); // stale for 90 s: outside the window, revalidated in line
    let outside = send(&mut s.cache, get(&url)).await;
    assert_eq!(&outside.body[..], b"n3");
    assert!(
        outside.cache_status().contains("fwd=stale"),
        "{}",
        outside.cache_status()
    );
}

#[tokio::test]
async fn range_requests_are_answered_from_the_stored_body() {
    // One body small enough to be held in memory, one read from disk at an offset.
    let body_of = |len: usize| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8).collect() };
    let mut s = setup(HttpCacheOptions::default(), move |parts, _| {
        let len = if parts.uri.path() == "/large" {
            1_000_000
        } else {
            1000
        };
        reply(
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
            body_of(len),
        )
    })
    .await;
    for (path, len) in [("/small", 1000u64), ("/large", 1_000_000)] {
        let url = s.origin.url(path);
        let whole = body_of(len as usize);
        // Stored, then read once so that the small body is held in memory.
        send(&mut s.cache, get(&url)).await;
        let full = send(&mut s.cache, get(&url)).await;
        assert_eq!(full.header("accept-ranges"), Some("bytes"));

        let cases = [
            ("bytes=0-9".to_owned(), 0, 10),
            ("bytes=-5".to_owned(), len - 5, 5),
            (format!("bytes={}-", len - 7), len - 7, 7),
            ("bytes=100-199".to_owned(), 100, 100),
        ];
        for (range, start, n) in cases {
            let got = send(&mut s.cache, with("GET", &url, &[("range", &range)])).await;
            assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{path} {range}");
            let expected_range = format!("bytes {start}-{}/{len}", start + n - 1);
            assert_eq!(got.header("content-range"), Some(expected_range.as_str()));
            assert_eq!(got.header("content-length"), Some(n.to_string().as_str()));
            assert_eq!(&got.body[..], &whole[start as usize..(start + n) as usize]);
        }
        let beyond = format!("bytes={len}-");
        let got = send(&mut s.cache, with("GET", &url, &[("range", &beyond)])).await;
        assert_eq!(got.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            got.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
        assert!(got.body.is_empty());

        let matching = [("range", "bytes=0-0"), ("if-range", "\"v1\"")];
        assert_eq!(
            send(&mut s.cache, with("GET", &url, &matching))
                .await
                .status,
            StatusCode::PARTIAL_CONTENT
        );
        let changed = [("range", "bytes=0-0"), ("if-range", "\"v0\"")];
        let got = send(&mut s.cache, with("GET", &url, &changed)).await;
        assert_eq!(
            (got.status, got.body.len() as u64),
            (StatusCode::OK, len),
            "If-Range mismatch: the whole body"
        );
        // Several ranges: multipart/byteranges, each part with its Content-Range.
        let several = [("range", "bytes=0-0, 5-6, -3")];
        let got = send(&mut s.cache, with("GET", &url, &several)).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
        let content_type = got.header("content-type").unwrap().to_owned();
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .expect("a multipart answer");
        assert_eq!(
            got.header("content-length"),
            Some(got.body.len().to_string().as_str())
        );
        let mut expected = Vec::new();
        for (i, (start, n)) in [(0u64, 1u64), (5, 2), (len - 3, 3)].into_iter().enumerate() {
            let lead = if i == 0 { "" } else { "\r\n" };
            let end = start + n - 1;
            expected.extend_from_slice(
                format!("{lead}--{boundary}\r\nContent-Range: bytes {start}-{end}/{len}\r\n\r\n")
                    .as_bytes(),
            );
            expected.extend_from_slice(&whole[start as usize..(start + n) as usize]);
        }
        expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        assert_eq!(
            &got.body[..],
            &expected[..],
            "{path}: the parts, byte for byte"
        );
    }
    assert_eq!(s.origin.hits(), 2, "every range answered from the store");
}

#[tokio::test]
async fn responses_that_can_no_longer_be_used_are_swept() {
    let options = HttpCacheOptions::default().sweep_expired_every(Duration::from_millis(50));
    let mut s = setup(options, |parts, n| {
        let extra: &[(&str, &str)] = match parts.uri.path() {
            "/validated" => &[("etag", "\"e\"")],
            "/windowed" => &[("cache-control", "max-age=10, stale-if-error=1000")],
            _ => &[],
        };
        let mut response = reply(&[("cache-control", "max-age=10")], format!("n{n}"));
        for (name, value) in extra {
            response.headers_mut().insert(*name, value.parse().unwrap());
        }
        response
    })
    .await;
    for path in ["/plain", "/validated", "/windowed"] {
        send(&mut s.cache, get(&s.origin.url(path))).await;
    }
    let dir = s.dir.path().to_path_buf();
    eventually("three entries stored", || record_files(&dir).len() == 3).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(record_files(&dir).len(), 3, "nothing is swept while fresh");

    s.clock.advance(100);
    eventually("the unusable entry is swept", || {
        record_files(&dir).len() == 2
    })
    .await;
    let removed = s.cache.cache().sweep_expired().await.unwrap();
    assert_eq!(removed, 0, "the others can still be used");
    let hits = s.origin.hits();
    send(&mut s.cache, get(&s.origin.url("/plain"))).await;
    assert_eq!(s.origin.hits(), hits + 1, "the swept entry is a miss");
}

#[tokio::test]
async fn a_range_miss_can_fetch_the_whole_response_and_answer_the_range_from_it() {
    let body_of = |len: usize| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8).collect() };
    let options = HttpCacheOptions::default().fetch_whole_on_range_miss(true);
    let mut s = setup(options, move |_, _| {
        reply(&[("cache-control", "max-age=60")], body_of(1_000_000))
    })
    .await;
    let url = s.origin.url("/video");
    let whole = body_of(1_000_000);
    let ranged = with("GET", &url, &[("range", "bytes=500000-500099")]);
    let got = send(&mut s.cache, ranged).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        got.header("content-range"),
        Some("bytes 500000-500099/1000000")
    );
    assert_eq!(&got.body[..], &whole[500_000..500_100]);
    assert!(
        !s.origin.last_request().headers.contains_key("range"),
        "the whole response was asked for"
    );
    let dir = s.dir.path().to_path_buf();
    eventually("the whole response is stored", || {
        record_files(&dir).len() == 1
    })
    .await;
    let hit = send(&mut s.cache, get(&url)).await;
    assert_eq!(&hit.body[..], &whole[..]);
    let tail = send(&mut s.cache, with("GET", &url, &[("range", "bytes=-10")])).await;
    assert_eq!(&tail.body[..], &whole[999_990..]);
    assert_eq!(s.origin.hits(), 1, "one origin request for all three");
}
