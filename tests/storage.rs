//! The storage seam's contract, run against every storage there is: the local directory
//! (`FileStorage`) and, with the `object-store` feature, `object_store`'s in-memory bucket
//! (`ObjectStorage`); and `ObjectStoreManager` over each.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::contract::{bytes_of, contract, manager_contract, response};
use common::policy;
use http_body_util::BodyExt;
use http_cache_streaming::ObjectStoreManager;
use http_cache_streaming::storage::{BodyUpload, BoxFuture, FileStorage, Listed, Name, Storage};
use http_cache_streaming::{
    Error, ErrorKind, Result as CacheResult, StreamingBody, StreamingManager,
};
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

/// Stores `body` under `key`.
async fn put(manager: &ObjectStoreManager, key: &str, body: &bytes::Bytes) {
    manager
        .put(
            key.into(),
            common::contract::response(body.clone()),
            policy("https://example.com/"),
            Url::parse("https://example.com/").unwrap(),
        )
        .await
        .unwrap();
}

/// Bytes changed in the storage under a record (same length) are never served as a
/// complete body: the digest is checked as the body streams.
async fn changed_bytes_are_refused(storage: Arc<dyn http_cache_streaming::storage::Storage>) {
    use http_cache_streaming::storage::Name;
    let manager = ObjectStoreManager::over(Arc::clone(&storage));
    let body = bytes_of(300_000, 21);
    put(&manager, "GET:changed", &body).await;
    let (hit, _) = manager.get("GET:changed").await.unwrap().unwrap();
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), body);
    // The same length, one byte other, where the body was.
    let mut changed = body.to_vec();
    changed[123_456] ^= 1;
    let digest = Name::of(&body);
    storage.delete_body(digest).await.unwrap();
    let mut upload = storage.upload_as(digest).await.unwrap();
    upload.write(changed.into()).await.unwrap();
    // A storage may refuse to name those bytes by that digest; if it does not, the read must.
    if upload.commit().await.is_ok_and(|c| c.digest == digest) {
        let (hit, _) = manager.get("GET:changed").await.unwrap().unwrap();
        assert!(hit.into_body().collect().await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_bytes_in_a_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FileStorage::new(dir.path()));
    changed_bytes_are_refused(storage).await;
    // On disk the bytes can be changed in place, under the digest's name.
    let manager = ObjectStoreManager::over(Arc::new(FileStorage::new(dir.path())));
    let body = bytes_of(300_000, 22);
    put(&manager, "GET:flipped", &body).await;
    let path = dir
        .path()
        .join("cache-v2/content")
        .join(http_cache_streaming::storage::Name::of(&body).to_hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let (hit, _) = manager.get("GET:flipped").await.unwrap().unwrap();
    let got = hit.into_body().collect().await;
    assert!(got.is_err(), "a flipped byte ends the body in an error");
}

#[cfg(feature = "object-store")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_bytes_in_a_bucket_are_refused() {
    use http_cache_streaming::storage::ObjectStorage;
    use object_store::memory::InMemory;
    use object_store::{ObjectStore, ObjectStoreExt};
    let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let manager = ObjectStoreManager::new(Arc::clone(&bucket));
    let body = bytes_of(300_000, 23);
    put(&manager, "GET:flipped", &body).await;
    let path = object_store::path::Path::from(format!(
        "cache-v2/content/{}",
        http_cache_streaming::storage::Name::of(&body).to_hex()
    ));
    let mut bytes = body.to_vec();
    bytes[299_999] ^= 0x40;
    bucket.put(&path, bytes.into()).await.unwrap();
    let (hit, _) = manager.get("GET:flipped").await.unwrap().unwrap();
    assert!(hit.into_body().collect().await.is_err());
    // A range of a body never checked is cut from a whole read that checks it: the changed
    // body fails, even for a range far from the changed byte.
    let (part, _) = manager
        .get_range("GET:flipped", 10, 100)
        .await
        .unwrap()
        .unwrap();
    assert!(part.into_body().collect().await.is_err());

    // A range of a good body is its bytes, checked first; once the body is known good,
    // ranges are read as ranges.
    let good = bytes_of(300_000, 24);
    put(
        &ObjectStoreManager::new(Arc::clone(&bucket)),
        "GET:good",
        &good,
    )
    .await;
    for (start, len) in [(10, 100), (299_990, 100), (0, 300_000), (1_000_000, 5)] {
        let (part, _) = manager
            .get_range("GET:good", start, len)
            .await
            .unwrap()
            .unwrap();
        let got = part.into_body().collect().await.unwrap().to_bytes();
        let start = (start as usize).min(good.len());
        let end = (start + len as usize).min(good.len());
        assert_eq!(got, good.slice(start..end), "{start}+{len}");
    }
    changed_bytes_are_refused(Arc::new(ObjectStorage::new(Arc::new(InMemory::new())))).await;
}

/// What a private node wrote into the shared tier (a `private` page, a `Set-Cookie`) is not
/// served by a shared node: records from the tier pass this node's storing rules first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_node_serves_nothing_its_rules_refuse_from_the_tier() {
    use http_cache_streaming::{HttpCacheOptions, HttpCacheStreamingLayer, StreamingManager};
    use tower::ServiceBuilder;
    let origin = common::Origin::start(|parts, n| {
        let private = parts.uri.path() == "/me";
        http::Response::builder()
            .header(
                "cache-control",
                if private {
                    "private, max-age=600"
                } else {
                    "max-age=600"
                },
            )
            .header("set-cookie", format!("sid=user{n}"))
            .body(axum::body::Body::from(format!("page of user {n}")))
            .unwrap()
    })
    .await;
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn http_cache_streaming::storage::Storage> =
        Arc::new(FileStorage::new(bucket.path()));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let node = |dir: &tempfile::TempDir, shared: bool| {
        let manager = StreamingManager::builder(dir.path())
            .shared_tier(Arc::clone(&tier))
            .build();
        let options = HttpCacheOptions::default().shared(shared);
        ServiceBuilder::new()
            .layer(HttpCacheStreamingLayer::with_options(manager, options))
            .service(common::client())
    };
    let (mut private, mut shared) = (node(&dirs[0], false), node(&dirs[1], true));
    let get = |path: &str| {
        http::Request::get(origin.url(path))
            .body(http_body_util::Full::default())
            .unwrap()
    };
    for path in ["/me", "/cookie"] {
        let mine = common::send(&mut private, get(path)).await;
        assert!(mine.cache_status().contains("stored"), "{path}");
    }
    common::eventually("both copied to the tier", || {
        common::record_files(bucket.path()).len() == 2
    })
    .await;
    for (path, n) in [("/me", 3), ("/cookie", 4)] {
        let theirs = common::send(&mut shared, get(path)).await;
        assert!(!theirs.hit(), "{path}: {}", theirs.cache_status());
        assert_eq!(theirs.body, format!("page of user {n}"), "{path}");
        assert_eq!(origin.hits(), n);
    }
    assert!(
        common::record_files(dirs[1].path()).is_empty(),
        "nothing of it stored by the shared node"
    );
}

/// A shared tier written outside the crate, as a user would write one: every call fails, with
/// errors made through the public constructors.
#[derive(Debug)]
struct Offline;

impl Offline {
    fn fail<'a, T: Send + 'a>(&self, doing: &'static str) -> BoxFuture<'a, CacheResult<T>> {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, doing);
        let error = if doing.starts_with("list") {
            Error::from(refused)
        } else {
            Error::other(ErrorKind::Io, refused)
        };
        Box::pin(async move { Err(error) })
    }
}

impl Storage for Offline {
    fn upload(&self) -> BoxFuture<'_, CacheResult<Box<dyn BodyUpload>>> {
        self.fail("upload")
    }
    fn read_body(
        &self,
        _: Name,
        _: u64,
        _: u64,
    ) -> BoxFuture<'_, CacheResult<Option<StreamingBody>>> {
        self.fail("read a body")
    }
    fn body_length(&self, _: Name) -> BoxFuture<'_, CacheResult<Option<u64>>> {
        self.fail("stat a body")
    }
    fn delete_body(&self, _: Name) -> BoxFuture<'_, CacheResult<()>> {
        self.fail("delete a body")
    }
    fn list_bodies(&self) -> BoxFuture<'_, CacheResult<Vec<Listed>>> {
        self.fail("list bodies")
    }
    fn read_record(&self, _: Name) -> BoxFuture<'_, CacheResult<Option<Bytes>>> {
        self.fail("read a record")
    }
    fn write_record(&self, _: Name, _: Bytes) -> BoxFuture<'_, CacheResult<()>> {
        self.fail("write a record")
    }
    fn delete_record(&self, _: Name) -> BoxFuture<'_, CacheResult<()>> {
        self.fail("delete a record")
    }
    fn list_records(&self) -> BoxFuture<'_, CacheResult<Vec<Listed>>> {
        self.fail("list records")
    }
}

#[tokio::test]
async fn a_storage_written_outside_the_crate_plugs_in_and_its_failures_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .shared_tier(std::sync::Arc::new(Offline))
        .build();
    // A miss whose tier cannot be read is a miss, not an error.
    assert!(manager.get("GET:absent").await.unwrap().is_none());
    // What is stored stays stored locally, whatever the tier says, and is read back whole.
    let response = http::Response::builder()
        .header("cache-control", "max-age=600")
        .body(http_body_util::Full::new(Bytes::from_static(b"local")))
        .unwrap();
    let request = http::Request::get("http://example.com/").body(()).unwrap();
    let policy = http_cache_semantics::CachePolicy::new(&request, &response);
    let url = url::Url::parse("http://example.com/").unwrap();
    manager
        .put("GET:here".into(), response, policy, url)
        .await
        .unwrap();
    let (hit, _) = manager.get("GET:here").await.unwrap().unwrap();
    let body = http_body_util::BodyExt::collect(hit.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "local");
}

/// A directory tier that counts what is read from it.
#[derive(Debug)]
struct Counted {
    inner: FileStorage,
    records_read: std::sync::atomic::AtomicUsize,
    bodies_read: std::sync::atomic::AtomicUsize,
}

impl Storage for Counted {
    fn upload(&self) -> BoxFuture<'_, CacheResult<Box<dyn BodyUpload>>> {
        self.inner.upload()
    }
    fn read_body(
        &self,
        digest: Name,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, CacheResult<Option<StreamingBody>>> {
        self.bodies_read
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_body(digest, offset, len)
    }
    fn body_length(&self, digest: Name) -> BoxFuture<'_, CacheResult<Option<u64>>> {
        self.inner.body_length(digest)
    }
    fn delete_body(&self, digest: Name) -> BoxFuture<'_, CacheResult<()>> {
        self.inner.delete_body(digest)
    }
    fn list_bodies(&self) -> BoxFuture<'_, CacheResult<Vec<Listed>>> {
        self.inner.list_bodies()
    }
    fn read_record(&self, name: Name) -> BoxFuture<'_, CacheResult<Option<Bytes>>> {
        self.records_read
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_record(name)
    }
    fn write_record(&self, name: Name, record: Bytes) -> BoxFuture<'_, CacheResult<()>> {
        self.inner.write_record(name, record)
    }
    fn delete_record(&self, name: Name) -> BoxFuture<'_, CacheResult<()>> {
        self.inner.delete_record(name)
    }
    fn list_records(&self) -> BoxFuture<'_, CacheResult<Vec<Listed>>> {
        self.inner.list_records()
    }
}

/// Twenty requests for one key at once on a cold node read the tier once: the first reads
/// through, the others follow its copy to disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_read_the_tier_once() {
    use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
    use std::sync::atomic::Ordering;
    use tower::ServiceBuilder;
    let body = Bytes::from(
        (0..4u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let served = body.clone();
    let origin = common::Origin::start(move |_, _| {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(axum::body::Body::from(served.clone()))
            .unwrap()
    })
    .await;
    let bucket = tempfile::tempdir().unwrap();
    let tier = Arc::new(Counted {
        inner: FileStorage::new(bucket.path()),
        records_read: Default::default(),
        bodies_read: Default::default(),
    });
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let node = |dir: &tempfile::TempDir| {
        let manager = StreamingManager::builder(dir.path())
            .shared_tier(Arc::clone(&tier) as Arc<dyn Storage>)
            .build();
        ServiceBuilder::new()
            .layer(HttpCacheStreamingLayer::new(manager))
            .service(common::client())
    };
    let get = || {
        http::Request::get(origin.url("/video"))
            .body(http_body_util::Full::default())
            .unwrap()
    };
    let first = common::send(&mut node(&dirs[0]), get()).await;
    assert_eq!(first.body, body);
    common::eventually("copied to the tier", || {
        common::record_files(bucket.path()).len() == 1
    })
    .await;
    let (records, bodies) = (
        tier.records_read.load(Ordering::SeqCst),
        tier.bodies_read.load(Ordering::SeqCst),
    );

    let cold = node(&dirs[1]);
    let all = (0..20).map(|_| {
        let mut cold = cold.clone();
        let request = get();
        async move { common::send(&mut cold, request).await }
    });
    for got in futures_util::future::join_all(all).await {
        assert!(got.body == body, "{} bytes, not the body", got.body.len());
        assert!(got.hit(), "{}", got.cache_status());
    }
    assert_eq!(origin.hits(), 1, "the cold node never asked the origin");
    assert_eq!(
        (
            tier.records_read.load(Ordering::SeqCst) - records,
            tier.bodies_read.load(Ordering::SeqCst) - bodies,
        ),
        (1, 1),
        "one record and one body read from the tier for twenty requests"
    );
    assert_eq!(common::record_files(dirs[1].path()).len(), 1);
}
