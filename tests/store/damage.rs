//! Damage on disk: damaged entries are misses and are removed; `verify_on_read`.

use super::*;

/// Stores `body` under `key` and returns the paths of its record and content files.
async fn stored(
    dir: &std::path::Path,
    key: &str,
    body: &'static [u8],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let manager = StreamingManager::new(dir.to_path_buf());
    put_body(&manager, key, Bytes::from_static(body)).await;
    let records = record_files(dir);
    let contents = content_files(dir);
    assert_eq!((records.len(), contents.len()), (1, 1));
    (
        dir.join("cache-v2/metadata").join(&records[0]),
        dir.join("cache-v2/content").join(&contents[0]),
    )
}

#[tokio::test]
async fn damaged_entries_are_misses_and_are_removed() {
    type Damage = fn(&std::path::Path, &std::path::Path);
    let cases: [(&str, Damage); 6] = [
        ("truncated content", |_, c| {
            std::fs::write(c, b"hel").unwrap()
        }),
        ("deleted content", |_, c| std::fs::remove_file(c).unwrap()),
        ("garbage record", |r, _| {
            std::fs::write(r, b"\x00{]garbage").unwrap()
        }),
        ("truncated record", |r, _| {
            let bytes = std::fs::read(r).unwrap();
            std::fs::write(r, &bytes[..bytes.len() / 2]).unwrap()
        }),
        ("empty record", |r, _| std::fs::write(r, b"").unwrap()),
        ("future record version", |r, _| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
            v["version"] = 99.into();
            std::fs::write(r, serde_json::to_vec(&v).unwrap()).unwrap()
        }),
    ];
    for (what, damage) in cases {
        for reopen in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let manager = StreamingManager::new(dir.path().to_path_buf());
            // A warm store (index loaded) and a store opened after the damage both cope.
            manager.stats().await.unwrap();
            let (record, content) = stored(dir.path(), "GET:k", b"hello world").await;
            let manager = if reopen {
                damage(&record, &content);
                StreamingManager::new(dir.path().to_path_buf())
            } else {
                let fresh = StreamingManager::new(dir.path().to_path_buf());
                fresh
                    .get("GET:k")
                    .await
                    .unwrap()
                    .expect("stored before the damage");
                damage(&record, &content);
                fresh
            };
            let got = manager.get("GET:k").await;
            assert!(matches!(got, Ok(None)), "{what} (reopen {reopen}): {got:?}");
            assert!(!record.exists(), "{what} (reopen {reopen}): record removed");
            // The key can be stored again afterwards.
            put_body(&manager, "GET:k", Bytes::from("again")).await;
            assert_eq!(read(&manager, "GET:k").await.unwrap(), "again");
        }
    }
}

#[tokio::test]
async fn verify_on_read_refuses_flipped_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Bodies held in memory were checked when read and are not read again: this test is of
    // the disk, so none are held.
    let manager = StreamingManager::builder(dir.path())
        .verify_on_read(true)
        .read_chunk_size(4096)
        .memory_bodies(0, 0)
        .build();
    let small = Bytes::from(vec![1u8; 100]);
    let large = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
    for (key, body) in [("GET:small", &small), ("GET:large", &large)] {
        put_body(&manager, key, body.clone()).await;
        // Intact bodies pass the check.
        assert_eq!(&read(&manager, key).await.unwrap(), body);
    }
    for body in [&small, &large] {
        let path = dir.path().join("cache-v2/content").join(sha256_hex(body));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[50] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
    }
    // A small body is checked before it is served: a miss.
    assert!(manager.get("GET:small").await.unwrap().is_none());
    // A large one fails in place of its last chunk: the client never has all the bytes.
    let (response, _) = manager.get("GET:large").await.unwrap().unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let mut received = 0;
    let err = loop {
        match body.frame().await {
            Some(Ok(frame)) => received += frame.into_data().unwrap().len(),
            Some(Err(e)) => break e,
            None => panic!("a damaged body must not end cleanly"),
        }
    };
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert!(received < large.len());
    assert!(
        manager.get("GET:large").await.unwrap().is_none(),
        "damaged content removed"
    );
}
