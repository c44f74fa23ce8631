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

/// An origin with its pages in German and French, choosing by `Accept-Language`'s highest
/// q-value (German when it is no help), saying which in `Content-Language`.
async fn bilingual_origin() -> Setup {
    setup(HttpCacheOptions::default(), |parts, n| {
        let asked = parts
            .headers
            .get("accept-language")
            .map_or("", |v| v.to_str().unwrap())
            .to_ascii_lowercase();
        let weight = |lang: &str| {
            asked.split(',').find_map(|member| {
                let mut params = member.split(';');
                (params.next()?.trim() == lang).then(|| {
                    params
                        .find_map(|p| p.trim().strip_prefix("q="))
                        .map_or(1.0, |q| q.parse::<f32>().unwrap())
                })
            })
        };
        let lang = if weight("fr").unwrap_or(0.0) > weight("de").unwrap_or(0.0) {
            "fr"
        } else {
            "de"
        };
        let vary = if parts.uri.path() == "/two" {
            "Accept-Language, X-Flavor"
        } else {
            "Accept-Language"
        };
        reply(
            &[
                ("cache-control", "max-age=60"),
                ("vary", vary),
                ("content-language", lang),
            ],
            format!("{lang} {n}"),
        )
    })
    .await
}

#[tokio::test]
async fn a_request_that_prefers_one_language_is_served_the_variant_stored_in_it() {
    let mut s = bilingual_origin().await;
    let url = s.origin.url("/page");
    let asking = |lang: &str| with("GET", &url, &[("accept-language", lang)]);
    assert_eq!(send(&mut s.cache, asking("en, de")).await.body, "de 1");
    // German above all else: the German page, whatever else the request lists.
    for lang in ["fr;q=0.5, de;q=1.0", "DE", "de;q=0.9, en;q=0.1"] {
        let got = send(&mut s.cache, asking(lang)).await;
        assert_eq!(got.body, "de 1", "{lang}");
        assert!(got.hit(), "{lang}: {}", got.cache_status());
        assert_eq!(got.header("content-language"), Some("de"));
    }
    assert_eq!(s.origin.hits(), 1);
    // French first, a tie, a wildcard first, or English alone: the origin chooses.
    for (lang, body) in [
        ("fr, de;q=0.5", "fr 2"),
        ("de, fr", "de 3"),
        ("*, fr;q=0.1", "fr 4"),
        ("en", "de 5"),
    ] {
        let got = send(&mut s.cache, asking(lang)).await;
        assert_eq!(got.body, body, "{lang}");
    }
    // French is stored now (twice), and found the same way: the newest.
    let got = send(&mut s.cache, asking("fr;q=0.9, en;q=0.8")).await;
    assert_eq!((got.hit(), &got.body[..]), (true, &b"fr 4"[..]));
    // A request that will not take a stored response, or a stale one, goes to the origin.
    let no_cache = with(
        "GET",
        &url,
        &[
            ("accept-language", "de;q=0.8"),
            ("cache-control", "no-cache"),
        ],
    );
    assert!(!send(&mut s.cache, no_cache).await.hit());
    s.clock.advance(120);
    assert!(!send(&mut s.cache, asking("fr;q=0.5, de")).await.hit());
}

#[tokio::test]
async fn the_other_headers_vary_names_must_still_match() {
    let mut s = bilingual_origin().await;
    let url = s.origin.url("/two");
    let asking = |lang: &str, flavor: &str| {
        with(
            "GET",
            &url,
            &[("accept-language", lang), ("x-flavor", flavor)],
        )
    };
    assert_eq!(send(&mut s.cache, asking("en, de", "a")).await.body, "de 1");
    assert!(send(&mut s.cache, asking("de;q=0.5", "a")).await.hit());
    assert!(!send(&mut s.cache, asking("de;q=0.5", "b")).await.hit());
    assert_eq!(s.origin.hits(), 2);
}

#[tokio::test]
async fn a_long_accept_language_is_stored_but_never_selected_by_language() {
    let mut s = bilingual_origin().await;
    let url = s.origin.url("/long");
    let asking = |lang: &str| with("GET", &url, &[("accept-language", lang)]);
    // 300 bytes of languages, German first: its variant is kept, for its own values only.
    let long = format!("de, {}", vec!["en-gb;q=0.1"; 25].join(", "));
    assert_eq!(send(&mut s.cache, asking(&long)).await.body, "de 1");
    assert!(send(&mut s.cache, asking(&long)).await.hit());
    assert!(!send(&mut s.cache, asking("de")).await.hit());
    // A short one is recorded, and selects.
    assert!(send(&mut s.cache, asking("de;q=0.9, fr;q=0.1")).await.hit());
    assert_eq!(s.origin.hits(), 2);
}
