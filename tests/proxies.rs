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
use common::{Origin, PURGE_TOKEN, Proxy, client, start_proxy};
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
    revalidated: AtomicU64,
    posts: AtomicU64,
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
    client: &common::Client,
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
    let Ok(response) = client.clone().ready().await.unwrap().call(request).await else {
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

/// A client that keeps its connections open between requests, as load generators do.
fn pooled_client() -> common::Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Clients sending a mix of GETs (hits, misses, revalidations, variants) and POSTs to
/// whichever proxies `targets` names, until `stop`. With `pooled`, each keeps its
/// connections open.
fn start_clients(
    pooled: bool,
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
            let client = if pooled { pooled_client() } else { client() };
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
                    match exchange(&client, &addr, method, i, lang, &sent).await {
                        Outcome::Verified(status) => {
                            tally.verified.fetch_add(1, Ordering::Relaxed);
                            if status.contains("hit") {
                                tally.hits.fetch_add(1, Ordering::Relaxed);
                            }
                            if status.contains("fwd=stale") {
                                tally.revalidated.fetch_add(1, Ordering::Relaxed);
                            }
                            if method == "POST" {
                                tally.posts.fetch_add(1, Ordering::Relaxed);
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

/// Stops the clients and returns what they saw: responses verified, hits, requests cut.
async fn stop_clients(
    stop: &AtomicBool,
    clients: Vec<tokio::task::JoinHandle<()>>,
    tally: &Tally,
) -> (u64, u64, u64) {
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    (
        tally.verified.load(Ordering::Relaxed),
        tally.hits.load(Ordering::Relaxed),
        tally.cut.load(Ordering::Relaxed),
    )
}

/// A proxy for many clients that all come from 127.0.0.1 (the soak's pools hold up to 500
/// connections at once): its cap per client address raised to the global one.
fn proxy(origin: &FleetOrigin, dir: &std::path::Path) -> Proxy {
    start_proxy(
        &origin.origin.url(""),
        dir,
        &[
            "--upstream-timeout",
            "20s",
            "--quiet",
            "--max-connections-per-client",
            "4096",
        ],
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
        false,
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
        let Outcome::Verified(_) = exchange(
            &client(),
            &proxy.addr,
            "GET",
            round % OBJECTS,
            "en",
            &origin.sent,
        )
        .await
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
    let (verified, hits, cut) = stop_clients(&stop, clients, &tally).await;
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
    let clients = start_clients(
        false,
        8,
        targets,
        origin.sent.clone(),
        stop.clone(),
        tally.clone(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (verified, hits, cut) = stop_clients(&stop, clients, &tally).await;
    println!(
        "two proxies: {verified} responses verified ({hits} hits), {cut} failed, 0 wrong bytes"
    );
    assert_eq!(cut, 0, "no request failed");
    assert!(verified > 200 && hits > 0);

    // What one stores, the other serves.
    let c = client();
    let sent = &origin.sent;
    let version = |i: usize| origin.versions.lock().unwrap()[i];
    let object = |status: &Outcome| match status {
        Outcome::Verified(status) => status.clone(),
        Outcome::Cut => panic!("answered"),
    };
    let i = 5;
    exchange(&c, &a.addr, "GET", i, "en", sent).await;
    // A hit in A once A has committed it (a lookup waits for a commit under way): from
    // then on it is on disk for B too.
    let again = object(&exchange(&c, &a.addr, "GET", i, "en", sent).await);
    assert!(again.contains("hit"), "stored by A: {again}");
    let before = origin.origin.hits();
    let status = object(&exchange(&c, &b.addr, "GET", i, "en", sent).await);
    assert!(status.contains("hit"), "stored by A, a hit in B: {status}");
    assert_eq!(origin.origin.hits(), before);

    // A POST through B replaces the object: A does not serve the old version.
    let old = version(i);
    exchange(&c, &b.addr, "POST", i, "en", sent).await;
    assert_eq!(version(i), old + 1);
    let before = origin.origin.hits();
    let status = object(&exchange(&c, &a.addr, "GET", i, "en", sent).await);
    assert!(
        !status.contains("hit"),
        "invalidated by B, not a hit in A: {status}"
    );
    assert_eq!(origin.origin.hits(), before + 1);

    // A PURGE through B is seen by A.
    let i = 6;
    exchange(&c, &a.addr, "GET", i, "en", sent).await;
    let purge = Request::builder()
        .method("PURGE")
        .uri(format!("http://{}/obj/{i}", b.addr))
        .header("host", HOST)
        .header("authorization", format!("Bearer {PURGE_TOKEN}"))
        .body(Full::default())
        .unwrap();
    let purged = client().ready().await.unwrap().call(purge).await.unwrap();
    assert_eq!(purged.status(), StatusCode::OK);
    let status = object(&exchange(&c, &a.addr, "GET", i, "en", sent).await);
    assert!(
        status.contains("fwd=uri-miss"),
        "purged by B, a miss in A: {status}"
    );

    // An overwrite by B (a new version it fetched) is what A serves next.
    let i = 7;
    exchange(&c, &a.addr, "GET", i, "en", sent).await;
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
    // B has committed its overwrite once a request through B is a hit on it (a lookup
    // waits for a commit under way); a fixed pause raced it under load.
    let again = object(&exchange(&c, &b.addr, "GET", i, "en", sent).await);
    assert!(again.contains("hit"), "stored by B: {again}");
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

/// `VmRSS` of a process, in KiB, and how many file descriptors it has open.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// Two hundred clients on keep-alive connections against one proxy, for `HCS_SOAK_SECS`
/// seconds (15 by default; the README's figures are of 60): no request fails, every body
/// is the origin's, and the proxy's memory and open files stay flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_of_two_hundred_clients_fails_nothing_and_stays_flat() {
    let seconds: u64 = std::env::var("HCS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let origin = FleetOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&origin, dir.path());
    let pid = proxy.child.id();
    let targets = Arc::new(Mutex::new(vec![proxy.addr.clone()]));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_clients(
        true,
        200,
        targets,
        origin.sent.clone(),
        stop.clone(),
        tally.clone(),
    );
    let mut samples = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(rss_and_fds(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let verified = count(&tally.verified);
    // Flat: after the first half (connections opened, store warm, the bounded budgets for
    // parsed records and small bodies filling: 34 MiB at 5 s, 59 at 20 s, 63 at 60 s in a
    // 60 s run), neither grows by more than a leak of a few hundred bytes a request would.
    let warm = &samples[samples.len() / 2..];
    let (rss_warm, fds_warm) = warm[0];
    let rss_max = warm.iter().map(|s| s.0).max().unwrap();
    let fds_max = warm.iter().map(|s| s.1).max().unwrap();
    let (rss_end, fds_end) = *samples.last().unwrap();
    println!(
        "soak: {seconds} s, 200 clients: {verified} requests verified ({:.0}/s), {} hits, \
         {} revalidated, {} POSTs, {} origin requests, {} failed, 0 wrong bytes; proxy RSS \
         {} MiB after warm-up, max {} MiB, end {} MiB; open files {fds_warm} after warm-up, \
         max {fds_max}, end {fds_end}",
        verified as f64 / elapsed,
        count(&tally.hits),
        count(&tally.revalidated),
        count(&tally.posts),
        origin.origin.hits(),
        count(&tally.cut),
        rss_warm / 1024,
        rss_max / 1024,
        rss_end / 1024,
    );
    let series: Vec<String> = samples
        .iter()
        .step_by(5)
        .map(|(rss, fds)| format!("{}/{fds}", rss / 1024))
        .collect();
    println!("soak: RSS MiB / open files every 5 s: {}", series.join(" "));
    assert_eq!(count(&tally.cut), 0, "no request failed");
    assert!(verified > 1000, "{verified} requests");
    assert!(count(&tally.hits) > 0 && count(&tally.revalidated) > 0 && count(&tally.posts) > 0);
    assert!(
        rss_max < rss_warm + 64 * 1024,
        "memory flat: {rss_warm} KiB after warm-up, {rss_max} KiB at most"
    );
    assert!(
        fds_max <= fds_warm + 64,
        "open files flat: {fds_warm} after warm-up, {fds_max} at most"
    );
}
