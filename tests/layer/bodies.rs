//! Bodies: streamed misses, clients and origins that fail midway, trailers, a failing store.

use super::*;

/// A cached client whose origin answers one cacheable response with a body the test feeds
/// frame by frame; returns the feed and the response, headers arrived, body unread.
async fn streaming_miss() -> (Setup, FrameSender, Response<StreamingBody>) {
    let (tx, body) = channel_body();
    let body = std::sync::Mutex::new(Some(body));
    // A client that goes away abandons the entry (unless told to complete it).
    let options = HttpCacheOptions::default().complete_on_disconnect(false);
    let mut s = setup(options, move |_, _| {
        let body = body.lock().unwrap().take().expect("one request");
        let mut response = Response::new(AxumBody::new(body));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        response
    })
    .await;
    let url = s.origin.url("/streaming");
    let response = s
        .cache
        .ready()
        .await
        .unwrap()
        .call(get(&url))
        .await
        .unwrap();
    (s, tx, response)
}

/// Waits for the partial body to be removed and checks that nothing was committed.
async fn assert_nothing_stored(s: &Setup) {
    let dir = s.dir.path().to_path_buf();
    eventually("the partial body is removed", || {
        temp_files(&dir).is_empty()
    })
    .await;
    assert!(record_files(&dir).is_empty(), "nothing committed");
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_no_entry() {
    let (s, tx, response) = streaming_miss().await;
    tx.send(Ok(http_body::Frame::data(Bytes::from("first"))))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first", "the client gets frames as they come");
    drop(body);
    drop(tx);
    assert_nothing_stored(&s).await;
}

#[tokio::test]
async fn an_origin_body_error_reaches_the_client_and_stores_nothing() {
    let (s, tx, response) = streaming_miss().await;
    tx.send(Ok(http_body::Frame::data(Bytes::from("partial"))))
        .await
        .unwrap();
    tx.send(Err(std::io::Error::other("origin failed")))
        .await
        .unwrap();
    let result = response.into_body().collect().await;
    assert!(result.is_err(), "the client sees the body fail");
    assert_nothing_stored(&s).await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut service = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service_fn(|_request: Request<Full<Bytes>>| async {
            let response = Response::builder()
                .header("cache-control", "max-age=60")
                .header("content-length", "10")
                .body(Full::new(Bytes::from_static(b"short")))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
    let got = send(&mut service, get("http://example.com/short")).await;
    assert_eq!(&got.body[..], b"short");
    eventually("the partial body is removed", || {
        temp_files(dir.path()).is_empty()
    })
    .await;
    assert!(record_files(dir.path()).is_empty(), "nothing committed");
}

#[tokio::test]
async fn a_store_that_fails_never_fails_a_request() {
    let origin =
        Origin::start(|_, n| reply(&[("cache-control", "max-age=60")], format!("n{n}"))).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    // A file where the cache directory should be: nothing can be created below it.
    let manager = StreamingManager::new(file.path().join("cache"));
    let mut cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service(client());
    for n in 1..=3 {
        let got = send(&mut cache, get(&origin.url("/x"))).await;
        assert_eq!(
            (got.status, got.body),
            (StatusCode::OK, Bytes::from(format!("n{n}")))
        );
    }
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn trailers_pass_through_and_are_replayed_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut service = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service_fn(|_request: Request<Full<Bytes>>| async {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let body = Full::new(Bytes::from_static(b"with trailers"))
                .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
            let response = Response::builder()
                .header("cache-control", "max-age=60")
                .body(body)
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
    for expected in ["fwd=uri-miss", "hit"] {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(get("http://example.com/t"))
            .await
            .unwrap();
        let status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(status.contains(expected), "{status}");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc123");
        assert_eq!(&collected.to_bytes()[..], b"with trailers");
    }
}
