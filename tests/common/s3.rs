//! A real S3 API for the tests: the one `HCS_S3_ENDPOINT` names, or else `moto_server`
//! (PyPI's `moto[server]`, an S3 emulator) started on loopback, installed on first use into
//! a virtual environment under the temp directory.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// The variable naming an S3 API to use instead of starting one.
pub const ENDPOINT: &str = "HCS_S3_ENDPOINT";

/// The credentials and region a proxy of the tests reads from its environment.
pub const PROXY_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];

pub fn endpoint() -> String {
    if let Ok(endpoint) = std::env::var(ENDPOINT) {
        return endpoint;
    }
    static MOTO: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MOTO.get_or_init(start_moto).clone()
}

/// Starts `moto_server` on a free loopback port (installing it first if need be) and returns
/// its URL once it answers. It stops when this test process ends: it is run by a shell that
/// kills it when its standard input, a pipe this process holds, closes.
fn start_moto() -> String {
    let venv = std::env::temp_dir().join("http-cache-streaming-moto");
    let server = venv.join("bin").join("moto_server");
    if !server.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .and_then(|_| {
                Command::new(venv.join("bin").join("pip"))
                    .args(["install", "--quiet", "moto[server]"])
                    .status()
            });
        assert!(
            made.as_ref().is_ok_and(|status| status.success()),
            "these tests need an S3 API: installing moto_server into {} failed ({made:?}); \
             set {ENDPOINT} to one instead",
            venv.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let script = format!(
        "'{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & server=$!; read _; kill $server",
        server.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh starts moto_server");
    // The pipe stays open for as long as this process lives.
    std::mem::forget(child);
    let url = format!("http://127.0.0.1:{port}");
    // A Python server importing a large library: seconds on a busy machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "moto_server did not start on {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    url
}

/// A client of `bucket` at `endpoint`, as a node of a fleet would make one.
pub fn bucket(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap(),
    )
}

/// Creates a fresh bucket for one test and returns its name.
pub async fn new_bucket(endpoint: &str, test: &str) -> String {
    let name = format!(
        "{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let request = http::Request::put(format!("{endpoint}/{name}"))
        .body(http_body_util::Full::default())
        .unwrap();
    let created = tower::ServiceExt::oneshot(super::client(), request)
        .await
        .unwrap();
    assert!(created.status().is_success(), "bucket {name}: {created:?}");
    name
}
