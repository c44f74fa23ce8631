//! http-cache-tower's streaming layer over http-cache-streaming's store (feature
//! `http-cache`; these tests need `interop-tests`): a miss, a hit from disk, a `304` that freshens, what each side wrote read by
//! the other, and a 256 MiB body in bounded memory.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use http_cache::HttpCacheOptions;
use http_cache_streaming::StreamingManager;
use http_cache_tower::HttpCacheStreamingLayer;
use tower::{Layer, Service, ServiceExt};

/// The origin: `/big` is 256 MiB; `/etag` answers `max-age=0` with an `ETag` and a `304` to
/// its revalidation; the rest `max-age=60`. Counts the requests it answers.
fn origin(
    hits: Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<http_body_util::Either<common::Generated, Full<Bytes>>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let path = request.uri().path().to_owned();
            let response = match path.as_str() {
                "/big" => Response::builder()
                    .header("cache-control", "max-age=60")
                    .header("content-length", 256u64 << 20)
                    .body(http_body_util::Either::Left(common::Generated::new(
                        256 << 20,
                        7,
                    ))),
                "/etag" if request.headers().contains_key("if-none-match") => Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=0")
                    .header("x-revalidated", n.to_string())
                    .body(http_body_util::Either::Right(Full::default())),
                "/etag" => Response::builder()
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=0")
                    .body(http_body_util::Either::Right(Full::new(Bytes::from(
                        "tagged",
                    )))),
                _ => Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(http_body_util::Either::Right(Full::new(Bytes::from(
                        format!("{path} #{n}"),
                    )))),
            };
            Ok(response.unwrap())
        }
    })
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://origin.test{path}"))
        .body(Full::default())
        .unwrap()
}

async fn text<S, B>(service: &mut S, path: &str) -> (StatusCode, http::HeaderMap, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(path))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_cache_towers_layer_misses_hits_and_freshens_over_this_store() {
    let dir = tempfile::tempdir().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let layer = HttpCacheStreamingLayer::with_options(manager.clone(), HttpCacheOptions::default());
    let mut service = layer.layer(origin(hits.clone()));

    let (status, _, miss) = text(&mut service, "/page").await;
    assert_eq!((status, miss.as_str()), (StatusCode::OK, "/page #1"));
    let (_, _, hit) = text(&mut service, "/page").await;
    assert_eq!(hit, "/page #1", "a hit from disk");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let records = std::fs::read_dir(dir.path().join("cache-v2/metadata"))
        .unwrap()
        .count();
    assert_eq!(records, 1, "stored in this crate's layout");

    // A stale entry revalidated: the 304 freshens it (its policy starts again from the
    // 304), the stored body is served.
    text(&mut service, "/etag").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (status, _, body) = text(&mut service, "/etag").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "tagged"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "a miss, then a revalidation"
    );
    let (stored, _) = manager
        .get("GET:http://origin.test/etag")
        .await
        .unwrap()
        .expect("still stored");
    let (_, policy) = manager
        .get("GET:http://origin.test/etag")
        .await
        .unwrap()
        .expect("still stored");
    let age = policy.age(std::time::SystemTime::now());
    assert!(
        age < std::time::Duration::from_secs(1),
        "freshened by the 304: {age:?}"
    );
    assert_eq!(
        stored.into_body().collect().await.unwrap().to_bytes(),
        "tagged"
    );

    // What http-cache-tower stored, this crate's layer serves; and the other way round.
    let ours = http_cache_streaming::HttpCacheStreamingLayer::new(manager.clone());
    let mut ours = ours.layer(origin(hits.clone()));
    let (_, headers, body) = text(&mut ours, "/page").await;
    assert_eq!(body, "/page #1");
    let cache_status = headers["cache-status"].to_str().unwrap();
    assert!(cache_status.contains("hit"), "{cache_status}");
    let (_, _, written) = text(&mut ours, "/ours").await;
    let (_, _, read) = text(&mut service, "/ours").await;
    assert_eq!(
        read, written,
        "http-cache-tower serves what this crate's layer stored"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_body_goes_through_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let manager = StreamingManager::new(dir.path().to_path_buf());
    let layer = HttpCacheStreamingLayer::with_options(manager, HttpCacheOptions::default());
    let mut service = layer.layer(origin(hits.clone()));
    let before = common::rss_kib();
    for round in 0..2 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(get("/big"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let (mut len, mut peak) = (0u64, 0u64);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                len += data.len() as u64;
                peak = peak.max(common::rss_kib());
            }
        }
        assert_eq!(len, 256 << 20, "round {round}");
        let grown = peak.saturating_sub(before) / 1024;
        assert!(
            grown < 96,
            "round {round}: memory grew by {grown} MiB for a 256 MiB body"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the second round is a hit");
}
