//! Bounds: `max_size` (bodies in flight included), `max_entries`, the eviction order.

use super::*;

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
async fn the_eviction_order_survives_a_restart() {
    for eviction in [Eviction::Lru, Eviction::S3Fifo] {
        let dir = tempfile::tempdir().unwrap();
        let manager = StreamingManager::builder(dir.path())
            .eviction(eviction)
            .build();
        for key in ["GET:a", "GET:b", "GET:c"] {
            put_body(&manager, key, Bytes::from(key)).await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // "a" was stored first but used last.
        assert!(read(&manager, "GET:a").await.is_some());
        drop(manager);
        assert!(dir.path().join("cache-v2/access.log").exists());

        let bounded = StreamingManager::builder(dir.path())
            .eviction(eviction)
            .max_entries(2)
            .build();
        assert_eq!(bounded.stats().await.unwrap().entries, 2);
        assert!(
            read(&bounded, "GET:b").await.is_none(),
            "{eviction:?}: the oldest unused went"
        );
        assert!(
            read(&bounded, "GET:a").await.is_some(),
            "{eviction:?}: the one used before the restart stays"
        );
        assert!(read(&bounded, "GET:c").await.is_some());
    }
}

#[tokio::test]
async fn a_scan_of_objects_requested_once_leaves_the_used_entries_in_place() {
    for eviction in [Eviction::Lru, Eviction::S3Fifo] {
        let dir = tempfile::tempdir().unwrap();
        let manager = StreamingManager::builder(dir.path())
            .eviction(eviction)
            .max_entries(100)
            .build();
        // 50 entries, each used twice since it was stored...
        for i in 0..50 {
            put_body(
                &manager,
                &format!("GET:hot{i}"),
                Bytes::from(format!("hot{i}")),
            )
            .await;
            for _ in 0..2 {
                assert!(read(&manager, &format!("GET:hot{i}")).await.is_some());
            }
        }
        // ...then a scan: 200 objects stored and never asked for again.
        for i in 0..200 {
            put_body(
                &manager,
                &format!("GET:scan{i}"),
                Bytes::from(format!("scan{i}")),
            )
            .await;
        }
        let mut kept = 0;
        for i in 0..50 {
            if read(&manager, &format!("GET:hot{i}")).await.is_some() {
                kept += 1;
            }
        }
        assert!(manager.stats().await.unwrap().entries <= 100);
        match eviction {
            Eviction::Lru => assert_eq!(kept, 0, "LRU: the scan pushed every one out"),
            _ => assert_eq!(kept, 50, "S3-FIFO: every one stays"),
        }
    }
}

#[tokio::test]
async fn a_long_access_log_is_rewritten_short() {
    let dir = tempfile::tempdir().unwrap();
    let lru = || {
        StreamingManager::builder(dir.path())
            .eviction(Eviction::Lru)
            .build()
    };
    let manager = lru();
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

    let reopened = lru();
    assert_eq!(reopened.stats().await.unwrap().entries, 1);
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 1, "one line an entry: {lines}");
    assert!(lines.starts_with(&key));
    assert!(read(&reopened, "GET:a").await.is_some());
}
