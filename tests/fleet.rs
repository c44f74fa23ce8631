//! A fleet: `http-cache-proxy` processes sharing one bucket on a real S3 API on loopback
//! (see `common::s3`), with their defaults. What a fleet's operator relies on: a purge
//! sent to one proxy stops every proxy serving the URL (in about a second: the figure is
//! printed), and a proxy that was down when it was sent never serves its old copy; a new
//! object asked of every proxy at once is fetched from the origin once, the others
//! streaming it from the one that fetches it; and that one dying mid-body leaves no wrong
//! byte served or stored anywhere.
//!
//! The origins here hold their bodies back at a gate the test opens, so that "while the
//! body is still coming" is a state the test sets up, not a race it hopes to win.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::s3::{PROXY_ENV, endpoint, new_bucket};
use common::{Generated, Got, Origin, PATIENCE, PURGE_TOKEN, Proxy, free_port};
use http_body_util::BodyExt as _;

/// A proxy of the fleet: its own cache directory, the shared bucket.
fn proxy(origin: &Origin, dir: &std::path::Path, endpoint: &str, bucket: &str) -> Proxy {
    let args = ["--s3-bucket", bucket, "--s3-endpoint", endpoint];
    common::start_proxy_with_env(&origin.url(""), dir, &args, &PROXY_ENV)
}

async fn get(proxy: &Proxy, path: &str) -> Got {
    let request = http::Request::get(format!("http://{}{path}", proxy.addr))
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    common::send(&mut common::client(), request).await
}

/// Waits until the bucket holds `records` records.
async fn copied_up(endpoint: &str, bucket: &str, records: usize) {
    use http_cache_streaming::storage::{ObjectStorage, Storage};
    let tier = ObjectStorage::new(common::s3::bucket(endpoint, bucket));
    let deadline = Instant::now() + PATIENCE;
    while tier.list_records().await.unwrap().len() < records {
        assert!(Instant::now() < deadline, "not copied to the bucket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `proxy` until it answers `path` with something else than `old`; how long that took.
async fn until_not(proxy: &Proxy, path: &str, old: &str, since: Instant) -> (Duration, Got) {
    loop {
        let got = get(proxy, path).await;
        if got.body != old {
            return (since.elapsed(), got);
        }
        assert!(
            since.elapsed() < PATIENCE,
            "{} still serves {old} {PATIENCE:?} after the purge",
            proxy.addr
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_proxy_reaches_the_whole_fleet() {
    let _alone = common::alone().await;
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "purge").await;
    let origin = common::numbered_origin().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let [a, b, c] = [0, 1, 2].map(|i| proxy(&origin, dirs[i].path(), &endpoint, &bucket));
    let d = proxy(&origin, dirs[3].path(), &endpoint, &bucket);

    assert_eq!(get(&a, "/page").await.body, "/page #1");
    copied_up(&endpoint, &bucket, 1).await;
    // B, C and D serve it from the bucket, and keep it on disk.
    for node in [&b, &c, &d] {
        let got = get(node, "/page").await;
        assert!(got.hit(), "{}", got.cache_status());
        assert_eq!(got.body, "/page #1");
    }
    let fetched = origin.hits();
    assert_eq!(fetched, 1);
    // Each keeps its copy on its own disk (D's is the one that must not come back).
    common::eventually("a copy on every proxy's disk", || {
        dirs.iter()
            .all(|dir| common::record_files(dir.path()).len() == 1)
    })
    .await;
    // D goes down with its copy on disk.
    drop(d);

    let purge = http::Request::builder()
        .method("PURGE")
        .uri(format!("http://{}/page", a.addr))
        .header("authorization", format!("Bearer {PURGE_TOKEN}"))
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    let sent = Instant::now();
    let purged = common::send(&mut common::client(), purge).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    let ((b_took, b_got), (c_took, c_got)) = tokio::join!(
        until_not(&b, "/page", "/page #1", sent),
        until_not(&c, "/page", "/page #1", sent)
    );
    println!(
        "purge on A: B answered from the origin after {} ms, C after {} ms",
        b_took.as_millis(),
        c_took.as_millis()
    );
    for (took, got) in [(b_took, &b_got), (c_took, &c_got)] {
        let status = got.cache_status();
        assert!(
            status.contains("fwd=uri-miss") || status.contains("fwd=miss"),
            "{status}"
        );
        // A liveness bound, not a speed: the log is read every 500 ms, so a purge is seen
        // in about a second (printed above); ten times that on a loaded machine.
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    assert_eq!(origin.hits(), fetched + 2, "one fetch each for B and C");

    // D comes back after the purge: its purged copy is never served from its disk.
    let d = proxy(&origin, dirs[3].path(), &endpoint, &bucket);
    let got = get(&d, "/page").await;
    assert_ne!(got.body, "/page #1", "{}", got.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_on_one_proxy_reaches_the_whole_fleet_and_the_bucket() {
    let _alone = common::alone().await;
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "tags").await;
    // `/sale/…` carry `sale`, `/other` carries `other`; every answer numbered.
    let origin = Origin::start(|parts, n| {
        let path = parts.uri.path().to_owned();
        let tag = if path.starts_with("/sale/") {
            "sale"
        } else {
            "other"
        };
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .header("surrogate-key", tag)
            .body(axum::body::Body::from(format!("{path} #{n}")))
            .unwrap()
    })
    .await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let [a, b] = [0, 1].map(|i| proxy(&origin, dirs[i].path(), &endpoint, &bucket));
    let c = proxy(&origin, dirs[2].path(), &endpoint, &bucket);
    let paths = ["/sale/1", "/sale/2", "/other"];
    for path in paths {
        get(&a, path).await;
    }
    copied_up(&endpoint, &bucket, 3).await;
    for node in [&b, &c] {
        for path in paths {
            let got = get(node, path).await;
            assert!(got.hit(), "{path}: {}", got.cache_status());
            assert!(got.header("surrogate-key").is_none(), "{path}");
        }
    }
    assert_eq!(origin.hits(), 3);
    common::eventually("a copy on every proxy's disk", || {
        dirs.iter()
            .all(|dir| common::record_files(dir.path()).len() == 3)
    })
    .await;
    // C goes down with its copies on disk.
    drop(c);

    let purge = http::Request::builder()
        .method("PURGE")
        .uri(format!("http://{}/", a.addr))
        .header("authorization", format!("Bearer {PURGE_TOKEN}"))
        .header("surrogate-key", "sale")
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    let sent = Instant::now();
    let purged = common::send(&mut common::client(), purge).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    assert_eq!(purged.body, "purged 2 tagged sale\n");
    // The bucket's copies carrying the tag go, the other stays.
    {
        use http_cache_streaming::storage::{ObjectStorage, Storage};
        let tier = ObjectStorage::new(common::s3::bucket(&endpoint, &bucket));
        let deadline = Instant::now() + PATIENCE;
        while tier.list_records().await.unwrap().len() != 1 {
            assert!(Instant::now() < deadline, "the bucket keeps tagged records");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (took, got) = until_not(&b, "/sale/1", "/sale/1 #1", sent).await;
    println!(
        "tag purge on A: B answered from the origin after {} ms",
        took.as_millis()
    );
    assert!(!got.hit(), "{}", got.cache_status());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_ne!(get(&b, "/sale/2").await.body, "/sale/2 #1");
    let other = get(&b, "/other").await;
    assert!(other.hit(), "carries no sale: {}", other.cache_status());
    assert_eq!(other.body, "/other #3");

    // C comes back after the purge: its tagged copies are never served from its disk.
    let c = proxy(&origin, dirs[2].path(), &endpoint, &bucket);
    for path in ["/sale/1", "/sale/2"] {
        let got = get(&c, path).await;
        assert!(
            !got.body.ends_with(b"#1") && !got.body.ends_with(b"#2"),
            "{path}: {:?}",
            got.body
        );
    }
    assert!(get(&c, "/other").await.hit());
}

const SECRET: &str = "a secret the fleet shares";

/// A proxy of the fleet with fleet fills on, and the port peers reach it at
/// (`127.0.0.1:<port>`, which goes into its leases). A port found free may be taken by
/// another socket before the proxy binds it: then another one is tried.
fn fleet_proxy(
    origin: &Origin,
    dir: &std::path::Path,
    endpoint: &str,
    bucket: &str,
) -> (Proxy, u16) {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let fleet = free_port();
        let listen = format!("127.0.0.1:{fleet}");
        let args = [
            "--s3-bucket",
            bucket,
            "--s3-endpoint",
            endpoint,
            "--fleet-listen",
            &listen,
            "--fleet-secret",
            SECRET,
        ];
        match common::try_start_proxy(&origin.url(""), dir, &args, &PROXY_ENV) {
            Ok(proxy) => return (proxy, fleet),
            Err(failed) => failures.push(failed),
        }
    }
    panic!("the proxy did not start: {failures:?}");
}

/// An origin body of `len` generated bytes (seed `seed`) that sends its first `before`
/// bytes, then waits until `gate` opens (or [`PATIENCE`] runs out, so that a failing test
/// ends) before the rest, each chunk after `pace`.
fn gated_body(
    len: u64,
    seed: u8,
    before: u64,
    gate: tokio::sync::watch::Receiver<bool>,
    pace: Duration,
) -> axum::body::Body {
    let (tx, body) = common::channel_body();
    tokio::spawn(async move {
        let mut gate = gate;
        let (mut generated, mut sent) = (Generated::new(len, seed), 0u64);
        while let Some(Ok(frame)) = generated.frame().await {
            if sent >= before {
                let _ = tokio::time::timeout(PATIENCE, gate.wait_for(|open| *open)).await;
            }
            sent += frame.data_ref().map_or(0, |data| data.len() as u64);
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    });
    axum::body::Body::new(body)
}

/// What a client got: when its first byte came (since `start`), the SHA-256 and length of
/// the body, and whether it ended whole (`Err`: it failed, and when).
struct Fetched {
    first_byte: Option<Duration>,
    body: Result<([u8; 32], u64), Duration>,
    cache_status: String,
}

async fn fetch(addr: String, path: &'static str, start: Instant) -> Fetched {
    fetch_counted(addr, path, start, None).await
}

/// [`fetch`], adding one to `first_bytes` when the first byte of the body comes.
async fn fetch_counted(
    addr: String,
    path: &'static str,
    start: Instant,
    first_bytes: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
) -> Fetched {
    use sha2::Digest as _;
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    let response = match common::client().request(request).await {
        Ok(response) => response,
        Err(_) => {
            return Fetched {
                first_byte: None,
                body: Err(start.elapsed()),
                cache_status: String::new(),
            };
        }
    };
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut body = response.into_body();
    let mut hasher = sha2::Sha256::new();
    let (mut first_byte, mut len) = (None, 0u64);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Fetched {
                first_byte,
                body: Err(start.elapsed()),
                cache_status,
            };
        };
        if let Some(data) = frame.data_ref() {
            if first_byte.is_none() {
                first_byte = Some(start.elapsed());
                if let Some(count) = &first_bytes {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            hasher.update(data);
            len += data.len() as u64;
        }
    }
    Fetched {
        first_byte,
        body: Ok((hasher.finalize().into(), len)),
        cache_status,
    }
}

const BIG: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_clients_on_three_proxies_cost_the_origin_one_fetch() {
    let _alone = common::alone().await;
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "fills").await;
    // The origin sends 4 MiB and holds the rest back until every client has its first byte:
    // a client that waited for the whole body on any proxy would wait for ever.
    let (open, gate) = tokio::sync::watch::channel(false);
    let origin = Origin::start(move |_, _| {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(gated_body(BIG, 3, 4 << 20, gate.clone(), Duration::ZERO))
            .unwrap()
    })
    .await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let proxies: Vec<Proxy> = dirs
        .iter()
        .map(|dir| fleet_proxy(&origin, dir.path(), &endpoint, &bucket).0)
        .collect();

    let start = Instant::now();
    let first_bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = (0..30).map(|i| {
        let addr = proxies[i % 3].addr.clone();
        tokio::spawn(fetch_counted(
            addr,
            "/video",
            start,
            Some(first_bytes.clone()),
        ))
    });
    let clients = tokio::spawn(futures_util::future::join_all(clients));
    common::eventually(
        "every client's first byte while the origin holds the rest",
        || first_bytes.load(std::sync::atomic::Ordering::SeqCst) == 30,
    )
    .await;
    let gate_opened = start.elapsed();
    open.send_replace(true);
    let fetched: Vec<Fetched> = clients
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let digest = Generated::digest(BIG, 3);
    for got in &fetched {
        assert_eq!(got.body, Ok((digest, BIG)), "{}", got.cache_status);
    }
    assert_eq!(
        origin.hits(),
        1,
        "one fetch from the origin for the whole fleet"
    );
    // On each of the two other proxies, the request that led its fill streamed the holder's.
    let from_peer = fetched
        .iter()
        .filter(|f| f.cache_status.contains("collapsed; detail=peer"))
        .count();
    assert_eq!(from_peer, 2);
    // Every first byte came while the origin still held back all but 4 MiB (the wait above);
    // how far apart they came is a figure, not a bound.
    let firsts: Vec<Duration> = fetched.iter().map(|f| f.first_byte.unwrap()).collect();
    let (earliest, latest) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
    let last_byte = start.elapsed();
    println!(
        "30 clients on 3 proxies, 256 MiB: origin requests {}, first bytes {} ms to {} ms \
         after the requests went out (the earliest is the holder's), the rest released at \
         {} ms, all done in {} ms",
        origin.hits(),
        earliest.as_millis(),
        latest.as_millis(),
        gate_opened.as_millis(),
        last_byte.as_millis()
    );
    // Every proxy keeps it: a hit on each.
    for proxy in &proxies {
        let again = fetch(proxy.addr.clone(), "/video", Instant::now()).await;
        assert!(again.cache_status.contains("hit"), "{}", again.cache_status);
        assert_eq!(again.body, Ok((digest, BIG)));
    }
    assert_eq!(origin.hits(), 1);
}

/// The fleet port of the proxy holding the only lease in the bucket.
async fn lease_holder(endpoint: &str, bucket: &str) -> u16 {
    use http_cache_streaming::storage::{Note, ObjectStorage, Storage};
    let tier = ObjectStorage::new(common::s3::bucket(endpoint, bucket));
    let leases = tier.list_notes("leases", None, 10).await.unwrap();
    assert_eq!(leases.len(), 1, "one lease");
    let Note::Found { bytes, .. } = tier
        .read_note(&format!("leases/{}", leases[0].name), None)
        .await
        .unwrap()
    else {
        panic!("the lease went");
    };
    let lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let holder = lease["holder"].as_str().unwrap();
    holder.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_killed_mid_body_leaves_no_wrong_byte_anywhere() {
    let _alone = common::alone().await;
    const LEN: u64 = 64 << 20;
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "killed").await;
    // The origin sends 8 MiB, then holds the rest back until the holder is dead: the kill
    // comes mid-body however slow the machine. The fetch after it is not held.
    let (open, gate) = tokio::sync::watch::channel(false);
    let origin = Origin::start(move |_, _| {
        let body = gated_body(LEN, 5, 8 << 20, gate.clone(), Duration::from_millis(1));
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .header("content-length", LEN)
            .body(body)
            .unwrap()
    })
    .await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (proxies, ports): (Vec<Proxy>, Vec<u16>) = dirs
        .iter()
        .map(|dir| fleet_proxy(&origin, dir.path(), &endpoint, &bucket))
        .unzip();
    let mut proxies: Vec<Option<Proxy>> = proxies.into_iter().map(Some).collect();
    let addrs: Vec<String> = proxies
        .iter()
        .map(|p| p.as_ref().unwrap().addr.clone())
        .collect();

    let start = Instant::now();
    let first_bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..9)
        .map(|i| {
            let counted = Some(first_bytes.clone());
            tokio::spawn(fetch_counted(addrs[i % 3].clone(), "/live", start, counted))
        })
        .collect();
    // The holder's own clients have bytes, so it is streaming; its lease is in the bucket.
    common::eventually("a first byte from the holder", || {
        first_bytes.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(origin.hits(), 1);
    let holder_port = lease_holder(&endpoint, &bucket).await;
    let holder = ports.iter().position(|&p| p == holder_port).unwrap();
    let mut killed = proxies[holder].take().unwrap();
    let killed_at = start.elapsed();
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    open.send_replace(true);

    let digest = Generated::digest(LEN, 5);
    let mut whole = 0;
    for client in clients {
        let got = client.await.unwrap();
        match got.body {
            Ok(body) => {
                assert_eq!(body, (digest, LEN), "a whole body, and only the right one");
                whole += 1;
            }
            Err(at) => assert!(at >= killed_at, "failed before the kill: {at:?}"),
        }
    }
    println!(
        "holder killed {} ms in: {whole} of 9 clients complete, the others cut off",
        killed_at.as_millis()
    );
    // Nothing wrong kept: on each survivor's disk, and in the bucket, an entry is the body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, dir) in dirs.iter().enumerate() {
        for file in common::content_files(dir.path()) {
            let path = dir.path().join("cache-v2/content").join(&file);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(common::sha256(&bytes), digest, "proxy {i} keeps {file}");
        }
    }
    // The survivors answer it whole: the first takes the dead holder's lease over and
    // fetches it, the second has it from the first (its fill, or the bucket's copy).
    let fetched = origin.hits();
    for (i, proxy) in proxies.iter().enumerate() {
        let Some(proxy) = proxy else { continue };
        let got = fetch(proxy.addr.clone(), "/live", Instant::now()).await;
        assert_eq!(
            got.body,
            Ok((digest, LEN)),
            "proxy {i}: {}",
            got.cache_status
        );
    }
    assert_eq!(
        origin.hits(),
        fetched + 1,
        "one fetch for the two survivors"
    );
}

/// The peer listener and the leases are attack surfaces: an ask without the secret gets
/// nothing, and a lease forged in the bucket that points at a server of the attacker's is
/// no lease (it has no seal of the fleet's secret): the node asks the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_asks_and_leases_get_nothing() {
    let _alone = common::alone().await;
    use http_cache_streaming::storage::{ObjectStorage, PutNote, Storage};
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "forged").await;
    let origin = common::numbered_origin().await;
    // The attacker's "holder": answers every ask 200 with its own bytes and a made-up proof.
    let evil = Origin::start(|_, _| {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .header("x-http-cache-fill-status", "200")
            .header("x-http-cache-fill-proof", "00".repeat(32))
            .body(axum::body::Body::from("evil bytes"))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, port) = fleet_proxy(&origin, dir.path(), &endpoint, &bucket);

    // Asks without the secret, or with another's: 401, nothing served.
    for auth in [None, Some("1.00000000000000000000000000000000.00")] {
        let mut ask = http::Request::get(format!(
            "http://127.0.0.1:{port}/http-cache-streaming/fill?key=GET%3A{}",
            origin.url("/page").replace(':', "%3A")
        ));
        if let Some(auth) = auth {
            ask = ask.header("x-http-cache-fill-auth", auth);
        }
        let request = ask.body(http_body_util::Full::<Bytes>::default()).unwrap();
        let got = common::send(&mut common::client(), request).await;
        assert_eq!(got.status, http::StatusCode::UNAUTHORIZED);
        assert!(got.body.is_empty());
    }

    // A lease on /page naming the attacker's server, written straight into the bucket.
    let key = format!("GET:{}", origin.url("/page"));
    let name = http_cache_streaming::storage::Name::of(key.as_bytes()).to_hex();
    let lease = serde_json::json!({
        "v": 1,
        "holder": evil.url(""),
        "expires_ms": 4_000_000_000_000u64,
    });
    let tier = ObjectStorage::new(common::s3::bucket(&endpoint, &bucket));
    tier.put_note(
        &format!("leases/{name}"),
        Bytes::from(lease.to_string()),
        PutNote::Overwrite,
    )
    .await
    .unwrap();
    let got = get(&proxy, "/page").await;
    assert_eq!(
        evil.hits(),
        0,
        "a lease without the fleet's seal is no lease"
    );
    assert_eq!(got.body, "/page #1", "the origin's answer");
    let again = get(&proxy, "/page").await;
    assert!(again.hit(), "{}", again.cache_status());
    assert_eq!(again.body, "/page #1");
}

/// Any client can send a POST the origin answers 2xx, which invalidates the URL (RFC 9111
/// §4.4) on every node through the purge log: an attacker doing so for every stored URL,
/// and again and again for one, writes at most the budget's notes (one a second here), while
/// this node drops every copy it was told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_by_unsafe_requests_reach_the_fleet_within_a_budget() {
    let _alone = common::alone().await;
    use http_cache_streaming::storage::{ObjectStorage, Storage};
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "invalidations").await;
    let origin = common::numbered_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let args = [
        "--s3-bucket",
        &bucket,
        "--s3-endpoint",
        &endpoint,
        "--fleet-invalidation-rate",
        "1",
        "--admin-listen",
        &admin,
    ];
    let proxy = common::start_proxy_with_env(&origin.url(""), dir.path(), &args, &PROXY_ENV);
    for i in 0..40 {
        assert!(
            get(&proxy, &format!("/p/{i}"))
                .await
                .body
                .starts_with(b"/p/")
        );
    }
    copied_up(&endpoint, &bucket, 40).await;
    let tier = ObjectStorage::new(common::s3::bucket(&endpoint, &bucket));
    let notes_before = tier
        .list_notes("purges/log", None, 1000)
        .await
        .unwrap()
        .len();

    let post = |path: String| {
        let request = http::Request::post(format!("http://{}{path}", proxy.addr))
            .body(http_body_util::Full::<Bytes>::from("x"))
            .unwrap();
        async move { common::send(&mut common::client(), request).await }
    };
    let started = Instant::now();
    for i in 0..40 {
        assert_eq!(post(format!("/p/{i}")).await.status, http::StatusCode::OK);
    }
    for _ in 0..50 {
        post("/p/0".into()).await;
    }
    let elapsed = started.elapsed();
    let notes = tier
        .list_notes("purges/log", None, 1000)
        .await
        .unwrap()
        .len()
        - notes_before;
    let budget = 1 + elapsed.as_secs() as usize + 1;
    println!(
        "90 invalidations in {} ms: {notes} purge notes for the fleet (budget {budget})",
        elapsed.as_millis()
    );
    assert!(notes >= 1, "the first reaches the fleet");
    assert!(notes <= budget, "{notes} notes for 40 URLs in {elapsed:?}");
    // Here, every URL invalidated is gone: the next request goes to the origin.
    let fetched = origin.hits();
    for i in 0..40 {
        let got = get(&proxy, &format!("/p/{i}")).await;
        assert!(!got.hit(), "/p/{i}: {}", got.cache_status());
    }
    assert_eq!(origin.hits(), fetched + 40);
    // And what stayed local is counted where operators look.
    let metrics = common::send(
        &mut common::client(),
        http::Request::get(format!("http://{admin}/metrics"))
            .body(http_body_util::Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    let text = String::from_utf8_lossy(&metrics.body);
    let counted = text
        .lines()
        .find(|l| l.starts_with("http_cache_streaming_invalidations_not_shared_total"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(counted >= (90 - budget) as f64, "{counted} counted: {text}");
}

/// Whoever can write to the bucket but does not hold the fleet's secret: purge notes for a
/// key and for every URL (the empty prefix), and a horizon far in the future (which would
/// make every node empty itself at each start), are all ignored; the fleet's own purges,
/// written after them, still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_writer_without_the_secret_purges_nothing() {
    let _alone = common::alone().await;
    use http_cache_streaming::storage::{Name, ObjectStorage, PutNote, Storage};
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "unsealed").await;
    let origin = common::numbered_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = fleet_proxy(&origin, dir.path(), &endpoint, &bucket);
    assert_eq!(get(&proxy, "/page").await.body, "/page #1");
    assert_eq!(get(&proxy, "/other").await.body, "/other #2");
    copied_up(&endpoint, &bucket, 2).await;

    let tier = ObjectStorage::new(common::s3::bucket(&endpoint, &bucket));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let key = Name::of(format!("GET:{}", origin.url("/page")).as_bytes()).to_hex();
    let everything = Name::of(b"").to_hex();
    let forged = [
        (format!("purges/log/{now:013}-0123456789ab-0-k-{key}"), ""),
        (
            format!("purges/log/{now:013}-0123456789ab-1-p-{everything}"),
            "",
        ),
        (
            format!(
                "purges/log/{now:013}-0123456789ab-2-k-{key}-{}",
                "0".repeat(32)
            ),
            "",
        ),
        ("purges/horizon".to_owned(), "9999999999999"),
        ("purges/latest".to_owned(), "forged"),
    ];
    for (path, text) in forged {
        tier.put_note(&path, Bytes::from(text), PutNote::Overwrite)
            .await
            .unwrap();
    }
    // A second node purges `/other` after them: once the first has acted on that note, it
    // has read the forged ones before it.
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _) = fleet_proxy(&origin, other_dir.path(), &endpoint, &bucket);
    let purge = |node: &Proxy, path: &str| {
        http::Request::builder()
            .method("PURGE")
            .uri(format!("http://{}{path}", node.addr))
            .header("authorization", format!("Bearer {PURGE_TOKEN}"))
            .body(http_body_util::Full::<Bytes>::default())
            .unwrap()
    };
    let purged = common::send(&mut common::client(), purge(&other, "/other")).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    let (_, got) = until_not(&proxy, "/other", "/other #2", Instant::now()).await;
    assert_eq!(got.body, "/other #3");
    drop(other);
    let got = get(&proxy, "/page").await;
    assert!(got.hit(), "{}", got.cache_status());
    assert_eq!(got.body, "/page #1");
    // Started again, with the horizon: nothing dropped.
    drop(proxy);
    let (proxy, _) = fleet_proxy(&origin, dir.path(), &endpoint, &bucket);
    let got = get(&proxy, "/page").await;
    assert!(got.hit(), "{}", got.cache_status());
    assert_eq!(origin.hits(), 3);
    // The fleet's own purge still works.
    let purged = common::send(&mut common::client(), purge(&proxy, "/page")).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    assert_eq!(get(&proxy, "/page").await.body, "/page #4");
}

/// What a man in the middle of the fleet's network records of one fill: the ask, and the
/// answer it alters.
#[derive(Default)]
struct Tapped {
    asks: Vec<(String, http::HeaderValue)>,
}

/// A man in the middle on the fleet's network: forwards asks to `holder` (a fleet port),
/// records them in `tapped`, and flips one byte of each answer's body. Its address.
async fn man_in_the_middle(
    holder: u16,
    tapped: std::sync::Arc<std::sync::Mutex<Tapped>>,
) -> std::net::SocketAddr {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (client, tapped) = (client.clone(), tapped.clone());
        async move {
            let target = request.uri().path_and_query().unwrap().to_string();
            if let Some(auth) = request.headers().get("x-http-cache-fill-auth") {
                tapped
                    .lock()
                    .unwrap()
                    .asks
                    .push((target.clone(), auth.clone()));
            }
            let mut forwarded = http::Request::get(format!("http://127.0.0.1:{holder}{target}"));
            for (name, value) in request.headers() {
                if name != http::header::HOST {
                    forwarded = forwarded.header(name, value);
                }
            }
            let answer = client
                .request(forwarded.body(http_body_util::Empty::new()).unwrap())
                .await
                .unwrap();
            let (mut parts, body) = answer.into_parts();
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            let mut flipped = false;
            let altered = body.map_frame(move |frame| match frame.into_data() {
                Ok(data) if !flipped && data.len() > 10 => {
                    flipped = true;
                    let mut bytes = data.to_vec();
                    bytes[10] ^= 0xff;
                    http_body::Frame::data(Bytes::from(bytes))
                }
                Ok(data) => http_body::Frame::data(data),
                Err(frame) => frame,
            });
            http::Response::from_parts(parts, axum::body::Body::new(altered))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Whoever sits between two nodes sees their asks and answers: a body it alters is cut off
/// and stored nowhere (the answer's body is sealed), and an ask it sends again gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_of_the_fleet_gets_nothing_to_a_client_or_a_disk() {
    let _alone = common::alone().await;
    const LEN: u64 = 4 << 20;
    let endpoint = endpoint();
    let bucket = new_bucket(&endpoint, "middle").await;
    // The origin holds the body back after 1 MiB until B has asked A for it.
    let (open, gate) = tokio::sync::watch::channel(false);
    let origin = Origin::start(move |_, _| {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .header("content-length", LEN)
            .body(gated_body(LEN, 9, 1 << 20, gate.clone(), Duration::ZERO))
            .unwrap()
    })
    .await;
    // A advertises the man in the middle as its fleet address.
    let a_port = free_port();
    let tapped = std::sync::Arc::new(std::sync::Mutex::new(Tapped::default()));
    let middle = man_in_the_middle(a_port, tapped.clone()).await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let listen = format!("127.0.0.1:{a_port}");
    let advertise = format!("http://{middle}");
    let fleet_args = |listen: &str, advertise: Option<&str>| {
        let mut args = vec![
            "--s3-bucket".to_owned(),
            bucket.clone(),
            "--s3-endpoint".to_owned(),
            endpoint.clone(),
            "--fleet-listen".to_owned(),
            listen.to_owned(),
            "--fleet-secret".to_owned(),
            SECRET.to_owned(),
        ];
        if let Some(advertise) = advertise {
            args.extend(["--fleet-advertise".to_owned(), advertise.to_owned()]);
        }
        args
    };
    let args = fleet_args(&listen, Some(&advertise));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = common::start_proxy_with_env(&origin.url(""), a_dir.path(), &args, &PROXY_ENV);
    let (b, _) = fleet_proxy(&origin, b_dir.path(), &endpoint, &bucket);

    let start = Instant::now();
    let first = tokio::spawn(fetch(a.addr.clone(), "/big", start));
    common::eventually("A at the origin", || origin.hits() == 1).await;
    let second = tokio::spawn(fetch(b.addr.clone(), "/big", start));
    common::eventually("B's ask through the middle", || {
        !tapped.lock().unwrap().asks.is_empty()
    })
    .await;
    open.send_replace(true);
    let digest = Generated::digest(LEN, 9);
    assert_eq!(first.await.unwrap().body, Ok((digest, LEN)), "A's client");
    let altered = second.await.unwrap();
    assert!(
        altered.body.is_err(),
        "B's client never gets an altered body whole"
    );
    assert!(
        altered.cache_status.contains("detail=peer"),
        "{}",
        altered.cache_status
    );
    // Nothing of it on B's disk: what B keeps, if anything, is the body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for file in common::content_files(b_dir.path()) {
        let bytes = std::fs::read(b_dir.path().join("cache-v2/content").join(&file)).unwrap();
        assert_eq!(common::sha256(&bytes), digest, "B keeps {file}");
    }
    // B asked again gets the body whole (from the bucket, or the origin).
    let again = fetch(b.addr.clone(), "/big", Instant::now()).await;
    assert_eq!(again.body, Ok((digest, LEN)), "{}", again.cache_status);

    // The ask the man in the middle saw, sent again to A: nothing.
    let (target, auth) = tapped.lock().unwrap().asks[0].clone();
    let replay = http::Request::get(format!("http://127.0.0.1:{a_port}{target}"))
        .header("x-http-cache-fill-auth", auth)
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    let replayed = common::send(&mut common::client(), replay).await;
    assert_eq!(replayed.status, http::StatusCode::UNAUTHORIZED);
    assert!(replayed.body.is_empty());
}
