//! The admin listener: `/metrics` in the Prometheus text format, `/stats` as JSON and
//! `/healthz`, and behind the purge token `POST /purge` (tags) and `GET /entries` (what is
//! stored), on an address of its own (loopback unless `--admin-allow-remote`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use http_cache_streaming::{CacheStats, Counter, ErrorKind, HttpStreamingCache};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Error;
use crate::clients::{ClientLimits, Watched};
use crate::connections::{Activity, Gate, Tracked, within_bounds};

/// What the admin endpoints read.
#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) cache: HttpStreamingCache,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) max_size: u64,
    /// The purge token: `POST /purge` with it purges tags; without one, purging is off.
    pub(crate) purge_token: Option<Arc<str>>,
}

/// Installs the Prometheus recorder the cache's counters go to.
pub(crate) fn recorder() -> Result<PrometheusHandle, Error> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    // Every counter at zero before its first count, so that dashboards and alerts find
    // every series from the start.
    for counter in Counter::ALL {
        if counter == Counter::OriginRequests {
            for cause in Counter::ORIGIN_CAUSES {
                metrics::counter!(counter.name(), "cause" => cause).increment(0);
            }
        } else {
            metrics::counter!(counter.name()).increment(0);
        }
    }
    for listener in ["clients", "admin", "fleet"] {
        let labels = [("listener", listener), ("reason", "per-client")];
        metrics::counter!("http_cache_proxy_connections_refused_total", &labels).increment(0);
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
    limits: ClientLimits,
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
    // A dashboard or two and a scraper: few connections, each bounded as a client's.
    let gate = Gate::new(ADMIN_CONNECTIONS, ADMIN_CONNECTIONS / 4, "admin");
    serve_on(listener, gate, limits, move |request| {
        let admin = admin.clone();
        async move { admin.answer(&request).await }
    });
    Ok(bound)
}

/// Connections the admin listener serves at once (a quarter of them from one client).
const ADMIN_CONNECTIONS: usize = 64;

/// Serves `answer` to every connection `listener` accepts, on tasks of their own: the
/// internal listeners (admin, fleet), which operators and peers reach, bounded as the
/// clients' listener is (`gate`'s slots, the header, idle and send timeouts of `limits`).
pub(crate) fn serve_on<A, F, B>(
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
    limits: ClientLimits,
    answer: A,
) where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = Arc::new(crate::connections_builder(&limits));
    tokio::spawn(async move {
        loop {
            let Some(slot) = gate.slot().await else {
                return;
            };
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let Some(admitted) = gate.admit(peer.ip(), slot) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (answer, connection) = (answer.clone(), Arc::clone(&connection));
            tokio::spawn(async move {
                let activity = Activity::new();
                let in_flight = Arc::clone(&activity);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let begun = in_flight.begin();
                    let answered = answer(request);
                    async move { Ok::<_, Infallible>(answered.await.map(|b| Tracked::new(b, begun))) }
                });
                let stream = Watched::new(stream, limits);
                let served = connection.serve_connection(TokioIo::new(stream), service);
                let (first, idle) = (limits.header_timeout, limits.idle_timeout);
                let _ = within_bounds(served, &activity, first, idle).await;
                drop(admitted);
            });
        }
    });
}

impl Admin {
    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() == http::Method::POST && request.uri().path() == "/purge" {
            return self.purge(request).await;
        }
        if request.method() == http::Method::GET && request.uri().path() == "/entries" {
            return self.entries(request).await;
        }
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
                "/metrics, /stats, /healthz, /entries, POST /purge\n".into(),
            ),
        }
    }

    /// `POST /purge` with the purge token and a `Surrogate-Key` field: the tags it lists
    /// are purged, and the answer is `{"purged": N}`.
    async fn purge(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(refused) = self.refused(request) {
            tracing::info!(status = refused.status().as_u16(), "admin purge");
            return refused;
        }
        if !request.headers().contains_key("surrogate-key") {
            let message = "a Surrogate-Key field lists the tags to purge\n".into();
            return reply(StatusCode::BAD_REQUEST, "text/plain", message);
        }
        match crate::clients::purge_tags(&self.cache, request.headers()).await {
            Ok((purged, _)) => {
                let body = serde_json::json!({ "purged": purged });
                reply(StatusCode::OK, "application/json", format!("{body}\n"))
            }
            Err((status, message)) => reply(status, "text/plain", message),
        }
    }

    /// The answer to a request that does not show the purge token; `None` when it does.
    fn refused(&self, request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let Some(token) = self.purge_token.as_deref() else {
            let message = "off: no --purge-token\n".into();
            return Some(reply(StatusCode::NOT_FOUND, "text/plain", message));
        };
        if crate::clients::shows_token(request.headers(), token) {
            return None;
        }
        let message = "a purge token is needed\n".into();
        let mut response = reply(StatusCode::UNAUTHORIZED, "text/plain", message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        Some(response)
    }

    /// `GET /entries` with the purge token: `?path=/p` what is stored for a path (its
    /// variants with it), `?tag=t` or `?prefix=/p` a page of the entries carrying a tag or
    /// under a prefix (`&limit=` up to 1000, 100 by default; `&after=` the `next` of the
    /// page before). JSON. The values are percent-decoded (`+` is a space): a path as
    /// requested, itself with `%XX`, is given with its `%` as `%25`.
    async fn entries(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(refused) = self.refused(request) {
            tracing::info!(status = refused.status().as_u16(), "admin entries");
            return refused;
        }
        let query = request.uri().query().unwrap_or_default();
        let asked: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        let limit = asked
            .get("limit")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(100)
            .clamp(1, 1000);
        let after = asked.get("after").map(String::as_str);
        let found = match (asked.get("path"), asked.get("tag"), asked.get("prefix")) {
            (Some(path), None, None) if path.starts_with('/') => {
                // Keyed as the proxy keys it: the upstream and the path.
                let url = format!("http://purge{path}");
                self.cache
                    .inspect(&url)
                    .await
                    .map(|entry| serde_json::json!({ "entry": entry }))
            }
            (None, Some(tag), None) => self
                .cache
                .entries_tagged(tag, after, limit)
                .await
                .map(|page| serde_json::json!(page)),
            (None, None, Some(prefix)) => self
                .cache
                .entries_under(prefix, after, limit)
                .await
                .map(|page| serde_json::json!(page)),
            _ => {
                let message = "one of ?path=/…, ?tag=… or ?prefix=…\n".into();
                return reply(StatusCode::BAD_REQUEST, "text/plain", message);
            }
        };
        let status = match &found {
            Ok(_) => 200,
            Err(error) if error.kind() == ErrorKind::InvalidInput => 400,
            Err(_) => 503,
        };
        tracing::info!(query = %query, status, "admin entries");
        match found {
            Ok(json) => reply(StatusCode::OK, "application/json", format!("{json}\n")),
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                reply(StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n"))
            }
            Err(error) if error.kind() == ErrorKind::Busy => {
                let mut busy = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{error}\n"),
                );
                busy.headers_mut()
                    .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                busy
            }
            Err(error) => {
                tracing::error!(%error, "admin entries");
                let message = "the store cannot be read\n".into();
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", message)
            }
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
        let mut value = serde_json::to_value(stats).unwrap_or_default();
        if let Some(store) = value.get_mut("store").and_then(|s| s.as_object_mut()) {
            store.insert("max_bytes".into(), self.max_size.into());
        }
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
