//! The `reverse_proxy` example under mixed load, as processes: killed with SIGKILL again and
//! again while it serves, and two of them sharing one cache directory. Every response that
//! arrives whole is checked against what the origin sent, byte for byte.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::{Origin, Proxy, client, start_proxy};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

const OBJECTS: usize = 40;
const LANGS: [&str; 3] = ["en", "fr", "de"];
/// The name clients know the proxies by, whichever of them answers (as behind a load
/// balancer): it is part of the cache key.
const HOST: &str = "fleet.example";

/// The bytes of object `i` at `version` for `lang`: deterministic, so that a client can tell
/// whether the bytes it got are ones the origin sent.
fn body_of(i: usize, version: u32, lang: &str) -> Bytes {
    static BODIES: OnceLock<Mutex<HashMap<Sent, Bytes>>> = OnceLock::new();
    let bodies = BODIES.get_or_init(Mutex::default);
    let key = (i, version, lang.to_owned());
    if let Some(body) = bodies.lock().unwrap().get(&key) {
        return body.clone();
    }
    let len = 1000 + (i * 7919) % 150_000;
    let seed = (i as u32) * 13 + version * 7 + lang.bytes().map(u32::from).sum::<u32>();
    let body: Bytes = (0..len as u32)
        .map(|j| (j.wrapping_mul(2_654_435_761) >> 7).wrapping_add(seed) as u8)
        .collect::<Vec<u8>>()
        .into();
    bodies.lock().unwrap().insert(key, body.clone());
    body
}

/// Objects whose response varies on `Accept-Language`.
fn varies(i: usize) -> bool {
    i.is_multiple_of(3)
}

/// A response the origin sent: object, version, language.
type Sent = (usize, u32, String);

/// An origin of [`OBJECTS`] objects at `/obj/<i>`: some fresh for a second (revalidated with
/// their ETag), the rest for a minute, every third varying on `Accept-Language`. A POST
/// makes a new version of its object. It notes every (object, version, language) it sent.
struct FleetOrigin {
    origin: Origin,
    versions: Arc<Mutex<Vec<u32>>>,
    sent: Arc<Mutex<HashSet<Sent>>>,
}

impl FleetOrigin {
    async fn start() -> FleetOrigin {
        let versions = Arc::new(Mutex::new(vec![0u32; OBJECTS]));
        let sent: Arc<Mutex<HashSet<Sent>>> = Arc::default();
        let (state_versions, state_sent) = (versions.clone(), sent.clone());
        let origin = Origin::start(move |parts, _| {
            let i: usize = parts
                .uri
                .path()
                .trim_start_matches("/obj/")
                .parse()
                .unwrap_or(0)
                % OBJECTS;
            if parts.method == http::Method::POST {
                state_versions.lock().unwrap()[i] += 1;
                return Response::builder()
                    .header("cache-control", "no-store")
                    .body(AxumBody::from("updated"))
                    .unwrap();
            }
            let version = state_versions.lock().unwrap()[i];
            let lang = if varies(i) {
                parts
                    .headers
                    .get("accept-language")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            } else {
                String::new()
            };
            let etag = format!("\"{version}-{lang}\"");
            let max_age = if i.is_multiple_of(4) { 1 } else { 60 };
            let mut builder = Response::builder()
                .header("cache-control", format!("max-age={max_age}"))
                .header("etag", &etag)
                .header("x-object", format!("{i} {version} {lang}"));
            if varies(i) {
                builder = builder.header("vary", "accept-language");
            }
            if parts
                .headers
                .get("if-none-match")
                .is_some_and(|v| v.as_bytes() == etag.as_bytes())
            {
                return builder
                    .status(StatusCode::NOT_MODIFIED)
                    .body(AxumBody::empty())
                    .unwrap();
            }
            state_sent
                .lock()
                .unwrap()
                .insert((i, version, lang.clone()));
            builder
                .body(AxumBody::from(body_of(i, version, &lang)))
                .unwrap()
        })
        .await;
        FleetOrigin {
            origin,
            versions,
            sent,
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    verified: AtomicU64,
    hits: AtomicU64,
    /// Requests that got no complete answer (the proxy was down or killed mid-answer).
    cut: AtomicU64,
}

enum Outcome {
    /// A whole response, checked: its `Cache-Status`.
    Verified(String),
    /// No complete response (connection refused or broken).
    Cut,
}

/// Sends `method` for object `i` through the proxy at `addr` and checks what comes back.
async fn exchange(
    addr: &str,
    method: &str,
    i: usize,
    lang: &str,
    sent: &Mutex<HashSet<Sent>>,
) -> Outcome {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/obj/{i}"))
        .header("host", HOST)
        .header("accept-language", lang)
        .body(Full::default())
        .unwrap();
    let Ok(response) = client().ready().await.unwrap().call(request).await else {
        return Outcome::Cut;
    };
    let (parts, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Outcome::Cut;
    };
    let status = parts
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if method == "POST" {
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "updated");
        return Outcome::Verified(status);
    }
    assert_eq!(parts.status, StatusCode::OK, "GET /obj/{i}: {body:?}");
    let object = parts.headers["x-object"].to_str().unwrap().to_owned();
    let mut fields = object.split(' ');
    let (got_i, version, got_lang): (usize, u32, &str) = (
        fields.next().unwrap().parse().unwrap(),
        fields.next().unwrap().parse().unwrap(),
        fields.next().unwrap_or(""),
    );
    let want_lang = if varies(i) { lang } else { "" };
    assert_eq!(got_i, i, "the object asked for");
    assert_eq!(got_lang, want_lang, "/obj/{i}: the variant asked for");
    assert!(
        sent.lock()
            .unwrap()
            .contains(&(i, version, got_lang.to_owned())),
        "/obj/{i}: version {version} ({got_lang}) was never sent"
    );
    assert!(
        body == body_of(i, version, got_lang),
        "/obj/{i} version {version} ({got_lang}): {} bytes that are not the origin's",
        body.len()
    );
    Outcome::Verified(status)
}

/// Clients sending a mix of GETs (hits, misses, revalidations, variants) and POSTs to
/// whichever proxies `targets` names, until `stop`.
fn start_clients(
    n: u64,
    targets: Arc<Mutex<Vec<String>>>,
    sent: Arc<Mutex<HashSet<Sent>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|c| {
            let (targets, sent, stop, tally) =
                (targets.clone(), sent.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut state = c * 7919 + 1;
                let mut next = move |n: usize| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 33) % n as u64) as usize
                };
                while !stop.load(Ordering::Relaxed) {
                    let target = {
                        let targets = targets.lock().unwrap();
                        (!targets.is_empty()).then(|| targets[next(targets.len())].clone())
                    };
                    let Some(addr) = target else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let i = next(OBJECTS);
                    let method = if next(100) < 4 { "POST" } else { "GET" };
                    let lang = LANGS[next(LANGS.len())];
                    match exchange(&addr, method, i, lang, &sent).await {
                        Outcome::Verified(status) => {
                            tally.verified.fetch_add(1, Ordering::Relaxed);
                            if status.contains("hit") {
                                tally.hits.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Outcome::Cut => {
                            tally.cut.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

fn proxy(origin: &FleetOrigin, dir: &std::path::Path) -> Proxy {
    start_proxy(
        &origin.origin.url(""),
        dir,
        &["--timeout-secs", "20", "--quiet"],
    )
}

/// What is in `tmp/` that does not belong to the process `pid`.
fn foreign_temp(dir: &std::path::Path, pids: &[u32]) -> Vec<String> {
    common::files_in(&dir.join("cache-v2/tmp"))
        .into_iter()
        .filter(|name| {
            name != ".open.lock" && !pids.iter().any(|pid| name.starts_with(&format!("{pid}-")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_twenty_times_under_load_serves_only_the_origins_bytes() {
    let origin = FleetOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let targets: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_clients(
        8,
        targets.clone(),
        origin.sent.clone(),
        stop.clone(),
        tally.clone(),
    );
    let kills = 20;
    let mut served_after_restart = 0;
    for round in 0..=kills {
        let mut proxy = proxy(&origin, dir.path());
        // Once it answers, the store is open: whatever dead instances left in tmp/ is gone.
        let Outcome::Verified(_) =
            exchange(&proxy.addr, "GET", round % OBJECTS, "en", &origin.sent).await
        else {
            panic!("the restarted proxy answers");
        };
        served_after_restart += 1;
        let leftovers = foreign_temp(dir.path(), &[proxy.child.id()]);
        assert!(
            leftovers.is_empty(),
            "round {round}: tmp/ holds what killed instances left: {leftovers:?}"
        );
        targets.lock().unwrap().push(proxy.addr.clone());
        if round == kills {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(150 + (round as u64 * 37) % 300)).await;
        proxy.child.kill().unwrap(); // SIGKILL
        proxy.child.wait().unwrap();
        targets.lock().unwrap().clear();
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (verified, hits, cut) = (
        tally.verified.load(Ordering::Relaxed),
        tally.hits.load(Ordering::Relaxed),
        tally.cut.load(Ordering::Relaxed),
    );
    println!(
        "killed {kills} times: {verified} responses verified ({hits} hits), {cut} cut off by \
         a kill or refused while down, {served_after_restart} first requests after a restart, \
         0 wrong bytes"
    );
    assert!(verified > 200, "{verified} responses verified");
    assert!(hits > 0, "entries stored before a kill are served after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_directory_and_never_serve_a_stale_or_torn_entry() {
    let origin = FleetOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = proxy(&origin, dir.path());
    let b = proxy(&origin, dir.path());
    let targets = Arc::new(Mutex::new(vec![a.addr.clone(), b.addr.clone()]));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_clients(8, targets, origin.sent.clone(), stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (verified, hits, cut) = (
        tally.verified.load(Ordering::Relaxed),
        tally.hits.load(Ordering::Relaxed),
        tally.cut.load(Ordering::Relaxed),
    );
    println!(
        "two proxies: {verified} responses verified ({hits} hits), {cut} failed, 0 wrong bytes"
    );
    assert_eq!(cut, 0, "no request failed");
    assert!(verified > 200 && hits > 0);

    // What one stores, the other serves.
    let sent = &origin.sent;
    let version = |i: usize| origin.versions.lock().unwrap()[i];
    let object = |status: &Outcome| match status {
        Outcome::Verified(status) => status.clone(),
        Outcome::Cut => panic!("answered"),
    };
    let i = 5;
    exchange(&a.addr, "GET", i, "en", sent).await;
    let before = origin.origin.hits();
    let status = object(&exchange(&b.addr, "GET", i, "en", sent).await);
    assert!(status.contains("hit"), "stored by A, a hit in B: {status}");
    assert_eq!(origin.origin.hits(), before);

    // A POST through B replaces the object: A does not serve the old version.
    let old = version(i);
    exchange(&b.addr, "POST", i, "en", sent).await;
    assert_eq!(version(i), old + 1);
    let before = origin.origin.hits();
    let status = object(&exchange(&a.addr, "GET", i, "en", sent).await);
    assert!(
        !status.contains("hit"),
        "invalidated by B, not a hit in A: {status}"
    );
    assert_eq!(origin.origin.hits(), before + 1);

    // A PURGE through B is seen by A.
    let i = 6;
    exchange(&a.addr, "GET", i, "en", sent).await;
    let purge = Request::builder()
        .method("PURGE")
        .uri(format!("http://{}/obj/{i}", b.addr))
        .header("host", HOST)
        .body(Full::default())
        .unwrap();
    let purged = client().ready().await.unwrap().call(purge).await.unwrap();
    assert_eq!(purged.status(), StatusCode::OK);
    let status = object(&exchange(&a.addr, "GET", i, "en", sent).await);
    assert!(
        status.contains("fwd=uri-miss"),
        "purged by B, a miss in A: {status}"
    );

    // An overwrite by B (a new version it fetched) is what A serves next.
    let i = 7;
    exchange(&a.addr, "GET", i, "en", sent).await;
    origin.versions.lock().unwrap()[i] += 1;
    let no_cache = Request::get(format!("http://{}/obj/{i}", b.addr))
        .header("host", HOST)
        .header("cache-control", "no-cache")
        .body(Full::default())
        .unwrap();
    let refreshed = client()
        .ready()
        .await
        .unwrap()
        .call(no_cache)
        .await
        .unwrap();
    let new = refreshed.headers()["x-object"].to_str().unwrap().to_owned();
    refreshed.into_body().collect().await.unwrap();
    assert_eq!(new.trim_end(), format!("{i} {}", version(i)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = Request::get(format!("http://{}/obj/{i}", a.addr))
        .header("host", HOST)
        .body(Full::default())
        .unwrap();
    let served = client().ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(
        served.headers()["x-object"].to_str().unwrap(),
        new,
        "A serves B's overwrite, not its own older copy"
    );
    let body = served.into_body().collect().await.unwrap().to_bytes();
    assert!(body == body_of(i, version(i), ""));
}
