//! Concurrent puts, gets and deletes, and the order of writes to one key.

use super::*;

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
