//! The storage seam's contract, run against every storage there is: the local directory
//! (`FileStorage`) and, with the `object-store` feature, `object_store`'s in-memory bucket
//! (`ObjectStorage`); and `ObjectStoreManager` over each.

mod common;

use std::sync::Arc;

use common::contract::{bytes_of, contract, manager_contract, response};
use common::policy;
use http_body_util::BodyExt;
use http_cache_streaming::ObjectStoreManager;
use http_cache_streaming::storage::FileStorage;
use url::Url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_storage_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(FileStorage::new(dir.path().join("a")))).await;
    manager_contract(Arc::new(FileStorage::new(dir.path().join("b")))).await;
    // The same layout as the streaming store's: what one writes, the other reads.
    let shared = dir.path().join("shared");
    let manager = ObjectStoreManager::over(Arc::new(FileStorage::new(&shared)));
    manager
        .put(
            "GET:https://example.com/".into(),
            response(bytes_of(70_000, 5)),
            policy("https://example.com/"),
            Url::parse("https://example.com/").unwrap(),
        )
        .await
        .unwrap();
    let store = http_cache_streaming::StreamingManager::new(shared);
    let (hit, _) = store
        .get("GET:https://example.com/")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        bytes_of(70_000, 5)
    );
}

#[cfg(feature = "object-store")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_storage_keeps_the_contract() {
    use http_cache_streaming::storage::ObjectStorage;
    use object_store::memory::InMemory;
    contract(Arc::new(ObjectStorage::new(Arc::new(InMemory::new())))).await;
    manager_contract(Arc::new(ObjectStorage::new(Arc::new(InMemory::new())))).await;
}

#[cfg(feature = "object-store")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_an_in_memory_bucket() {
    use http_cache_streaming::storage::ObjectStorage;
    use object_store::memory::InMemory;
    common::contract::two_nodes_share_one_tier(Arc::new(ObjectStorage::new(Arc::new(
        InMemory::new(),
    ))))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_directory_tier() {
    let dir = tempfile::tempdir().unwrap();
    common::contract::two_nodes_share_one_tier(Arc::new(FileStorage::new(dir.path()))).await;
}
