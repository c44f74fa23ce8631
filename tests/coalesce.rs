//! Collapsed misses: concurrent requests for one key cost one origin request, and the others
//! stream the body from the file it is being written to.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{
    HttpCacheOptions, HttpCacheStreaming, HttpCacheStreamingLayer, StreamingBody, StreamingManager,
};
use tokio::sync::watch;
use tower::{Service, ServiceBuilder, ServiceExt};

/// An origin whose answers wait until the test opens its gate, with bodies the test feeds.
struct Gated {
    url: String,
    hits: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    /// Bodies for the coming requests, in order; a request with none gets "n<number>".
    bodies: Arc<Mutex<Vec<ChannelBody>>>,
}

async fn gated_origin(cache_control: &'static str) -> Gated {
    let hits = Arc::new(AtomicUsize::new(0));
    let (gate, opened) = watch::channel(false);
    let bodies: Arc<Mutex<Vec<ChannelBody>>> = Arc::default();
    let (state_hits, state_bodies) = (hits.clone(), bodies.clone());
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (hits, bodies, mut opened) = (state_hits.clone(), state_bodies.clone(), opened.clone());
        async move {
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = opened.wait_for(|open| *open).await;
            let etag = "\"v1\"";
            if request
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v == etag)
            {
                let mut not_modified = Response::new(AxumBody::empty());
                *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
                let headers = not_modified.headers_mut();
                headers.insert("cache-control", cache_control.parse().unwrap());
                headers.insert("etag", etag.parse().unwrap());
                return not_modified;
            }
            let fed = {
                let mut bodies = bodies.lock().unwrap();
                (!bodies.is_empty()).then(|| bodies.remove(0))
            };
            let body = match fed {
                Some(body) => AxumBody::new(body),
                None => AxumBody::from(format!("n{n}")),
            };
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert("cache-control", cache_control.parse().unwrap());
            headers.insert("etag", etag.parse().unwrap());
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Gated {
        url: format!("http://{addr}/object"),
        hits,
        gate,
        bodies,
    }
}

impl Gated {
    fn open(&self) {
        self.gate.send_replace(true);
    }
    fn close(&self) {
        self.gate.send_replace(false);
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    /// The next request's body, fed through the returned sender.
    fn feed(&self) -> FrameSender {
        let (tx, body) = channel_body();
        self.bodies.lock().unwrap().push(body);
        tx
    }
}

fn cache(dir: &tempfile::TempDir, options: HttpCacheOptions) -> HttpCacheStreaming<Client> {
    let manager = StreamingManager::new(dir.path().to_path_buf());
    ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(manager, options))
        .service(client())
}

/// Sends a request on a task of its own; its response arrives through the handle.
fn spawn_request(
    cache: &HttpCacheStreaming<Client>,
    url: &str,
) -> tokio::task::JoinHandle<Response<StreamingBody>> {
    let mut cache = cache.clone();
    let request = Request::get(url).body(Full::default()).unwrap();
    tokio::spawn(async move { cache.ready().await.unwrap().call(request).await.unwrap() })
}

fn cache_status(response: &Response<StreamingBody>) -> String {
    response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Lets spawned requests join a fill (nothing outside the cache shows that they have; a
/// spawned task on an idle worker does in well under a millisecond).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Waits until `n` requests have reached `origin`.
async fn reached(origin: &Gated, n: usize) {
    eventually("requests at the origin", || origin.hits() == n).await;
}

/// The rest of a body after `first`, all of it.
async fn with_rest(
    first: Bytes,
    body: StreamingBody,
) -> Result<Vec<u8>, http_cache_streaming::Error> {
    let mut all = first.to_vec();
    all.extend_from_slice(&body.collect().await?.to_bytes());
    Ok(all)
}

async fn first_frame(body: &mut StreamingBody) -> Bytes {
    body.frame().await.unwrap().unwrap().into_data().unwrap()
}

/// A leader held at the origin's gate and `n` requests that arrive while it waits.
async fn leader_and_followers(
    origin: &Gated,
    cache: &HttpCacheStreaming<Client>,
    n: usize,
) -> (Response<StreamingBody>, Vec<Response<StreamingBody>>) {
    let before = origin.hits();
    let leader = spawn_request(cache, &origin.url);
    reached(origin, before + 1).await;
    let followers: Vec<_> = (0..n).map(|_| spawn_request(cache, &origin.url)).collect();
    settle().await;
    origin.open();
    let leader = leader.await.unwrap();
    let mut out = Vec::new();
    for follower in followers {
        out.push(follower.await.unwrap());
    }
    (leader, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_stream_the_body_while_it_is_written() {
    let origin = gated_origin("max-age=60").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(&dir, HttpCacheOptions::default());
    let tx = origin.feed();
    let (leader, followers) = leader_and_followers(&origin, &cache, 4).await;
    assert!(cache_status(&leader).contains("fwd=uri-miss"));
    for follower in &followers {
        assert!(
            cache_status(follower).contains("collapsed"),
            "{}",
            cache_status(follower)
        );
    }

    // The first part of the body reaches every follower while the origin is still sending.
    tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 100_000]))))
        .await
        .unwrap();
    let mut leader_body = leader.into_body();
    let leader_first = first_frame(&mut leader_body).await;
    let mut firsts = Vec::new();
    let mut bodies = Vec::new();
    for follower in followers {
        let mut body = follower.into_body();
        let first = first_frame(&mut body).await;
        assert!(!first.is_empty() && first.iter().all(|&b| b == b'a'));
        firsts.push(first);
        bodies.push(body);
    }
    tx.send(Ok(Frame::data(Bytes::from(vec![b'b'; 50_000]))))
        .await
        .unwrap();
    drop(tx);

    let mut expected = vec![b'a'; 100_000];
    expected.extend_from_slice(&[b'b'; 50_000]);
    assert_eq!(
        with_rest(leader_first, leader_body).await.unwrap(),
        expected
    );
    for (first, body) in firsts.into_iter().zip(bodies) {
        assert_eq!(with_rest(first, body).await.unwrap(), expected);
    }
    assert_eq!(origin.hits(), 1, "one origin request for five clients");

    // Stored: the next request is a plain hit.
    let hit = spawn_request(&cache, &origin.url).await.unwrap();
    assert!(cache_status(&hit).contains("hit"));
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        expected
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_failure_reaches_every_follower_and_stores_nothing() {
    let origin = gated_origin("max-age=60").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(&dir, HttpCacheOptions::default());
    let tx = origin.feed();
    let (leader, followers) = leader_and_followers(&origin, &cache, 3).await;
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 10_000]))))
        .await
        .unwrap();
    tx.send(Err(std::io::Error::other("origin reset")))
        .await
        .unwrap();
    assert!(leader.into_body().collect().await.is_err());
    for follower in followers {
        assert!(
            follower.into_body().collect().await.is_err(),
            "a follower sees the failure"
        );
    }
    let dir_path = dir.path().to_path_buf();
    eventually("the partial body is removed", || {
        temp_files(&dir_path).is_empty()
    })
    .await;
    assert!(record_files(dir.path()).is_empty(), "nothing stored");
    let next = spawn_request(&cache, &origin.url).await.unwrap();
    assert_eq!(next.into_body().collect().await.unwrap().to_bytes(), "n2");
    assert_eq!(origin.hits(), 2, "the next request goes to the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_fills_that_find_no_room_get_every_byte_and_hold_no_thread() {
    const FILLS: usize = 40;
    const FRAME: usize = 64 << 10;
    let origin = gated_origin("max-age=60").await;
    let dir = tempfile::tempdir().unwrap();
    // Room for one 256 KiB body being stored at a time, for forty 1 MiB bodies: every
    // store fails, and each fill's follower reads the rest from the leader's relay.
    let manager = StreamingManager::builder(dir.path())
        .max_size(4 * FRAME as u64)
        .build();
    let cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(
            manager,
            HttpCacheOptions::default(),
        ))
        .service(client());
    let threads = || std::fs::read_dir("/proc/self/task").map_or(0, |t| t.count());
    let frame = |i: usize, n: usize| Bytes::from(vec![(i * 16 + n) as u8; FRAME]);
    let feeds: Vec<_> = (0..FILLS).map(|_| origin.feed()).collect();
    origin.open();
    let urls: Vec<_> = (0..FILLS)
        .map(|i| format!("{}?k={i}", origin.url))
        .collect();
    let mut leaders = Vec::new();
    for (i, feed) in feeds.iter().enumerate() {
        feed.send(Ok(Frame::data(frame(i, 0)))).await.unwrap();
        leaders.push(spawn_request(&cache, &urls[i]).await.unwrap());
    }
    let before = threads();
    let mut followers = Vec::new();
    for url in &urls {
        let follower = spawn_request(&cache, url).await.unwrap();
        assert!(cache_status(&follower).contains("collapsed"));
        followers.push(follower);
    }
    // Each leader reads on while the origin sends the next three frames, then waits for
    // more: its relay waits for the body's next bytes.
    let mut readers = Vec::new();
    for (i, leader) in leaders.into_iter().enumerate() {
        readers.push(tokio::spawn(leader.into_body().collect()));
        for n in 1..4 {
            feeds[i].send(Ok(Frame::data(frame(i, n)))).await.unwrap();
        }
    }
    settle().await;
    let waiting = threads();
    eprintln!("{FILLS} relays waiting: {before} threads before, {waiting} now");
    assert!(
        waiting < before + FILLS / 2,
        "{before} threads before the fills failed, {waiting} while their relays wait"
    );
    for (i, feed) in feeds.into_iter().enumerate() {
        for n in 4..16 {
            feed.send(Ok(Frame::data(frame(i, n)))).await.unwrap();
        }
    }
    let whole = |i: usize| {
        (0..16)
            .flat_map(|n| frame(i, n).to_vec())
            .collect::<Vec<u8>>()
    };
    for (i, (reader, follower)) in readers.into_iter().zip(followers).enumerate() {
        let led = reader.await.unwrap().unwrap().to_bytes();
        assert_eq!(led.len(), 16 * FRAME);
        assert!(led == whole(i), "the leader of fill {i} got other bytes");
        let followed = follower.into_body().collect().await.unwrap().to_bytes();
        // Not one byte skipped where the store failed in the middle of a batch.
        assert!(
            followed == whole(i),
            "the follower of fill {i} got {} bytes, not those sent",
            followed.len()
        );
    }
    assert!(record_files(dir.path()).is_empty(), "none stored");
    assert_eq!(origin.hits(), FILLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_is_not_stored_is_not_shared() {
    for cache_control in ["private, max-age=60", "no-store"] {
        let origin = gated_origin(cache_control).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir, HttpCacheOptions::default());
        let (leader, followers) = leader_and_followers(&origin, &cache, 3).await;
        let mut bodies = vec![leader.into_body().collect().await.unwrap().to_bytes()];
        for follower in followers {
            assert!(!cache_status(&follower).contains("collapsed"));
            bodies.push(follower.into_body().collect().await.unwrap().to_bytes());
        }
        bodies.sort();
        assert_eq!(
            bodies,
            ["n1", "n2", "n3", "n4"],
            "{cache_control}: each its own response"
        );
        assert_eq!(origin.hits(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_does_not_stop_the_others() {
    // A private cache would abandon an unfollowed fill; followers keep this one going.
    let origin = gated_origin("max-age=60").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(&dir, HttpCacheOptions::default().shared(false));
    let tx = origin.feed();
    let (leader, followers) = leader_and_followers(&origin, &cache, 2).await;
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 50_000]))))
        .await
        .unwrap();
    let mut leader_body = leader.into_body();
    first_frame(&mut leader_body).await;
    drop(leader_body); // the leader's client goes away mid-body
    tx.send(Ok(Frame::data(Bytes::from(vec![b'y'; 50_000]))))
        .await
        .unwrap();
    drop(tx);
    for follower in followers {
        let body = follower.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 100_000, "a follower gets the whole body");
    }
    let hit = spawn_request(&cache, &origin.url).await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "the entry is stored");
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes().len(),
        100_000
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cache_completes_a_fill_nobody_reads() {
    let origin = gated_origin("max-age=60").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(&dir, HttpCacheOptions::default());
    let tx = origin.feed();
    let leader = spawn_request(&cache, &origin.url);
    reached(&origin, 1).await;
    origin.open();
    let mut body = leader.await.unwrap().into_body();
    tx.send(Ok(Frame::data(Bytes::from("half, "))))
        .await
        .unwrap();
    first_frame(&mut body).await;
    drop(body);
    tx.send(Ok(Frame::data(Bytes::from("then the rest"))))
        .await
        .unwrap();
    drop(tx);
    let dir_path = dir.path().to_path_buf();
    eventually("the fill completes", || record_files(&dir_path).len() == 1).await;
    let hit = spawn_request(&cache, &origin.url).await.unwrap();
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        "half, then the rest"
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_waits_a_bounded_time_for_the_leader() {
    let origin = gated_origin("max-age=60").await;
    let dir = tempfile::tempdir().unwrap();
    let options = HttpCacheOptions::default().coalesce_wait(Duration::from_millis(100));
    let cache = cache(&dir, options);
    let leader = spawn_request(&cache, &origin.url);
    reached(&origin, 1).await;
    let follower = spawn_request(&cache, &origin.url);
    // Past its wait, the follower asks the origin itself (it never would, had it waited on).
    reached(&origin, 2).await;
    origin.open();
    for response in [leader.await.unwrap(), follower.await.unwrap()] {
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_is_collapsed_too() {
    let origin = gated_origin("max-age=10").await;
    let dir = tempfile::tempdir().unwrap();
    let later = Arc::new(AtomicUsize::new(0));
    let offset = later.clone();
    let options = HttpCacheOptions::default().clock(move || {
        std::time::SystemTime::now() + Duration::from_secs(offset.load(Ordering::SeqCst) as u64)
    });
    let cache = cache(&dir, options);
    origin.open();
    let first = spawn_request(&cache, &origin.url).await.unwrap();
    assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "n1");

    origin.close();
    later.store(60, Ordering::SeqCst); // the entry is stale now
    let (leader, followers) = leader_and_followers(&origin, &cache, 3).await;
    assert!(
        cache_status(&leader).contains("fwd=stale; fwd-status=304"),
        "{}",
        cache_status(&leader)
    );
    assert_eq!(leader.into_body().collect().await.unwrap().to_bytes(), "n1");
    for follower in followers {
        assert!(
            cache_status(&follower).contains("hit; collapsed"),
            "{}",
            cache_status(&follower)
        );
        assert_eq!(
            follower.into_body().collect().await.unwrap().to_bytes(),
            "n1"
        );
    }
    assert_eq!(
        origin.hits(),
        2,
        "one conditional request for four stale clients"
    );
}

/// With `verify_on_read`, a follower reads the body from the file being written, which the
/// disk (or anyone who can write to the directory) may change under it: it gets an error,
/// never the changed bytes as a whole body, while the leader's client gets the origin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_never_gets_bytes_changed_on_disk_as_a_whole_body() {
    let origin = gated_origin("max-age=60").await;
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::builder(dir.path())
        .verify_on_read(true)
        .memory_bodies(0, 0)
        .build();
    let cache = ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::new(manager))
        .service(client());
    let tx = origin.feed();
    let (leader, followers) = leader_and_followers(&origin, &cache, 1).await;
    let follower = followers.into_iter().next().unwrap();
    assert!(cache_status(&follower).contains("collapsed"));
    tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 100_000]))))
        .await
        .unwrap();
    let leader = tokio::spawn(leader.into_body().collect());
    // The first part is in the temp file: one of its bytes changes there.
    let path = dir.path().to_path_buf();
    let written = || {
        temp_files(&path).iter().any(|name| {
            std::fs::metadata(path.join("cache-v2/tmp").join(name))
                .is_ok_and(|m| m.len() >= 100_000)
        })
    };
    eventually("the first part written", written).await;
    for name in temp_files(&path) {
        let file = path.join("cache-v2/tmp").join(name);
        let mut bytes = std::fs::read(&file).unwrap();
        if bytes.len() >= 100_000 {
            bytes[10] = b'X';
            std::fs::write(&file, bytes).unwrap();
        }
    }
    tx.send(Ok(Frame::data(Bytes::from(vec![b'b'; 50_000]))))
        .await
        .unwrap();
    drop(tx);
    let mut expected = vec![b'a'; 100_000];
    expected.extend_from_slice(&[b'b'; 50_000]);
    let leader = leader.await.unwrap().unwrap().to_bytes();
    assert_eq!(
        leader, expected,
        "the leader's client gets the origin's bytes"
    );
    match follower.into_body().collect().await {
        Ok(body) => panic!(
            "a follower got a whole body of {} bytes, {} of them changed",
            body.to_bytes().len(),
            1
        ),
        Err(error) => assert!(error.to_string().contains("changed"), "{error}"),
    }
}
