//! Cache poisoning, privacy and trust through the real reverse proxy: an attacker's requests
//! go first, then an innocent client's, and each test asserts what the innocent client
//! receives and what reached the origin and the disk.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

/// An origin that reflects what an attacker would like to get stored: the request's path,
/// its `X-Forwarded-Host`, `X-Original-URL`, `X-Evil` and body-describing headers, in the body.
async fn reflecting_origin() -> Origin {
    Origin::start(|parts, n| {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map_or("-", |v| v.to_str().unwrap_or("?"))
                .to_owned()
        };
        let body = format!(
            "n={n} path={} xfh={} original={} evil={} length={}",
            parts.uri.path_and_query().map_or("", |p| p.as_str()),
            header("x-forwarded-host"),
            header("x-original-url"),
            header("x-evil"),
            header("content-length"),
        );
        let mut response = Response::builder()
            .header("cache-control", "public, max-age=600")
            .header("etag", "\"v1\"");
        if parts.uri.path() == "/varies" {
            response = response.header("vary", "X-Evil");
        }
        response.body(AxumBody::from(body)).unwrap()
    })
    .await
}

/// Sends `request` to the proxy and reads the whole response.
async fn send(proxy: &Proxy, request: http::request::Builder, body: &'static str) -> Got {
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{}{path}", proxy.addr).parse().unwrap();
    let response = client()
        .ready()
        .await
        .unwrap()
        .call(Request::from_parts(parts, body))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(proxy: &Proxy, path: &str) -> Got {
    send(proxy, Request::get(path), "").await
}

/// Writes `request` as it is on a connection of its own and reads until the proxy closes
/// it: for what no HTTP client library would send.
fn raw(proxy: &Proxy, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(&proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {answer:?}"));
    (status, answer)
}

/// Every file under `dir` holds none of `needle`'s bytes.
fn on_disk(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_set_on_one_clients_revalidation_is_never_replayed() {
    let origin = Origin::start(|parts, _| {
        if parts.headers.contains_key("if-none-match") {
            // The revalidation of ALICE's request: a 304 that sets her cookie.
            let cookie = parts.headers.get("cookie").cloned();
            let mut response = Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("cache-control", "public, max-age=600")
                .header("etag", "\"v1\"");
            if let Some(cookie) = cookie {
                response = response.header("set-cookie", cookie);
            }
            return response.body(AxumBody::empty()).unwrap();
        }
        Response::builder()
            .header("cache-control", "public, max-age=1")
            .header("etag", "\"v1\"")
            .body(AxumBody::from("app v1"))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);

    assert_eq!(get(&proxy, "/app.js").await.body, "app v1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let alice = send(
        &proxy,
        Request::get("/app.js").header("cookie", "sid=ALICE"),
        "",
    )
    .await;
    assert_eq!(alice.body, "app v1");
    assert!(alice.cache_status().contains("fwd-status=304"));
    assert_eq!(alice.header("set-cookie"), Some("sid=ALICE"), "hers");
    assert_eq!(origin.hits(), 2);

    let anonymous = get(&proxy, "/app.js").await;
    assert!(anonymous.hit(), "{}", anonymous.cache_status());
    assert_eq!(anonymous.body, "app v1");
    assert_eq!(anonymous.header("set-cookie"), None, "never replayed");
    assert_eq!(on_disk(dir.path(), "ALICE"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_an_authority_is_refused_and_reaches_no_key() {
    let origin = reflecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);

    let bad_hosts: [&[u8]; 9] = [
        b"Host: victim.example/static\r\n",
        b"Host: attacker@victim.example\r\n",
        b"Host: victim.example\\static\r\n",
        b"Host: victim .example\r\n",
        b"Host: victim\x01.example\r\n",
        b"Host: \r\n",
        b"Host: victim.example\r\nHost: other.example\r\n",
        b"Host: victim.example:80:80\r\n",
        b"",
    ];
    for host in bad_hosts {
        let mut request = b"GET /evil.js HTTP/1.1\r\n".to_vec();
        request.extend_from_slice(host);
        request.extend_from_slice(b"Connection: close\r\n\r\n");
        let (status, answer) = raw(&proxy, &request);
        assert_eq!(status, 400, "{:?}: {answer}", String::from_utf8_lossy(host));
    }
    assert_eq!(origin.hits(), 0, "nothing refused reached the origin");
    assert!(record_files(dir.path()).is_empty());

    // HTTP/1.0 has no Host to require: served.
    let (status, _) = raw(&proxy, b"GET /ok HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);

    let innocent = send(
        &proxy,
        Request::get("/static/evil.js").header("host", "victim.example"),
        "",
    )
    .await;
    assert!(!innocent.hit(), "{}", innocent.cache_status());
    assert!(
        innocent.body.starts_with(b"n=2 path=/static/evil.js "),
        "{:?}",
        innocent.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_what_is_fetched_so_client_hosts_share_one_entry() {
    let origin = reflecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);
    for host in ["a.example", "b.example", "B.EXAMPLE:8080", "localhost"] {
        let got = send(&proxy, Request::get("/shared.css").header("host", host), "").await;
        assert_eq!(got.status, 200);
        assert!(got.body.starts_with(b"n=1 path=/shared.css "), "{host}");
    }
    assert_eq!(origin.hits(), 1, "one fetch for four Host values");
    assert_eq!(record_files(dir.path()).len(), 1, "one entry on disk");
    assert_eq!(content_files(dir.path()).len(), 1);

    // A second proxy on the same directory, reached under another name, shares it.
    drop(proxy);
    let again = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);
    let got = send(
        &again,
        Request::get("/shared.css").header("host", "cdn.example"),
        "",
    )
    .await;
    assert!(got.hit(), "{}", got.cache_status());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_clients_are_not_trusted() {
    let origin = reflecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);

    let attack = Request::get("/home")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=1.2.3.4;host=evil.example")
        .header("x-original-url", "/admin")
        .header("x-rewrite-url", "/admin")
        .header("x-http-method-override", "DELETE")
        .header("x-forwarded-for", "10.9.8.7");
    let poisoned = send(&proxy, attack, "").await;
    assert!(
        poisoned
            .body
            .starts_with(b"n=1 path=/home xfh=- original=- evil=- "),
        "{:?}",
        poisoned.body
    );
    let seen = origin.last_request().headers;
    for name in [
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
    ] {
        assert!(!seen.contains_key(name), "{name} reached the origin");
    }
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http");
    assert_eq!(seen["x-forwarded-for"], "10.9.8.7, 127.0.0.1", "appended");
    assert_eq!(seen["via"], "1.1 http-cache-streaming");
    assert_eq!(poisoned.header("via"), Some("1.1 http-cache-streaming"));

    let innocent = get(&proxy, "/home").await;
    assert!(innocent.hit());
    assert!(!String::from_utf8_lossy(&innocent.body).contains("evil.example"));
    assert_eq!(innocent.header("via"), Some("1.1 http-cache-streaming"));

    // Trusted clients' forwarding headers pass; rewrites never do.
    let other_dir = tempfile::tempdir().unwrap();
    let trusting = start_proxy(
        &origin.url(""),
        other_dir.path(),
        &["--quiet", "--trust-forwarded"],
    );
    let from_a_proxy = Request::get("/trusted")
        .header("x-forwarded-host", "site.example")
        .header("forwarded", "for=192.0.2.1")
        .header("x-original-url", "/admin");
    let got = send(&trusting, from_a_proxy, "").await;
    assert!(
        got.body
            .starts_with(b"n=2 path=/trusted xfh=site.example original=- ")
    );
    assert_eq!(
        origin.last_request().headers["forwarded"],
        "for=192.0.2.1, for=127.0.0.1;proto=http"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_poisoning_probes_leave_the_innocent_response_alone() {
    let origin = reflecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);

    // A fat GET: its body is not keyed, so it is not cached either way.
    let fat = send(&proxy, Request::get("/fat"), "x=evil").await;
    assert!(!fat.hit());
    assert!(String::from_utf8_lossy(&fat.body).contains("length=6"));
    let innocent = get(&proxy, "/fat").await;
    assert!(!innocent.hit(), "{}", innocent.cache_status());
    assert!(
        String::from_utf8_lossy(&innocent.body).contains("length=-"),
        "{:?}",
        innocent.body
    );

    // Path parameters, encoded slashes and dot segments name other keys than `/admin`.
    for path in [
        "/admin;evil",
        "/x%2f..%2fadmin",
        "/static/../admin",
        "/admin?",
    ] {
        let got = get(&proxy, path).await;
        assert_eq!(got.status, 200, "{path}");
    }
    let fetched = origin.hits();
    let admin = get(&proxy, "/admin").await;
    assert!(!admin.hit(), "/admin was never requested as such");
    assert_eq!(origin.hits(), fetched + 1);
    assert!(
        admin.body.ends_with(b"length=-") && admin.body.windows(12).any(|w| w == b"path=/admin ")
    );

    // A Vary the attacker controls keys the attacker's own variant.
    let evil = send(
        &proxy,
        Request::get("/varies").header("x-evil", "pwned"),
        "",
    )
    .await;
    assert!(String::from_utf8_lossy(&evil.body).contains("evil=pwned"));
    let plain = get(&proxy, "/varies").await;
    assert!(!plain.hit(), "{}", plain.cache_status());
    assert!(String::from_utf8_lossy(&plain.body).contains("evil=-"));
    assert!(get(&proxy, "/varies").await.hit());

    // Response splitting: CR LF in a request target never becomes a header.
    let (status, answer) = raw(
        &proxy,
        b"GET /split%0d%0aSet-Cookie:%20evil=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(!answer.to_ascii_lowercase().contains("\r\nset-cookie"));
    let (status, _) = raw(
        &proxy,
        b"GET /split HTTP/1.1\r\nHost: a\r\nX-Evil: a\rSet-Cookie: evil=1\r\n\r\n",
    );
    assert_eq!(status, 400, "a bare CR in a header is refused");
    let innocent = get(&proxy, "/split%0d%0aSet-Cookie:%20evil=1").await;
    assert!(innocent.hit());
    assert_eq!(innocent.header("set-cookie"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_invalidates_nothing() {
    let origin = reflecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);
    assert!(!get(&proxy, "/kept").await.hit());
    let (status, answer) = raw(
        &proxy,
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405, "{answer}");
    assert_eq!(origin.hits(), 1);
    assert!(get(&proxy, "/kept").await.hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_needs_the_token() {
    let origin = reflecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);
    get(&proxy, "/doc").await;
    let purge = |auth: Option<&str>| {
        let mut request = Request::builder().method("PURGE").uri("/doc");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(PURGE_TOKEN),
        Some("Basic dGVzdA=="),
    ] {
        let refused = send(&proxy, purge(auth), "").await;
        assert_eq!(refused.status, 401, "{auth:?}");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    }
    assert!(get(&proxy, "/doc").await.hit(), "still stored");
    let bearer = format!("Bearer {PURGE_TOKEN}");
    let purged = send(&proxy, purge(Some(&bearer)), "").await;
    assert_eq!(purged.status, 200);
    let again = send(&proxy, purge(Some(&bearer)), "").await;
    assert_eq!(again.status, 404, "nothing stored any more");
    let dir_name = dir.path().to_str().unwrap();
    for reply in [&purged, &again] {
        assert!(!String::from_utf8_lossy(&reply.body).contains(dir_name));
    }
    assert!(!get(&proxy, "/doc").await.hit());
    assert_eq!(origin.hits(), 2, "no PURGE was forwarded");

    // Without a token, purging is off.
    let args = ["--upstream", &origin.url(""), "--cache-dir", dir_name];
    let closed = spawn_proxy(&args, &[]).unwrap();
    assert_eq!(send(&closed, purge(Some(&bearer)), "").await.status, 405);
    assert!(get(&closed, "/doc").await.hit());
}

#[test]
fn the_proxy_has_no_private_mode_and_no_open_purge() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    for flag in ["--private", "--allow-purge"] {
        let args = ["--upstream", "http://127.0.0.1:1", "--cache-dir", dir, flag];
        let refused = spawn_proxy(&args, &[]).err().expect("refused");
        assert!(refused.contains("exit status: 2"), "{refused}");
        assert!(refused.contains(flag), "{refused}");
    }
}

/// The permission bits of every file and directory under `dir`.
#[cfg(unix)]
fn modes_under(dir: &std::path::Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            found.push((
                path.display().to_string(),
                meta.permissions().mode() & 0o7777,
            ));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_files_are_private_and_no_symlink_is_followed() {
    use std::os::unix::fs::PermissionsExt as _;
    let origin = reflecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Under the most permissive umask there is.
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "umask 000 && exec \"$@\"", "sh"])
        .arg(proxy_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--quiet",
            "--upstream",
            &origin.url(""),
        ])
        .arg("--cache-dir")
        .arg(&cache);
    let proxy = spawn_proxy_command(command).unwrap();
    let first = get(&proxy, "/private-doc").await;
    assert!(get(&proxy, "/private-doc").await.hit());
    let modes = modes_under(&cache.join("cache-v2"));
    assert!(modes.len() >= 6, "{modes:?}");
    for (path, mode) in &modes {
        let dir = std::path::Path::new(path).is_dir();
        assert_eq!(*mode, if dir { 0o700 } else { 0o600 }, "{path}");
    }

    // A content file replaced by a symlink (to a file of the same length) is never read
    // through: the entry is dropped and fetched again.
    let content = cache.join("cache-v2/content");
    let name = std::fs::read_dir(&content)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, vec![b'X'; first.body.len()]).unwrap();
    std::fs::remove_file(&name).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &name).unwrap();
    let after = get(&proxy, "/private-doc").await;
    assert!(!after.body.contains(&b'X'), "read through a symlink");
    assert!(!after.hit());
    assert_eq!(origin.hits(), 2);

    // A cache directory every user may write to, or another user's, is refused: requests
    // are still answered, and nothing is stored there.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = if std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n"
    {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        let chowned = std::process::Command::new("chown")
            .args(["65534"])
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(chowned.success());
        theirs
    } else {
        // Root's, when this is not root.
        std::path::PathBuf::from("/usr")
    };
    for (refused, why) in [
        (&open, "writable by every user"),
        (&theirs, "is owned by user"),
    ] {
        let store = http_cache_streaming::StreamingManager::new(refused.clone());
        let error = store.stats().await.unwrap_err();
        assert!(error.to_string().contains(why), "{error}");
        // The proxy says so before it accepts anything, and exits.
        let path = refused.to_str().unwrap();
        let args = ["--upstream", &origin.url(""), "--cache-dir", path];
        let said = spawn_proxy(&args, &[]).err().expect("refused at start-up");
        assert!(said.contains("exit status: 1"), "{said}");
        assert!(said.contains(why), "{said}");
        assert!(!refused.join("cache-v2").exists(), "{}", refused.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_private_cache_stored_in_the_directory_is_not_served() {
    use http_cache_streaming::{HttpCacheOptions, HttpCacheStreamingLayer, StreamingManager};
    let origin = Origin::start(|_, n| {
        Response::builder()
            .header("cache-control", "private, max-age=600")
            .body(AxumBody::from(format!("private page #{n}")))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A client's private cache that shares (by mistake) the proxy's directory.
    let options = HttpCacheOptions::default().shared(false);
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let mut private = tower::ServiceBuilder::new()
        .layer(HttpCacheStreamingLayer::with_options(manager, options))
        .service(client());
    let request = Request::get(origin.url("/account"))
        .body(Full::default())
        .unwrap();
    assert!(
        common::send(&mut private, request)
            .await
            .cache_status()
            .contains("stored")
    );
    eventually("stored", || record_files(dir.path()).len() == 1).await;

    let proxy = start_proxy(&origin.url(""), dir.path(), &["--quiet"]);
    let innocent = get(&proxy, "/account").await;
    assert!(!innocent.hit(), "{}", innocent.cache_status());
    assert_eq!(innocent.body, "private page #2");
}
