//! What may be stored, and what a shared or a private cache stores.

use super::*;

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

/// A body of unknown length, which the origin sends chunked.
struct Unsized(Option<Bytes>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_neither_stored_nor_served() {
    let mut s = setup(HttpCacheOptions::default(), |_, _| {
        let mut response = Response::new(AxumBody::new(Unsized(Some(Bytes::from("framed")))));
        let headers = response.headers_mut();
        headers.insert("cache-control", "max-age=60".parse().unwrap());
        headers.insert("connection", "x-session".parse().unwrap());
        headers.insert("x-session", "one connection's".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        response
    })
    .await;
    let url = s.origin.url("/framed");
    for expected in ["fwd=uri-miss", "hit"] {
        let got = send(&mut s.cache, get(&url)).await;
        assert!(
            got.cache_status().contains(expected),
            "{}",
            got.cache_status()
        );
        for name in ["transfer-encoding", "connection", "x-session", "keep-alive"] {
            assert!(
                !got.headers.contains_key(name),
                "{name} in the {expected} response"
            );
        }
        assert_eq!(got.body, "framed");
    }
    assert_eq!(s.origin.hits(), 1);
}

/// Whether the second of two GETs is answered without the origin, the origin answering
/// with `headers` each time, and whether the client saw the origin's `Cache-Control`.
async fn reused_with(
    options: HttpCacheOptions,
    headers: &'static [(&'static str, &'static str)],
) -> bool {
    let mut s = setup(options, move |_, _| reply(headers, "body")).await;
    let url = s.origin.url("/t");
    for _ in 0..2 {
        let got = send(&mut s.cache, get(&url)).await;
        assert_eq!(got.body, "body");
        let sent = headers.iter().find(|(name, _)| *name == "cache-control");
        assert_eq!(
            got.header("cache-control"),
            sent.map(|(_, v)| *v),
            "passed on as sent"
        );
    }
    s.origin.hits() == 1
}

#[tokio::test]
async fn a_targeted_cdn_cache_control_field_decides_for_a_shared_cache() {
    let shared = HttpCacheOptions::default;
    // CDN-Cache-Control (RFC 9213) overrides Cache-Control and Expires for this cache...
    assert!(
        reused_with(
            shared(),
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60")
            ]
        )
        .await
    );
    assert!(
        !reused_with(
            shared(),
            &[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "no-store")
            ]
        )
        .await
    );
    assert!(
        !reused_with(
            shared(),
            &[
                ("expires", "Fri, 01 Jan 2049 00:00:00 GMT"),
                ("cdn-cache-control", "max-age=0")
            ]
        )
        .await
    );
    // ...when it is a valid structured dictionary: upper-case keys are not.
    assert!(
        reused_with(
            shared(),
            &[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "Max-Age=0")
            ]
        )
        .await
    );
    // A deployment can name its own field, ahead of CDN-Cache-Control.
    let own = || {
        shared().targeted_cache_control([
            http::HeaderName::from_static("example-cache-control"),
            http::HeaderName::from_static("cdn-cache-control"),
        ])
    };
    assert!(
        reused_with(
            own(),
            &[
                ("cdn-cache-control", "no-store"),
                ("example-cache-control", "max-age=60")
            ]
        )
        .await
    );
    // Turned off, or in a private cache, the field is only passed on.
    assert!(
        !reused_with(
            shared().targeted_cache_control([]),
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60")
            ]
        )
        .await
    );
    assert!(
        !reused_with(
            shared().shared(false),
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60")
            ]
        )
        .await
    );
}

/// Whether the second of two GETs is answered from the store, the origin answering with
/// `status` and `headers` each time; the client gets `status` both times.
async fn status_reused(status: u16, headers: &'static [(&'static str, &'static str)]) -> bool {
    status_reused_with(HttpCacheOptions::default(), status, headers).await
}

/// [`status_reused`], for a cache with `options`.
async fn status_reused_with(
    options: HttpCacheOptions,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
) -> bool {
    let mut s = setup(options, move |_, _| {
        let mut response = reply(headers, "answer");
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
    })
    .await;
    let url = s.origin.url("/s");
    for _ in 0..2 {
        let got = send(&mut s.cache, get(&url)).await;
        assert_eq!(
            (got.status.as_u16(), &got.body[..]),
            (status, &b"answer"[..])
        );
    }
    s.origin.hits() == 1
}

#[tokio::test]
async fn statuses_the_cache_understands_are_reused_with_explicit_freshness() {
    let fresh: &[(&str, &str)] = &[("cache-control", "max-age=60")];
    // Any final status the origin gives explicit freshness, known or not (§3)...
    for status in [299, 404, 410, 418, 226, 399, 499] {
        assert!(status_reused(status, fresh).await, "{status}");
    }
    // ...but with must-understand, only a status the cache understands (§5.2.2.3).
    let must: &[(&str, &str)] = &[("cache-control", "max-age=60, must-understand")];
    assert!(status_reused(404, must).await);
    for status in [418, 299, 499] {
        assert!(!status_reused(status, must).await, "{status}");
    }
    let errors_kept =
        HttpCacheOptions::default().store_errors(Some(std::time::Duration::from_secs(60)));
    assert!(status_reused_with(errors_kept.clone(), 503, must).await);
    for status in [599, 555] {
        assert!(
            !status_reused_with(errors_kept.clone(), status, must).await,
            "{status}"
        );
        let private = HttpCacheOptions::default().shared(false);
        assert!(!status_reused_with(private, status, must).await, "{status}");
    }
    // Errors a client may provoke: not in a shared cache unless it is told to store them,
    // and then for no longer than it says.
    let errors = HttpCacheOptions::default().store_errors(Some(std::time::Duration::from_secs(60)));
    for status in [400, 500, 501, 502, 503, 504, 599] {
        assert!(!status_reused(status, fresh).await, "{status}");
        assert!(
            status_reused_with(errors.clone(), status, fresh).await,
            "{status}"
        );
        let private = HttpCacheOptions::default().shared(false);
        assert!(status_reused_with(private, status, fresh).await, "{status}");
    }
    let expires: &[(&str, &str)] = &[("expires", "Fri, 01 Jan 2049 00:00:00 GMT")];
    assert!(status_reused_with(errors.clone(), 500, expires).await);
    // Without explicit freshness an error is not stored.
    for status in [500, 503] {
        assert!(
            !status_reused_with(errors.clone(), status, &[]).await,
            "{status}"
        );
    }
    // must-understand lets no-store give way for a status the cache understands only.
    let understood: &[(&str, &str)] = &[("cache-control", "max-age=60, no-store, must-understand")];
    assert!(status_reused(200, understood).await);
    assert!(status_reused(404, understood).await);
    assert!(!status_reused(418, understood).await);
    assert!(!status_reused(200, &[("cache-control", "max-age=60, no-store")]).await);
}

/// An origin whose `POST` answers say they are the URI's representation as each path asks,
/// and whose `GET` answers are fresh.
async fn post_origin(options: HttpCacheOptions) -> Setup {
    setup(options, |parts, n| {
        if parts.method != http::Method::POST {
            return reply(&[("cache-control", "max-age=60")], format!("get {n}"));
        }
        let path = parts.uri.path();
        let host = parts.headers["host"].to_str().unwrap();
        let absolute = format!("http://{host}{path}");
        let mut fields = vec![("cache-control", "max-age=60"), ("content-location", path)];
        match path {
            "/absolute" => fields[1].1 = &absolute,
            "/elsewhere" => fields[1].1 = "/other",
            "/query" => fields[1].1 = "/query?x=1",
            "/no-freshness" => fields[0] = ("etag", "\"v1\""),
            "/private" => fields[0].1 = "private, max-age=60",
            "/cookie" => fields.push(("set-cookie", "session=alice")),
            "/twice" => fields.push(("content-location", "/twice")),
            _ => {}
        }
        reply(&fields, format!("post {n}"))
    })
    .await
}

/// Whether a `GET` after a `POST` to `path` is answered with the `POST`'s answer, from the
/// store.
async fn post_reused(s: &mut Setup, path: &str, post_headers: &[(&str, &str)]) -> bool {
    let url = s.origin.url(path);
    let mut post = with("POST", &url, post_headers);
    *post.body_mut() = Full::new(Bytes::from_static(b"form=1"));
    post.headers_mut().insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let posted = send(&mut s.cache, post).await;
    assert_eq!(posted.status, StatusCode::OK);
    let hits = s.origin.hits();
    let got = send(&mut s.cache, get(&url)).await;
    let reused = got.hit() && got.body == posted.body && s.origin.hits() == hits;
    if reused {
        let head = send(&mut s.cache, with("HEAD", &url, &[])).await;
        assert!(head.hit() && head.body.is_empty(), "{path}: HEAD too");
        assert_eq!(s.origin.hits(), hits);
    }
    reused
}

#[tokio::test]
async fn a_post_answer_naming_its_own_uri_with_explicit_freshness_is_the_uris_get() {
    let mut s = post_origin(HttpCacheOptions::default()).await;
    for path in ["/same", "/absolute"] {
        assert!(post_reused(&mut s, path, &[]).await, "{path}");
    }
    // Another URI, no explicit freshness, a private or cookie-setting answer, two
    // locations, or a request with credentials: the POST only invalidates.
    for path in [
        "/elsewhere",
        "/query",
        "/no-freshness",
        "/private",
        "/cookie",
        "/twice",
    ] {
        assert!(!post_reused(&mut s, path, &[]).await, "{path}");
    }
    assert!(!post_reused(&mut s, "/same", &[("authorization", "Basic YTpi")]).await);
    // A stored GET is replaced by the POST's answer; turned off, it is only removed.
    let url = s.origin.url("/fresh");
    send(&mut s.cache, get(&url)).await;
    assert!(post_reused(&mut s, "/fresh", &[]).await);
    let mut s = post_origin(HttpCacheOptions::default().reuse_post_responses(false)).await;
    let url = s.origin.url("/same");
    assert_eq!(send(&mut s.cache, get(&url)).await.body, "get 1");
    assert!(!post_reused(&mut s, "/same", &[]).await);
    assert_eq!(send(&mut s.cache, get(&url)).await.body, "get 3");
}
