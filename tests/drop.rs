//! Dropping a body the cache handed out, unread, in every context a program can drop it in:
//! while its runtime shuts down, on a thread with no runtime, inside `spawn_blocking`, on the
//! smol executor, during a panic unwind. The process carries on, and the store holds either
//! the whole body (where a task could finish reading it) or nothing (where none could): never
//! a partial entry, never a temp file left behind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::Full;
use http_cache_streaming::storage::FileStorage;
use http_cache_streaming::{
    HttpCacheOptions, HttpCacheStreaming, HttpCacheStreamingLayer, StreamingBody, StreamingManager,
};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Each answer's body: the first half is sent at once, the second when the test releases it.
const HALF: usize = 96 * 1024;

fn body_bytes() -> Bytes {
    (0..2 * HALF).map(|i| (i % 251) as u8).collect()
}

/// A loopback origin on a runtime of its own, so that it outlives the runtimes the tests shut
/// down. Its bodies stall halfway until [`Origin::release`].
struct Origin {
    url: String,
    hits: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    _runtime: Runtime,
}

impl Origin {
    fn start() -> Origin {
        let runtime = Runtime::new().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let counted = Arc::clone(&hits);
        let app = axum::Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let whole = body_bytes();
                let _ = tx.send(Ok(Frame::data(whole.slice(..HALF)))).await;
                let _ = released.wait_for(|r| *r).await;
                let _ = tx.send(Ok(Frame::data(whole.slice(HALF..)))).await;
            });
            async move {
                Response::builder()
                    .header("cache-control", "max-age=3600")
                    .header("content-length", 2 * HALF)
                    .body(AxumBody::new(body))
                    .unwrap()
            }
        });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"));
        let listener = listener.unwrap();
        let url = format!("http://{}/object", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Origin {
            url,
            hits,
            release,
            _runtime: runtime,
        }
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

/// What was dropped.
#[derive(Clone, Copy, Debug)]
enum Dropped {
    /// The response to a miss, its body not read at all.
    Miss,
    /// The response to a miss whose fill another request follows (a private cache: only
    /// the follower, which reads on afterwards, makes the fill worth finishing).
    FollowedFill,
    /// A hit read through from a shared tier, being stored locally as it streams.
    SharedTierTee,
    /// The answer to a ranged miss, read from the file of the whole body a task of its own
    /// is storing.
    RangedMiss,
}

/// Where it was dropped.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Where {
    /// Inside the runtime, just before the runtime shuts down (the end of `#[tokio::main]`):
    /// the task that finishes the body is dropped by the shutdown.
    BeforeShutdown,
    /// Held by a task that the runtime's shutdown drops.
    DuringShutdown,
    /// On a thread that never entered a runtime.
    NoRuntime,
    /// Inside `spawn_blocking`.
    SpawnBlocking,
    /// Inside `smol::block_on` on a thread with no Tokio runtime.
    #[cfg(feature = "smol")]
    Smol,
    /// While a panic unwinds.
    Unwind,
}

impl Where {
    /// Whether a task can still read the body to its end from there.
    fn can_finish(self) -> bool {
        match self {
            Where::BeforeShutdown | Where::DuringShutdown => false,
            // With the `smol` feature, smol's executor runs the task.
            Where::NoRuntime => cfg!(feature = "smol"),
            _ => true,
        }
    }
}

fn layer(dir: &std::path::Path, options: HttpCacheOptions) -> HttpCacheStreaming<Client> {
    let manager = StreamingManager::new(dir.to_path_buf());
    ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(manager, options))
        .service(client())
}

async fn get(cache: &HttpCacheStreaming<Client>, request: Request<()>) -> Response<StreamingBody> {
    let mut cache = cache.clone();
    let request = request.map(|()| Full::default());
    cache.ready().await.unwrap().call(request).await.unwrap()
}

/// The responses to drop, made on `runtime` by a cache in `dir` (and a shared tier beside
/// it), and one to read afterwards, if any.
fn responses(
    what: Dropped,
    runtime: &Runtime,
    origin: &Origin,
    dir: &std::path::Path,
) -> (
    Vec<Response<StreamingBody>>,
    Option<Response<StreamingBody>>,
) {
    runtime.block_on(async {
        match what {
            Dropped::Miss => {
                let cache = layer(dir, HttpCacheOptions::default());
                let miss = get(&cache, Request::get(&origin.url).body(()).unwrap()).await;
                (vec![miss], None)
            }
            Dropped::RangedMiss => {
                let options = HttpCacheOptions::default().fetch_whole_on_range_miss(true);
                let cache = layer(dir, options);
                let ranged = Request::get(&origin.url).header("range", "bytes=100-199");
                let response = get(&cache, ranged.body(()).unwrap()).await;
                assert_eq!(response.status(), 206);
                (vec![response], None)
            }
            Dropped::FollowedFill => {
                let cache = layer(dir, HttpCacheOptions::default().shared(false));
                let leader = get(&cache, Request::get(&origin.url).body(()).unwrap()).await;
                let follower = get(&cache, Request::get(&origin.url).body(()).unwrap()).await;
                let status = follower.headers()["cache-status"].to_str().unwrap();
                assert!(status.contains("collapsed"), "{status}");
                (vec![leader], Some(follower))
            }
            Dropped::SharedTierTee => {
                let bucket = dir.with_file_name("bucket");
                let key = "GET:https://example.com/shared";
                StreamingManager::new(bucket.clone())
                    .put(
                        key.into(),
                        Response::new(Full::new(body_bytes())),
                        policy("https://example.com/shared"),
                        url::Url::parse("https://example.com/shared").unwrap(),
                    )
                    .await
                    .unwrap();
                let node = StreamingManager::builder(dir.to_path_buf())
                    .shared_tier(Arc::new(FileStorage::new(bucket)))
                    .build();
                let (hit, _) = node.get(key).await.unwrap().expect("read through");
                (vec![hit], None)
            }
        }
    })
}

/// Drops `responses` there; returns the runtime when it is still running.
fn drop_there(
    place: Where,
    runtime: Runtime,
    responses: Vec<Response<StreamingBody>>,
) -> Option<Runtime> {
    match place {
        Where::BeforeShutdown => {
            runtime.block_on(async move { drop(responses) });
            drop(runtime);
            None
        }
        Where::DuringShutdown => {
            runtime.spawn(async move {
                let _held = responses;
                std::future::pending::<()>().await
            });
            drop(runtime);
            None
        }
        Where::NoRuntime => {
            std::thread::spawn(move || drop(responses)).join().unwrap();
            Some(runtime)
        }
        Where::SpawnBlocking => {
            let dropping = runtime.spawn_blocking(move || drop(responses));
            runtime.block_on(dropping).unwrap();
            Some(runtime)
        }
        #[cfg(feature = "smol")]
        Where::Smol => {
            std::thread::spawn(move || smol::block_on(async move { drop(responses) }))
                .join()
                .unwrap();
            Some(runtime)
        }
        Where::Unwind => {
            let unwound = runtime.block_on(async move {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    let _held = responses;
                    std::panic::panic_any("a handler panicked holding an unread response");
                }))
            });
            assert!(unwound.is_err());
            Some(runtime)
        }
    }
}

/// Polls `check` for up to ten seconds.
fn wait_for(what: &str, check: impl Fn() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for: {what}");
}

fn dropped_unread(what: Dropped, place: Where) {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("local");
    let runtime = Runtime::new().unwrap();
    let (dropped, kept) = responses(what, &runtime, &origin, &cache);
    let runtime = drop_there(place, runtime, dropped);
    // Still here: the drop neither recursed nor aborted.
    origin.release();

    let whole = sha256_hex(&body_bytes());
    let finishes = match what {
        // A read-through is finished by its own client only: no fill, nobody else wants it.
        Dropped::SharedTierTee => false,
        // The task that stores the whole body started with the response, on the runtime.
        Dropped::RangedMiss => runtime.is_some(),
        Dropped::Miss | Dropped::FollowedFill => place.can_finish(),
    };
    // The follower reads on: the whole body when the fill went on without its leader,
    // else an error, never a body cut short passed off as whole.
    if let (Some(runtime), Some(follower)) = (&runtime, kept) {
        use http_body_util::BodyExt as _;
        let read = runtime.block_on(follower.into_body().collect());
        match read {
            Ok(body) => assert!(finishes && body.to_bytes() == body_bytes()),
            Err(_) => assert!(!finishes, "{place:?}: the follower's body failed"),
        }
    }
    if finishes {
        wait_for("the body stored whole", || record_files(&cache).len() == 1);
        assert_eq!(content_files(&cache), vec![whole.clone()]);
    }
    wait_for("no temp file left", || temp_files(&cache).is_empty());
    if !finishes {
        // Some time for a commit that must not come.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            record_files(&cache),
            Vec::<String>::new(),
            "{what:?} {place:?}"
        );
        assert_eq!(
            content_files(&cache),
            Vec::<String>::new(),
            "{what:?} {place:?}"
        );
    }
    let expected_hits = match what {
        Dropped::SharedTierTee => 0,
        Dropped::Miss | Dropped::FollowedFill | Dropped::RangedMiss => 1,
    };
    assert_eq!(origin.hits.load(Ordering::SeqCst), expected_hits);
    drop(runtime);
}

/// Runs `test` of this binary in a process of its own, where it drops the body: a drop that
/// recursed or aborted would end that process, which this one sees and reports by name.
fn in_own_process(test: &str, what: Dropped, place: Where) {
    if std::env::var_os(CHILD).is_some() {
        return dropped_unread(what, place);
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{what:?} dropped {place:?}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Set in the process that runs one test's drop.
const CHILD: &str = "HCS_DROP_TEST_CHILD";

macro_rules! contexts {
    ($($name:ident: $what:ident, $place:ident $(, $cfg:meta)?;)*) => {$(
        $(#[$cfg])?
        #[test]
        fn $name() {
            in_own_process(stringify!($name), Dropped::$what, Where::$place);
        }
    )*};
}

contexts! {
    miss_dropped_before_shutdown: Miss, BeforeShutdown;
    miss_dropped_during_shutdown: Miss, DuringShutdown;
    miss_dropped_without_a_runtime: Miss, NoRuntime;
    miss_dropped_in_spawn_blocking: Miss, SpawnBlocking;
    miss_dropped_on_smol: Miss, Smol, cfg(feature = "smol");
    miss_dropped_while_unwinding: Miss, Unwind;
    followed_fill_dropped_before_shutdown: FollowedFill, BeforeShutdown;
    followed_fill_dropped_during_shutdown: FollowedFill, DuringShutdown;
    followed_fill_dropped_without_a_runtime: FollowedFill, NoRuntime;
    followed_fill_dropped_in_spawn_blocking: FollowedFill, SpawnBlocking;
    followed_fill_dropped_on_smol: FollowedFill, Smol, cfg(feature = "smol");
    followed_fill_dropped_while_unwinding: FollowedFill, Unwind;
    shared_tier_tee_dropped_before_shutdown: SharedTierTee, BeforeShutdown;
    shared_tier_tee_dropped_during_shutdown: SharedTierTee, DuringShutdown;
    shared_tier_tee_dropped_without_a_runtime: SharedTierTee, NoRuntime;
    shared_tier_tee_dropped_in_spawn_blocking: SharedTierTee, SpawnBlocking;
    shared_tier_tee_dropped_on_smol: SharedTierTee, Smol, cfg(feature = "smol");
    shared_tier_tee_dropped_while_unwinding: SharedTierTee, Unwind;
    ranged_miss_dropped_before_shutdown: RangedMiss, BeforeShutdown;
    ranged_miss_dropped_during_shutdown: RangedMiss, DuringShutdown;
    ranged_miss_dropped_without_a_runtime: RangedMiss, NoRuntime;
    ranged_miss_dropped_in_spawn_blocking: RangedMiss, SpawnBlocking;
    ranged_miss_dropped_on_smol: RangedMiss, Smol, cfg(feature = "smol");
    ranged_miss_dropped_while_unwinding: RangedMiss, Unwind;
}

/// Fills nobody reads any more are completed within the cache's budget only: `at_once` of
/// them, each reading at most `bytes_each` once alone; the others are given up, and
/// nothing of them is stored.
#[test]
fn fills_nobody_reads_complete_within_the_background_budget() {
    for (at_once, bytes_each, stored) in [(2, 1 << 20, 2), (8, 10 * 1024, 0)] {
        let origin = Origin::start();
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new().unwrap();
        let options = HttpCacheOptions::default().background_fills(at_once, bytes_each);
        runtime.block_on(async {
            let cache = layer(dir.path(), options);
            for i in 0..5 {
                let url = format!("{}?i={i}", origin.url);
                drop(get(&cache, Request::get(url).body(()).unwrap()).await);
            }
        });
        origin.release();
        let budget = format!("{at_once} at once, {bytes_each} bytes each");
        if stored > 0 {
            wait_for(&budget, || record_files(dir.path()).len() == stored);
        }
        wait_for("no temp file left", || temp_files(dir.path()).is_empty());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(record_files(dir.path()).len(), stored, "{budget}");
        assert_eq!(origin.hits.load(Ordering::SeqCst), 5);
    }
}
