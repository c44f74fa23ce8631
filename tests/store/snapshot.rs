//! The index snapshot `close` writes: the next open takes its index from it while the
//! records are as they were, and reads them in when anything changed.

use super::*;

/// The name of the record file of `key`.
fn record_of(dir: &std::path::Path, key: &str) -> String {
    let name = format!("{}.json", sha256_hex(key.as_bytes()));
    assert!(record_files(dir).contains(&name), "{key} is stored");
    name
}

fn snapshot(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("cache-v2/index.snapshot")
}

/// Overwrites a record file in place: the metadata directory does not change, so only a
/// store that read its records in notices (and removes it).
fn damage_record_in_place(dir: &std::path::Path, name: &str) {
    use std::io::Write as _;
    let path = dir.join("cache-v2/metadata").join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all(b"not a record").unwrap();
}

#[tokio::test]
async fn a_closed_store_reopens_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    put_body(&manager, "GET:a", Bytes::from("shared")).await;
    put_body(&manager, "GET:b", Bytes::from("shared")).await;
    put_body(&manager, "GET:c", Bytes::from("own")).await;
    manager.close().await.unwrap();
    assert!(snapshot(dir.path()).exists());
    drop(manager);
    let a = record_of(dir.path(), "GET:a");
    damage_record_in_place(dir.path(), &a);

    let reopened = StreamingManager::new(dir.path().to_path_buf());
    let stats = reopened.stats().await.unwrap();
    assert_eq!(
        (stats.entries, stats.content_files),
        (3, 2),
        "from the snapshot: the damaged record was not read"
    );
    assert!(!snapshot(dir.path()).exists(), "a snapshot is used once");
    assert_eq!(read(&reopened, "GET:b").await.unwrap(), "shared");
    assert_eq!(read(&reopened, "GET:c").await.unwrap(), "own");
    // A lookup still reads the record: damage is a miss, and goes.
    assert_eq!(read(&reopened, "GET:a").await, None);
    assert_eq!(reopened.stats().await.unwrap().entries, 2);
    // The shared content stays with its other user; a delete counts right.
    reopened.delete("GET:b").await.unwrap();
    assert_eq!(content_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_snapshot_is_not_used_once_records_changed() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    for key in ["GET:a", "GET:b"] {
        put_body(&manager, key, Bytes::from(key)).await;
    }
    manager.close().await.unwrap();
    // A write after the snapshot (the store stays usable) makes it stale.
    put_body(&manager, "GET:c", Bytes::from("GET:c")).await;
    drop(manager);
    let b = record_of(dir.path(), "GET:b");
    damage_record_in_place(dir.path(), &b);

    let reopened = StreamingManager::new(dir.path().to_path_buf());
    assert_eq!(
        reopened.stats().await.unwrap().entries,
        2,
        "read in: the damaged record was found and removed"
    );
    assert!(!snapshot(dir.path()).exists());
    assert_eq!(read(&reopened, "GET:c").await.unwrap(), "GET:c");

    // A damaged snapshot is ignored too.
    reopened.close().await.unwrap();
    drop(reopened);
    let mut bytes = std::fs::read(snapshot(dir.path())).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(snapshot(dir.path()), bytes).unwrap();
    let again = StreamingManager::new(dir.path().to_path_buf());
    assert_eq!(again.stats().await.unwrap().entries, 2);
    assert_eq!(read(&again, "GET:a").await.unwrap(), "GET:a");
}
