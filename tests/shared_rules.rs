//! What a shared cache keeps of one client's response for the next, through the real
//! `http-cache-proxy` with its defaults: one user's cookie, the fields an origin names in
//! `no-cache="…"` and `private="…"`, an error one client provoked, a page that was never
//! fresh, a header a client names in `Connection`, a body on a GET. In each test a first
//! client (the attacker, or just the previous user) goes first, and the test asserts what
//! a second, innocent client receives, and what reached the origin and the disk.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};

/// Sends a GET for `path` with `headers` to the proxy and reads the whole response.
async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut request = Request::get(format!("http://{}{path}", proxy.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::<Bytes>::default()).unwrap();
    common::send(&mut client(), request).await
}

async fn get(proxy: &Proxy, path: &str) -> Got {
    get_with(proxy, path, &[]).await
}

fn started(origin: &Origin, extra: &[&str]) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), extra);
    (proxy, dir)
}

/// An origin that sets a session cookie for the user it numbers, with `cache_control` and a
/// strong `ETag`: what an application's page does when it logs a visitor in.
async fn cookie_origin(cache_control: &'static str) -> Origin {
    Origin::start(move |_, n| {
        Response::builder()
            .header("cache-control", cache_control)
            .header("etag", "\"v1\"")
            .header("set-cookie", format!("session=user{n}; HttpOnly"))
            .header("x-user", format!("user{n}"))
            .body(AxumBody::from(format!("page #{n}")))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_sets_a_cookie_is_not_stored_whatever_it_says() {
    for cache_control in ["public, max-age=600", "max-age=600", "s-maxage=600, public"] {
        let origin = cookie_origin(cache_control).await;
        let (proxy, dir) = started(&origin, &[]);
        let first = get(&proxy, "/login").await;
        assert_eq!(first.header("set-cookie"), Some("session=user1; HttpOnly"));
        assert!(
            first.cache_status().contains("detail=set-cookie"),
            "{cache_control}: {}",
            first.cache_status()
        );
        let second = get(&proxy, "/login").await;
        assert_eq!(
            second.header("set-cookie"),
            Some("session=user2; HttpOnly"),
            "{cache_control}: the next user gets a session of their own"
        );
        assert_eq!(second.body, "page #2");
        assert_eq!(origin.hits(), 2);
        assert!(record_files(dir.path()).is_empty(), "{cache_control}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_store_set_cookie_the_cookie_goes_to_its_own_client_only() {
    let origin = cookie_origin("public, max-age=600").await;
    let (proxy, dir) = started(&origin, &["--store-set-cookie"]);
    let first = get(&proxy, "/login").await;
    assert_eq!(first.header("set-cookie"), Some("session=user1; HttpOnly"));
    eventually("stored", || record_files(dir.path()).len() == 1).await;
    let second = get(&proxy, "/login").await;
    assert!(second.hit(), "{}", second.cache_status());
    assert_eq!(second.body, "page #1");
    assert_eq!(
        second.header("set-cookie"),
        None,
        "user1's cookie stays with user1"
    );
    assert_eq!(second.header("x-user"), Some("user1"), "the rest is stored");
    // Nothing on disk carries the cookie either.
    let records = dir.path().join("cache-v2/metadata");
    for name in record_files(dir.path()) {
        let record = std::fs::read(records.join(&name)).unwrap();
        let text = String::from_utf8_lossy(&record);
        assert!(!text.contains("session=user1"), "{name} holds the cookie");
    }
    // Followers of the same fill are other clients too: none of them gets it.
    let origin = cookie_origin("public, max-age=600").await;
    let (proxy, _dir) = started(&origin, &["--store-set-cookie"]);
    let at_once = (0..6).map(|_| get(&proxy, "/together"));
    let got = futures_util::future::join_all(at_once).await;
    let cookies: Vec<_> = got.iter().filter_map(|g| g.header("set-cookie")).collect();
    assert_eq!(
        cookies.len(),
        origin.hits(),
        "one cookie per origin fetch: {cookies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_named_in_no_cache_or_private_never_reach_another_client() {
    for cache_control in [
        r#"public, max-age=600, no-cache="X-User""#,
        r#"max-age=600, private="x-user""#,
        r#"max-age=600, no-cache="X-Other, x-user", private="x-none""#,
    ] {
        let origin = Origin::start(move |_, n| {
            Response::builder()
                .header("cache-control", cache_control)
                .header("x-user", format!("user{n}"))
                .body(AxumBody::from("the page"))
                .unwrap()
        })
        .await;
        let (proxy, dir) = started(&origin, &[]);
        let first = get(&proxy, "/page").await;
        assert_eq!(first.header("x-user"), Some("user1"), "{cache_control}");
        eventually("stored", || record_files(dir.path()).len() == 1).await;
        let second = get(&proxy, "/page").await;
        assert!(second.hit(), "{cache_control}: {}", second.cache_status());
        assert_eq!(second.header("x-user"), None, "{cache_control}");
        assert_eq!(origin.hits(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_gives_its_304s_cookie_to_its_own_client_only() {
    // Stored without a cookie; every revalidation's 304 sets the revalidating user's.
    let origin = Origin::start(|parts, n| {
        if parts.headers.contains_key("if-none-match") {
            return Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("cache-control", r#"max-age=1, no-cache="x-user""#)
                .header("etag", "\"v1\"")
                .header("set-cookie", format!("session=user{n}"))
                .header("x-user", format!("user{n}"))
                .header("x-hop", "this connection's")
                .header("connection", "x-hop")
                .body(AxumBody::empty())
                .unwrap();
        }
        Response::builder()
            .header("cache-control", r#"max-age=1, no-cache="x-user""#)
            .header("etag", "\"v1\"")
            .body(AxumBody::from("the page"))
            .unwrap()
    })
    .await;
    let (proxy, dir) = started(&origin, &[]);
    assert_eq!(get(&proxy, "/page").await.body, "the page");
    eventually("stored", || record_files(dir.path()).len() == 1).await;
    // Stale a second later (a slow machine only makes it staler).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revalidated = get(&proxy, "/page").await;
    assert!(
        revalidated
            .cache_status()
            .contains("fwd=stale; fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    assert_eq!(revalidated.header("set-cookie"), Some("session=user2"));
    assert_eq!(revalidated.header("x-user"), Some("user2"));
    let next = get(&proxy, "/page").await;
    assert!(next.hit(), "{}", next.cache_status());
    assert_eq!(
        next.header("set-cookie"),
        None,
        "user2's cookie stays with user2"
    );
    assert_eq!(next.header("x-user"), None, "named in no-cache: user2's");
    assert_eq!(next.header("x-hop"), None);
    assert_eq!(origin.hits(), 2);
}

/// An origin that answers `400` (or the status in `X-Fail`) to a request carrying `X-Fail`,
/// and `200` otherwise, everything `public, max-age=600`: the blanket header many origins
/// add to every response.
async fn blanket_origin() -> Origin {
    Origin::start(|parts, n| {
        let status = match parts.headers.get("x-fail") {
            Some(code) => code.to_str().unwrap().parse().unwrap_or(400),
            None => 200,
        };
        Response::builder()
            .status(status)
            .header("cache-control", "public, max-age=600")
            .body(AxumBody::from(format!("{status} #{n}")))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_one_client_provoked_is_not_served_to_the_next() {
    let origin = blanket_origin().await;
    let (proxy, dir) = started(&origin, &[]);
    for (i, code) in ["400", "500", "501", "502", "503", "504"]
        .iter()
        .enumerate()
    {
        let path = format!("/page/{i}");
        let attack = get_with(&proxy, &path, &[("x-fail", code)]).await;
        assert_eq!(attack.status.as_str(), *code);
        assert!(
            attack.cache_status().contains("detail=error-status"),
            "{}",
            attack.cache_status()
        );
        let innocent = get(&proxy, &path).await;
        assert_eq!(
            innocent.status,
            StatusCode::OK,
            "{code}: {}",
            innocent.cache_status()
        );
    }
    assert!(record_files(dir.path()).len() <= 6, "only the 200s stored");

    // Opted in, errors are stored, and served no longer than the cap.
    let origin = blanket_origin().await;
    let (proxy, _dir) = started(&origin, &["--store-errors", "1s"]);
    assert_eq!(
        get_with(&proxy, "/e", &[("x-fail", "503")]).await.status,
        503
    );
    let stored = get(&proxy, "/e").await;
    assert_eq!(stored.status, 503, "stored as the operator asked");
    assert!(stored.hit(), "{}", stored.cache_status());
    // Past the cap (a slow machine only makes it later), the origin is asked again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&proxy, "/e").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_too_large_for_an_origin_are_answered_431_by_the_proxy() {
    let origin = blanket_origin().await;
    let (proxy, _dir) = started(&origin, &[]);
    let big = "x".repeat(20 * 1024);
    let attack = get_with(&proxy, "/page", &[("x-big", &big)]).await;
    assert_eq!(attack.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Many fields, each small, count together.
    let fields: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-f{i}"), "y".repeat(500)))
        .collect();
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    assert_eq!(get_with(&proxy, "/page", &fields).await.status, 431);
    assert_eq!(origin.hits(), 0, "none of it reached the origin");
    assert_eq!(get(&proxy, "/page").await.status, StatusCode::OK);
    // An operator whose origins take more says so.
    let (roomy, _dir) = started(&origin, &["--max-request-headers", "64k"]);
    let got = get_with(&roomy, "/other", &[("x-big", &big)]).await;
    assert_eq!(got.status, StatusCode::OK);
}

/// A personalised page whose handler sends no `Cache-Control` (and an `ETag` when
/// `tagged`), until the switch it returns is set: then `503`.
async fn account_origin(tagged: bool) -> (Origin, Arc<AtomicUsize>) {
    let failing = Arc::new(AtomicUsize::new(0));
    let fail = failing.clone();
    let origin = Origin::start(move |_, n| {
        if fail.load(Ordering::SeqCst) == 1 {
            return Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(AxumBody::from("down"))
                .unwrap();
        }
        let mut page = Response::builder();
        if tagged {
            page = page.header("etag", format!("\"u{n}\""));
        }
        page.body(AxumBody::from(format!("the account of user{n}")))
            .unwrap()
    })
    .await;
    (origin, failing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_was_never_fresh_is_never_served_to_another_user() {
    // No freshness, no validator; then the handler fails.
    let (origin, failing) = account_origin(false).await;
    let (proxy, dir) = started(&origin, &["--stale-on-error", "1h"]);
    let first = get(&proxy, "/account").await;
    assert_eq!(first.body, "the account of user1");
    assert!(
        first.cache_status().contains("detail=no-freshness"),
        "{}",
        first.cache_status()
    );
    assert!(
        record_files(dir.path()).is_empty(),
        "one write per request, for nothing"
    );
    failing.store(1, Ordering::SeqCst);
    let second = get(&proxy, "/account").await;
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.body, "down", "never user1's page");

    // One with a validator but no freshness is kept for revalidation, never served stale.
    let (origin, failing) = account_origin(true).await;
    let (proxy, dir) = started(&origin, &["--stale-on-error", "1h"]);
    assert_eq!(get(&proxy, "/account").await.body, "the account of user1");
    eventually("kept for revalidation", || {
        record_files(dir.path()).len() == 1
    })
    .await;
    // Nor for a client that says it takes stale answers: it asked for what the origin
    // allowed, and the origin allowed none.
    let stale_ok = [("cache-control", "max-stale=3600")];
    let second = get_with(&proxy, "/account", &stale_ok).await;
    assert_eq!(
        second.body,
        "the account of user2",
        "{}",
        second.cache_status()
    );
    failing.store(1, Ordering::SeqCst);
    let third = get(&proxy, "/account").await;
    assert_eq!(third.body, "down", "{}", third.cache_status());
}

/// `--default-ttl` gives a page without freshness its lifetime (what nginx's
/// `proxy_cache_valid` does), but never makes storable what a shared cache refuses; and an
/// origin that writes the field the cache keeps a TTL in is not believed, nor is the field
/// ever sent to a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_ttl_keeps_bare_pages_and_nothing_an_origin_forges() {
    let origin = Origin::start(|parts, n| {
        let mut page = Response::builder();
        match parts.uri.path() {
            "/forged" => page = page.header("x-http-cache-streaming-ttl", "max-age=600"),
            "/private" => page = page.header("cache-control", "private"),
            "/cookie" => page = page.header("set-cookie", format!("session=user{n}")),
            _ => {}
        }
        page.body(AxumBody::from(format!("{} #{n}", parts.uri.path())))
            .unwrap()
    })
    .await;
    let (plain, _plain_dir) = started(&origin, &[]);
    let forged = get(&plain, "/forged").await;
    assert!(
        forged.cache_status().ends_with("detail=no-freshness"),
        "{}",
        forged.cache_status()
    );
    assert_eq!(forged.header("x-http-cache-streaming-ttl"), None);
    assert_eq!(get(&plain, "/forged").await.body, "/forged #2");

    let (proxy, dir) = started(&origin, &["--default-ttl", "60s"]);
    let first = get(&proxy, "/bare").await;
    assert!(
        first.cache_status().contains("stored; ttl=60"),
        "{}",
        first.cache_status()
    );
    let second = get(&proxy, "/bare").await;
    assert!(second.hit(), "{}", second.cache_status());
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("x-http-cache-streaming-ttl"), None);
    for (path, why) in [("/private", "private"), ("/cookie", "set-cookie")] {
        let got = get(&proxy, path).await;
        assert!(
            got.cache_status().ends_with(&format!("detail={why}")),
            "{}",
            got.cache_status()
        );
        assert!(!get(&proxy, path).await.hit());
    }
    assert_eq!(record_files(dir.path()).len(), 1, "the bare page only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_bare_private_or_no_cache_is_not_lost_behind_a_qualified_one() {
    // Two Cache-Control lines, as a framework and an app each add one.
    let origin = Origin::start(|parts, n| {
        let (first, second) = match parts.uri.path() {
            "/private" => (r#"max-age=600, private="x-user""#, "private"),
            _ => (r#"max-age=600, no-cache="x-user""#, "no-cache"),
        };
        Response::builder()
            .header("cache-control", first)
            .header("cache-control", second)
            .header("etag", format!("\"v{n}\""))
            .header("x-user", format!("user{n}"))
            .body(AxumBody::from(format!("page of user{n}")))
            .unwrap()
    })
    .await;
    let (proxy, _dir) = started(&origin, &[]);
    assert_eq!(get(&proxy, "/private").await.body, "page of user1");
    let next = get(&proxy, "/private").await;
    assert_eq!(
        next.body,
        "page of user2",
        "private: {}",
        next.cache_status()
    );
    // no-cache: stored, but never served without the origin's word.
    assert_eq!(get(&proxy, "/no-cache").await.body, "page of user3");
    let next = get(&proxy, "/no-cache").await;
    assert!(!next.hit(), "{}", next.cache_status());
    assert_eq!(origin.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_named_in_connection_is_gone_before_the_cache_keys_the_request() {
    // A CORS origin: the allow header only for a request that carries Origin.
    let origin = Origin::start(|parts, n| {
        let mut response = Response::builder()
            .header("cache-control", "public, max-age=600")
            .header("vary", "Origin");
        if let Some(origin) = parts.headers.get("origin") {
            response = response.header("access-control-allow-origin", origin);
        }
        response.body(AxumBody::from(format!("api #{n}"))).unwrap()
    })
    .await;
    let (proxy, _dir) = started(&origin, &[]);
    let app = ("origin", "https://app.example");
    // The attacker names Origin in Connection: the origin never sees it.
    let attack = get_with(&proxy, "/api", &[app, ("connection", "origin")]).await;
    assert_eq!(attack.header("access-control-allow-origin"), None);
    let innocent = get_with(&proxy, "/api", &[app]).await;
    assert_eq!(
        innocent.header("access-control-allow-origin"),
        Some("https://app.example"),
        "{}",
        innocent.cache_status()
    );
    // Nor can a client remove what the proxy says of it upstream.
    let hidden = [("connection", "x-forwarded-for, forwarded, via")];
    get_with(&proxy, "/other", &hidden).await;
    let seen = origin.last_request();
    for name in ["x-forwarded-for", "forwarded", "via"] {
        assert!(
            seen.headers.contains_key(name),
            "{name}: {:?}",
            seen.headers
        );
    }
}

/// An HTTPS origin speaking HTTP/2 (so that a request body travels to it whatever its
/// framing) that answers by the request's body, as search and GraphQL endpoints do,
/// `public, max-age=600`: its URL, the CA to trust it by, and how many requests it answered.
async fn body_reading_origin(dir: &std::path::Path) -> (String, String, Arc<AtomicUsize>) {
    let (ca, cert, key) = common::tls::certificates(dir);
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let port = common::tls::https_server(&cert, &key, move |request| {
        let hits = counted.clone();
        async move {
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            let version = request.version();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let text = format!(
                "#{n} for {:?} over {version:?}",
                String::from_utf8_lossy(&body)
            );
            Response::builder()
                .header("cache-control", "public, max-age=600")
                .body(Full::new(Bytes::from(text)))
                .unwrap()
        }
    })
    .await;
    (format!("https://localhost:{port}"), ca, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_never_stored_however_it_is_framed() {
    let certs = tempfile::tempdir().unwrap();
    let (upstream, ca, hits) = body_reading_origin(certs.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&upstream, dir.path(), &["--upstream-ca", &ca]);
    let url = format!("http://{}/search", proxy.addr);
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<ChannelBody>();
    // HTTP/2, the body in DATA frames and no length: nothing in the head says it is there.
    let (tx, body) = channel_body();
    tx.send(Ok(Frame::data(Bytes::from("evil")))).await.unwrap();
    drop(tx);
    let request = Request::get(&url).body(body).unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let attack = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        attack, "#1 for \"evil\" over HTTP/2.0",
        "the origin read it"
    );
    // HTTP/2 with a length, and HTTP/1.1 with a length and chunked.
    let with_length =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
    let request = Request::get(&url)
        .body(Full::new(Bytes::from("evil2")))
        .unwrap();
    with_length.request(request).await.unwrap();
    let request = Request::get(&url)
        .body(Full::new(Bytes::from("evil3")))
        .unwrap();
    client().request(request).await.unwrap();
    // HTTP/1.1 chunked (written by hand: a client library sends no body on a GET without
    // a length).
    let chunked = b"GET /search HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\n5\r\nevil4\r\n0\r\n\r\n";
    let mut stream = std::net::TcpStream::connect(&proxy.addr).unwrap();
    std::io::Write::write_all(&mut stream, chunked).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.contains("#4 for \"evil4\""), "{answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert!(
        record_files(dir.path()).is_empty(),
        "nothing stored from a body"
    );

    // The innocent GET without a body gets the origin's answer to no body, and keeps it.
    let innocent = get(&proxy, "/search").await;
    assert_eq!(innocent.body, "#5 for \"\" over HTTP/2.0");
    let again = get(&proxy, "/search").await;
    assert!(again.hit(), "{}", again.cache_status());
    assert_eq!(again.body, innocent.body);
}

#[test]
fn secrets_are_never_printed_and_short_ones_are_refused() {
    let secret = "a-purge-token-nobody-may-see";
    let help = std::process::Command::new(proxy_binary())
        .arg("--help")
        .env("HTTP_CACHE_PROXY_PURGE_TOKEN", secret)
        .env("HTTP_CACHE_PROXY_FLEET_SECRET", secret)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&help.stdout);
    assert!(printed.contains("--purge-token"), "{printed}");
    assert!(!printed.contains(secret), "--help shows the token");

    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().to_str().unwrap();
    let base = ["--upstream", "http://127.0.0.1:9", "--cache-dir", cache_dir];
    for token in ["short", "fifteen-chars!!", "has a space in it, long enough"] {
        let mut args = base.to_vec();
        args.extend(["--purge-token", token]);
        let refused = spawn_proxy(&args, &[]).err().expect("refused");
        assert!(refused.contains("exit status: 2"), "{refused}");
        assert!(refused.contains("--purge-token"), "{refused}");
        assert!(
            !refused.contains(token),
            "the refusal shows the token: {refused}"
        );
        let env = [("HTTP_CACHE_PROXY_PURGE_TOKEN", token)];
        let refused = spawn_proxy(&base, &env).err().expect("refused");
        assert!(!refused.contains(token), "{refused}");
    }
    let fleet = [
        "--s3-bucket",
        "b",
        "--fleet-listen",
        "127.0.0.1:0",
        "--fleet-secret",
        "tooshort",
    ];
    let mut args = base.to_vec();
    args.extend(fleet);
    let refused = spawn_proxy(&args, &[]).err().expect("refused");
    assert!(refused.contains("--fleet-secret"), "{refused}");
    assert!(!refused.contains("tooshort"), "{refused}");
}

/// An origin whose pages carry tags: `/a` in `Surrogate-Key`, `/b` in `Cache-Tag`, `/c` none.
async fn tagged_origin() -> Origin {
    Origin::start(|parts, n| {
        let path = parts.uri.path().to_owned();
        let mut response = Response::builder().header("cache-control", "max-age=600");
        response = match path.as_str() {
            "/a" => response.header("surrogate-key", "product-1 shared"),
            "/b" => response.header("cache-tag", "product-2,shared"),
            _ => response,
        };
        response
            .body(AxumBody::from(format!("{path} #{n}")))
            .unwrap()
    })
    .await
}

/// Sends `request` to the proxy over HTTP/2 (cleartext, prior knowledge).
async fn get_h2(proxy: &Proxy, path: &str) -> Got {
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = Request::get(format!("http://{}{path}", proxy.addr))
        .body(Full::default())
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A purge request to the proxy: `PURGE path` with `headers`.
async fn purge(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut request = Request::builder()
        .method("PURGE")
        .uri(format!("http://{}{path}", proxy.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    common::send(&mut client(), request.body(Full::default()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_never_reach_clients_and_a_tag_purge_removes_every_response_carrying_one() {
    let origin = tagged_origin().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let (proxy, dir) = started(&origin, &["--admin-listen", &admin]);
    for path in ["/a", "/b", "/c"] {
        for got in [get(&proxy, path).await, get_h2(&proxy, path).await] {
            assert_eq!(got.status, StatusCode::OK);
            assert!(
                got.header("surrogate-key").is_none(),
                "{path}: {:?}",
                got.headers
            );
            assert!(
                got.header("cache-tag").is_none(),
                "{path}: {:?}",
                got.headers
            );
        }
    }
    assert_eq!(origin.hits(), 3, "the HTTP/2 requests were hits");
    // Stored with their fields: the tags are the cache's, the fields stay in the record.
    assert_eq!(record_files(dir.path()).len(), 3);

    let bearer = format!("Bearer {PURGE_TOKEN}");
    let refused = purge(&proxy, "/", &[("surrogate-key", "product-1")]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let wrong = purge(
        &proxy,
        "/",
        &[
            ("surrogate-key", "product-1"),
            ("authorization", "Bearer nope-nope-nope-nope"),
        ],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        get(&proxy, "/a").await.hit(),
        "an unauthorised purge removes nothing"
    );

    let long = "x".repeat(1025);
    let bad = purge(
        &proxy,
        "/",
        &[("surrogate-key", &long), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);

    let purged = purge(
        &proxy,
        "/anything",
        &[("surrogate-key", "product-1"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK);
    assert_eq!(purged.body, "purged 1 tagged product-1\n");
    let a = get(&proxy, "/a").await;
    assert!(!a.hit());
    assert_eq!(a.body, "/a #4");
    assert!(get(&proxy, "/b").await.hit());
    assert!(get_h2(&proxy, "/a").await.hit(), "stored again");

    // The admin endpoint, with the same token: /a and /b share a tag.
    let admin_purge = |headers: &[(&str, &str)]| {
        let mut request = Request::post(format!("http://{admin}/purge"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::default()).unwrap();
        async move { common::send(&mut client(), request).await }
    };
    let refused = admin_purge(&[("surrogate-key", "shared")]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let done = admin_purge(&[
        ("surrogate-key", "shared nothing"),
        ("authorization", &bearer),
    ])
    .await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(done.body, "{\"purged\":2}\n");
    for path in ["/a", "/b"] {
        assert!(!get(&proxy, path).await.hit(), "{path}");
    }
    assert!(get(&proxy, "/c").await.hit(), "/c carries no tag");
    assert_eq!(origin.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_fields_reach_clients_when_forwarded() {
    let origin = tagged_origin().await;
    let (proxy, _dir) = started(&origin, &["--forward-tags"]);
    for got in [get(&proxy, "/a").await, get_h2(&proxy, "/a").await] {
        assert_eq!(got.header("surrogate-key"), Some("product-1 shared"));
    }
    let (proxy, _dir) = started(&origin, &["--tag-field", "x-tags"]);
    let got = get(&proxy, "/a").await;
    assert_eq!(
        got.header("surrogate-key"),
        Some("product-1 shared"),
        "not a tag field here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_tells_what_is_stored_behind_the_token() {
    let origin = tagged_origin().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let (proxy, _dir) = started(&origin, &["--admin-listen", &admin]);
    for path in ["/a", "/b", "/c"] {
        get(&proxy, path).await;
    }
    let bearer = format!("Bearer {PURGE_TOKEN}");
    let ask = |query: &str, token: Option<&str>| {
        let mut request = Request::get(format!("http://{admin}/entries{query}"));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        let request = request.body(Full::default()).unwrap();
        async move { common::send(&mut client(), request).await }
    };
    let json = |got: &Got| -> serde_json::Value { serde_json::from_slice(&got.body).unwrap() };

    assert_eq!(ask("?path=/a", None).await.status, StatusCode::UNAUTHORIZED);
    let a = ask("?path=/a", Some(&bearer)).await;
    assert_eq!(a.status, StatusCode::OK);
    let entry = &json(&a)["entry"];
    assert_eq!(entry["tags"], serde_json::json!(["product-1", "shared"]));
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["size"], 5, "{entry}");
    assert!(
        entry["cache_status"]
            .as_str()
            .unwrap()
            .contains("hit; ttl="),
        "{entry}"
    );
    let none = ask("?path=/nothing", Some(&bearer)).await;
    assert_eq!(json(&none)["entry"], serde_json::Value::Null);

    // Pages of one: /a then /b carry `shared`, in an order of their own.
    let first = json(&ask("?tag=shared&limit=1", Some(&bearer)).await);
    assert_eq!(first["entries"].as_array().unwrap().len(), 1);
    let next = first["next"].as_str().unwrap().to_owned();
    let second = json(&ask(&format!("?tag=shared&limit=1&after={next}"), Some(&bearer)).await);
    assert_eq!(second["entries"].as_array().unwrap().len(), 1);
    assert_eq!(second["next"], serde_json::Value::Null);
    let mut urls: Vec<String> = [&first, &second]
        .iter()
        .map(|page| page["entries"][0]["url"].as_str().unwrap().to_owned())
        .collect();
    urls.sort();
    assert!(
        urls[0].ends_with("/a") && urls[1].ends_with("/b"),
        "{urls:?}"
    );
    let all = json(&ask("?prefix=/", Some(&bearer)).await);
    assert_eq!(all["entries"].as_array().unwrap().len(), 3);

    for bad in [
        "",
        "?tag=a%20b",
        "?path=a",
        "?tag=a&prefix=/",
        "?prefix=/&after=zz",
    ] {
        let got = ask(bad, Some(&bearer)).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", got.body);
    }
    assert_eq!(origin.hits(), 3, "looking is not fetching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_field_withheld_from_the_stored_copy_does_not_reach_its_own_client_either() {
    // The origin names the tag field in `no-cache="…"` / `private="…"`: the stored copy has
    // none, and the fetching client, who would get the field back, gets no tags either.
    for cache_control in [
        r#"max-age=600, no-cache="surrogate-key""#,
        r#"max-age=600, private="surrogate-key""#,
    ] {
        let origin = Origin::start(move |_, n| {
            Response::builder()
                .header("cache-control", cache_control)
                .header("surrogate-key", "user-42")
                .body(AxumBody::from(format!("page #{n}")))
                .unwrap()
        })
        .await;
        let (proxy, _dir) = started(&origin, &[]);
        for got in [get(&proxy, "/p").await, get_h2(&proxy, "/p").await] {
            assert_eq!(got.status, StatusCode::OK);
            assert!(
                got.header("surrogate-key").is_none(),
                "{cache_control}: {:?}",
                got.headers
            );
        }
    }
}
