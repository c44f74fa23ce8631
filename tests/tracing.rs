//! What the cache tells `tracing` (the default `tracing` feature): a span per lookup and per
//! stored body, and events for what it does.
#![cfg(feature = "tracing")]

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use http_cache_streaming::{HttpCacheStreamingLayer, StreamingManager};
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing_subscriber::fmt::format::FmtSpan;

/// Everything the subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn lookups_and_stores_are_spans() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let dir = tempfile::tempdir().unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let manager = StreamingManager::new(dir.path().to_path_buf());
            let mut service = ServiceBuilder::new()
                .layer(HttpCacheStreamingLayer::new(manager))
                .service_fn(|_request: Request<Full<Bytes>>| async {
                    let response = Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(Full::new(Bytes::from("traced")))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
            for _ in 0..2 {
                let request = Request::get("http://example.com/t")
                    .body(Full::default())
                    .unwrap();
                let response = service.ready().await.unwrap().call(request).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
        });
    });
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(output.contains("http_cache.lookup"), "{output}");
    assert!(output.contains("key=GET:http://example.com/t"), "{output}");
    assert!(output.contains("http_cache.store"), "{output}");
    assert!(
        output.contains("stored digest="),
        "the store's event: {output}"
    );
}
