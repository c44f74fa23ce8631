//! Range requests answered from the stored body, and ranged misses.

use super::*;

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
