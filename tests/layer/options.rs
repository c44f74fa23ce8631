//! Cache modes, per-request overrides, `max_ttl`, `cache_bust`, custom keys and `x-cache` headers.

use super::*;

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
