//! A node's ask of a peer for its fill of a key, and the peer's answer. Peers
//! authenticate both ways with the secret the fleet shares: the ask carries an HMAC of the
//! key, a time and a nonce (never accepted twice within its window); the answer an HMAC of
//! the key, the nonce and its head ([`PROOF`]), and a trailer sealing its body's digest
//! ([`super::peer_body`]).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};

use super::leases::FleetFills;
use super::peer_body::{CheckedBody, ORIGIN_LENGTH, SealFor, SealingBody, head_seal, head_sealed};
use crate::StreamingBody;
use crate::format::layout::Hash32;
use crate::support::{epoch_millis, is_hex_digit};

/// The request header of a peer's ask: `<ms>.<nonce>.<hmac>`.
pub(crate) const AUTH: HeaderName = HeaderName::from_static("x-http-cache-fill-auth");
/// The answer's proof: the HMAC of the key and the ask's nonce.
pub(crate) const PROOF: HeaderName = HeaderName::from_static("x-http-cache-fill-proof");
/// The origin's status, as the holder sends it (its own status says the fill is served).
pub(crate) const ORIGIN_STATUS: HeaderName = HeaderName::from_static("x-http-cache-fill-status");
/// The path (under a peer's address) that serves fills to peers.
pub const FILL_PATH: &str = "/http-cache-streaming/fill";
/// How far a peer's clock may be from ours for its ask to count.
const ASK_WINDOW: Duration = Duration::from_secs(60);
/// Nonces of asks remembered (those within twice [`ASK_WINDOW`]); past it, asks are refused
/// until old ones go (a fleet asks far fewer than this in two minutes).
const NONCES_REMEMBERED: usize = 1 << 16;
/// The longest key a peer may ask for.
const MAX_KEY: usize = 16 * 1024;

impl FleetFills {
    /// The ask header for `key`, and its nonce.
    fn ask(&self, key: &str) -> (HeaderValue, String) {
        static ASKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let ms = epoch_millis(SystemTime::now()).to_string();
        let n = ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = format!("{ms} {n} {} {key}", std::process::id());
        let nonce = Hash32::of(seed.as_bytes()).to_hex()[..32].to_owned();
        let tag = self
            .secret
            .tag(&[b"ask", key.as_bytes(), ms.as_bytes(), nonce.as_bytes()]);
        let value = format!("{ms}.{nonce}.{tag}");
        (
            HeaderValue::from_str(&value).expect("digits, dots and hex"),
            nonce,
        )
    }

    /// Checks a peer's ask for `key`; its nonce when it holds and was not seen before.
    pub(crate) fn check_ask(&self, key: &str, value: Option<&HeaderValue>) -> Option<String> {
        let value = value?.to_str().ok()?;
        let mut parts = value.split('.');
        let (ms, nonce, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || nonce.len() != 32 || !nonce.bytes().all(is_hex_digit) {
            return None;
        }
        let at: u64 = ms.parse().ok()?;
        let now = epoch_millis(SystemTime::now());
        if now.abs_diff(at) > crate::support::millis(ASK_WINDOW) {
            return None;
        }
        let parts: [&[u8]; 4] = [b"ask", key.as_bytes(), ms.as_bytes(), nonce.as_bytes()];
        if !self.secret.verify(&parts, tag) {
            return None;
        }
        self.first_use(nonce, now).then(|| nonce.to_owned())
    }

    /// Whether `nonce` (of an ask already checked) is used for the first time: an ask
    /// caught on the network and sent again within its window gets nothing.
    fn first_use(&self, nonce: &str, now: u64) -> bool {
        let mut nonces = crate::rt::lock(&self.nonces);
        if nonces.len() >= NONCES_REMEMBERED {
            let window = crate::support::millis(ASK_WINDOW);
            nonces.retain(|_, at| now.saturating_sub(*at) <= 2 * window);
            if nonces.len() >= NONCES_REMEMBERED {
                return false;
            }
        }
        nonces.insert(nonce.to_owned(), now).is_none()
    }

    /// Asks `holder` for its fill of `key`, for a request with `headers`: the response once
    /// its head has arrived with the holder's proof, else why not (ask the origin).
    pub(crate) async fn peer_fill(
        &self,
        holder: &str,
        key: &str,
        headers: &HeaderMap,
    ) -> std::result::Result<Response<StreamingBody>, NoFill> {
        let fleet = self;
        let (ask, nonce) = fleet.ask(key);
        let mut sent = HeaderMap::new();
        // The request's own headers, for the holder to tell whether its response is the
        // variant this request selects.
        // Not its credentials: a response that varies on them is not shared.
        for (name, value) in headers {
            if !NOT_SENT.contains(&name.as_str()) {
                sent.append(name.clone(), value.clone());
            }
        }
        sent.insert(AUTH, ask);
        // The answer's body ends with a trailer that seals it.
        sent.insert(http::header::TE, HeaderValue::from_static("trailers"));
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("key", key)
            .finish();
        let url = format!("{holder}{FILL_PATH}?{query}");
        let answered =
            tokio::time::timeout(Duration::from_secs(10), fleet.client.get(url, sent)).await;
        let response = match answered {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                crate::log::debug_event!(%key, %holder, %error, "the lease's holder did not answer");
                return Err(NoFill::Unreachable);
            }
            Err(_) => return Err(NoFill::Unreachable),
        };
        // The holder sends the origin's status as its own header.
        let status = response
            .headers()
            .get(ORIGIN_STATUS)
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .and_then(|code| http::StatusCode::from_u16(code).ok());
        let sealed = status.is_some_and(|status| {
            let headers = response.headers();
            head_sealed(
                &fleet.secret,
                key,
                &nonce,
                status,
                headers,
                headers.get(PROOF),
            )
        });
        let (Some(status), true, http::StatusCode::OK) = (status, sealed, response.status()) else {
            crate::log::debug_event!(%key, %holder, status = %response.status(), "no fill from the lease's holder (or not sealed)");
            return Err(NoFill::Declined);
        };
        let (mut parts, body) = response.into_parts();
        for name in [PROOF, ORIGIN_STATUS, http::header::TRAILER] {
            parts.headers.remove(name);
        }
        if let Some(length) = parts.headers.remove(ORIGIN_LENGTH) {
            parts.headers.insert(http::header::CONTENT_LENGTH, length);
        }
        parts.status = status;
        let seal = SealFor {
            secret: fleet.secret.clone(),
            key: key.to_owned(),
            nonce,
        };
        Ok(Response::from_parts(
            parts,
            StreamingBody::pass(CheckedBody::new(body, seal)),
        ))
    }
}

/// Why a peer's fill is not streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoFill {
    /// The holder did not answer (it died, or cannot be reached): its lease may be taken.
    Unreachable,
    /// It answered without a fill for this request, or without the proof.
    Declined,
}

/// The key a peer's ask names, and its nonce, when the ask is a `GET` of [`FILL_PATH`]
/// authenticated with the fleet's secret; else the status of the answer it gets (`404`,
/// `400`, `401`).
pub(crate) fn read_ask<B>(
    fleet: &FleetFills,
    request: &Request<B>,
) -> Result<(String, String), StatusCode> {
    if request.method() != Method::GET || request.uri().path() != FILL_PATH {
        return Err(StatusCode::NOT_FOUND);
    }
    let key = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "key")
            .map(|(_, key)| key.into_owned())
    });
    let Some(key) = key.filter(|key| !key.is_empty() && key.len() <= MAX_KEY) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    match fleet.check_ask(&key, request.headers().get(AUTH)) {
        Some(nonce) => Ok((key, nonce)),
        None => Err(StatusCode::UNAUTHORIZED),
    }
}

/// The answer to a peer's ask for `key` (with `nonce`): the origin's `status` and
/// `headers` sealed, the body sealed by a trailer as it streams.
pub(crate) fn answer(
    fleet: &FleetFills,
    key: &str,
    nonce: String,
    status: StatusCode,
    mut headers: HeaderMap,
    body: StreamingBody,
    now: SystemTime,
) -> Response<StreamingBody> {
    // The body ends with a trailer sealing its digest, so it goes without a length (the
    // origin's travels in a header of its own); a date is set here, not by the HTTP
    // stack after the head is sealed.
    if let Some(length) = headers.remove(header::CONTENT_LENGTH) {
        headers.insert(ORIGIN_LENGTH, length);
    }
    if !headers.contains_key(header::DATE)
        && let Ok(date) = HeaderValue::try_from(httpdate::fmt_http_date(now))
    {
        headers.insert(header::DATE, date);
    }
    headers.insert(ORIGIN_STATUS, HeaderValue::from(status.as_u16()));
    let proof = head_seal(&fleet.secret, key, &nonce, status, &headers);
    headers.insert(PROOF, proof);
    headers.insert(
        header::TRAILER,
        HeaderValue::from_static("x-http-cache-fill-seal"),
    );
    let seal = SealFor {
        secret: fleet.secret.clone(),
        key: key.to_owned(),
        nonce,
    };
    let mut response = Response::new(StreamingBody::pass(SealingBody::new(body, seal)));
    *response.headers_mut() = headers;
    response
}

/// An answer with `status` and nothing else.
pub(crate) fn plain(status: StatusCode) -> Response<StreamingBody> {
    let mut response = Response::new(StreamingBody::empty());
    *response.status_mut() = status;
    response
}

/// Request headers a node does not send a peer: the connection's, and credentials.
const NOT_SENT: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "proxy-authorization",
    "cookie",
];

#[cfg(test)]
mod tests {
    use super::super::leases::tests::fleet;
    use super::*;

    #[test]
    fn asks_and_proofs_hold_only_with_the_secret_the_key_and_the_nonce() {
        let (ours, theirs) = (
            fleet("a secret of the fleet"),
            fleet("another fleet's secret"),
        );
        let (ask, nonce) = ours.ask("GET:http://a/x");
        assert_eq!(
            ours.check_ask("GET:http://a/x", Some(&ask)),
            Some(nonce.clone())
        );
        assert_eq!(
            ours.check_ask("GET:http://a/x", Some(&ask)),
            None,
            "the same ask again: replayed"
        );
        assert_eq!(
            ours.check_ask("GET:http://a/y", Some(&ask)),
            None,
            "another key"
        );
        assert_eq!(
            theirs.check_ask("GET:http://a/x", Some(&ask)),
            None,
            "another secret"
        );
        assert_eq!(ours.check_ask("GET:http://a/x", None), None);
        let old = format!("1000.{nonce}.{}", "00".repeat(32));
        let old = HeaderValue::from_str(&old).unwrap();
        assert_eq!(
            ours.check_ask("GET:http://a/x", Some(&old)),
            None,
            "out of its window"
        );
    }
}
