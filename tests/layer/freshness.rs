//! Freshness: fresh responses served from disk, stale ones revalidated, request directives, sweeps.

use super::*;

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
async fn responses_that_can_no_longer_be_used_are_swept() {
    let options = HttpCacheOptions::default().sweep_expired_every(Duration::from_millis(50));
    let mut s = setup(options, |parts, n| {
        let extra: &[(&str, &str)] = match parts.uri.path() {
            "/validated" => &[("etag", "\"e\"")],
            "/windowed" => &[("cache-control", "max-age=10, stale-if-error=1000")],
            // The targeted field's window counts for this (shared) cache, not Cache-Control's.
            "/targeted" => &[("cdn-cache-control", "max-age=10, stale-if-error=1000")],
            "/overridden" => &[
                ("cache-control", "max-age=10, stale-if-error=1000"),
                ("cdn-cache-control", "max-age=10"),
            ],
            _ => &[],
        };
        let mut response = reply(&[("cache-control", "max-age=10")], format!("n{n}"));
        for (name, value) in extra {
            response.headers_mut().insert(*name, value.parse().unwrap());
        }
        response
    })
    .await;
    for path in [
        "/plain",
        "/validated",
        "/windowed",
        "/targeted",
        "/overridden",
    ] {
        send(&mut s.cache, get(&s.origin.url(path))).await;
    }
    let dir = s.dir.path().to_path_buf();
    eventually("five entries stored", || record_files(&dir).len() == 5).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(record_files(&dir).len(), 5, "nothing is swept while fresh");

    s.clock.advance(100);
    eventually("the unusable entries are swept", || {
        record_files(&dir).len() == 3
    })
    .await;
    let removed = s.cache.cache().sweep_expired().await.unwrap();
    assert_eq!(removed, 0, "the others can still be used");
    let hits = s.origin.hits();
    send(&mut s.cache, get(&s.origin.url("/plain"))).await;
    assert_eq!(s.origin.hits(), hits + 1, "the swept entry is a miss");
    // Which were swept: those whose window, read as this cache reads it, has passed.
    for (path, expected) in [("/overridden", "fwd=uri-miss"), ("/targeted", "fwd=stale")] {
        let got = send(&mut s.cache, get(&s.origin.url(path))).await;
        assert!(
            got.cache_status().contains(expected),
            "{path}: {}",
            got.cache_status()
        );
    }
}

/// Whether the second of two GETs of `path`, a second apart, is answered without the origin,
/// the origin answering with `headers` each time.
async fn reused(
    headers: &'static [(&'static str, &'static str)],
    request: &[(&str, &str)],
) -> bool {
    let mut s = setup(HttpCacheOptions::default(), move |_, _| {
        reply(headers, "body")
    })
    .await;
    let url = s.origin.url("/r");
    assert_eq!(send(&mut s.cache, get(&url)).await.body, "body");
    s.clock.advance(1);
    assert_eq!(
        send(&mut s.cache, with("GET", &url, request)).await.body,
        "body"
    );
    s.origin.hits() == 1
}

#[tokio::test]
async fn cache_control_directive_names_are_matched_in_any_case() {
    assert!(reused(&[("cache-control", "MaX-AgE=3600")], &[]).await);
    assert!(!reused(&[("cache-control", "max-age=3600, No-CaChE")], &[]).await);
    assert!(!reused(&[("cache-control", "max-age=3600, NO-STORE")], &[]).await);
    assert!(
        !reused(
            &[("cache-control", "max-age=3600")],
            &[("cache-control", "No-CaChE")]
        )
        .await
    );
    assert!(
        !reused(
            &[("cache-control", "max-age=3600")],
            &[("cache-control", "Max-Age=0")]
        )
        .await
    );
}

#[tokio::test]
async fn malformed_freshness_is_not_trusted() {
    // Fresh when well formed, each of these.
    assert!(reused(&[("cache-control", "max-age=3600")], &[]).await);
    assert!(reused(&[("cache-control", "max-age=3600"), ("age", "10")], &[]).await);
    // A max-age that is not 1*DIGIT, or a repeat after max-age=0, gives no freshness.
    for malformed in [
        "max-age = 3600",
        "max-age=3600.0",
        "max-age=3600s",
        "max-age=0, max-age=3600",
    ] {
        let headers: &'static [(&str, &str)] = Box::leak(Box::new([("cache-control", malformed)]));
        assert!(!reused(headers, &[]).await, "{malformed}");
    }
    // An Age that is not a non-negative integer is ignored (§5.1): as fresh as max-age says.
    for ignored in ["old, 0", "-7200", "7200.5", "abc"] {
        let headers: &'static [(&str, &str)] = Box::leak(Box::new([
            ("cache-control", "max-age=3600"),
            ("age", ignored),
        ]));
        assert!(reused(headers, &[]).await, "{ignored}");
    }
    // One too large to hold is the largest value: stale.
    assert!(
        !reused(
            &[("cache-control", "max-age=3600"), ("age", "99999999999999")],
            &[]
        )
        .await
    );
    // An Expires that is no valid HTTP-date means already expired.
    assert!(!reused(&[("expires", "Fri,  01 Jan 2049 00:00:00 GMT")], &[]).await);
    assert!(!reused(&[("expires", "tomorrow")], &[]).await);
}

#[tokio::test]
async fn expires_is_read_in_every_http_date_form() {
    for expires in [
        "Fri, 01 Jan 2049 00:00:00 GMT",
        "Friday, 01-Jan-49 00:00:00 GMT",
        "Fri Jan  1 00:00:00 2049",
        // Dates are matched case-insensitively by a cache (RFC 9111 §4.2).
        "fri, 01 JAN 2049 00:00:00 gmt",
        "FRIDAY, 01-jan-49 00:00:00 GMT",
        "fRI jAN  1 00:00:00 2049",
    ] {
        let headers: &'static [(&str, &str)] = Box::leak(Box::new([("expires", expires)]));
        assert!(reused(headers, &[]).await, "{expires}");
    }
}

/// An origin whose first answer is `"stored body"` with `ETag: "abcdef"`, fresh for a
/// second, and which answers revalidations with a `304` carrying `etag_304` (or none).
async fn revalidated_by(etag_304: Option<&'static str>) -> Setup {
    setup(HttpCacheOptions::default(), move |parts, _| {
        if parts.headers.contains_key("if-none-match") {
            let mut headers = vec![("cache-control", "max-age=60")];
            headers.extend(etag_304.map(|tag| ("etag", tag)));
            let mut not_modified = reply(&headers, "");
            *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
            return not_modified;
        }
        reply(
            &[("cache-control", "max-age=1"), ("etag", "\"abcdef\"")],
            "stored body",
        )
    })
    .await
}

#[tokio::test]
async fn a_304_without_a_validator_freshens_the_response_it_answers() {
    let mut s = revalidated_by(None).await;
    let url = s.origin.url("/v");
    assert_eq!(send(&mut s.cache, get(&url)).await.body, "stored body");
    s.clock.advance(5);
    // The client asked unconditionally: it gets the stored body, never the 304.
    let got = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        (got.status, &got.body[..]),
        (StatusCode::OK, &b"stored body"[..])
    );
    assert!(
        got.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        got.cache_status()
    );
    assert_eq!(
        s.origin.last_request().headers["if-none-match"],
        "\"abcdef\"",
        "revalidated with the stored validator"
    );
    // Freshened by the 304: a hit for its max-age.
    s.clock.advance(5);
    let hit = send(&mut s.cache, get(&url)).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.body, "stored body");
    assert_eq!(s.origin.hits(), 2);
}

/// An origin that answers an unconditional request with `version N` (`ETag: "vN"`, fresh
/// for 30 s) and every revalidation with a `304` naming `ETag: "other"`.
fn versions_and_a_stray_304(parts: &http::request::Parts, n: usize) -> Response<AxumBody> {
    if parts.headers.contains_key("if-none-match") {
        let mut not_modified = reply(
            &[("cache-control", "max-age=60"), ("etag", "\"other\"")],
            "",
        );
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        return not_modified;
    }
    let tag = format!("\"v{n}\"");
    reply(
        &[("cache-control", "max-age=30"), ("etag", &tag)],
        format!("version {n}"),
    )
}

#[tokio::test]
async fn a_304_that_selects_nothing_is_followed_by_an_unconditional_request() {
    let mut s = setup(HttpCacheOptions::default(), versions_and_a_stray_304).await;
    let url = s.origin.url("/v");
    assert_eq!(send(&mut s.cache, get(&url)).await.body, "version 1");
    s.clock.advance(60);
    let got = send(&mut s.cache, get(&url)).await;
    // Not the 304, not the stored body it did not select: the origin's answer to the same
    // request sent again without validators, and that is what is stored.
    assert_eq!(
        (got.status, &got.body[..]),
        (StatusCode::OK, &b"version 3"[..]),
        "{}",
        got.cache_status()
    );
    assert_eq!(s.origin.hits(), 3);
    let last = s.origin.last_request();
    assert!(
        !last.headers.contains_key("if-none-match"),
        "{:?}",
        last.headers
    );
    let hit = send(&mut s.cache, get(&url)).await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, "version 3");
    assert_eq!(s.origin.hits(), 3);
    // A client with validators of its own gets the origin's 304: it may answer them.
    s.clock.advance(60);
    let conditional = with("GET", &url, &[("if-none-match", "\"other\"")]);
    assert_eq!(
        send(&mut s.cache, conditional).await.status,
        StatusCode::NOT_MODIFIED
    );
}

/// A request body type the cache cannot make anew.
struct Opaque(Full<Bytes>);

#[tokio::test]
async fn a_304_that_selects_nothing_is_a_502_when_the_request_cannot_be_sent_again() {
    let origin = Origin::start(versions_and_a_stray_304).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::default();
    let now = clock.clone();
    let options = HttpCacheOptions::default().clock(move || now.now());
    let mut cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(
            StreamingManager::new(dir.path().to_path_buf()),
            options,
        ))
        .map_request(|request: Request<Opaque>| request.map(|Opaque(body)| body))
        .service(client());
    let url = origin.url("/v");
    let get = || Request::get(&url).body(Opaque(Full::default())).unwrap();
    let first = cache.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(
        first.into_body().collect().await.unwrap().to_bytes(),
        "version 1"
    );
    clock.advance(60);
    let got = cache.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(got.status(), StatusCode::BAD_GATEWAY);
    let cache_status = got.headers()["cache-status"].to_str().unwrap();
    assert!(
        cache_status.contains("fwd-status=304; detail=revalidation-not-selected"),
        "{cache_status}"
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_conditional_request_is_answered_304_from_a_fresh_entry() {
    let origin_headers = [
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("x-extra", "kept for a 200"),
    ];
    let mut s = setup(HttpCacheOptions::default(), move |_, _| {
        reply(&origin_headers, "the body")
    })
    .await;
    let url = s.origin.url("/c");
    send(&mut s.cache, get(&url)).await;
    let not_modified = [
        vec![("if-none-match", "\"v1\"")],
        vec![("if-none-match", "W/\"v1\", \"v0\"")],
        vec![("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")],
    ];
    for validators in &not_modified {
        let got = send(&mut s.cache, with("GET", &url, validators)).await;
        assert_eq!(got.status, StatusCode::NOT_MODIFIED, "{validators:?}");
        assert!(got.body.is_empty());
        assert_eq!(got.header("etag"), Some("\"v1\""));
        assert_eq!(got.header("cache-control"), Some("max-age=60"));
        assert_eq!(
            got.header("x-extra"),
            None,
            "representation metadata stays out"
        );
        assert!(got.cache_status().contains("hit"), "{}", got.cache_status());
    }
    let modified = [
        vec![("if-none-match", "\"v2\"")],
        vec![("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")],
        vec![
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ],
    ];
    for validators in &modified {
        let got = send(&mut s.cache, with("GET", &url, validators)).await;
        assert_eq!(
            (got.status, &got.body[..]),
            (StatusCode::OK, &b"the body"[..]),
            "{validators:?}"
        );
    }
    assert_eq!(s.origin.hits(), 1, "all answered from the store");

    // Turned off, the client gets the 200.
    let mut s = setup(
        HttpCacheOptions::default().answer_conditionals(false),
        move |_, _| reply(&origin_headers, "the body"),
    )
    .await;
    let url = s.origin.url("/c");
    send(&mut s.cache, get(&url)).await;
    let got = send(
        &mut s.cache,
        with("GET", &url, &[("if-none-match", "\"v1\"")]),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test]
async fn a_200_to_a_head_freshens_the_stored_get_it_names() {
    // (the GET's entity tag, the HEAD's, the HEAD's body length, whether it freshens)
    let cases: [(
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        bool,
    ); 8] = [
        (Some("\"v1\""), Some("\"v1\""), "body", true),
        (Some("\"v1\""), Some("\"v2\""), "body", false),
        // Weak comparison: the same tag, strong or weak.
        (Some("W/\"v1\""), Some("\"v1\""), "body", true),
        (Some("W/\"v1\""), Some("W/\"v2\""), "body", false),
        // The HEAD's answer lost the validator the stored one has: it changed.
        (Some("\"v1\""), None, "body", false),
        // Neither has a validator: the lengths agree, nothing disagrees.
        (None, None, "body", true),
        (None, Some("\"v1\""), "body", false),
        (None, None, "other length", false),
    ];
    for (get_tag, head_tag, head_body, freshened) in cases {
        let case = format!("{get_tag:?} / {head_tag:?} / {head_body}");
        let mut s = setup(HttpCacheOptions::default(), move |parts, n| {
            if parts.method == http::Method::HEAD {
                let mut fields = vec![("cache-control", "max-age=60"), ("x-version", "2")];
                fields.extend(head_tag.map(|tag| ("etag", tag)));
                return reply(&fields, head_body);
            }
            let version = n.to_string();
            let mut fields = vec![("cache-control", "max-age=1"), ("x-version", &version)];
            fields.extend(get_tag.map(|tag| ("etag", tag)));
            reply(&fields, "body")
        })
        .await;
        let url = s.origin.url("/h");
        send(&mut s.cache, get(&url)).await;
        s.clock.advance(5);
        let head = send(&mut s.cache, with("HEAD", &url, &[])).await;
        assert_eq!(
            (head.status, head.header("x-version")),
            (StatusCode::OK, Some("2")),
            "{case}"
        );
        assert!(head.body.is_empty());
        s.clock.advance(5);
        let got = send(&mut s.cache, get(&url)).await;
        assert_eq!(got.body, "body");
        if freshened {
            assert!(got.hit(), "{case}: {}", got.cache_status());
            assert_eq!(
                got.header("x-version"),
                Some("2"),
                "{case}: the HEAD's headers"
            );
            assert_eq!(s.origin.hits(), 2, "{case}");
        } else {
            assert!(!got.hit(), "{case}: another representation");
            assert_eq!(s.origin.hits(), 3, "{case}");
        }
    }
}

#[tokio::test]
async fn a_200_to_a_head_naming_another_representation_removes_the_fresh_stored_get() {
    let mut s = setup(HttpCacheOptions::default(), move |parts, n| {
        let tag = if parts.method == http::Method::HEAD {
            "\"v2\""
        } else {
            "\"v1\""
        };
        reply(
            &[("cache-control", "max-age=60"), ("etag", tag)],
            format!("n{n}"),
        )
    })
    .await;
    let url = s.origin.url("/h");
    send(&mut s.cache, get(&url)).await;
    assert!(send(&mut s.cache, get(&url)).await.hit());
    // A HEAD that must go to the origin finds the representation changed.
    let head = send(
        &mut s.cache,
        with("HEAD", &url, &[("cache-control", "no-cache")]),
    )
    .await;
    assert_eq!(head.header("etag"), Some("\"v2\""));
    assert_eq!(s.origin.hits(), 2);
    // The stored GET, fresh by its own fields, is not served again.
    let got = send(&mut s.cache, get(&url)).await;
    assert!(!got.hit(), "{}", got.cache_status());
    assert_eq!(got.body, "n3");
    assert_eq!(s.origin.hits(), 3);
}

#[tokio::test]
async fn a_304_without_age_makes_the_freshened_response_as_old_as_it_is() {
    let mut s = setup(HttpCacheOptions::default(), |parts, n| {
        if parts.headers.contains_key("if-none-match") {
            // No Age (the Date is the one hyper's server adds).
            let mut response = reply(&[("cache-control", "max-age=60")], "");
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        // Stale on arrival: a cache before the origin held it 100 s.
        let headers = [
            ("cache-control", "max-age=60"),
            ("age", "100"),
            ("etag", "\"v1\""),
        ];
        reply(&headers, format!("n{n}"))
    })
    .await;
    let url = s.origin.url("/aged");
    send(&mut s.cache, get(&url)).await;
    let revalidated = send(&mut s.cache, get(&url)).await;
    assert_eq!(revalidated.body, "n1");
    assert_eq!(s.origin.hits(), 2);
    // Fresh for the 60 s the 304 gave it, not stale for the Age the first answer had.
    s.clock.advance(30);
    let got = send(&mut s.cache, get(&url)).await;
    assert!(got.hit(), "{}", got.cache_status());
    assert_eq!(got.header("age"), Some("30"));
    assert!(got.header("date").is_some());
    assert_eq!(s.origin.hits(), 2);
}

#[tokio::test]
async fn if_modified_since_meets_the_stored_date_when_there_is_no_last_modified() {
    let mut s = setup(HttpCacheOptions::default(), |_, n| {
        reply(&[("cache-control", "max-age=60")], format!("n{n}"))
    })
    .await;
    let url = s.origin.url("/no-lm");
    let first = send(&mut s.cache, get(&url)).await;
    let date = httpdate::parse_http_date(first.header("date").unwrap()).unwrap();
    let at =
        |seconds_before: u64| httpdate::fmt_http_date(date - Duration::from_secs(seconds_before));
    let since = |dates: &[String]| {
        let mut request = get(&url);
        for date in dates {
            request
                .headers_mut()
                .append("if-modified-since", date.parse().unwrap());
        }
        request
    };
    // The client's copy is as new as the stored one: not modified since.
    let same = send(&mut s.cache, since(&[at(0)])).await;
    assert_eq!(
        same.status,
        StatusCode::NOT_MODIFIED,
        "{}",
        same.cache_status()
    );
    // An older copy may have changed since (RFC 9110 §13.1.3): the 200.
    let older = send(&mut s.cache, since(&[at(3000)])).await;
    assert_eq!(
        (older.status, &older.body[..]),
        (StatusCode::OK, &b"n1"[..])
    );
    // Two lines are no date: the 200.
    let two = send(&mut s.cache, since(&[at(0), at(0)])).await;
    assert_eq!(two.status, StatusCode::OK);
    assert_eq!(s.origin.hits(), 1, "all from the store");
}
