//! Purges across the stores that share a tier, through its purge log: a purge on one node
//! stops the others serving the entry (in a fraction of a second here, printed; bounded
//! only by `common::PATIENCE`); a node that was down does not serve it when it comes back;
//! what the log holds is untrusted. The tier here is a directory (`FileStorage`); the
//! proxies' test over S3 is in `fleet.rs`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Got;
use http_cache_streaming::storage::{FileStorage, PutNote, Storage};
use http_cache_streaming::{HttpCacheStreamingLayer, HttpStreamingCache, StreamingManager};
use tower::ServiceBuilder;

/// A node: the layer over a store in `dir` in front of `tier`, reading the log every
/// 100 ms.
fn node(
    dir: &Path,
    tier: &Arc<dyn Storage>,
) -> (
    HttpStreamingCache,
    impl tower::Service<
        http::Request<http_body_util::Full<Bytes>>,
        Response = http::Response<http_cache_streaming::StreamingBody>,
        Error = impl std::fmt::Debug,
    > + Clone,
) {
    let manager = StreamingManager::builder(dir)
        .shared_tier(Arc::clone(tier))
        .purge_log_every(Some(Duration::from_millis(100)))
        .build();
    let layer = HttpCacheStreamingLayer::new(manager);
    let cache = layer.cache().clone();
    let service = ServiceBuilder::new().layer(layer).service(common::client());
    (cache, service)
}

async fn get<S>(service: &S, url: &str) -> Got
where
    S: tower::Service<
            http::Request<http_body_util::Full<Bytes>>,
            Response = http::Response<http_cache_streaming::StreamingBody>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    let request = http::Request::get(url)
        .body(http_body_util::Full::default())
        .unwrap();
    common::send(&mut service.clone(), request).await
}

/// Now, in milliseconds since the epoch (as notes are named).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Changes `purges/latest`, so that the nodes list the log again.
async fn announce(tier: &Arc<dyn Storage>, what: &'static str) {
    let bytes = Bytes::from_static(what.as_bytes());
    tier.put_note("purges/latest", bytes, PutNote::Overwrite)
        .await
        .unwrap();
}

fn log_notes(bucket: &Path) -> Vec<String> {
    common::files_in(&bucket.join("cache-v2/purges/log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_node_reaches_every_other() {
    let origin = common::numbered_origin().await;
    let url = origin.url("/page");
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a_cache, a) = node(dirs[0].path(), &tier);
    let (_, b) = node(dirs[1].path(), &tier);
    let (c_cache, c) = node(dirs[2].path(), &tier);

    assert_eq!(get(&a, &url).await.body, "/page #1");
    common::eventually("copied to the tier", || {
        common::record_files(bucket.path()).len() == 1
    })
    .await;
    for other in [&b, &c] {
        let got = get(other, &url).await;
        assert_eq!(got.body, "/page #1");
    }
    assert_eq!(origin.hits(), 1);
    // C goes down with its copy on disk.
    drop((c_cache, c));

    let purged = Instant::now();
    assert!(a_cache.purge(&url).await.unwrap());
    assert_eq!(log_notes(bucket.path()).len(), 1, "one note in the log");
    let mut took = None;
    while purged.elapsed() < common::PATIENCE {
        let got = get(&b, &url).await;
        if got.body != "/page #1" {
            assert!(!got.hit(), "{}", got.cache_status());
            took = Some(purged.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = took.expect("node B served the purged entry all along");
    // The log is read every 100 ms here: a figure, not a bound.
    println!("purge on A reached B in {} ms", took.as_millis());
    // What B fetched after the purge stays.
    let again = get(&b, &url).await;
    assert!(again.hit(), "{}", again.cache_status());
    assert_eq!(again.body, "/page #2");

    // C comes back: it reads the log before serving, and never serves its purged copy.
    let (_, c) = node(dirs[2].path(), &tier);
    let got = get(&c, &url).await;
    assert_ne!(got.body, "/page #1", "{}", got.cache_status());
    // A's own request after the purge is a miss too.
    assert_ne!(get(&a, &url).await.body, "/page #1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_purge_reaches_every_node_and_the_tier() {
    let origin = common::numbered_origin().await;
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a_cache, a) = node(dirs[0].path(), &tier);
    let (_, b) = node(dirs[1].path(), &tier);
    for path in ["/img/1", "/img/2", "/css/1"] {
        get(&a, &origin.url(path)).await;
    }
    common::eventually("copied to the tier", || {
        common::record_files(bucket.path()).len() == 3
    })
    .await;
    for path in ["/img/1", "/img/2", "/css/1"] {
        assert!(get(&b, &origin.url(path)).await.hit());
    }
    assert_eq!(origin.hits(), 3);

    let removed = a_cache.purge_prefix(&origin.url("/img/")).await.unwrap();
    assert_eq!(removed, 2);
    common::eventually("the tier's records under the prefix removed", || {
        common::record_files(bucket.path()).len() == 1
    })
    .await;
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let got = get(&b, &origin.url("/img/1")).await;
        if !got.hit() {
            break;
        }
        assert!(Instant::now() < deadline, "B still serves /img/1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!get(&b, &origin.url("/img/2")).await.body.ends_with(b"#2"));
    let css = get(&b, &origin.url("/css/1")).await;
    assert!(css.hit(), "outside the prefix: {}", css.cache_status());
}

/// An origin that tags each page with its first path segment (`/img/1` carries `img`).
async fn tagged_origin() -> common::Origin {
    common::Origin::start(|parts, n| {
        let path = parts.uri.path().to_owned();
        let tag = path.split('/').nth(1).unwrap_or("none").to_owned();
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .header("surrogate-key", tag)
            .body(axum::body::Body::from(format!("{path} #{n}")))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_reaches_every_node_and_the_tier_and_forged_ones_purge_nothing() {
    let origin = tagged_origin().await;
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a_cache, a) = node(dirs[0].path(), &tier);
    let (_, b) = node(dirs[1].path(), &tier);
    let paths = ["/img/1", "/img/2", "/css/1"];
    for path in paths {
        get(&a, &origin.url(path)).await;
    }
    common::eventually("copied to the tier", || {
        common::record_files(bucket.path()).len() == 3
    })
    .await;
    for path in paths {
        assert!(get(&b, &origin.url(path)).await.hit());
    }
    assert_eq!(origin.hits(), 3);

    // A forged note: its name hashes "img", its bytes say "css".
    let hex = http_cache_streaming::storage::Name::of(b"img").to_hex();
    let now = now_ms();
    let forged = format!("purges/log/{now:013}-0123456789ab-0-t-{hex}");
    tier.put_note(&forged, Bytes::from_static(b"css"), PutNote::Overwrite)
        .await
        .unwrap();
    announce(&tier, "x").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in paths {
        assert!(get(&b, &origin.url(path)).await.hit(), "{path}");
    }

    let purged = Instant::now();
    assert_eq!(a_cache.purge_tag("img").await.unwrap(), 2);
    common::eventually("the tier's tagged records removed", || {
        common::record_files(bucket.path()).len() == 1
    })
    .await;
    let deadline = purged + common::PATIENCE;
    while get(&b, &origin.url("/img/1")).await.hit() {
        assert!(Instant::now() < deadline, "B still serves /img/1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "tag purge on A reached B in {} ms",
        purged.elapsed().as_millis()
    );
    assert!(!get(&b, &origin.url("/img/2")).await.hit());
    let css = get(&b, &origin.url("/css/1")).await;
    assert!(css.hit(), "carries no img: {}", css.cache_status());
    // A node that never had them reads nothing purged through from the tier.
    let (_, c) = node(dirs[2].path(), &tier);
    let img = get(&c, &origin.url("/img/2")).await;
    assert!(!img.body.ends_with(b"#2"), "{:?}", img.body);
}

/// Notes are untrusted: names that do not parse, and a prefix note whose bytes are not the
/// prefix its name hashes, purge nothing; a note dated in the future is taken as written
/// when the tier says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notes_purge_nothing() {
    let origin = common::numbered_origin().await;
    let url = origin.url("/kept");
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let dir = tempfile::tempdir().unwrap();
    let (_, node) = node(dir.path(), &tier);
    assert_eq!(get(&node, &url).await.body, "/kept #1");

    let hex = |bytes: &[u8]| http_cache_streaming::storage::Name::of(bytes).to_hex();
    let now = now_ms();
    // A prefix purge of "http://" whose note's bytes are something else.
    let forged_prefix = format!("{now:013}-0123456789ab-0-p-{}", hex(b"http://"));
    let forged = [
        forged_prefix.clone(),
        format!("{now:013}-0123456789ab-1-x-{}", hex(b"GET:x")),
        format!("{now:013}-0123456789ab-2-k-{}-extra", hex(b"GET:x")),
        format!("{now:013}-nothex123456-3-k-{}", hex(b"GET:x")),
        format!("{}-0123456789ab-4-k-{}", now / 10, hex(b"GET:x")),
        "garbage".to_owned(),
    ];
    for name in &forged {
        let bytes = Bytes::from_static(b"http://elsewhere/");
        tier.put_note(&format!("purges/log/{name}"), bytes, PutNote::Overwrite)
            .await
            .unwrap();
    }
    announce(&tier, "x").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = get(&node, &url).await;
    assert!(got.hit(), "{}", got.cache_status());
    assert_eq!(got.body, "/kept #1");

    // A key purge dated a year ahead: the time is the note's write, so what is fetched
    // after it stays.
    let key = format!("GET:{url}");
    let ahead = now + 365 * 24 * 3600 * 1000;
    let name = format!("{ahead:013}-0123456789ab-5-k-{}", hex(key.as_bytes()));
    tier.put_note(
        &format!("purges/log/{name}"),
        Bytes::new(),
        PutNote::Overwrite,
    )
    .await
    .unwrap();
    announce(&tier, "y").await;
    let deadline = Instant::now() + common::PATIENCE;
    while get(&node, &url).await.hit() {
        assert!(Instant::now() < deadline, "the key purge was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = get(&node, &url).await;
    assert!(after.hit(), "{}", after.cache_status());
    assert_eq!(after.body, "/kept #2", "fetched after the purge, kept");
}

/// A node that did not read the log since before its horizon (the log was compacted while
/// it was down) cannot know what was purged: it drops what it stored before the horizon,
/// and keeps what it stored after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_the_logs_horizon_drops_what_it_stored_before_it() {
    let origin = common::numbered_origin().await;
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let dir = tempfile::tempdir().unwrap();
    let (_, node_before) = node(dir.path(), &tier);
    get(&node_before, &origin.url("/old")).await;
    assert!(get(&node_before, &origin.url("/old")).await.hit());
    drop(node_before);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Compacted while the node was down: nothing the log held before now is known.
    let horizon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    tier.put_note("purges/horizon", Bytes::from(horizon), PutNote::Overwrite)
        .await
        .unwrap();
    // Gone from the tier too, as compaction leaves it when a purge removed it there.
    for name in tier.list_records().await.unwrap() {
        tier.delete_record(name.name).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, node_after) = node(dir.path(), &tier);
    let got = get(&node_after, &origin.url("/old")).await;
    assert!(!got.hit(), "{}", got.cache_status());
    assert_eq!(got.body, "/old #2");
    assert!(get(&node_after, &origin.url("/old")).await.hit(), "stored");
    // Restarted again, with the log read since the horizon: what it holds stays.
    drop(node_after);
    let (_, node_again) = node(dir.path(), &tier);
    let got = get(&node_again, &origin.url("/old")).await;
    assert!(got.hit(), "{}", got.cache_status());
    assert_eq!(got.body, "/old #2");
}

/// An operator's purge reaches the fleet even through a node that never held the entry,
/// and when the bucket has no copy of it (one still being written up, or one that failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_a_node_that_never_had_the_entry_reaches_the_one_that_has() {
    let origin = common::numbered_origin().await;
    let url = origin.url("/only-on-b");
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a_cache, _a) = node(dirs[0].path(), &tier);
    let (_, b) = node(dirs[1].path(), &tier);
    assert_eq!(get(&b, &url).await.body, "/only-on-b #1");
    common::eventually("copied to the tier", || {
        common::record_files(bucket.path()).len() == 1
    })
    .await;
    for listed in tier.list_records().await.unwrap() {
        tier.delete_record(listed.name).await.unwrap();
    }
    assert!(get(&b, &url).await.hit());

    assert!(
        !a_cache.purge(&url).await.unwrap(),
        "nothing stored on A or in the tier"
    );
    let deadline = Instant::now() + common::PATIENCE;
    while get(&b, &url).await.hit() {
        assert!(
            Instant::now() < deadline,
            "B still serves it {:?} after the purge",
            common::PATIENCE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
