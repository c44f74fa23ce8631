//! Fleet fills for the proxy: the peer listener (`--fleet-listen`) that serves this node's
//! fills to the others, and the client it asks them with.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Empty;
use http_cache_streaming::storage::BoxFuture;
use http_cache_streaming::{Error as CacheError, HttpStreamingCache, PeerClient, StreamingBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::Error;

/// Asks peers over plain HTTP (they are on the fleet's own network; both sides prove the
/// secret).
#[derive(Debug)]
pub(crate) struct Peers {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Peers {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        Peers {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl PeerClient for Peers {
    fn get(
        &self,
        url: String,
        headers: HeaderMap,
    ) -> BoxFuture<'static, http_cache_streaming::Result<Response<StreamingBody>>> {
        let client = self.client.clone();
        Box::pin(async move {
            let mut request = Request::get(&url)
                .body(Empty::new())
                .map_err(|e| CacheError::other(http_cache_streaming::ErrorKind::InvalidInput, e))?;
            *request.headers_mut() = headers;
            let response = client
                .request(request)
                .await
                .map_err(|e| CacheError::other(http_cache_streaming::ErrorKind::Io, e))?;
            Ok(response.map(StreamingBody::pass))
        })
    }
}

/// Binds the peer listener (before the cache is made: its address goes into the leases).
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    Ok(tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--fleet-listen {addr}: {e}"))?)
}

/// The address peers reach this node at: `--fleet-advertise`, or the bound address.
pub(crate) fn advertise(given: Option<&str>, bound: SocketAddr) -> Result<String, Error> {
    match given {
        Some(url) => Ok(url.trim_end_matches('/').to_owned()),
        None if bound.ip().is_unspecified() => Err(format!(
            "--fleet-listen {bound} is every address: say which one peers reach with \
             --fleet-advertise http://HOST:PORT"
        )
        .into()),
        None => Ok(format!("http://{bound}")),
    }
}

/// Serves this node's fills to its peers on `listener`, on a task of its own, within the
/// clients' limits (the fleet's network is a network).
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    cache: HttpStreamingCache,
    limits: crate::clients::ClientLimits,
) {
    // Each fill a peer asks for is a connection of its own, and a refused one reads as a
    // dead holder: peers (which prove the secret) share the slots with no cap of their own.
    let gate =
        crate::connections::Gate::new(limits.max_connections, limits.max_connections, "fleet");
    crate::admin::serve_on(listener, gate, limits, move |request| {
        let cache = cache.clone();
        async move { cache.serve_peer(&request).await }
    });
}

/// The client peers are asked with, shared.
pub(crate) fn peers() -> Arc<dyn PeerClient> {
    Arc::new(Peers::new())
}
