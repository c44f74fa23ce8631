//! Serving stale: `stale-if-error`, `stale-while-revalidate`, and `must-revalidate` over both.

use super::*;

/// An origin that answers `max-age=10` plus `extra` until it is told to fail with `failure`,
/// an error without freshness of its own (one with it would be stored: see storability).
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
            response.headers_mut().remove("cache-control");
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
async fn stale_on_error_covers_every_5xx_and_an_unreachable_origin_within_its_window() {
    let options = HttpCacheOptions::default().stale_on_error(Duration::from_secs(120));
    let (mut s, failure) = failing_later(options, "").await;
    let url = s.origin.url("/opt");
    let other = s.origin.url("/other");
    send(&mut s.cache, get(&url)).await;
    send(&mut s.cache, get(&other)).await;
    s.clock.advance(60);
    // Every 5xx, not only RFC 5861's four; never a 4xx, which is the origin's answer.
    for code in [500, 507, 599] {
        failure.store(code, Ordering::SeqCst);
        let got = send(&mut s.cache, get(&url)).await;
        assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"n1"[..]));
        assert!(
            got.cache_status().contains(&format!(
                "fwd=stale; fwd-status={code}; detail=stale-on-error"
            )),
            "{}",
            got.cache_status()
        );
    }
    failure.store(404, Ordering::SeqCst);
    assert_eq!(
        send(&mut s.cache, get(&other)).await.status,
        StatusCode::NOT_FOUND
    );

    failure.store(500, Ordering::SeqCst);
    s.origin.stop().await;
    let unreachable = send(&mut s.cache, get(&url)).await;
    assert_eq!(
        &unreachable.body[..],
        b"n1",
        "an unreachable origin, within the window"
    );
    assert!(
        unreachable
            .cache_status()
            .contains("fwd=stale; detail=stale-on-error"),
        "{}",
        unreachable.cache_status()
    );
    s.clock.advance(600);
    let response = s.cache.ready().await.unwrap().call(get(&url)).await;
    assert!(response.is_err(), "outside the window the error stands");
}

#[tokio::test]
async fn stale_if_error_in_a_response_covers_rfc_5861s_four_statuses_only() {
    let (mut s, failure) = failing_later(HttpCacheOptions::default(), ", stale-if-error=600").await;
    let url = s.origin.url("/four");
    send(&mut s.cache, get(&url)).await;
    s.clock.advance(30);
    failure.store(502, Ordering::SeqCst);
    assert_eq!(&send(&mut s.cache, get(&url)).await.body[..], b"n1");
    failure.store(507, Ordering::SeqCst);
    assert_eq!(send(&mut s.cache, get(&url)).await.status.as_u16(), 507);
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
async fn s_maxage_forbids_a_shared_cache_to_serve_stale() {
    for (shared, status) in [
        (true, StatusCode::SERVICE_UNAVAILABLE),
        (false, StatusCode::OK),
    ] {
        let options = HttpCacheOptions::default().shared(shared);
        let (mut s, failure) = failing_later(options, ", s-maxage=10, stale-if-error=600").await;
        let url = s.origin.url("/s-maxage");
        send(&mut s.cache, get(&url)).await;
        failure.store(503, Ordering::SeqCst);
        s.clock.advance(30);
        let got = send(&mut s.cache, get(&url)).await;
        assert_eq!(got.status, status, "shared: {shared}");
    }
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
