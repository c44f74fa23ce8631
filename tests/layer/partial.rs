//! Partial content (RFC 9111 §3.3–§3.4): `206` answers kept as partial entries, ranges
//! inside them served from the cache, missing spans fetched alone, and a partial entry
//! that covers its body becoming a complete one.

use std::future::Future as _;
use std::sync::Mutex;

use super::*;

/// What the ranged origin serves: a body and its entity tag, changed by the tests.
struct Representation {
    body: Vec<u8>,
    etag: &'static str,
    extra: Vec<(&'static str, String)>,
    /// Fail a body after this many bytes.
    cut_after: Option<usize>,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// An origin that honours one byte range (`a-b`, `a-`, `-n`) and `If-Range`, as nginx does
/// for static files, with `max-age=60`.
async fn ranged_origin(
    options: HttpCacheOptions,
    len: usize,
) -> (Setup, Arc<Mutex<Representation>>) {
    ranged_origin_sized(options, len, None).await
}

/// [`ranged_origin`], in front of a store of at most `max_size` bytes.
async fn ranged_origin_sized(
    options: HttpCacheOptions,
    len: usize,
    max_size: Option<u64>,
) -> (Setup, Arc<Mutex<Representation>>) {
    let served = Arc::new(Mutex::new(Representation {
        body: pattern(len, 0),
        etag: "\"p1\"",
        extra: Vec::new(),
        cut_after: None,
    }));
    let current = served.clone();
    let s = setup_sized(options, max_size, move |parts, _| {
        let now = current.lock().unwrap();
        let total = now.body.len();
        let mut headers: Vec<(&str, String)> = vec![
            ("cache-control", "max-age=60".into()),
            ("accept-ranges", "bytes".into()),
        ];
        if !now.etag.is_empty() {
            headers.push(("etag", now.etag.into()));
        }
        headers.extend(now.extra.iter().cloned());
        let if_range_holds = parts
            .headers
            .get("if-range")
            .is_none_or(|v| v.to_str().unwrap() == now.etag);
        let range = parts
            .headers
            .get("range")
            .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-'))
            .filter(|_| if_range_holds)
            .map(|(first, last)| match (first, last) {
                ("", n) => (total - n.parse::<usize>().unwrap(), total),
                (a, "") => (a.parse().unwrap(), total),
                (a, b) => (
                    a.parse().unwrap(),
                    (b.parse::<usize>().unwrap() + 1).min(total),
                ),
            });
        let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match range {
            Some((start, end)) => {
                let mut response = reply(&borrowed, now.body[start..end].to_vec());
                if let Some(cut) = now.cut_after {
                    let sent = Bytes::copy_from_slice(&now.body[start..start + cut]);
                    *response.body_mut() = AxumBody::new(Cut::new(sent));
                }
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                let content_range = format!("bytes {start}-{}/{total}", end - 1);
                response
                    .headers_mut()
                    .insert("content-range", content_range.parse().unwrap());
                response
            }
            None => reply(&borrowed, now.body.clone()),
        }
    })
    .await;
    (s, served)
}

fn ranged(url: &str, range: &str) -> Request<Full<Bytes>> {
    with("GET", url, &[("range", range)])
}

/// The `Range` of each request the origin saw.
fn ranges_seen(origin: &Origin) -> Vec<Option<String>> {
    origin
        .requests()
        .iter()
        .map(|parts| {
            parts
                .headers
                .get("range")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_206_is_kept_and_ranges_inside_it_are_hits() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 1000).await;
    let body = served.lock().unwrap().body.clone();
    let url = s.origin.url("/video");
    let first = send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&first.body[..], &body[..100]);
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );

    for (range, start, end) in [
        ("bytes=10-49", 10, 50),
        ("bytes=0-99", 0, 100),
        ("bytes=99-99", 99, 100),
    ] {
        let hit = send(&mut s.cache, ranged(&url, range)).await;
        assert!(hit.hit(), "{range}: {}", hit.cache_status());
        assert_eq!(hit.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&hit.body[..], &body[start..end], "{range}");
        assert_eq!(
            hit.header("content-range"),
            Some(format!("bytes {start}-{}/1000", end - 1).as_str())
        );
        assert_eq!(
            hit.header("content-length"),
            Some((end - start).to_string().as_str())
        );
        assert_eq!(hit.header("etag"), Some("\"p1\""));
    }
    assert_eq!(s.origin.hits(), 1);
    // A request without a range gets the whole body: the part held, and the rest, which
    // alone is asked of the origin (RFC 9111 §3.4).
    let whole = send(&mut s.cache, get(&url)).await;
    assert_eq!((whole.status, &whole.body[..]), (StatusCode::OK, &body[..]));
    assert_eq!(whole.header("content-length"), Some("1000"));
    assert_eq!(whole.header("content-range"), None);
    assert_eq!(ranges_seen(&s.origin)[1].as_deref(), Some("bytes=100-999"));
    assert_eq!(s.origin.last_request().headers["if-range"], "\"p1\"");
    assert_eq!(s.origin.hits(), 2);
    // Complete now: a whole hit.
    let again = send(&mut s.cache, get(&url)).await;
    assert!(again.hit(), "{}", again.cache_status());
    assert_eq!((again.status, &again.body[..]), (StatusCode::OK, &body[..]));
    assert_eq!(s.origin.hits(), 2);
}

#[tokio::test]
async fn suffix_and_open_ranges_are_answered_from_what_is_held() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 1000).await;
    let body = served.lock().unwrap().body.clone();
    let url = s.origin.url("/video");
    // The last 100 bytes, asked as a suffix.
    let first = send(&mut s.cache, ranged(&url, "bytes=-100")).await;
    assert_eq!(first.header("content-range"), Some("bytes 900-999/1000"));
    for (range, start) in [("bytes=-50", 950), ("bytes=950-", 950), ("bytes=-100", 900)] {
        let hit = send(&mut s.cache, ranged(&url, range)).await;
        assert!(hit.hit(), "{range}: {}", hit.cache_status());
        assert_eq!(&hit.body[..], &body[start..], "{range}");
        let expected = format!("bytes {start}-999/1000");
        assert_eq!(hit.header("content-range"), Some(expected.as_str()));
    }
    assert_eq!(s.origin.hits(), 1);
    // A suffix reaching before what is held asks for what is missing only.
    let longer = send(&mut s.cache, ranged(&url, "bytes=-200")).await;
    assert_eq!(&longer.body[..], &body[800..]);
    assert_eq!(ranges_seen(&s.origin)[1].as_deref(), Some("bytes=800-899"));
}

#[tokio::test]
async fn a_whole_request_on_stale_parts_goes_to_the_origin_whole() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 1000).await;
    let body = served.lock().unwrap().body.clone();
    let url = s.origin.url("/video");
    send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
    s.clock.advance(120);
    let whole = send(&mut s.cache, get(&url)).await;
    assert_eq!((whole.status, &whole.body[..]), (StatusCode::OK, &body[..]));
    assert_eq!(ranges_seen(&s.origin)[1], None, "no range on stale parts");
    assert!(!s.origin.last_request().headers.contains_key("if-range"));
}

#[tokio::test]
async fn a_range_held_in_part_fetches_only_the_missing_span() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 1000).await;
    let body = served.lock().unwrap().body.clone();
    let url = s.origin.url("/video");
    send(&mut s.cache, ranged(&url, "bytes=100-199")).await;
    // Held: 100..200. Asked: 150..300, of which 200..300 is missing: only that is fetched.
    let got = send(&mut s.cache, ranged(&url, "bytes=150-299")).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&got.body[..], &body[150..300]);
    assert_eq!(got.header("content-range"), Some("bytes 150-299/1000"));
    let seen = ranges_seen(&s.origin);
    assert_eq!(
        seen[1].as_deref(),
        Some("bytes=200-299"),
        "only what was missing"
    );
    assert_eq!(
        s.origin.last_request().headers["if-range"],
        "\"p1\"",
        "asked under the held ranges' entity tag"
    );
    // Held now: 100..300.
    let inside = send(&mut s.cache, ranged(&url, "bytes=120-280")).await;
    assert!(inside.hit(), "{}", inside.cache_status());
    assert_eq!(&inside.body[..], &body[120..281]);
    // Missing on the left only.
    let left = send(&mut s.cache, ranged(&url, "bytes=0-149")).await;
    assert_eq!(&left.body[..], &body[..150]);
    assert_eq!(ranges_seen(&s.origin)[2].as_deref(), Some("bytes=0-99"));
    assert_eq!(s.origin.hits(), 3);
}

#[tokio::test]
async fn ranges_that_cover_the_body_become_a_complete_entry_with_its_digest() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 3000).await;
    let body = served.lock().unwrap().body.clone();
    let url = s.origin.url("/video");
    for range in ["bytes=0-999", "bytes=2000-", "bytes=1000-1999"] {
        send(&mut s.cache, ranged(&url, range)).await;
    }
    assert_eq!(s.origin.hits(), 3);
    let digest = sha256_hex(&body);
    let dir = s.dir.path().to_path_buf();
    eventually("the completed entry's content file", || {
        content_files(&dir).contains(&digest)
    })
    .await;
    let whole = send(&mut s.cache, get(&url)).await;
    assert!(whole.hit(), "{}", whole.cache_status());
    assert_eq!((whole.status, &whole.body[..]), (StatusCode::OK, &body[..]));
    assert_eq!(whole.header("content-length"), Some("3000"));
    assert!(whole.header("content-range").is_none());
    // Ranges of it are cut from the complete entry.
    let part = send(&mut s.cache, ranged(&url, "bytes=2990-")).await;
    assert!(part.hit());
    assert_eq!(&part.body[..], &body[2990..]);
    assert_eq!(s.origin.hits(), 3);
}

#[tokio::test]
async fn a_repr_digest_that_disagrees_keeps_the_parts_from_becoming_an_entry() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 2000).await;
    served.lock().unwrap().extra = vec![(
        "repr-digest",
        "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:".into(),
    )];
    let url = s.origin.url("/video");
    send(&mut s.cache, ranged(&url, "bytes=0-999")).await;
    send(&mut s.cache, ranged(&url, "bytes=1000-")).await;
    // The parts are dropped once found wrong: the same range goes to the origin again.
    let dir = s.dir.path().to_path_buf();
    let mut cache = s.cache.clone();
    let mut tries = 0;
    loop {
        let again = send(&mut cache, ranged(&url, "bytes=0-9")).await;
        if !again.hit() {
            break;
        }
        tries += 1;
        assert!(tries < 500, "the parts were never dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(content_files(&dir).is_empty(), "{:?}", content_files(&dir));
    let whole = send(&mut s.cache, get(&url)).await;
    assert!(!whole.hit());
}

#[tokio::test]
async fn a_changed_representation_comes_back_whole_and_replaces_the_parts() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 1000).await;
    let url = s.origin.url("/video");
    send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
    {
        let mut now = served.lock().unwrap();
        now.body = pattern(1000, 7);
        now.etag = "\"p2\"";
    }
    let new_body = served.lock().unwrap().body.clone();
    // 50..150 is held in part: the origin is asked for 100..150 under "p1", which no longer
    // holds, and answers the whole new body.
    let got = send(&mut s.cache, ranged(&url, "bytes=50-149")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.cache_status());
    assert_eq!(&got.body[..], &new_body[..]);
    // Nothing of "p1" is served again: the new body is stored whole.
    let after = send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
    assert!(after.hit(), "{}", after.cache_status());
    assert_eq!(&after.body[..], &new_body[..100]);
    assert_eq!(after.header("etag"), Some("\"p2\""));
}

#[tokio::test]
async fn parts_without_a_strong_validator_or_with_a_cookie_are_not_kept() {
    for (etag, extra) in [
        ("", None),
        ("W/\"weak\"", None),
        ("\"p1\"", Some(("set-cookie", "session=1".to_owned()))),
    ] {
        let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 500).await;
        {
            let mut now = served.lock().unwrap();
            now.etag = etag;
            now.extra.extend(extra.clone());
        }
        let url = s.origin.url("/video");
        send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
        let again = send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
        assert!(!again.hit(), "{etag} {extra:?}: {}", again.cache_status());
        assert_eq!(s.origin.hits(), 2, "{etag} {extra:?}");
    }
}

#[tokio::test]
async fn a_range_asked_with_authorization_is_not_kept_for_others_in_a_shared_cache() {
    let (mut s, _) = ranged_origin(HttpCacheOptions::default(), 500).await;
    let url = s.origin.url("/private-video");
    let asked = with(
        "GET",
        &url,
        &[("range", "bytes=0-99"), ("authorization", "Bearer alice")],
    );
    send(&mut s.cache, asked).await;
    let other = send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
    assert!(!other.hit(), "{}", other.cache_status());
    assert_eq!(s.origin.hits(), 2);
}

#[tokio::test]
async fn store_partial_content_false_keeps_nothing() {
    let options = HttpCacheOptions::default().store_partial_content(false);
    let (mut s, _) = ranged_origin(options, 500).await;
    let url = s.origin.url("/video");
    send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
    let again = send(&mut s.cache, ranged(&url, "bytes=0-99")).await;
    assert!(!again.hit());
    assert_eq!(s.origin.hits(), 2);
}

/// A body that sends its bytes, then fails a little later (once they are on the wire).
struct Cut(Option<Bytes>, std::pin::Pin<Box<tokio::time::Sleep>>);

impl Cut {
    fn new(bytes: Bytes) -> Self {
        Cut(
            Some(bytes),
            Box::pin(tokio::time::sleep(Duration::from_millis(100))),
        )
    }
}

impl http_body::Body for Cut {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(bytes) = self.0.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
        }
        std::task::ready!(self.1.as_mut().poll(cx));
        std::task::Poll::Ready(Some(Err(std::io::Error::other("cut"))))
    }
}

#[tokio::test]
async fn a_range_cut_short_keeps_what_arrived_and_never_serves_the_rest() {
    let (mut s, served) = ranged_origin(HttpCacheOptions::default(), 1000).await;
    let body = served.lock().unwrap().body.clone();
    served.lock().unwrap().cut_after = Some(400);
    let url = s.origin.url("/video");
    let response = s
        .cache
        .ready()
        .await
        .unwrap()
        .call(ranged(&url, "bytes=0-999"))
        .await;
    let read = response.unwrap().into_body().collect().await;
    assert!(read.is_err(), "the client sees the range fail");
    served.lock().unwrap().cut_after = None;
    // What arrived is held; a range inside it is a hit.
    let held = send(&mut s.cache, ranged(&url, "bytes=0-399")).await;
    assert!(held.hit(), "{}", held.cache_status());
    assert_eq!(&held.body[..], &body[..400]);
    // The rest was never received: fetched, not read from the file's hole.
    let rest = send(&mut s.cache, ranged(&url, "bytes=300-999")).await;
    assert_eq!(&rest.body[..], &body[300..]);
    let seen = ranges_seen(&s.origin);
    assert_eq!(seen.last().unwrap().as_deref(), Some("bytes=400-999"));
}

#[tokio::test]
async fn partial_entries_take_room_within_max_size() {
    let max_size = 256 * 1024;
    let (mut s, served) =
        ranged_origin_sized(HttpCacheOptions::default(), 2 << 20, Some(max_size)).await;
    let body = served.lock().unwrap().body.clone();
    let url = s.origin.url("/video");
    let got = send(&mut s.cache, ranged(&url, "bytes=0-")).await;
    assert_eq!(
        &got.body[..],
        &body[..],
        "the client gets every byte all the same"
    );
    let on_disk = disk_bytes(s.dir.path());
    assert!(
        on_disk <= max_size,
        "{on_disk} bytes in the cache directory, max_size {max_size}"
    );
    // What fitted is held: the start of the body is a hit.
    let start = send(&mut s.cache, ranged(&url, "bytes=0-9999")).await;
    assert!(start.hit(), "{}", start.cache_status());
    assert_eq!(&start.body[..], &body[..10_000]);
}
