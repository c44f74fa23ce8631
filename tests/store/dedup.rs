//! Deduplication: identical bodies stored once and freed with their last record.

use super::*;

#[tokio::test]
async fn identical_bodies_are_stored_once_and_freed_with_their_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let body = Bytes::from(vec![7u8; 300_000]);
    for key in ["GET:a", "GET:b"] {
        put_body(&manager, key, body.clone()).await;
    }
    assert_eq!(content_files(dir.path()), [sha256_hex(&body)]);
    assert_eq!(record_files(dir.path()).len(), 2);

    manager.delete("GET:a").await.unwrap();
    assert_eq!(
        content_files(dir.path()).len(),
        1,
        "b still uses the content"
    );
    assert_eq!(read(&manager, "GET:b").await.unwrap(), body);

    manager.delete("GET:b").await.unwrap();
    assert!(content_files(dir.path()).is_empty());
    assert!(record_files(dir.path()).is_empty());
    manager
        .delete("GET:b")
        .await
        .expect("deleting a missing key is fine");

    // Reference counts are rebuilt from the records after a restart.
    for key in ["GET:c", "GET:d"] {
        put_body(&manager, key, body.clone()).await;
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
        put_body(&manager, "GET:k", Bytes::from(body)).await;
    }
    assert_eq!(read(&manager, "GET:k").await.unwrap(), "second version");
    assert_eq!(content_files(dir.path()).len(), 1);
    assert_eq!(record_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn clear_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    for key in ["GET:x", "GET:y"] {
        put_body(&manager, key, Bytes::from(key)).await;
    }
    manager.clear().await.unwrap();
    assert!(manager.get("GET:x").await.unwrap().is_none());
    assert!(content_files(dir.path()).is_empty());
    assert!(record_files(dir.path()).is_empty());
    assert_eq!(manager.stats().await.unwrap().entries, 0);
}
