//! The fleet's fills at the cache: [`HttpStreamingCache::serve_peer`] answers the nodes that
//! find this one holding a key's lease, and [`fleet_miss`](HttpStreamingCache::fleet_miss)
//! is a miss that takes the lease or streams the holder's fill (see
//! [`FleetFills`](crate::FleetFills)).

use http::{HeaderValue, Method, Request, Response, StatusCode, header, request};

use super::variants::{same_variant, variants_generation};
use super::{CacheMode, HttpStreamingCache};
use crate::body::StreamingBody;
use crate::store::FILL_PATH;
use crate::store::fill::FillLeader;
use crate::store::leases::{AUTH, ForPeer, Lease, NoFill, ORIGIN_STATUS, PROOF};
use crate::store::peer_body::{ORIGIN_LENGTH, SealFor, SealingBody, head_seal};

/// The longest key a peer may ask for.
const MAX_KEY: usize = 16 * 1024;

impl HttpStreamingCache {
    /// Answers a node of the fleet asking for this node's fill of a key whose lease it
    /// holds: a `GET` of [`FILL_PATH`](crate::FILL_PATH)`?key=…`, authenticated with the
    /// fleet's secret (`401` otherwise). The answer streams the fill as it is written
    /// (or the stored entry, once written), with the origin's headers; `404` when there is
    /// nothing to share for that request. Serve it on the address given as the node's
    /// [`FleetFills`](crate::FleetFills) address, which only the fleet should reach.
    pub async fn serve_peer<B>(&self, parts: &Request<B>) -> Response<StreamingBody> {
        let Some(fleet) = self.manager.fleet_fills() else {
            return plain(StatusCode::NOT_FOUND);
        };
        if parts.method() != Method::GET || parts.uri().path() != FILL_PATH {
            return plain(StatusCode::NOT_FOUND);
        }
        let key = parts.uri().query().and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "key")
                .map(|(_, key)| key.into_owned())
        });
        let Some(key) = key.filter(|key| !key.is_empty() && key.len() <= MAX_KEY) else {
            return plain(StatusCode::BAD_REQUEST);
        };
        let Some(nonce) = fleet.check_ask(&key, parts.headers().get(AUTH)) else {
            return plain(StatusCode::UNAUTHORIZED);
        };
        let wait = self.options.coalesce_wait;
        let (status, mut headers, body) = match self.manager.for_peer(&key, wait).await {
            ForPeer::Filling(head, reader) if same_variant(&head, parts.headers()) => (
                head.parts.status,
                head.parts.headers.clone(),
                StreamingBody::follow(reader),
            ),
            ForPeer::Stored(response, entry)
                if !response.headers().contains_key(header::VARY)
                    && variants_generation(response.headers()).is_none()
                    && self.admits(&entry, CacheMode::Default) =>
            {
                let (head, body) = (*response).into_parts();
                (head.status, head.headers, body)
            }
            _ => return plain(StatusCode::NOT_FOUND),
        };
        // The body ends with a trailer sealing its digest, so it goes without a length (the
        // origin's travels in a header of its own); a date is set here, not by the HTTP
        // stack after the head is sealed.
        if let Some(length) = headers.remove(header::CONTENT_LENGTH) {
            headers.insert(ORIGIN_LENGTH, length);
        }
        if !headers.contains_key(header::DATE)
            && let Ok(date) = HeaderValue::try_from(httpdate::fmt_http_date(self.now()))
        {
            headers.insert(header::DATE, date);
        }
        headers.insert(ORIGIN_STATUS, HeaderValue::from(status.as_u16()));
        let proof = head_seal(&fleet.secret, &key, &nonce, status, &headers);
        headers.insert(PROOF, proof);
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("x-http-cache-fill-seal"),
        );
        let seal = SealFor {
            secret: fleet.secret.clone(),
            key: key.clone(),
            nonce,
        };
        let mut response = Response::new(StreamingBody::pass(SealingBody::new(body, seal)));
        *response.headers_mut() = headers;
        crate::log::debug_event!(%key, "a fill served to a peer");
        response
    }

    /// A miss that leads this node's fill of `key`: with fleet fills, it takes the key's
    /// lease (`None`: fetch from the origin, the lease held by `leader` until the entry is
    /// in the shared tier), or asks the peer that holds it for its fill, to be stored here
    /// as the origin's answer would be. A peer that cannot answer leaves the request to the
    /// origin.
    pub(super) async fn fleet_miss(
        &self,
        parts: &request::Parts,
        key: &str,
        leader: &mut Option<FillLeader>,
    ) -> Option<Response<StreamingBody>> {
        let mut unreachable = None;
        // A holder that cannot answer (it died) is taken over once: the lease is taken, or
        // a new holder asked.
        for _ in 0..2 {
            let holder = match self.manager.take_lease(key, unreachable.as_deref()).await {
                Lease::Held(guard) => {
                    if let Some(leader) = leader.as_mut() {
                        leader.lease = Some(Box::new(guard));
                    }
                    return None;
                }
                Lease::Peer(holder) => holder,
                Lease::Alone => return None,
            };
            match self.manager.peer_fill(&holder, key, &parts.headers).await {
                Ok(mut response) => {
                    crate::log::debug_event!(%key, %holder, "streaming a peer's fill");
                    // The holder's `Ttl` outcome (a handler's, which this node's rule
                    // cannot know) rides with its sealed head; the field itself goes.
                    if let Some(ttl) = super::Ttl::from_field(response.headers()) {
                        response.extensions_mut().insert(ttl);
                    }
                    return Some(response);
                }
                Err(NoFill::Unreachable) => unreachable = Some(holder),
                Err(NoFill::Declined) => return None,
            }
        }
        None
    }
}

impl HttpStreamingCache {
    /// Marks this cache's `Cache-Status` on a response streamed from a peer's fill: the
    /// request was collapsed into another node's fetch (RFC 9211 `collapsed`).
    pub(super) fn mark_from_peer(&self, headers: &mut http::HeaderMap) {
        let Some(cache) = &self.options.cache_status else {
            return;
        };
        let ours = format!("{cache}; ");
        let mut values: Vec<HeaderValue> = headers.get_all(CACHE_STATUS).iter().cloned().collect();
        let Some(marked) = values
            .last()
            .and_then(|last| last.to_str().ok())
            .filter(|text| text.starts_with(&ours))
            .and_then(|text| {
                let peer = super::status::Detail::Peer.as_str();
                HeaderValue::try_from(format!("{text}; collapsed; detail={peer}")).ok()
            })
        else {
            return;
        };
        values.pop();
        values.push(marked);
        headers.remove(CACHE_STATUS);
        for value in values {
            headers.append(CACHE_STATUS, value);
        }
    }
}

const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

fn plain(status: StatusCode) -> Response<StreamingBody> {
    let mut response = Response::new(StreamingBody::empty());
    *response.status_mut() = status;
    response
}
