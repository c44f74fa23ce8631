//! The store seen from outside: what `put`, `tee`, `get`, `delete` and `clear` do to bytes,
//! headers and files on disk.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{ErrorKind, StreamingManager};
use url::Url;

const URL: &str = "https://example.com/file";

fn response_with<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    *response.version_mut() = Version::HTTP_2;
    let headers = response.headers_mut();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("max-age=3600, public"),
    );
    headers.append("set-cookie", HeaderValue::from_static("a=1"));
    headers.append("set-cookie", HeaderValue::from_static("b=2"));
    headers.insert("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    response
}

fn url() -> Url {
    Url::parse(URL).unwrap()
}

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
async fn identical_bodies_are_stored_once_and_freed_with_their_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let body = Bytes::from(vec![7u8; 300_000]);
    for key in ["GET:a", "GET:b"] {
        manager
            .put(
                key.into(),
                Response::new(Full::new(body.clone())),
                policy(URL),
                url(),
            )
            .await
            .unwrap();
    }
    let hex: String = sha256(&body).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(content_files(dir.path()), [hex]);
    assert_eq!(record_files(dir.path()).len(), 2);

    manager.delete("GET:a").await.unwrap();
    assert_eq!(
        content_files(dir.path()).len(),
        1,
        "b still uses the content"
    );
    let (response, _) = manager.get("GET:b").await.unwrap().unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        body
    );

    manager.delete("GET:b").await.unwrap();
    assert!(content_files(dir.path()).is_empty());
    assert!(record_files(dir.path()).is_empty());
    manager
        .delete("GET:b")
        .await
        .expect("deleting a missing key is fine");

    // Reference counts are rebuilt from the records after a restart.
    for key in ["GET:c", "GET:d"] {
        manager
            .put(
                key.into(),
                Response::new(Full::new(body.clone())),
                policy(URL),
                url(),
            )
            .await
            .unwrap();
    }
    // Deletes right after the restart may come while the records are still being read in:
    // content is then unlinked once they are (which `stats` waits for).
    let manager = StreamingManager::new(dir.path().to_path_buf());
    manager.delete("GET:c").await.unwrap();
    assert_eq!(content_files(dir.path()).len(), 1);
    manager.delete("GET:d").await.unwrap();
    assert_eq!(manager.stats().await.unwrap().entries, 0);
    assert!(content_files(dir.path()).is_empty());
}

#[tokio::test]
async fn overwriting_a_key_serves_the_new_body_and_frees_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    for body in ["first version", "second version"] {
        manager
            .put(
                "GET:k".into(),
                Response::new(Full::new(Bytes::from(body))),
                policy(URL),
                url(),
            )
            .await
            .unwrap();
    }
    let (response, _) = manager.get("GET:k").await.unwrap().unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "second version"
    );
    assert_eq!(content_files(dir.path()).len(), 1);
    assert_eq!(record_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn clear_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    for key in ["GET:x", "GET:y"] {
        manager
            .put(
                key.into(),
                Response::new(Full::new(Bytes::from(key))),
                policy(URL),
                url(),
            )
            .await
            .unwrap();
    }
    manager.clear().await.unwrap();
    assert!(manager.get("GET:x").await.unwrap().is_none());
    assert!(content_files(dir.path()).is_empty());
    assert!(record_files(dir.path()).is_empty());
    assert_eq!(manager.stats().await.unwrap().entries, 0);
}

/// Stores `body` under `key` and returns the paths of its record and content files.
async fn stored(
    dir: &std::path::Path,
    key: &str,
    body: &'static [u8],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let manager = StreamingManager::new(dir.to_path_buf());
    manager
        .put(
            key.into(),
            Response::new(Full::new(Bytes::from_static(body))),
            policy(URL),
            url(),
        )
        .await
        .unwrap();
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
            manager
                .put(
                    "GET:k".into(),
                    Response::new(Full::new(Bytes::from("again"))),
                    policy(URL),
                    url(),
                )
                .await
                .unwrap();
            let (response, _) = manager.get("GET:k").await.unwrap().unwrap();
            assert_eq!(
                response.into_body().collect().await.unwrap().to_bytes(),
                "again"
            );
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
        manager
            .put(
                key.into(),
                Response::new(Full::new(body.clone())),
                policy(URL),
                url(),
            )
            .await
            .unwrap();
        // Intact bodies pass the check.
        let (response, _) = manager.get(key).await.unwrap().unwrap();
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes(),
            body
        );
    }
    for body in [&small, &large] {
        let path = dir.path().join("cache-v2/content").join(
            sha256(body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
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

#[tokio::test]
async fn a_body_held_in_memory_is_the_one_stored() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .verify_on_read(true)
        .build();
    let body = Bytes::from(vec![7u8; 1000]);
    manager
        .put(
            "GET:m".into(),
            Response::new(Full::new(body.clone())),
            policy(URL),
            url(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        // The first read checks and keeps the body; the second is served from memory.
        let (hit, _) = manager.get("GET:m").await.unwrap().unwrap();
        assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), body);
    }
    // Bytes flipped on disk afterwards never reach a client: the checked copy is served.
    let content = dir.path().join("cache-v2/content").join(
        sha256(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let mut bytes = std::fs::read(&content).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&content, bytes).unwrap();
    let (hit, _) = manager.get("GET:m").await.unwrap().unwrap();
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), body);
    // Another process replacing the record is seen at once: its stat differs.
    let other = StreamingManager::new(dir.path().to_path_buf());
    other
        .put(
            "GET:m".into(),
            Response::new(Full::new(Bytes::from("replaced"))),
            policy(URL),
            url(),
        )
        .await
        .unwrap();
    let (hit, _) = manager.get("GET:m").await.unwrap().unwrap();
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        "replaced"
    );
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_put_get_delete_never_serve_a_torn_body() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .read_chunk_size(16 * 1024)
        .build();
    // Two candidate bodies per key; every read must be exactly one of them.
    let bodies: Arc<Vec<[Bytes; 2]>> = Arc::new(
        (0..8u8)
            .map(|k| {
                let a = Bytes::from(vec![k; 50_000 + k as usize * 1000]);
                let b = Bytes::from((0..120_000u32).map(|i| (i as u8) ^ k).collect::<Vec<_>>());
                [a, b]
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let manager = manager.clone();
        let bodies = Arc::clone(&bodies);
        tasks.push(tokio::spawn(async move {
            let (mut reads, mut puts) = (0, 0);
            for i in 0..40u32 {
                let k = ((t + i) % 8) as usize;
                let key = format!("GET:key{k}");
                match (t * 7 + i) % 5 {
                    0 | 1 => {
                        let body = bodies[k][((t + i) % 2) as usize].clone();
                        let sent = Response::new(Full::new(body.clone()));
                        // Whether a delete or a newer write overtakes it (and nothing is
                        // committed) or not, the caller gets back the bytes it handed over.
                        let put = manager.put(key.clone(), sent, policy(URL), url()).await;
                        let got = put.unwrap().into_body().collect().await.unwrap();
                        assert_eq!(got.to_bytes(), body, "{key}: put returned other bytes");
                        puts += 1;
                    }
                    2 => manager.delete(&key).await.unwrap(),
                    _ => {
                        if let Some((response, _)) = manager.get(&key).await.unwrap() {
                            let got = response.into_body().collect().await.unwrap().to_bytes();
                            assert!(
                                bodies[k].contains(&got),
                                "{key}: torn or foreign body of {} bytes",
                                got.len()
                            );
                            reads += 1;
                        }
                    }
                }
            }
            (reads, puts)
        }));
    }
    let (mut reads, mut puts) = (0, 0);
    for task in tasks {
        let (r, p) = task.await.unwrap();
        (reads, puts) = (reads + r, puts + p);
    }
    assert!(reads > 0, "some reads hit");
    assert_eq!(puts, 1024, "every put returned its body");
    // What is left on disk is consistent: each record's content exists, nothing else does.
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let stats = manager.stats().await.unwrap();
    assert_eq!(
        stats.content_files as usize,
        content_files(dir.path()).len()
    );
    assert_eq!(stats.entries as usize, record_files(dir.path()).len());
    for k in 0..8 {
        if let Some((response, _)) = manager.get(&format!("GET:key{k}")).await.unwrap() {
            let got = response.into_body().collect().await.unwrap().to_bytes();
            assert!(bodies[k].contains(&got));
        }
    }
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
        manager
            .put(
                key.to_string(),
                Response::new(Full::new(Bytes::from(vec![i as u8; 10]))),
                policy(URL),
                url(),
            )
            .await
            .unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let (response, _) = manager.get(key).await.unwrap().unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            vec![i as u8; 10]
        );
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

#[tokio::test]
async fn a_write_under_way_is_not_committed_after_a_delete_or_clear() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    for clear in [false, true] {
        let (tx, body) = channel_body();
        let teed = manager.tee("GET:racing".into(), Response::new(body), policy(URL), url());
        let mut body = std::pin::pin!(teed.into_body());
        tx.send(Ok(Frame::data(Bytes::from("fetched before"))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        // The resource changes (a PUT, say) while the old representation is still streaming.
        if clear {
            manager.clear().await.unwrap();
        } else {
            manager.delete("GET:racing").await.unwrap();
        }
        drop(tx);
        assert!(
            body.frame().await.is_none(),
            "the client still gets the whole body"
        );
        assert!(
            manager.get("GET:racing").await.unwrap().is_none(),
            "clear={clear}: what was fetched before the delete is not stored after it"
        );
        assert!(record_files(dir.path()).is_empty());
    }
    // Writes that start after the delete are stored as usual.
    manager
        .put(
            "GET:racing".into(),
            response_with(Full::new(Bytes::from("new"))),
            policy(URL),
            url(),
        )
        .await
        .unwrap();
    assert!(manager.get("GET:racing").await.unwrap().is_some());
}

fn content_bytes_on_disk(dir: &std::path::Path) -> u64 {
    let content = dir.join("cache-v2/content");
    content_files(dir)
        .iter()
        .map(|f| std::fs::metadata(content.join(f)).unwrap().len())
        .sum()
}

async fn put_body(manager: &StreamingManager, key: &str, body: Bytes) {
    manager
        .put(
            key.into(),
            Response::new(Full::new(body)),
            policy(URL),
            url(),
        )
        .await
        .unwrap();
}

async fn read(manager: &StreamingManager, key: &str) -> Option<Bytes> {
    let (hit, _) = manager.get(key).await.unwrap()?;
    Some(hit.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn a_bounded_store_stays_under_its_size_and_keeps_what_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 1 << 20;
    let manager = StreamingManager::builder(dir.path())
        .max_size(bound)
        .build();
    let body = |i: u32| Bytes::from(vec![(i % 251) as u8; 256 << 10]);
    // Two keys share one body; only "shared-b" is used from here on.
    put_body(&manager, "GET:shared-a", body(1000)).await;
    put_body(&manager, "GET:shared-b", body(1000)).await;
    put_body(&manager, "GET:hot", body(2000)).await;
    for i in 0..40 {
        // Ten times the bound is written, one entry at a time.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        assert!(
            read(&manager, "GET:hot").await.is_some(),
            "the entry in use stays ({i})"
        );
        assert!(
            read(&manager, "GET:shared-b").await.is_some(),
            "shared content stays ({i})"
        );
        put_body(&manager, &format!("GET:cold{i}"), body(i)).await;
        assert!(
            content_bytes_on_disk(dir.path()) <= bound,
            "under the bound after {i}"
        );
        assert!(manager.stats().await.unwrap().content_bytes <= bound);
    }
    assert!(
        read(&manager, "GET:shared-a").await.is_none(),
        "the unused twin was evicted"
    );
    assert_eq!(read(&manager, "GET:shared-b").await.unwrap(), body(1000));
    assert!(
        read(&manager, "GET:cold0").await.is_none(),
        "old entries were evicted"
    );
    assert_eq!(
        record_files(dir.path()).len() as u64,
        manager.stats().await.unwrap().entries,
        "no record file outlives its entry"
    );

    // Reopened with a smaller bound, the store shrinks to it.
    drop(manager);
    let smaller = StreamingManager::builder(dir.path())
        .max_size(bound / 4)
        .build();
    smaller.stats().await.unwrap();
    assert!(content_bytes_on_disk(dir.path()) <= bound / 4);
}

/// Bytes of every file under `dir`: content, records and the temp files of bodies being
/// written.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        total += if meta.is_dir() {
            bytes_under(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::test]
async fn bodies_being_stored_count_against_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 1 << 20;
    let manager = StreamingManager::builder(dir.path())
        .max_size(bound)
        .build();
    let frame = |i: usize, n: u8| Bytes::from(vec![i as u8 ^ n; 256 << 10]);
    put_body(&manager, "GET:stored", frame(99, 0)).await;
    // Six bodies start at once, each 256 KiB in and waiting for the rest: 1.5 MiB in temp
    // files, were they all written, in a store bounded to 1 MiB.
    let mut senders = Vec::new();
    let mut clients = Vec::new();
    for i in 0..6 {
        let (tx, body) = channel_body();
        tx.send(Ok(Frame::data(frame(i, 1)))).await.unwrap();
        let response = Response::new(body);
        let teed = manager.tee(format!("GET:{i}"), response, policy(URL), url());
        clients.push(tokio::spawn(teed.into_body().collect()));
        senders.push(tx);
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        seen.push(bytes_under(dir.path()));
    }
    let peak = seen.iter().copied().max().unwrap();
    assert!(peak <= bound + (64 << 10), "{peak} bytes on disk: {seen:?}");
    assert!(
        peak >= 3 * (256 << 10),
        "the bodies that fit are written: {seen:?}"
    );
    for (i, tx) in senders.into_iter().enumerate() {
        tx.send(Ok(Frame::data(frame(i, 2)))).await.unwrap();
    }
    // Every client gets its whole body, stored or not.
    for (i, client) in clients.into_iter().enumerate() {
        let got = client.await.unwrap().unwrap().to_bytes();
        assert_eq!(got, [frame(i, 1), frame(i, 2)].concat());
    }
    let mut stored = 0;
    for i in 0..6 {
        if let Some(body) = read(&manager, &format!("GET:{i}")).await {
            assert_eq!(body, [frame(i, 1), frame(i, 2)].concat());
            stored += 1;
        }
    }
    assert!((1..=2).contains(&stored), "{stored} of the six stored");
    assert!(content_bytes_on_disk(dir.path()) <= bound);
}

#[tokio::test]
async fn a_store_bounded_in_entries_keeps_at_most_that_many() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .max_entries(10)
        .build();
    for i in 0..50u32 {
        put_body(&manager, &format!("GET:{i}"), Bytes::from(i.to_string())).await;
        assert!(manager.stats().await.unwrap().entries <= 10);
    }
    assert_eq!(read(&manager, "GET:49").await.unwrap(), "49");
    assert!(record_files(dir.path()).len() <= 10);
}

#[tokio::test]
async fn a_response_that_arrived_earlier_never_replaces_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let (older_tx, older) = channel_body();
    let older = manager.tee("GET:k".into(), Response::new(older), policy(URL), url());
    let newer = Response::new(Full::new(Bytes::from("newer")));
    let newer = manager.tee("GET:k".into(), newer, policy(URL), url());
    // The later response ends first, the earlier one after it.
    assert_eq!(
        newer.into_body().collect().await.unwrap().to_bytes(),
        "newer"
    );
    assert_eq!(read(&manager, "GET:k").await.unwrap(), "newer");
    older_tx
        .send(Ok(Frame::data(Bytes::from("older"))))
        .await
        .unwrap();
    drop(older_tx);
    assert_eq!(
        older.into_body().collect().await.unwrap().to_bytes(),
        "older"
    );
    assert_eq!(
        read(&manager, "GET:k").await.unwrap(),
        "newer",
        "the later response stays"
    );
}

#[tokio::test]
async fn the_eviction_order_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    for key in ["GET:a", "GET:b", "GET:c"] {
        put_body(&manager, key, Bytes::from(key)).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // "a" was stored first but used last.
    assert!(read(&manager, "GET:a").await.is_some());
    drop(manager);
    assert!(dir.path().join("cache-v2/access.log").exists());

    let bounded = StreamingManager::builder(dir.path()).max_entries(2).build();
    assert_eq!(bounded.stats().await.unwrap().entries, 2);
    assert!(
        read(&bounded, "GET:b").await.is_none(),
        "the least recently used went"
    );
    assert!(
        read(&bounded, "GET:a").await.is_some(),
        "the one used after a restart stays"
    );
    assert!(read(&bounded, "GET:c").await.is_some());
}

#[tokio::test]
async fn a_long_access_log_is_rewritten_short() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    put_body(&manager, "GET:a", Bytes::from("a")).await;
    drop(manager);
    // A log that grew long: thousands of uses, some lines torn by a crash.
    let log = dir.path().join("cache-v2/access.log");
    let key = record_files(dir.path())[0]
        .trim_end_matches(".json")
        .to_owned();
    let mut text = String::new();
    for at in 0..5000u64 {
        text.push_str(&format!("{key} {at}\n"));
    }
    text.push_str("torn li");
    std::fs::write(&log, text).unwrap();

    let reopened = StreamingManager::new(dir.path().to_path_buf());
    assert_eq!(reopened.stats().await.unwrap().entries, 1);
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 1, "one line an entry: {lines}");
    assert!(lines.starts_with(&key));
    assert!(read(&reopened, "GET:a").await.is_some());
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
