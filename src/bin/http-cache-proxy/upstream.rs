//! The inner service: requests to the upstream, over HTTP/1.1, or over TLS with HTTP/2 when
//! the upstream offers it by ALPN.

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Either, Full};
use http_cache_streaming::strip_hop_by_hop;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::Service;

use crate::Error;

/// What the upstream answers: its body, watched for stalls, or an error of the proxy's.
pub(crate) type ProxyBody = Either<Idle, Full<Bytes>>;

/// A client's request body, boxed: a body type the cache can make anew (empty), so that a
/// request whose revalidation the origin answers with a stray `304` is sent again.
pub(crate) type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// What hyper buffers per connection, each way.
pub(crate) const CONNECTION_BUFFER: usize = 64 * 1024;

/// The upstream: where requests go, and how long it has to answer.
#[derive(Clone)]
pub(crate) struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

impl Upstream {
    /// A client of `upstream` (`http://` or `https://`), trusting the system's roots and
    /// those in `extra_ca`.
    pub(crate) fn new(
        upstream: &Uri,
        extra_ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let (Some(scheme), Some(authority)) = (upstream.scheme(), upstream.authority()) else {
            return Err("the upstream needs a scheme and a host".into());
        };
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = extra_ca {
            use rustls::pki_types::pem::PemObject as _;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Request bodies go upstream as they come, each piece at once (no Nagle delay).
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .http1_max_buf_size(CONNECTION_BUFFER)
            .build(connector);
        Ok(Upstream {
            client,
            scheme: scheme.clone(),
            authority: authority.clone(),
            timeout,
        })
    }

    /// `scheme://authority` of the upstream, lowercased: what cache keys begin with.
    pub(crate) fn base(&self) -> String {
        format!(
            "{}://{}",
            self.scheme,
            self.authority.as_str().to_ascii_lowercase()
        )
    }

    async fn forward(self, request: Request<RequestBody>) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "request target cannot be forwarded",
            );
        };
        parts.uri = uri;
        let client_version = parts.version;
        // The connector picks HTTP/2 by ALPN when the upstream offers it.
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        let sent = self.client.request(Request::from_parts(parts, body));
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // The client's connection speaks its own version, whatever the upstream spoke.
                parts.version = client_version;
                Response::from_parts(parts, Either::Left(Idle::new(body, self.timeout)))
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "upstream unreachable");
                error_response(StatusCode::BAD_GATEWAY, "upstream unreachable")
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "upstream timed out");
                error_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
        }
    }
}

impl Service<Request<RequestBody>> for Upstream {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(request).await) })
    }
}

/// An upstream body that fails when no frame arrives for `timeout`: a stalled upstream
/// does not hold a client (or the cache's writer) forever.
pub(crate) struct Idle {
    inner: Incoming,
    timeout: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Idle {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl hyper::body::Body for Idle {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.timer.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err("upstream body stalled".into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{message}\n"
    )))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The cache key of a request: what is fetched for it (the upstream's scheme and authority,
/// the path and the query), so that the Host a client sends neither splits nor poisons
/// entries, and every proxy in front of the same upstream shares them. HEAD shares GET's.
pub(crate) fn key(
    base: String,
) -> impl Fn(&http::request::Parts) -> String + Send + Sync + 'static {
    move |parts| {
        let method = if parts.method == http::Method::HEAD {
            "GET"
        } else {
            parts.method.as_str()
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{method}:{base}{path}")
    }
}
