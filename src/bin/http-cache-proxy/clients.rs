//! What the proxy does for and against clients before the cache: connections that stall or
//! idle are dropped, requests that name no valid site are refused, forwarding headers are
//! set, and `PURGE` with the token removes what is stored.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_cache_streaming::{HttpCacheStreaming, StreamingBody, is_valid_authority};

use crate::upstream::Upstream;

/// What one client may hold, so that slow or many clients cannot take the proxy down.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientLimits {
    /// Time to send a request's headers (HTTP/1): nginx's `client_header_timeout`.
    pub(crate) header_timeout: Duration,
    /// A connection with nothing read or written for this long is closed (keep-alive idle).
    pub(crate) idle_timeout: Duration,
    /// A client that takes no byte of a response for this long is dropped (nginx's
    /// `send_timeout`): what it was sent is abandoned like any response whose client left.
    pub(crate) send_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// Connections one client address (an IPv6 /64) holds at once; more are closed.
    pub(crate) max_connections_per_client: usize,
    /// Bytes of request headers (as written: names, values, `: ` and CRLF) above which a
    /// request is answered `431`.
    pub(crate) max_request_headers: usize,
}

/// A client connection that is dropped when the client takes no byte of a response for
/// `send_timeout`, or when nothing is read or written for `idle_timeout`: a slow or silent
/// client holds neither a connection slot nor the response being sent to it for ever.
pub(crate) struct Watched<S> {
    stream: S,
    limits: ClientLimits,
    /// Armed when a write finds the client's window full; disarmed by any write.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Reset by every byte read or written.
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<S> Watched<S> {
    pub(crate) fn new(stream: S, limits: ClientLimits) -> Self {
        Watched {
            stream,
            limits,
            stalled: None,
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        }
    }

    fn active(&mut self) {
        let deadline = tokio::time::Instant::now() + self.limits.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    fn timed_out(what: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned())
    }

    /// What a write to the client came to, with the send timeout applied.
    fn written(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future as _;
        use std::task::Poll;
        match written {
            Poll::Ready(Ok(n)) => {
                self.stalled = None;
                self.active();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let send_timeout = self.limits.send_timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Self::timed_out("client takes no bytes")));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future as _;
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.active();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idle.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(Self::timed_out("client idle")))
            }
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write(cx, data);
        self.written(cx, written)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Removes what the cache holds for the request's path, for a client that shows the purge
/// token: `200` when something was stored, `404` when nothing was, `401` without the token,
/// `405` when purging is off. With a `Surrogate-Key` field, removes every entry carrying
/// one of the tags it lists instead (whatever the path), answering `200` and how many
/// went. Failures are logged; the reply names no local path.
pub(crate) async fn purge<B>(
    service: &HttpCacheStreaming<Upstream>,
    request: &Request<B>,
    token: Option<&str>,
) -> Response<StreamingBody> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Some(token) = token else {
        let mut response = text_response(StatusCode::METHOD_NOT_ALLOWED, "purging is off\n");
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE"),
        );
        return response;
    };
    if !shows_token(request.headers(), token) {
        tracing::info!(%path, status = 401, "PURGE");
        return needs_token();
    }
    if request.headers().contains_key(SURROGATE_KEY) {
        return match purge_tags(service.cache(), request.headers()).await {
            Ok((purged, tags)) => {
                text_response(StatusCode::OK, &format!("purged {purged} tagged {tags}\n"))
            }
            Err((status, message)) => text_response(status, &message),
        };
    }
    // The key names the upstream and the path, whatever the URL's host here.
    let url = format!("http://purge{path}");
    let (status, message) = match service.cache().purge(&url).await {
        Ok(true) => (StatusCode::OK, format!("purged {path}\n")),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            format!("nothing stored for {path}\n"),
        ),
        Err(error) => {
            tracing::error!(%path, %error, "PURGE failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not purge {path}\n"),
            )
        }
    };
    tracing::info!(%path, status = status.as_u16(), "PURGE");
    text_response(status, &message)
}

/// The field a tag purge lists its tags in, as Fastly's API and Varnish's xkey take them.
const SURROGATE_KEY: &str = "surrogate-key";

/// The most tags one purge request names.
const MAX_PURGED_TAGS: usize = 256;

/// Purges the tags the `Surrogate-Key` fields of a purge request list (separated by spaces
/// or commas): how many entries went and the tags, or the status and text to answer.
/// Logged.
pub(crate) async fn purge_tags(
    cache: &http_cache_streaming::HttpStreamingCache,
    headers: &http::HeaderMap,
) -> Result<(u64, String), (StatusCode, String)> {
    let mut tags: Vec<&str> = Vec::new();
    for value in headers.get_all(SURROGATE_KEY) {
        let Ok(text) = value.to_str() else {
            return Err((StatusCode::BAD_REQUEST, "a tag is visible ASCII\n".into()));
        };
        tags.extend(text.split([' ', '\t', ',']).filter(|tag| !tag.is_empty()));
    }
    tags.sort_unstable();
    tags.dedup();
    if tags.len() > MAX_PURGED_TAGS {
        let message = format!("at most {MAX_PURGED_TAGS} tags a purge\n");
        return Err((StatusCode::BAD_REQUEST, message));
    }
    let listed = tags.join(" ");
    match cache.purge_tags(tags).await {
        Ok(purged) => {
            tracing::info!(tags = %listed, purged, status = 200, "PURGE");
            Ok((purged, listed))
        }
        Err(error) if error.kind() == http_cache_streaming::ErrorKind::InvalidInput => {
            tracing::info!(status = 400, %error, "PURGE");
            Err((StatusCode::BAD_REQUEST, format!("{error}\n")))
        }
        Err(error) => {
            tracing::error!(tags = %listed, %error, "PURGE failed");
            let message = format!("could not purge {listed}\n");
            Err((StatusCode::INTERNAL_SERVER_ERROR, message))
        }
    }
}

/// Whether a request's `Authorization` field shows `token` (as a bearer token).
pub(crate) fn shows_token(headers: &http::HeaderMap, token: &str) -> bool {
    let shown = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    shown.is_some_and(|shown| same_secret(shown, token.as_bytes()))
}

/// The `401` for a purge without the token.
pub(crate) fn needs_token() -> Response<StreamingBody> {
    let mut response = text_response(StatusCode::UNAUTHORIZED, "a purge token is needed\n");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether `shown` is the secret, compared in time that depends on neither (digests of both,
/// compared byte by byte to the end).
fn same_secret(shown: &[u8], secret: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(shown), Sha256::digest(secret));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

pub(crate) fn text_response(status: StatusCode, message: &str) -> Response<StreamingBody> {
    let mut response = Response::new(StreamingBody::from_bytes(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A request the proxy answers itself, before the cache: `CONNECT` (`405`: it tunnels
/// nothing), request headers over `max_headers` bytes (`431`: an origin that refuses them
/// would answer an error of its own, which a cache must not make everyone's), and a request
/// whose site is not a valid `host[:port]` or is named twice, or an HTTP/1.1 request with
/// no `Host` (`400`, RFC 9112 §3.2).
pub(crate) fn refuse<B>(
    request: &Request<B>,
    max_headers: usize,
) -> Option<Response<StreamingBody>> {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > max_headers {
        return Some(text_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        ));
    }
    if request.method() == http::Method::CONNECT {
        return Some(text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported\n",
        ));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let authority = request.uri().authority().map(|a| a.as_str().as_bytes());
    let why = match (hosts.next(), hosts.next(), authority) {
        (_, Some(_), _) => Some("more than one Host header"),
        (_, _, Some(authority)) if !is_valid_authority(authority) => Some("invalid authority"),
        (Some(host), None, _) if !is_valid_authority(host.as_bytes()) => Some("invalid Host"),
        (None, None, None) if request.version() == http::Version::HTTP_11 => Some("no Host"),
        _ => None,
    };
    why.map(|why| text_response(StatusCode::BAD_REQUEST, &format!("{why}\n")))
}

/// This proxy in `Via` (RFC 9110 §7.6.3): it speaks HTTP/1.1 to the upstream.
pub(crate) const VIA_1_1: &str = "1.1 http-cache-streaming";

/// Headers a client may send to make an upstream serve another path or method than the one
/// the key names: never forwarded.
const REWRITES: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers in which proxies before this one describe the client's request: forwarded only
/// from clients trusted to be such proxies (`--trust-forwarded`).
const FORWARDING: [&str; 8] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-host",
];

/// What this proxy says of one connection's client upstream, worked out once per
/// connection: the peer for `X-Forwarded-For` and `Forwarded`.
#[derive(Clone)]
pub(crate) struct Peer {
    x_forwarded_for: HeaderValue,
    forwarded: HeaderValue,
}

impl Peer {
    pub(crate) fn new(peer: SocketAddr, proto: &str) -> Self {
        let ip = peer.ip();
        let node = if ip.is_ipv6() {
            format!("for=\"[{ip}]\";proto={proto}")
        } else {
            format!("for={ip};proto={proto}")
        };
        let value = |text: String| {
            HeaderValue::try_from(text).expect("an address and a scheme are valid header text")
        };
        Peer {
            x_forwarded_for: value(ip.to_string()),
            forwarded: value(node),
        }
    }
}

/// Says who asked and through what: `Via` with the client's protocol, the peer appended to
/// `X-Forwarded-For` and `Forwarded`; drops what an untrusted client claims about itself.
pub(crate) fn forwarded_for<B>(request: &mut Request<B>, peer: &Peer, trusted: bool) {
    let via = HeaderValue::from_static(match request.version() {
        http::Version::HTTP_09 => "0.9 http-cache-streaming",
        http::Version::HTTP_10 => "1.0 http-cache-streaming",
        http::Version::HTTP_2 => "2 http-cache-streaming",
        http::Version::HTTP_3 => "3 http-cache-streaming",
        _ => "1.1 http-cache-streaming",
    });
    let headers = request.headers_mut();
    // Most requests carry none of them: one pass over what they carry finds out.
    let dropped = |name: &HeaderName| {
        REWRITES.contains(&name.as_str()) || (!trusted && FORWARDING.contains(&name.as_str()))
    };
    if headers.keys().any(dropped) {
        for name in REWRITES {
            headers.remove(name);
        }
        if !trusted {
            for name in FORWARDING {
                headers.remove(name);
            }
        }
    }
    let appended = [
        (header::VIA, via),
        (X_FORWARDED_FOR, peer.x_forwarded_for.clone()),
        (header::FORWARDED, peer.forwarded.clone()),
    ];
    for (name, value) in appended {
        // A value before that is not text is replaced, not extended.
        let joined = match headers.get(&name).filter(|before| before.to_str().is_ok()) {
            Some(before) => {
                let mut joined = before.as_bytes().to_vec();
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(value.as_bytes());
                HeaderValue::from_bytes(&joined).ok()
            }
            None => Some(value),
        };
        if let Some(value) = joined {
            headers.insert(name, value);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
