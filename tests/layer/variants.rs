//! Variants chosen by the headers `Vary` names, HEAD from a stored GET, invalidation by unsafe methods.

use super::*;

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

#[tokio::test]
async fn what_vary_compares_is_normalised() {
    let mut s = setup(HttpCacheOptions::default(), |parts, n| {
        let language = parts.headers.get("accept-language").cloned();
        reply(
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language, X-Flavor"),
            ],
            format!("{language:?} #{n}"),
        )
    })
    .await;
    let url = s.origin.url("/v");
    let ask = |language: &'static str, flavor: &'static str| {
        with(
            "GET",
            &url,
            &[("accept-language", language), ("x-flavor", flavor)],
        )
    };
    let first = send(&mut s.cache, ask("en-US, fr;q=0.5", "a, b")).await;
    // Accept-Language in another order, case and spacing; X-Flavor without the space.
    let same = send(&mut s.cache, ask("FR; q=0.5,en-us", "a,b")).await;
    assert!(
        same.cache_status().contains("hit"),
        "{}",
        same.cache_status()
    );
    assert_eq!(same.body, first.body);
    assert_eq!(s.origin.hits(), 1);
    // Other values are other variants: the order of X-Flavor's members counts.
    for (language, flavor) in [("de", "a, b"), ("en-US, fr;q=0.5", "b, a")] {
        let other = send(&mut s.cache, ask(language, flavor)).await;
        assert!(!other.cache_status().contains("hit"), "{language} {flavor}");
    }
    assert_eq!(s.origin.hits(), 3);
}
