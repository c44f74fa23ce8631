//! Round trips: bodies of every size across restarts, trailers, header updates, any key.

use super::*;

#[tokio::test]
async fn bodies_of_every_size_round_trip_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: [(u64, &str); 4] = [
        (0, "empty"),
        (1, "one"),
        (64 * 1024, "64k"),
        (100 << 20, "100m"),
    ];
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut policies = Vec::new();
    for (i, (len, name)) in sizes.iter().enumerate() {
        let key = format!("GET:{URL}/{name}");
        let stored_policy = policy(URL);
        policies.push(serde_json::to_value(&stored_policy).unwrap());
        let put = manager
            .put(
                key,
                response_with(Generated::new(*len, i as u8)),
                stored_policy,
                url(),
            )
            .await
            .unwrap();
        // What put returns streams from the stored file already.
        assert_eq!(put.body().size_hint().exact(), Some(*len));
        let (digest, got, _) = drain(put.into_body()).await.unwrap();
        assert_eq!(
            (digest, got),
            (Generated::digest(*len, i as u8), *len),
            "{name}"
        );
    }
    drop(manager);

    let manager = StreamingManager::new(dir.path().to_path_buf());
    for (i, (len, name)) in sizes.iter().enumerate() {
        let (response, policy) = manager
            .get(&format!("GET:{URL}/{name}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} survives a restart"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(response.headers()["x-latin1"].as_bytes(), b"caf\xe9");
        assert_eq!(serde_json::to_value(&policy).unwrap(), policies[i]);
        assert_eq!(response.body().size_hint().exact(), Some(*len));
        assert_eq!(response.body().is_end_stream(), *len == 0);
        let (digest, got, _) = drain(response.into_body()).await.unwrap();
        assert_eq!(
            (digest, got),
            (Generated::digest(*len, i as u8), *len),
            "{name}"
        );
    }
    let stats = manager.stats().await.unwrap();
    assert_eq!(stats.entries, 4);
    assert_eq!(stats.content_bytes, (100 << 20) + 64 * 1024 + 1);
}

#[tokio::test]
async fn trailers_are_stored_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let (tx, body) = channel_body();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let sent = trailers.clone();
    tokio::spawn(async move {
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello "))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"world"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::trailers(sent))).await.unwrap();
    });
    let key = "GET:trailers".to_string();
    manager
        .put(key.clone(), Response::new(body), policy(URL), url())
        .await
        .unwrap();

    for chunk_size in [1 << 20, 4] {
        // Read whole, and in several chunks from disk.
        let manager = StreamingManager::builder(dir.path())
            .read_chunk_size(chunk_size)
            .build();
        let (response, _) = manager.get(&key).await.unwrap().unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "hello world");
    }
}

#[tokio::test]
async fn a_body_held_in_memory_is_the_one_stored() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .verify_on_read(true)
        .build();
    let body = Bytes::from(vec![7u8; 1000]);
    put_body(&manager, "GET:m", body.clone()).await;
    for _ in 0..2 {
        // The first read checks and keeps the body; the second is served from memory.
        assert_eq!(read(&manager, "GET:m").await.unwrap(), body);
    }
    // Bytes flipped on disk afterwards never reach a client: the checked copy is served.
    let content = dir.path().join("cache-v2/content").join(sha256_hex(&body));
    let mut bytes = std::fs::read(&content).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&content, bytes).unwrap();
    assert_eq!(read(&manager, "GET:m").await.unwrap(), body);
    // With another store open on the directory (noticed within 100 ms), every hit looks at
    // the disk: a record it replaces is seen at once, its stat differs.
    let other = StreamingManager::new(dir.path().to_path_buf());
    other.open().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(read(&manager, "GET:m").await.unwrap(), body);
    put_body(&other, "GET:m", Bytes::from("replaced")).await;
    assert_eq!(read(&manager, "GET:m").await.unwrap(), "replaced");
}

#[tokio::test]
async fn keys_of_any_length_and_character_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let long = format!("GET:https://example.com/{}", "a/".repeat(50_000));
    let keys = [
        "GET:../../../etc/passwd",
        "GET:\0nul\0",
        "GET:ü/ñ/✓",
        long.as_str(),
        "",
    ];
    for (i, key) in keys.iter().enumerate() {
        put_body(&manager, key, Bytes::from(vec![i as u8; 10])).await;
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(read(&manager, key).await.unwrap(), vec![i as u8; 10]);
    }
    // Nothing was created outside the store's three directories and its access log.
    assert_eq!(files_in(dir.path()), ["cache-v2"]);
    assert_eq!(
        files_in(&dir.path().join("cache-v2")),
        ["access.log", "content", "metadata", "tmp"]
    );
    assert_eq!(record_files(dir.path()).len(), keys.len());
}

#[tokio::test]
async fn update_headers_keeps_the_body_and_replaces_headers_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let body = Full::new(Bytes::from_static(b"the same body"));
    manager
        .put("GET:a".into(), response_with(body), policy(URL), url())
        .await
        .unwrap();
    let content_before = content_files(dir.path());

    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static("max-age=7"));
    headers.append("x-new", HeaderValue::from_static("1"));
    headers.append("x-new", HeaderValue::from_static("2"));
    let new_policy = policy("https://example.com/updated");
    let (updated, updated_policy) = manager
        .update_headers("GET:a", headers.clone(), new_policy.clone())
        .await
        .unwrap()
        .expect("the entry exists");
    assert_eq!(updated.headers(), &headers);
    assert_eq!(
        updated.into_body().collect().await.unwrap().to_bytes(),
        "the same body"
    );
    assert_eq!(
        serde_json::to_value(&updated_policy).unwrap(),
        serde_json::to_value(&new_policy).unwrap()
    );

    // Across a restart: the record was rewritten, the content file was not.
    drop(manager);
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let (hit, _) = manager.get("GET:a").await.unwrap().unwrap();
    assert_eq!(hit.headers(), &headers);
    assert_eq!(content_files(dir.path()), content_before);

    // Nothing stored: nothing to update.
    let missing = manager
        .update_headers("GET:none", headers, new_policy)
        .await
        .unwrap();
    assert!(missing.is_none());
}
