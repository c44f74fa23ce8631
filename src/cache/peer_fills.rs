//! The fleet's fills at the cache: [`HttpStreamingCache::serve_peer`] answers the nodes that
//! find this one holding a key's lease, and [`fleet_miss`](HttpStreamingCache::fleet_miss)
//! is a miss that takes the lease or streams the holder's fill (see
//! [`FleetFills`](crate::FleetFills)).

use crate::cache_store::CacheStore as _;
use http::{HeaderValue, Request, Response, StatusCode, header, request};

use super::variants::{same_variant, variants_generation};
use super::{CacheMode, HttpStreamingCache};
use crate::body::StreamingBody;
use crate::collapse::FillLeader;
use crate::fleet::asks::{self, NoFill};
use crate::fleet::leases::Lease;
use crate::store::ForPeer;

impl HttpStreamingCache {
    /// Answers a node of the fleet asking for this node's fill of a key whose lease it
    /// holds: a `GET` of [`FILL_PATH`](crate::FILL_PATH)`?key=…`, authenticated with the
    /// fleet's secret (`401` otherwise). The answer streams the fill as it is written
    /// (or the stored entry, once written), with the origin's headers; `404` when there is
    /// nothing to share for that request. Serve it on the address given as the node's
    /// [`FleetFills`](crate::FleetFills) address, which only the fleet should reach.
    pub async fn serve_peer<B>(&self, request: &Request<B>) -> Response<StreamingBody> {
        let Some(fleet) = self.store.fleet_fills() else {
            return asks::plain(StatusCode::NOT_FOUND);
        };
        let (key, nonce) = match asks::read_ask(fleet, request) {
            Ok(ask) => ask,
            Err(refused) => return asks::plain(refused),
        };
        let wait = self.options.coalesce_wait;
        let (status, headers, body) = match self.store.for_peer(&key, wait).await {
            ForPeer::Filling(head, reader) if same_variant(&head, request.headers()) => (
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
            _ => return asks::plain(StatusCode::NOT_FOUND),
        };
        let answer = asks::answer(fleet, &key, nonce, status, headers, body, self.now());
        crate::log::debug_event!(%key, "a fill served to a peer");
        answer
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
            let holder = match self.store.take_lease(key, unreachable.as_deref()).await {
                Lease::Held(guard) => {
                    if let Some(leader) = leader.as_mut() {
                        leader.lease = Some(Box::new(guard));
                    }
                    return None;
                }
                Lease::Peer(holder) => holder,
                Lease::Alone => return None,
            };
            let fleet = self.store.fleet_fills()?;
            match fleet.peer_fill(&holder, key, &parts.headers).await {
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
