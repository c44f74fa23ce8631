//! A Tower user's first hour, as README's "Getting started" walks it: an axum app served
//! over loopback with the layer, read by a hyper client. What the cache says in
//! `Cache-Status` is what it did; routes set their own TTLs; keys drop tracking
//! parameters; handlers purge; stats count every request once.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use common::{Clock, Got};
use http_cache_streaming::{
    CacheKey, CacheMode, CacheStats, HttpCacheOptions, HttpCacheStreamingLayer, HttpStreamingCache,
    NotStored, StreamingManager, Ttl,
};
use tower::ServiceExt;

/// How often each route's handler ran.
#[derive(Clone, Default)]
struct Calls(Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

impl Calls {
    fn count(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
    fn add(&self, path: &str) -> usize {
        let mut calls = self.0.lock().unwrap();
        let n = calls.entry(path.to_owned()).or_default();
        *n += 1;
        *n
    }
}

/// The app of the walk-through: public and private pages, a page that sets a cookie,
/// errors, a route whose handler sends no `Cache-Control`, and one that sets its own TTL.
fn routes(calls: Calls) -> Router {
    let page = |headers: &'static [(&'static str, &'static str)], status: u16| {
        let calls = calls.clone();
        move |parts: Parts| {
            let calls = calls.clone();
            async move {
                let n = calls.add(parts.uri.path());
                let mut response = http::Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(*name, *value);
                }
                response
                    .body(axum::body::Body::from(format!("{} #{n}", parts.uri.path())))
                    .unwrap()
            }
        }
    };
    let ttl_route = {
        let calls = calls.clone();
        move |parts: Parts| {
            let calls = calls.clone();
            async move {
                let n = calls.add(parts.uri.path());
                // The handler says max-age=5; the route keeps it for a minute.
                (
                    Extension(Ttl::fixed(Duration::from_secs(60))),
                    [("cache-control", "max-age=5")],
                    format!("{} #{n}", parts.uri.path()),
                )
            }
        }
    };
    Router::new()
        .route(
            "/public",
            get(page(&[("cache-control", "public, max-age=60")], 200)),
        )
        .route(
            "/private",
            get(page(&[("cache-control", "private, max-age=60")], 200)),
        )
        .route(
            "/no-store",
            get(page(&[("cache-control", "no-store")], 200)),
        )
        .route(
            "/cookie",
            get(page(
                &[
                    ("cache-control", "public, max-age=60"),
                    ("set-cookie", "id=1"),
                ],
                200,
            )),
        )
        .route("/error", get(page(&[("cache-control", "max-age=60")], 503)))
        .route("/bare", get(page(&[], 200)))
        .route(
            "/items",
            get(page(&[("cache-control", "max-age=600")], 200)),
        )
        .route("/fixed", get(ttl_route))
        .route("/ranged", get(ranged).with_state(calls))
}

/// The first four bytes of a ten-byte representation, as an origin answers a range.
async fn ranged(State(calls): State<Calls>) -> http::Response<axum::body::Body> {
    calls.add("/ranged");
    http::Response::builder()
        .status(206)
        .header("cache-control", "max-age=60")
        .header("etag", "\"r1\"")
        .header("content-range", "bytes 0-3/10")
        .body(axum::body::Body::from("abcd"))
        .unwrap()
}

/// Serves `app` on loopback; its address.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn get_from(addr: std::net::SocketAddr, path: &str) -> Got {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    common::send(&mut common::client(), request).await
}

async fn post_to(addr: std::net::SocketAddr, path: &str) -> Got {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    common::send(&mut common::client(), request).await
}

#[tokio::test]
async fn a_directory_the_store_refuses_is_an_error_at_open_and_never_said_stored() {
    let dir = tempfile::tempdir().unwrap();
    let open_to_all = dir.path().join("shared");
    std::fs::create_dir(&open_to_all).unwrap();
    std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o777)).unwrap();

    let refused = HttpCacheStreamingLayer::open(&open_to_all)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("writable by every user"),
        "{refused}"
    );

    // Built without opening, the layer passes every request through, and says so.
    let calls = Calls::default();
    let layer = HttpCacheStreamingLayer::new(StreamingManager::new(open_to_all.clone()));
    let cache = layer.cache().clone();
    let addr = serve(routes(calls.clone()).layer(layer)).await;
    for n in 1..=2 {
        let got = get_from(addr, "/public").await;
        assert_eq!(got.body, format!("/public #{n}"));
        let status = got.cache_status();
        assert!(!status.contains("stored"), "{status}");
        assert!(status.ends_with("detail=store-unavailable"), "{status}");
    }
    let stats = cache.stats().await.unwrap();
    assert!(stats.errors >= 2, "{stats:?}");
    assert_eq!(stats.misses, 2, "{stats:?}");
    assert_eq!(common::files_in(&open_to_all), Vec::<String>::new());
}

#[tokio::test]
async fn every_response_not_stored_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let layer = HttpCacheStreamingLayer::open(dir.path()).await.unwrap();
    let addr = serve(routes(calls.clone()).layer(layer)).await;

    let got = get_from(addr, "/public").await;
    assert!(
        got.cache_status().contains("; stored; ttl=60"),
        "{}",
        got.cache_status()
    );
    assert!(get_from(addr, "/public").await.hit());

    for (path, why) in [
        ("/private", "private"),
        ("/no-store", "no-store"),
        ("/cookie", "set-cookie"),
        ("/error", "error-status"),
        ("/bare", "no-freshness"),
    ] {
        for n in 1..=2 {
            let got = get_from(addr, path).await;
            assert_eq!(got.body, format!("{path} #{n}"));
            let status = got.cache_status();
            assert!(!status.contains("stored"), "{path}: {status}");
            assert!(
                status.ends_with(&format!("detail={why}")),
                "{path}: {status}"
            );
        }
    }
    // The cookie went to the clients whose requests fetched it, and nothing was stored
    // but the public page.
    assert_eq!(
        get_from(addr, "/cookie").await.header("set-cookie"),
        Some("id=1")
    );
    assert_eq!(common::record_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn code_behind_the_layer_reads_why_from_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let layer = HttpCacheStreamingLayer::open(dir.path()).await.unwrap();
    let app = routes(Calls::default()).layer(layer);
    for (path, why) in [
        ("/private", Some(NotStored::Private)),
        ("/cookie", Some(NotStored::SetCookie)),
        ("/public", None),
    ] {
        let request = http::Request::get(format!("http://example.com{path}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.extensions().get::<NotStored>(),
            why.as_ref(),
            "{path}"
        );
    }
}

/// An app whose routes give their own TTLs, with a clock the test moves.
async fn ttl_app(options: HttpCacheOptions) -> (std::net::SocketAddr, Calls, Clock) {
    let clock = Clock::default();
    let now = clock.clone();
    let dir = tempfile::tempdir().unwrap().keep();
    let options = options.clock(move || now.now());
    let manager = StreamingManager::new(dir);
    let layer = HttpCacheStreamingLayer::open_with(manager, options)
        .await
        .unwrap();
    let calls = Calls::default();
    let addr = serve(routes(calls.clone()).layer(layer)).await;
    (addr, calls, clock)
}

fn ttl_of(got: &Got) -> u64 {
    let status = got.cache_status();
    let ttl = status
        .split("ttl=")
        .nth(1)
        .unwrap_or_else(|| panic!("{status}"));
    ttl.split(';').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_route_whose_handler_sends_no_freshness_gets_the_default_ttl() {
    let options = HttpCacheOptions::default().default_ttl(Duration::from_secs(300));
    let (addr, calls, clock) = ttl_app(options).await;
    let got = get_from(addr, "/bare").await;
    assert!(
        got.cache_status().contains("stored; ttl=300"),
        "{}",
        got.cache_status()
    );
    // Nothing the app sent says so: the client sees the origin's headers only.
    assert_eq!(got.header("cache-control"), None);
    assert_eq!(got.header("x-http-cache-streaming-ttl"), None);
    clock.advance(290);
    let got = get_from(addr, "/bare").await;
    assert!(got.hit(), "{}", got.cache_status());
    assert!(ttl_of(&got) <= 10, "{}", got.cache_status());
    assert_eq!(got.header("x-http-cache-streaming-ttl"), None);
    clock.advance(20);
    assert_eq!(get_from(addr, "/bare").await.body, "/bare #2");
    // Explicit freshness stands: the public page keeps its 60 s.
    let got = get_from(addr, "/public").await;
    assert!(
        got.cache_status().contains("ttl=60"),
        "{}",
        got.cache_status()
    );
    assert_eq!(calls.count("/bare"), 2);
}

#[tokio::test]
async fn a_handler_sets_its_routes_ttl_and_the_cap_still_holds() {
    let (addr, calls, clock) = ttl_app(HttpCacheOptions::default()).await;
    let got = get_from(addr, "/fixed").await;
    assert!(
        got.cache_status().contains("ttl=60"),
        "{}",
        got.cache_status()
    );
    assert_eq!(got.header("cache-control"), Some("max-age=5"));
    clock.advance(30);
    assert!(get_from(addr, "/fixed").await.hit());
    clock.advance(31);
    assert_eq!(get_from(addr, "/fixed").await.body, "/fixed #2");
    assert_eq!(calls.count("/fixed"), 2);

    // The layer's cap wins over the route's TTL.
    let options = HttpCacheOptions::default().max_ttl(Duration::from_secs(20));
    let (addr, calls, clock) = ttl_app(options).await;
    let got = get_from(addr, "/fixed").await;
    assert!(
        got.cache_status().contains("ttl=20"),
        "{}",
        got.cache_status()
    );
    clock.advance(21);
    assert_eq!(get_from(addr, "/fixed").await.body, "/fixed #2");
    assert_eq!(calls.count("/fixed"), 2);
}

#[tokio::test]
async fn ttl_fn_decides_per_route_with_grace_and_no_store() {
    let options =
        HttpCacheOptions::default().ttl_fn(|request, _response| match request.uri.path() {
            "/bare" => Ttl::origin()
                .or(Duration::from_secs(10))
                .grace(Duration::from_secs(100)),
            "/public" => Ttl::no_store(),
            "/items" => Ttl::origin().at_most(Duration::from_secs(30)),
            _ => Ttl::origin(),
        });
    let (addr, calls, clock) = ttl_app(options).await;
    assert!(
        get_from(addr, "/public")
            .await
            .cache_status()
            .ends_with("detail=ttl")
    );
    assert!(!get_from(addr, "/public").await.hit());
    let got = get_from(addr, "/items").await;
    assert!(
        got.cache_status().contains("ttl=30"),
        "{}",
        got.cache_status()
    );

    assert_eq!(get_from(addr, "/bare").await.body, "/bare #1");
    clock.advance(50);
    // Stale for 40 s, within its grace: served at once, fetched anew behind it.
    let got = get_from(addr, "/bare").await;
    assert_eq!(got.body, "/bare #1");
    assert!(
        got.cache_status().contains("detail=stale-while-revalidate"),
        "{}",
        got.cache_status()
    );
    common::eventually("the revalidation in the background", || {
        calls.count("/bare") == 2
    })
    .await;
    // Once stored, the new copy is what clients get.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut served = get_from(addr, "/bare").await.body;
    while served != "/bare #2" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        served = get_from(addr, "/bare").await.body;
    }
    assert_eq!(served, "/bare #2");
}

#[tokio::test]
async fn max_ttl_holds_in_every_mode() {
    for mode in [CacheMode::IgnoreRules, CacheMode::ForceCache] {
        let options = HttpCacheOptions::default()
            .mode(mode)
            .max_ttl(Duration::from_secs(60));
        let (addr, calls, clock) = ttl_app(options).await;
        assert_eq!(get_from(addr, "/items").await.body, "/items #1");
        clock.advance(30);
        assert_eq!(get_from(addr, "/items").await.body, "/items #1", "{mode}");
        clock.advance(31);
        assert_eq!(get_from(addr, "/items").await.body, "/items #2", "{mode}");
        assert_eq!(calls.count("/items"), 2, "{mode}");
    }
}

#[tokio::test]
async fn tracking_parameters_share_one_entry_per_site() {
    let dir = tempfile::tempdir().unwrap();
    let options = HttpCacheOptions::default()
        .cache_key_from(CacheKey::new().drop_query(["utm_*", "fbclid"]).sort_query());
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let layer = HttpCacheStreamingLayer::open_with(manager, options)
        .await
        .unwrap();
    let calls = Calls::default();
    let addr = serve(routes(calls.clone()).layer(layer)).await;
    assert_eq!(get_from(addr, "/items?b=2&a=1").await.body, "/items #1");
    let got = get_from(addr, "/items?a=1&utm_source=mail&b=2&fbclid=x").await;
    assert!(got.hit(), "{}", got.cache_status());
    assert_eq!(got.body, "/items #1");
    assert_eq!(get_from(addr, "/items?a=2").await.body, "/items #2");

    // Another site's name, the same server: another entry (the key names the Host).
    let request = http::Request::get(format!("http://{addr}/items?a=1&b=2"))
        .header("host", "other.example")
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    let got = common::send(&mut common::client(), request).await;
    assert_eq!(got.body, "/items #3");
}

/// `POST /items` changes the items and purges the page of the site it was sent to; the
/// cache reaches the handler through axum's `State`.
async fn update(State(cache): State<HttpStreamingCache>, parts: Parts) -> String {
    let purged = cache.purge_path(&parts, "/items").await.unwrap();
    format!("purged: {purged}")
}

#[tokio::test]
async fn a_handler_purges_through_state() {
    let dir = tempfile::tempdir().unwrap();
    let layer = HttpCacheStreamingLayer::open(dir.path()).await.unwrap();
    let cache = layer.cache().clone();
    let calls = Calls::default();
    let app = routes(calls.clone())
        .merge(
            Router::new()
                .route("/items/update", post(update))
                .with_state(cache.clone()),
        )
        .layer(layer);
    let addr = serve(app).await;
    assert_eq!(get_from(addr, "/items").await.body, "/items #1");
    assert!(get_from(addr, "/items").await.hit());
    assert_eq!(post_to(addr, "/items/update").await.body, "purged: true");
    assert_eq!(get_from(addr, "/items").await.body, "/items #2");

    // A path alone names no site: refused with a reason, not a silent `false`.
    let refused = cache.purge("/items").await.unwrap_err();
    assert_eq!(
        refused.kind(),
        http_cache_streaming::ErrorKind::InvalidInput
    );
    assert!(refused.to_string().contains("purge_path"), "{refused}");
    // A path prefix reaches every site.
    assert!(get_from(addr, "/items").await.hit());
    assert_eq!(cache.purge_prefix("/item").await.unwrap(), 1);
    assert_eq!(get_from(addr, "/items").await.body, "/items #3");
}

#[tokio::test]
async fn stats_count_every_request_once_and_serve_from_a_route_outside_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::default();
    let now = clock.clone();
    let options = HttpCacheOptions::default().clock(move || now.now());
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let layer = HttpCacheStreamingLayer::open_with(manager, options)
        .await
        .unwrap();
    let cache = layer.cache().clone();
    let calls = Calls::default();
    // The stats route is added after the layer: it is neither cached nor counted.
    let stats = |State(cache): State<HttpStreamingCache>| async move {
        axum::Json(cache.stats().await.unwrap())
    };
    let app = routes(calls.clone()).layer(layer).merge(
        Router::new()
            .route("/stats", get(stats))
            .with_state(cache.clone()),
    );
    let addr = serve(app).await;

    get_from(addr, "/public").await; // miss
    get_from(addr, "/public").await; // hit
    clock.advance(61);
    get_from(addr, "/public").await; // stale, replaced: a miss
    get_from(addr, "/private").await; // a miss, not stored
    // A pass: the app answers 405 itself, without a handler.
    assert_eq!(
        post_to(addr, "/public").await.status,
        http::StatusCode::METHOD_NOT_ALLOWED
    );
    let got = get_from(addr, "/stats").await;
    assert_eq!(got.header("cache-status"), None);
    let json: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    let stats: CacheStats = cache.stats().await.unwrap();
    assert_eq!(
        (stats.hits, stats.misses, stats.revalidations, stats.passes),
        (1, 3, 0, 1),
        "{stats:?}"
    );
    assert_eq!(stats.origin.misses, 2, "{stats:?}");
    assert_eq!(stats.origin.stale, 1, "{stats:?}");
    assert_eq!(stats.origin.passes, 1, "{stats:?}");
    assert_eq!(
        stats.origin.total() as usize,
        calls.total() + 1,
        "the 405 counts"
    );
    assert_eq!(json["hits"], 1);
    assert_eq!(json["misses"], 3);
    assert_eq!(json["origin"]["stale"], 1);
    assert_eq!(json["store"]["entries"], 1);
}

/// A `Ttl` that says not to store holds for a client's request (in its extensions) and for
/// partial entries as for whole responses.
#[tokio::test]
async fn no_store_holds_for_a_requests_ttl_and_for_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let layer = HttpCacheStreamingLayer::open(dir.path()).await.unwrap();
    let calls = Calls::default();
    let app = routes(calls.clone()).layer(layer);
    for n in 1..=2 {
        let mut request = http::Request::get("http://example.com/public")
            .body(axum::body::Body::empty())
            .unwrap();
        request.extensions_mut().insert(Ttl::no_store());
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.extensions().get::<NotStored>(),
            Some(&NotStored::Ttl)
        );
        assert_eq!(calls.count("/public"), n);
    }

    // A 206 is kept as a partial entry by default: the same range again is a hit...
    let ranged = |app: &Router| {
        let request = http::Request::get("http://example.com/ranged")
            .header("range", "bytes=0-3")
            .body(axum::body::Body::empty())
            .unwrap();
        app.clone().oneshot(request)
    };
    for _ in 0..2 {
        let response = ranged(&app).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::PARTIAL_CONTENT);
        let body = http_body_util::BodyExt::collect(response.into_body()).await;
        assert_eq!(body.unwrap().to_bytes(), "abcd");
    }
    assert_eq!(calls.count("/ranged"), 1);
    // ...but not for a route whose Ttl says not to store.
    let dir = tempfile::tempdir().unwrap();
    let options = HttpCacheOptions::default().ttl_fn(|request, _| match request.uri.path() {
        "/ranged" => Ttl::no_store(),
        _ => Ttl::origin(),
    });
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let layer = HttpCacheStreamingLayer::open_with(manager, options)
        .await
        .unwrap();
    let calls = Calls::default();
    let app = routes(calls.clone()).layer(layer);
    for _ in 0..2 {
        let response = ranged(&app).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::PARTIAL_CONTENT);
        let body = http_body_util::BodyExt::collect(response.into_body()).await;
        assert_eq!(body.unwrap().to_bytes(), "abcd");
    }
    assert_eq!(calls.count("/ranged"), 2);
}

/// A handler purging for a request whose `Host` the layer would not key (another site's
/// path smuggled in it, two sites at once) purges nothing, and says why.
#[tokio::test]
async fn a_purge_for_a_host_the_layer_would_not_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layer = HttpCacheStreamingLayer::open(dir.path()).await.unwrap();
    let cache = layer.cache().clone();
    let app = routes(Calls::default()).layer(layer);
    let stored = http::Request::get("http://victim.example/static/items")
        .body(axum::body::Body::empty())
        .unwrap();
    app.clone().oneshot(stored).await.unwrap();
    for host in ["victim.example/static", "victim.example@other"] {
        let request = http::Request::post("/items")
            .header("host", host)
            .body(())
            .unwrap();
        let refused = cache
            .purge_path(&request.into_parts().0, "/items")
            .await
            .unwrap_err();
        assert_eq!(
            refused.kind(),
            http_cache_streaming::ErrorKind::InvalidInput,
            "{host}"
        );
    }
    let two_sites = http::Request::post("http://a.example/items")
        .header("host", "b.example")
        .body(())
        .unwrap();
    assert!(
        cache
            .purge_request(&two_sites.into_parts().0)
            .await
            .is_err()
    );
}
