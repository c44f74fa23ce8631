//! No client holds more than its share of `http-cache-proxy`: connection slots per client
//! address, a first request within the header timeout (HTTP/1.1, HTTP/2 and a TLS
//! handshake left half done), no HTTP/2 connection kept alive by PINGs alone, and the same
//! bounds on the admin listener, which shares its code with the fleet's. Each test asserts
//! what an innocent client, from another address, meanwhile receives.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A connection to `addr` from the loopback address `from` (127.0.0.0/8 is all this
/// machine's): another client, as the proxy counts them.
fn connect_from(from: &str, addr: &str) -> TcpStream {
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    let remote: SocketAddr = addr.parse().unwrap();
    let connected = tokio::runtime::Handle::current().block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(local)?;
        socket.connect(remote).await?.into_std()
    });
    let stream = connected.unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Whether the proxy closes `stream` within `PATIENCE`, reading (and dropping) what it
/// sends meanwhile, and doing `meanwhile` between reads.
fn closed_within_patience(
    stream: &mut TcpStream,
    mut meanwhile: impl FnMut(&mut TcpStream),
) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
        meanwhile(stream);
    }
    false
}

/// A GET of `path` on a connection of its own from `from`: the status line.
fn get_from(from: &str, addr: &str, path: &str) -> String {
    let mut stream = connect_from(from, addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_its_share_of_connections_and_no_more() {
    let origin = numbered_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(
        &origin.url(""),
        dir.path(),
        &[
            "--max-connections-per-client",
            "4",
            "--max-connections",
            "16",
        ],
    );
    let addr = proxy.addr.clone();
    tokio::task::spawn_blocking(move || {
        // The attacker opens connections and sends nothing.
        let mut held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", &addr)).collect();
        // Give the proxy time to take them in (an accepted connection counts).
        std::thread::sleep(Duration::from_millis(300));
        let mut fifth = connect_from("127.0.0.1", &addr);
        assert!(
            closed_within_patience(&mut fifth, |_| {}),
            "the fifth connection of one client was kept"
        );
        // Another client is served meanwhile.
        assert_eq!(get_from("127.0.0.2", &addr, "/page"), "HTTP/1.1 200 OK");
        // Once one of the attacker's goes, it may open one again.
        drop(held.pop());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(get_from("127.0.0.1", &addr, "/page"), "HTTP/1.1 200 OK");
    })
    .await
    .unwrap();
}

/// An HTTP/2 connection's preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// An HTTP/2 PING frame.
const H2_PING: &[u8] = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_is_closed_however_busy_it_looks() {
    let origin = numbered_origin().await;
    let dir = tempfile::tempdir().unwrap();
    // An idle timeout that PINGs every 200 ms would keep resetting.
    let proxy = start_proxy(
        &origin.url(""),
        dir.path(),
        &["--header-timeout", "1s", "--idle-timeout", "2s"],
    );
    let addr = proxy.addr.clone();
    tokio::task::spawn_blocking(move || {
        // HTTP/1.1: nothing at all.
        let mut silent = connect_from("127.0.0.1", &addr);
        assert!(
            closed_within_patience(&mut silent, |_| {}),
            "HTTP/1.1, silent"
        );
        // HTTP/2: a preface, then only PINGs.
        let mut pinging = connect_from("127.0.0.1", &addr);
        pinging.write_all(H2_PREFACE).unwrap();
        let ping = |stream: &mut TcpStream| {
            let _ = stream.write_all(H2_PING);
        };
        assert!(
            closed_within_patience(&mut pinging, ping),
            "HTTP/2, PINGs only"
        );
        // Meanwhile, and after, another client is served.
        assert_eq!(get_from("127.0.0.2", &addr, "/page"), "HTTP/1.1 200 OK");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_left_half_done_is_closed() {
    let certs = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = common::tls::certificates(certs.path());
    let origin = numbered_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--header-timeout",
        "1s",
    ];
    let proxy = start_proxy(&origin.url(""), dir.path(), &args);
    let addr = proxy.addr.clone();
    tokio::task::spawn_blocking(move || {
        // The first bytes of a ClientHello, and no more.
        let mut half = connect_from("127.0.0.1", &addr);
        half.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            .unwrap();
        assert!(closed_within_patience(&mut half, |_| {}));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_clients_bounds() {
    let origin = numbered_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{admin_port}");
    let proxy = start_proxy(
        &origin.url(""),
        dir.path(),
        &["--admin-listen", &admin, "--header-timeout", "1s"],
    );
    let _proxy = proxy;
    tokio::task::spawn_blocking(move || {
        // Unfinished headers: closed after the header timeout.
        let mut slow = connect_from("127.0.0.1", &admin);
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
            .unwrap();
        assert!(
            closed_within_patience(&mut slow, |_| {}),
            "unfinished headers"
        );
        // One client holds a quarter of its 64 slots at most.
        let held: Vec<TcpStream> = (0..16).map(|_| connect_from("127.0.0.1", &admin)).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut extra = connect_from("127.0.0.1", &admin);
        assert!(closed_within_patience(&mut extra, |_| {}), "past the share");
        assert_eq!(get_from("127.0.0.2", &admin, "/healthz"), "HTTP/1.1 200 OK");
        drop(held);
    })
    .await
    .unwrap();
}
