//! Tags (surrogate keys): what an origin's `Surrogate-Key` and `Cache-Tag` name is purged
//! together, every variant included, and the fields never reach a shared cache's clients.

use super::*;

/// An origin that tags each page with what it shows: `/p/<n>` shows product n and is on the
/// home page; `/c/1` lists products 42 and 7 (in Cloudflare's comma-separated form); `/p/42`
/// varies by language. Bodies are numbered, so a refetch is seen.
async fn shop(options: HttpCacheOptions) -> Setup {
    setup(options, |parts, n| {
        let path = parts.uri.path();
        let body = format!("{path} #{n}");
        match path {
            "/p/42" => reply(
                &[
                    ("cache-control", "max-age=600"),
                    ("vary", "accept-language"),
                    ("surrogate-key", "product-42 home"),
                ],
                body,
            ),
            "/p/7" => reply(
                &[
                    ("cache-control", "max-age=600"),
                    ("surrogate-key", "product-7  home"),
                ],
                body,
            ),
            "/c/1" => reply(
                &[
                    ("cache-control", "max-age=600"),
                    ("cache-tag", "category-1,product-42, product-7"),
                ],
                body,
            ),
            _ => reply(&[("cache-control", "max-age=600")], body),
        }
    })
    .await
}

/// Fetches every page of the shop (both languages of `/p/42`); the bodies, in order.
async fn browse(s: &mut Setup) -> Vec<Got> {
    let mut got = Vec::new();
    for (path, language) in [
        ("/p/42", "en"),
        ("/p/42", "fr"),
        ("/p/7", "en"),
        ("/c/1", "en"),
        ("/about", "en"),
    ] {
        let url = s.origin.url(path);
        let request = with("GET", &url, &[("accept-language", language)]);
        got.push(send(&mut s.cache, request).await);
    }
    got
}

#[tokio::test]
async fn a_tag_purge_removes_every_response_and_variant_carrying_it_and_nothing_else() {
    let mut s = shop(HttpCacheOptions::default()).await;
    let first = browse(&mut s).await;
    assert_eq!(s.origin.hits(), 5);
    for got in &first {
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.header("surrogate-key").is_none(), "{:?}", got.headers);
        assert!(got.header("cache-tag").is_none(), "{:?}", got.headers);
    }
    assert!(browse(&mut s).await.iter().all(Got::hit));
    assert_eq!(s.origin.hits(), 5);
    let stats = s.cache.cache().manager().stats().await.unwrap();
    // product-42, product-7, home, category-1: on both variants of /p/42 (two each), on
    // /p/7 (two) and on /c/1 (three). The list of /p/42's variants carries none.
    assert_eq!((stats.tags, stats.tagged), (4, 9), "{stats:?}");

    let purged = s.cache.cache().purge_tag("product-42").await.unwrap();
    // Both languages of /p/42, and /c/1.
    assert_eq!(purged, 3);
    let after = browse(&mut s).await;
    let refetched: Vec<bool> = after.iter().map(|got| !got.hit()).collect();
    assert_eq!(refetched, [true, true, false, true, false]);
    assert_eq!(s.origin.hits(), 8);
    assert_eq!(after[0].body, "/p/42 #6");
    assert_eq!(after[1].body, "/p/42 #7");
    assert_eq!(after[2].body, first[2].body, "/p/7 carries no product-42");
    // Each refetch is stored once its body has ended (a hit waits for that).
    assert!(browse(&mut s).await.iter().all(Got::hit));

    // Two tags at once; a tag nothing carries purges nothing.
    assert_eq!(s.cache.cache().purge_tag("nothing").await.unwrap(), 0);
    let purged = s
        .cache
        .cache()
        .purge_tags(["category-1", "product-7"])
        .await
        .unwrap();
    assert_eq!(purged, 2, "/c/1 and /p/7");
    let again = browse(&mut s).await;
    let refetched: Vec<bool> = again.iter().map(|got| !got.hit()).collect();
    assert_eq!(refetched, [false, false, true, true, false]);
}

#[tokio::test]
async fn a_tag_purge_takes_the_records_and_unshared_bodies_off_the_disk() {
    let mut s = shop(HttpCacheOptions::default()).await;
    browse(&mut s).await;
    // Each response is stored once its body has ended (a hit waits for that).
    assert!(browse(&mut s).await.iter().all(Got::hit));
    let (records, contents) = (
        record_files(s.dir.path()).len(),
        content_files(s.dir.path()).len(),
    );
    let purged = s.cache.cache().purge_tag("home").await.unwrap() as usize;
    assert_eq!(purged, 3);
    // The files go in the background, soon after the answer.
    eventually("the purged records unlinked", || {
        record_files(s.dir.path()).len() == records - purged
    })
    .await;
    // /p/42 (two bodies) and /p/7 went; /c/1 and /about stay.
    eventually("their bodies unlinked", || {
        content_files(s.dir.path()).len() == contents - 3
    })
    .await;
    let pending = s.dir.path().join("cache-v2/purges-pending");
    eventually("the purge's note done", || {
        pending.read_dir().unwrap().next().is_none()
    })
    .await;
    assert_eq!(
        s.cache.cache().manager().stats().await.unwrap().entries as usize,
        records - purged
    );
}

#[tokio::test]
async fn tags_survive_a_restart_with_or_without_the_index_snapshot() {
    for close in [false, true] {
        let mut s = shop(HttpCacheOptions::default()).await;
        browse(&mut s).await;
        assert!(browse(&mut s).await.iter().all(Got::hit));
        if close {
            s.cache.cache().manager().close().await.unwrap();
        }
        // The same directory, opened again by a new store.
        let manager = StreamingManager::new(s.dir.path().to_path_buf());
        let cache = ServiceBuilder::new()
            .layer(HttpCacheStreamingLayer::with_options(
                manager,
                HttpCacheOptions::default(),
            ))
            .service(client());
        s.cache = cache;
        assert!(browse(&mut s).await.iter().all(Got::hit), "close: {close}");
        let purged = s.cache.cache().purge_tag("product-7").await.unwrap();
        assert_eq!(purged, 2, "close: {close}");
        let after = browse(&mut s).await;
        let refetched: Vec<bool> = after.iter().map(|got| !got.hit()).collect();
        assert_eq!(
            refetched,
            [false, false, true, true, false],
            "close: {close}"
        );
    }
}

#[tokio::test]
async fn a_response_being_stored_when_its_tag_is_purged_is_not_kept() {
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let mut s = setup(HttpCacheOptions::default(), move |_, n| {
        let mut response = Response::new(slow_body(n, Arc::clone(&gate)));
        let fields = [("cache-control", "max-age=600"), ("surrogate-key", "slow")];
        for (name, value) in fields {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    })
    .await;
    let url = s.origin.url("/slow");
    let response = ServiceExt::oneshot(s.cache.clone(), get(&url))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Headers are here, the body is not: the purge comes now.
    assert_eq!(s.cache.cache().purge_tag("slow").await.unwrap(), 0);
    release.notify_one();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "slow #1");
    let again = send(&mut s.cache, get(&url)).await;
    assert_eq!(again.body, "slow #2", "fetched before the purge: not kept");
    assert_eq!(s.origin.hits(), 2);
}

/// A body that sends `slow #<n>` once `gate` is notified.
fn slow_body(n: usize, gate: Arc<tokio::sync::Notify>) -> AxumBody {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        if n == 1 {
            gate.notified().await;
        }
        let data = http_body::Frame::data(Bytes::from(format!("slow #{n}")));
        let _ = tx.send(Ok(data)).await;
    });
    AxumBody::new(body)
}

#[tokio::test]
async fn tag_fields_reach_clients_of_a_private_cache_or_when_forwarded() {
    for options in [
        HttpCacheOptions::default().forward_tags(true),
        HttpCacheOptions::default().shared(false),
    ] {
        let mut s = shop(options).await;
        let first = browse(&mut s).await;
        let second = browse(&mut s).await;
        for got in [&first[2], &second[2]] {
            assert_eq!(got.header("surrogate-key"), Some("product-7  home"));
        }
        assert!(second[2].hit());
        assert_eq!(
            first[3].header("cache-tag"),
            Some("category-1,product-42, product-7")
        );
    }
}

#[tokio::test]
async fn what_is_not_a_tag_is_refused() {
    let s = shop(HttpCacheOptions::default()).await;
    let cache = s.cache.cache();
    for bad in ["", "two words", "a,b", "caf\u{e9}", &"x".repeat(1025)] {
        let error = cache.purge_tag(bad).await.unwrap_err();
        assert_eq!(
            error.kind(),
            http_cache_streaming::ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
    let none: [&str; 0] = [];
    assert!(cache.purge_tags(none).await.is_err());
    assert_eq!(cache.purge_tag(&"x".repeat(1024)).await.unwrap(), 0);
}
