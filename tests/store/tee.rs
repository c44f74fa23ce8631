//! Tees: only a complete body is committed, and a store that fails never breaks the stream.

use super::*;

/// Waits for a tee's partial file to be removed and checks that `key` is not stored.
async fn assert_not_stored(manager: &StreamingManager, dir: &std::path::Path, key: &str) {
    eventually("the partial file is removed", || temp_files(dir).is_empty()).await;
    assert!(
        manager.get(key).await.unwrap().is_none(),
        "{key} is not stored"
    );
}

#[tokio::test]
async fn tee_commits_only_a_complete_body() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());

    // Complete: the client gets every frame as it arrives, and the entry is stored.
    let (tx, body) = channel_body();
    let response = manager.tee("GET:ok".into(), Response::new(body), policy(URL), url());
    let mut body = std::pin::pin!(response.into_body());
    tx.send(Ok(Frame::data(Bytes::from("one ")))).await.unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        first, "one ",
        "frames reach the client before the body ends"
    );
    tx.send(Ok(Frame::data(Bytes::from("two")))).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "two");
    // A body read to its end is a hit at once: the lookup waits for the commit under way.
    let (hit, _) = manager
        .get("GET:ok")
        .await
        .unwrap()
        .expect("stored once read");
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        "one two"
    );

    // Dropped mid-body: nothing committed, the partial file removed.
    let (tx, body) = channel_body();
    let response = manager.tee(
        "GET:dropped".into(),
        Response::new(body),
        policy(URL),
        url(),
    );
    let mut body = Box::pin(response.into_body());
    tx.send(Ok(Frame::data(Bytes::from("partial"))))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_not_stored(&manager, dir.path(), "GET:dropped").await;

    // The origin's body fails: the client sees the error, nothing is committed.
    let (tx, body) = channel_body();
    let response = manager.tee("GET:failed".into(), Response::new(body), policy(URL), url());
    tx.send(Ok(Frame::data(Bytes::from("partial"))))
        .await
        .unwrap();
    tx.send(Err(std::io::Error::other("origin reset")))
        .await
        .unwrap();
    let err = response.into_body().collect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Body);
    assert!(err.to_string().contains("origin reset"), "{err}");
    assert_not_stored(&manager, dir.path(), "GET:failed").await;

    // Shorter than its Content-Length: the client has what the origin sent, nothing stored.
    let short = Response::builder()
        .header("content-length", "100")
        .body(Full::new(Bytes::from("only this")))
        .unwrap();
    let response = manager.tee("GET:short".into(), short, policy(URL), url());
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "only this"
    );
    assert_not_stored(&manager, dir.path(), "GET:short").await;

    // And put reports the same refusal as an error.
    let short = Response::builder()
        .header("content-length", "100")
        .body(Full::new(Bytes::from("only this")))
        .unwrap();
    let err = manager
        .put("GET:short".into(), short, policy(URL), url())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Length);
    assert_eq!(
        content_files(dir.path()).len(),
        1,
        "only the complete body is on disk"
    );
}

#[tokio::test]
async fn a_store_that_cannot_write_never_breaks_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the cache directory should be: every store operation fails, even as root.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"").unwrap();
    let manager = StreamingManager::new(blocked.clone());

    let len = 8 << 20;
    let response = manager.tee(
        "GET:big".into(),
        Response::new(Generated::new(len, 3)),
        policy(URL),
        url(),
    );
    let (digest, got, _) = drain(response.into_body()).await.unwrap();
    assert_eq!((digest, got), (Generated::digest(len, 3), len));

    let err = manager.get("GET:big").await.unwrap_err();
    assert!(err.is_io());
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    let err = manager
        .put(
            "GET:big".into(),
            Response::new(Full::new(Bytes::from("x"))),
            policy(URL),
            url(),
        )
        .await
        .unwrap_err();
    assert!(err.is_io(), "{err}");
}

#[tokio::test]
async fn bodies_over_max_body_size_pass_through_unstored() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .max_body_size(1 << 20)
        .build();

    // Announced too long: passed through, never written.
    let mut response = Response::new(Generated::new(3 << 20, 1));
    response
        .headers_mut()
        .insert("content-length", HeaderValue::from(3u64 << 20));
    let teed = manager.tee("GET:announced".into(), response, policy(URL), url());
    let (digest, len, _) = drain(teed.into_body()).await.unwrap();
    assert_eq!((digest, len), (Generated::digest(3 << 20, 1), 3 << 20));
    assert_not_stored(&manager, dir.path(), "GET:announced").await;

    // No length: abandoned past the limit while its client reads on to the end.
    let teed = manager.tee(
        "GET:unannounced".into(),
        Response::new(Generated::new(3 << 20, 2)).map(|b| {
            // Hide the exact size, as a chunked body would.
            http_body_util::StreamBody::new(http_body_util::BodyStream::new(b))
        }),
        policy(URL),
        url(),
    );
    let (digest, len, _) = drain(teed.into_body()).await.unwrap();
    assert_eq!((digest, len), (Generated::digest(3 << 20, 2), 3 << 20));
    assert_not_stored(&manager, dir.path(), "GET:unannounced").await;

    // At the limit: stored.
    manager
        .put(
            "GET:fits".into(),
            Response::new(Generated::new(1 << 20, 3)),
            policy(URL),
            url(),
        )
        .await
        .unwrap();
    assert!(manager.get("GET:fits").await.unwrap().is_some());
}

#[tokio::test]
async fn past_max_writes_in_flight_a_tee_passes_through_unstored() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .max_writes_in_flight(2)
        .build();
    manager.open().await.unwrap();
    // Two bodies being written, not ended yet...
    let (tx_a, a) = channel_body();
    let (tx_b, b) = channel_body();
    let a = manager.tee("GET:a".into(), Response::new(a), policy(URL), url());
    let b = manager.tee("GET:b".into(), Response::new(b), policy(URL), url());
    // ...so a third passes through whole, and is not stored.
    let c = manager.tee(
        "GET:c".into(),
        Response::new(Full::new(Bytes::from("third"))),
        policy(URL),
        url(),
    );
    assert_eq!(c.into_body().collect().await.unwrap().to_bytes(), "third");
    // `put` waits for its commit and is never refused.
    put_body(&manager, "GET:put", Bytes::from("put")).await;
    assert_eq!(read(&manager, "GET:put").await.unwrap(), "put");
    for (tx, body, text) in [(tx_a, a, "a"), (tx_b, b, "b")] {
        tx.send(Ok(Frame::data(Bytes::from(text)))).await.unwrap();
        drop(tx);
        assert_eq!(body.into_body().collect().await.unwrap().to_bytes(), text);
    }
    assert_eq!(read(&manager, "GET:a").await.unwrap(), "a");
    assert_eq!(read(&manager, "GET:b").await.unwrap(), "b");
    assert!(
        read(&manager, "GET:c").await.is_none(),
        "the third was not stored"
    );
    // Their writes are done: the next tee is stored again.
    let d = manager.tee(
        "GET:d".into(),
        Response::new(Full::new(Bytes::from("fourth"))),
        policy(URL),
        url(),
    );
    d.into_body().collect().await.unwrap();
    eventually("the fourth is stored", || {
        record_files(dir.path()).len() == 4
    })
    .await;
    assert_eq!(read(&manager, "GET:d").await.unwrap(), "fourth");
}
