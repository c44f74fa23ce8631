//! The admin listener: `/metrics` in the Prometheus text format, `/stats` as JSON and
//! `/healthz`, on an address of its own (loopback unless `--admin-allow-remote`).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use http_cache_streaming::{CacheStats, HttpStreamingCache};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Error;

/// What the admin endpoints read.
#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) cache: HttpStreamingCache,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) max_size: u64,
}

/// The counters the cache and the proxy count, shown at zero before their first count so
/// that dashboards and alerts find every series from the start.
const COUNTERS: [&str; 7] = [
    "http_cache_streaming_hits_total",
    "http_cache_streaming_misses_total",
    "http_cache_streaming_stale_served_total",
    "http_cache_streaming_revalidations_total",
    "http_cache_streaming_errors_total",
    "http_cache_streaming_evictions_total",
    "http_cache_streaming_fleet_purges_applied_total",
];

/// Installs the Prometheus recorder the cache's counters go to.
pub(crate) fn recorder() -> Result<PrometheusHandle, Error> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    for name in COUNTERS {
        metrics::counter!(name).increment(0);
    }
    for source in ["cache", "upstream"] {
        metrics::counter!("http_cache_proxy_response_bytes_total", "source" => source).increment(0);
        metrics::counter!("http_cache_proxy_responses_total", "source" => source).increment(0);
    }
    Ok(handle)
}

/// Binds the admin listener and serves it on a task of its own.
pub(crate) async fn serve(
    addr: SocketAddr,
    allow_remote: bool,
    admin: Admin,
) -> Result<SocketAddr, Error> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "--admin-listen {addr} is not a loopback address: the admin endpoints would be \
             open to the network (add --admin-allow-remote if that is meant)"
        )
        .into());
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--admin-listen {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    serve_on(listener, move |request| {
        let admin = admin.clone();
        async move { admin.answer(&request).await }
    });
    Ok(bound)
}

/// Serves `answer` to every connection `listener` accepts, on tasks of their own: the
/// internal listeners (admin, fleet), which only operators and peers reach.
pub(crate) fn serve_on<A, F, B>(listener: tokio::net::TcpListener, answer: A)
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let answered = answer(request);
                    async move { Ok::<_, Infallible>(answered.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

impl Admin {
    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != http::Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match request.uri().path() {
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/metrics" => {
                if let Ok(stats) = self.cache.stats().await {
                    self.gauges(&stats);
                }
                let text = self.metrics.render();
                reply(StatusCode::OK, "text/plain; version=0.0.4", text)
            }
            "/stats" => match self.cache.stats().await {
                Ok(stats) => reply(StatusCode::OK, "application/json", self.json(&stats)),
                Err(error) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("the store cannot be read: {error}\n"),
                ),
            },
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "/metrics, /stats, /healthz\n".into(),
            ),
        }
    }

    /// The store's state as gauges, read when they are scraped.
    fn gauges(&self, stats: &CacheStats) {
        metrics::gauge!("http_cache_streaming_store_bytes").set(stats.store.content_bytes as f64);
        metrics::gauge!("http_cache_streaming_store_max_bytes").set(self.max_size as f64);
        metrics::gauge!("http_cache_streaming_store_entries").set(stats.store.entries as f64);
        metrics::gauge!("http_cache_streaming_fills_in_flight").set(stats.fills_in_flight as f64);
    }

    fn json(&self, stats: &CacheStats) -> String {
        let value = serde_json::json!({
            "hits": stats.hits,
            "misses": stats.misses,
            "stale_served": stats.stale_served,
            "revalidations": stats.revalidations,
            "errors": stats.errors,
            "fills_in_flight": stats.fills_in_flight,
            "store": {
                "entries": stats.store.entries,
                "content_files": stats.store.content_files,
                "content_bytes": stats.store.content_bytes,
                "max_bytes": self.max_size,
                "evictions": stats.store.evictions,
                "fleet_purges_applied": stats.store.fleet_purges_applied,
            },
        });
        format!("{value}\n")
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
