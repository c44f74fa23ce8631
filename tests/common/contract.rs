//! The contract every storage keeps, as functions the storage tests and the S3 tests run.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::storage::{Name, Storage};
use http_cache_streaming::{ErrorKind, ObjectStoreManager};
use url::Url;

use super::policy;

/// Bytes of `len`, different for each `seed`.
pub fn bytes_of(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

pub async fn upload(storage: &dyn Storage, body: &Bytes, chunk: usize) -> Name {
    let mut upload = storage.upload().await.unwrap();
    for piece in body.chunks(chunk) {
        upload.write(body.slice_ref(piece)).await.unwrap();
    }
    let committed = upload.commit().await.unwrap();
    assert_eq!(committed.length, body.len() as u64);
    assert_eq!(committed.digest, Name::of(body), "named by its SHA-256");
    committed.digest
}

pub async fn read(storage: &dyn Storage, digest: Name, offset: u64, len: u64) -> Option<Bytes> {
    let body = storage.read_body(digest, offset, len).await.unwrap()?;
    Some(body.collect().await.unwrap().to_bytes())
}

/// What every storage must do.
pub async fn contract(storage: Arc<dyn Storage>) {
    let storage = &*storage;
    // Bodies: small, empty, and longer than an object storage's part (8 MiB).
    for (len, chunk) in [(1000, 100), (0, 1), (13 << 20, 64 * 1024)] {
        let body = bytes_of(len, len as u8);
        let digest = upload(storage, &body, chunk).await;
        assert_eq!(storage.body_length(digest).await.unwrap(), Some(len as u64));
        assert_eq!(read(storage, digest, 0, len as u64).await.unwrap(), body);
        if len > 10 {
            let (start, n) = (len as u64 / 3, 7);
            assert_eq!(
                read(storage, digest, start, n).await.unwrap(),
                body.slice(start as usize..start as usize + 7),
                "a range read at its offset"
            );
        }
    }
    // The same bytes committed again are one body.
    let body = bytes_of(1000, 232);
    let before = storage.list_bodies().await.unwrap().len();
    upload(storage, &body, 10).await;
    upload(storage, &body, 333).await;
    assert_eq!(storage.list_bodies().await.unwrap().len(), before);
    // An aborted upload leaves nothing; neither does a long one.
    for len in [100, 9 << 20] {
        let mut aborted = storage.upload().await.unwrap();
        aborted.write(bytes_of(len, 7)).await.unwrap();
        aborted.abort().await.unwrap();
        assert_eq!(storage.list_bodies().await.unwrap().len(), before);
    }
    // A body uploaded under the digest it is said to have: kept when it has it, not
    // when it has another.
    let body = bytes_of(11 << 20, 77);
    let mut named = storage.upload_as(Name::of(&body)).await.unwrap();
    for piece in body.chunks(1 << 20) {
        named.write(body.slice_ref(piece)).await.unwrap();
    }
    let committed = named.commit().await.unwrap();
    assert_eq!(committed.digest, Name::of(&body));
    assert_eq!(
        read(storage, committed.digest, 0, 11 << 20).await.unwrap(),
        body
    );
    storage.delete_body(committed.digest).await.unwrap();
    let claimed = Name::of(b"not these bytes");
    let mut wrong = storage.upload_as(claimed).await.unwrap();
    for piece in body.chunks(1 << 20) {
        wrong.write(body.slice_ref(piece)).await.unwrap();
    }
    match wrong.commit().await {
        Ok(committed) => assert_eq!(committed.digest, Name::of(&body), "named by its bytes"),
        Err(error) => assert_eq!(error.kind(), ErrorKind::Integrity),
    }
    assert!(storage.body_length(claimed).await.unwrap().is_none());
    storage.delete_body(Name::of(&body)).await.unwrap();

    // A body that is not there.
    let missing = Name::of(b"never stored");
    assert!(storage.body_length(missing).await.unwrap().is_none());
    assert!(storage.read_body(missing, 0, 10).await.unwrap().is_none());
    storage.delete_body(missing).await.unwrap();
    // A body read past its end fails rather than passing for whole.
    let short = upload(storage, &bytes_of(100, 1), 100).await;
    let cut = storage.read_body(short, 50, 100).await.unwrap().unwrap();
    assert!(
        cut.collect().await.is_err(),
        "50 bytes where 100 were asked"
    );
    storage.delete_body(short).await.unwrap();
    assert!(storage.body_length(short).await.unwrap().is_none());

    // Records: written whole, replaced, read back, listed, removed.
    let name = Name::of(b"GET:https://example.com/");
    assert!(storage.read_record(name).await.unwrap().is_none());
    storage
        .write_record(name, Bytes::from_static(b"first"))
        .await
        .unwrap();
    storage
        .write_record(name, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(storage.read_record(name).await.unwrap().unwrap(), "second");
    let listed = storage.list_records().await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.name).collect::<Vec<_>>(),
        vec![name]
    );
    storage.delete_record(name).await.unwrap();
    storage.delete_record(name).await.unwrap();
    assert!(storage.read_record(name).await.unwrap().is_none());
    assert!(storage.list_records().await.unwrap().is_empty());
    notes_contract(storage).await;
}

/// Notes: written whole, created only if absent, read unless unchanged, listed in name
/// order after a name, removed; a path outside the rules is refused before any I/O.
async fn notes_contract(storage: &dyn Storage) {
    use http_cache_streaming::storage::{Note, PutNote};
    let found = |note: Note| match note {
        Note::Found { bytes, tag } => (bytes, tag),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        storage.read_note("log/a", None).await.unwrap(),
        Note::Missing
    );
    assert!(
        storage
            .list_notes("log", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let put = |path: &'static str, bytes: &'static [u8], how| {
        storage.put_note(path, Bytes::from_static(bytes), how)
    };
    assert!(put("log/b", b"second", PutNote::Create).await.unwrap());
    assert!(put("log/a", b"first", PutNote::Overwrite).await.unwrap());
    assert!(put("log/c", b"third", PutNote::Overwrite).await.unwrap());
    assert!(
        put("log/deeper/d", b"not in log/", PutNote::Overwrite)
            .await
            .unwrap()
    );
    assert!(
        !put("log/b", b"taken", PutNote::Create).await.unwrap(),
        "a created note is not replaced"
    );
    let (bytes, tag) = found(storage.read_note("log/b", None).await.unwrap());
    assert_eq!(bytes, "second");
    assert_eq!(
        storage.read_note("log/b", Some(&tag)).await.unwrap(),
        Note::Unchanged
    );
    // Rewritten with other bytes: the tag changes.
    assert!(
        put("log/b", b"second, again", PutNote::Overwrite)
            .await
            .unwrap()
    );
    let (bytes, _) = found(storage.read_note("log/b", Some(&tag)).await.unwrap());
    assert_eq!(bytes, "second, again");
    let names = |listed: Vec<http_cache_streaming::storage::NoteListed>| {
        listed.into_iter().map(|l| l.name).collect::<Vec<_>>()
    };
    let all = storage.list_notes("log", None, 10).await.unwrap();
    assert_eq!(names(all), ["a", "b", "c"]);
    let after_a = storage.list_notes("log", Some("a"), 10).await.unwrap();
    assert_eq!(names(after_a), ["b", "c"]);
    let first = storage.list_notes("log", None, 1).await.unwrap();
    assert_eq!(names(first), ["a"]);
    for path in ["log/a", "log/b", "log/c", "log/deeper/d", "log/a"] {
        storage.delete_note(path).await.unwrap();
    }
    assert!(
        storage
            .list_notes("log", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    for bad in [
        "../escape",
        "log/../x",
        "Upper",
        "",
        "log//x",
        "/abs",
        "log/a b",
    ] {
        let refused = storage
            .put_note(bad, Bytes::from_static(b"x"), PutNote::Overwrite)
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
}

pub fn response(body: Bytes) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
    headers.append("x-multi", HeaderValue::from_static("one"));
    headers.append("x-multi", HeaderValue::from_static("two"));
    headers.insert("content-length", HeaderValue::from(len));
    response
}

/// What `ObjectStoreManager` does over a storage.
pub async fn manager_contract(storage: Arc<dyn Storage>) {
    let manager = ObjectStoreManager::over(Arc::clone(&storage));
    let url = Url::parse("https://example.com/").unwrap();
    let body = bytes_of(300_000, 3);
    for key in ["GET:a", "GET:b"] {
        manager
            .put(
                key.into(),
                response(body.clone()),
                policy("https://example.com/"),
                url.clone(),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        storage.list_bodies().await.unwrap().len(),
        1,
        "identical bodies stored once"
    );
    let (hit, _policy) = manager.get("GET:a").await.unwrap().unwrap();
    let multi: Vec<_> = hit.headers().get_all("x-multi").iter().cloned().collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), body);
    let (part, _) = manager.get_range("GET:b", 1000, 10).await.unwrap().unwrap();
    assert_eq!(
        part.into_body().collect().await.unwrap().to_bytes(),
        body.slice(1000..1010)
    );

    // A body shorter than its Content-Length is not stored.
    let mut short = response(Bytes::from_static(b"short"));
    short
        .headers_mut()
        .insert("content-length", HeaderValue::from(10));
    let error = manager
        .put(
            "GET:short".into(),
            short,
            policy("https://example.com/"),
            url.clone(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Length);
    assert!(manager.get("GET:short").await.unwrap().is_none());

    // Deleting one key keeps the body the other still names; a sweep keeps it too.
    manager.delete("GET:a").await.unwrap();
    assert!(manager.get("GET:a").await.unwrap().is_none());
    let swept = manager.sweep(Duration::ZERO).await.unwrap();
    assert_eq!((swept.records, swept.bodies), (1, 0));
    assert!(manager.get("GET:b").await.unwrap().is_some());

    // A record whose body is gone is a miss, and is removed; the sweep then takes bodies
    // no record names.
    let digest = Name::of(&body);
    storage.delete_body(digest).await.unwrap();
    assert!(manager.get("GET:b").await.unwrap().is_none());
    assert!(storage.list_records().await.unwrap().is_empty());
    let orphan = upload(&*storage, &bytes_of(5000, 9), 5000).await;
    assert_eq!(
        manager
            .sweep(Duration::from_secs(3600))
            .await
            .unwrap()
            .bodies,
        0
    );
    assert_eq!(manager.sweep(Duration::ZERO).await.unwrap().bodies, 1);
    assert!(storage.body_length(orphan).await.unwrap().is_none());

    // A tee: the caller gets every byte as it arrives; the entry is stored once the body
    // has ended, and not at all when the caller drops it early.
    let teed = manager.tee(
        "GET:teed".into(),
        Response::new(super::Generated::new(3 << 20, 11)),
        policy("https://example.com/"),
        url.clone(),
    );
    let want = (super::Generated::digest(3 << 20, 11), 3 << 20);
    let (digest, len, _) = super::drain(teed.into_body()).await.unwrap();
    assert_eq!((digest, len), want, "the caller's bytes");
    let mut stored = None;
    let deadline = std::time::Instant::now() + super::PATIENCE;
    while std::time::Instant::now() < deadline {
        stored = manager.get("GET:teed").await.unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (hit, _) = stored.expect("the tee'd body is stored");
    let (digest, len, _) = super::drain(hit.into_body()).await.unwrap();
    assert_eq!((digest, len), want, "stored whole");
    // In frames of 64 KiB, so that dropping it after the first leaves it incomplete.
    let dropped = manager.tee(
        "GET:dropped".into(),
        Response::new(super::Generated::new(3 << 20, 12)),
        policy("https://example.com/"),
        url.clone(),
    );
    let mut body = dropped.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(manager.get("GET:dropped").await.unwrap().is_none());
    manager.delete("GET:teed").await.unwrap();
    manager.sweep(Duration::ZERO).await.unwrap();

    // A damaged record is a miss, and is removed.
    let name = Name::of(b"GET:damaged");
    storage
        .write_record(name, Bytes::from_static(b"{not a record"))
        .await
        .unwrap();
    assert!(manager.get("GET:damaged").await.unwrap().is_none());
    assert!(storage.read_record(name).await.unwrap().is_none());
}

/// Two nodes, each the layer over a disk of its own in front of one shared tier: what one
/// fetched, the other serves without asking the origin, and keeps on its own disk.
pub async fn two_nodes_share_one_tier(tier: Arc<dyn http_cache_streaming::storage::Storage>) {
    use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
    use tower::{ServiceBuilder, ServiceExt};
    let origin = super::Origin::start(|parts, n| {
        let mut response = http::Response::new(axum::body::Body::from(format!(
            "{} #{n} {}",
            parts.uri.path(),
            "x".repeat(100_000)
        )));
        response.headers_mut().insert(
            "cache-control",
            http::HeaderValue::from_static("max-age=60"),
        );
        response
    })
    .await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let manager = StreamingManager::builder(dir.path())
                .shared_tier(Arc::clone(&tier))
                .build();
            ServiceBuilder::new()
                .layer(HttpCacheStreamingLayer::new(manager))
                .service(super::client())
        })
        .collect();
    let get = |node: usize, path: &str| {
        let request = http::Request::get(origin.url(path))
            .body(http_body_util::Full::default())
            .unwrap();
        let mut node = nodes[node].clone();
        async move {
            let got = super::send(&mut node, request).await;
            (got.cache_status(), got.body)
        }
    };
    let (_, first) = get(0, "/shared").await;
    assert_eq!(origin.hits(), 1);
    // Node 0 copies its entry up in the background: its record goes up last.
    let deadline = std::time::Instant::now() + super::PATIENCE;
    while tier.list_records().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not copied up");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A range asked of a cold node: answered whole or cut right, never the whole body
    // under a 206.
    let ranged = http::Request::get(origin.url("/shared"))
        .header("range", "bytes=0-9")
        .body(http_body_util::Full::default())
        .unwrap();
    let response = nodes[1].clone().oneshot(ranged).await.unwrap();
    let partial = response.status() == http::StatusCode::PARTIAL_CONTENT;
    let part = response.into_body().collect().await.unwrap().to_bytes();
    let expected = if partial {
        first.slice(..10)
    } else {
        first.clone()
    };
    assert!(
        part == expected,
        "{} bytes under {}, not the range asked",
        part.len(),
        if partial { "206" } else { "200" }
    );
    let (status, body) = get(1, "/shared").await;
    assert_eq!(origin.hits(), 1, "node 1 did not ask the origin: {status}");
    assert_eq!(body, first, "node 1 serves what node 0 fetched");
    assert!(status.contains("hit"), "{status}");
    // Now on node 1's disk too: the tier is not asked again.
    super::eventually("node 1 stored it", || {
        !super::record_files(dirs[1].path()).is_empty()
    })
    .await;
    let (status, again) = get(1, "/shared").await;
    assert_eq!(again, first);
    assert!(status.contains("hit"));
    assert_eq!(origin.hits(), 1);

    // An unsafe method through node 1 removes the entry from the tier too: a cold node
    // asks the origin again.
    let post = http::Request::post(origin.url("/shared"))
        .body(http_body_util::Full::default())
        .unwrap();
    nodes[1].clone().oneshot(post).await.unwrap();
    assert!(
        tier.list_records().await.unwrap().is_empty(),
        "gone from the tier"
    );
    assert_eq!(origin.hits(), 2, "the POST went to the origin");
}
