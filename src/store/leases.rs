//! Fills across a fleet: concurrent misses for one key on several nodes reach the origin
//! once. The first node to miss takes the key's lease, a note `leases/<sha256 of key>`
//! created only if absent (a conditional put), naming its peer address; it fetches from the
//! origin as usual. A node that finds the lease taken asks the holder for its fill and
//! streams it while the holder writes it (its own followers follow it in turn). The lease
//! goes once the holder's copy is in the shared tier, or by expiry when the holder died.
//!
//! Peers authenticate both ways with a secret the fleet shares: the request carries an
//! HMAC of the key, a time and a nonce (never accepted twice within its window); the answer
//! an HMAC of the key and the nonce. A lease is sealed with the secret too (its key, holder
//! and expiry): one without a valid seal, written by anyone else who can write to the
//! bucket, is not a lease, and is taken over.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use super::StreamingManager;
use crate::StreamingBody;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::Hash32;
use crate::storage::{BoxFuture, Note, PutNote, Storage};
use crate::support::epoch_millis;

use super::peer_body::{CheckedBody, ORIGIN_LENGTH, SealFor, head_sealed};
use super::seal::Secret;
use crate::support::is_hex_digit;

/// The request header of a peer's ask: `<ms>.<nonce>.<hmac>`.
pub(crate) const AUTH: HeaderName = HeaderName::from_static("x-http-cache-fill-auth");
/// The answer's proof: the HMAC of the key and the ask's nonce.
pub(crate) const PROOF: HeaderName = HeaderName::from_static("x-http-cache-fill-proof");
/// The path (under a peer's address) that serves fills to peers.
pub const FILL_PATH: &str = "/http-cache-streaming/fill";
/// How far a peer's clock may be from ours for its ask to count.
const ASK_WINDOW: Duration = Duration::from_secs(60);
/// Nonces of asks remembered (those within twice [`ASK_WINDOW`]); past it, asks are refused
/// until old ones go (a fleet asks far fewer than this in two minutes).
const NONCES_REMEMBERED: usize = 1 << 16;

/// How a node asks a peer for a fill: a GET of a URL with headers, answered with the
/// response head and a streaming body. The proxy implements it with hyper's client; any
/// HTTP client will do.
pub trait PeerClient: fmt::Debug + Send + Sync + 'static {
    /// GETs `url` with `headers`.
    fn get(
        &self,
        url: String,
        headers: HeaderMap,
    ) -> BoxFuture<'static, Result<Response<StreamingBody>>>;
}

/// One origin fetch per key for a whole fleet (see
/// [`StreamingManagerBuilder::fleet_fills`](super::StreamingManagerBuilder::fleet_fills)).
#[derive(Clone)]
pub struct FleetFills {
    pub(crate) advertise: String,
    pub(crate) secret: Secret,
    pub(crate) client: Arc<dyn PeerClient>,
    pub(crate) lease_ttl: Duration,
    /// Nonces of the asks answered, with their times (ms): a replayed ask is refused.
    nonces: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl fmt::Debug for FleetFills {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetFills")
            .field("advertise", &self.advertise)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl FleetFills {
    /// Fleet fills for a node that peers reach at `advertise` (`http://10.0.0.7:9090`: where
    /// it serves [`HttpStreamingCache::serve_peer`](crate::HttpStreamingCache::serve_peer)),
    /// sharing `secret` (at least 16 bytes) with the fleet, asking peers through `client`.
    /// Leases last 30 s unless renewed by [`lease_ttl`](Self::lease_ttl).
    pub fn new(
        advertise: &str,
        secret: impl AsRef<[u8]>,
        client: Arc<dyn PeerClient>,
    ) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.len() < 16 {
            return Err(Error::new(ErrorKind::InvalidInput)
                .with_subject("a fleet secret of fewer than 16 bytes"));
        }
        let advertise = advertise.trim_end_matches('/');
        if !valid_peer(advertise) {
            return Err(Error::new(ErrorKind::InvalidInput).with_subject(format!(
                "{advertise:?} is not a peer address (http://host:port)"
            )));
        }
        Ok(FleetFills {
            advertise: advertise.to_owned(),
            secret: Secret::new(secret),
            client,
            lease_ttl: Duration::from_secs(30),
            nonces: Arc::default(),
        })
    }

    /// How long a lease holds when its holder does not release it (it dies): other nodes
    /// then take it over. A fill longer than this may be fetched again by a node that
    /// misses after it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_secs(1));
        self
    }

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

    /// The seal of a lease at `path` held by `holder` until `expires_ms`.
    fn lease_seal(&self, path: &str, holder: &str, expires_ms: u64) -> String {
        let expires = expires_ms.to_string();
        let parts: [&[u8]; 4] = [
            b"lease",
            path.as_bytes(),
            holder.as_bytes(),
            expires.as_bytes(),
        ];
        self.secret.tag(&parts)
    }

    fn sealed(&self, path: &str, lease: &LeaseNote) -> bool {
        let expires = lease.expires_ms.to_string();
        let parts: [&[u8]; 4] = [
            b"lease",
            path.as_bytes(),
            lease.holder.as_bytes(),
            expires.as_bytes(),
        ];
        lease.v == 2 && self.secret.verify(&parts, &lease.seal)
    }
}

/// An `http(s)://host[:port]` with nothing after it, of at most 256 bytes.
fn valid_peer(address: &str) -> bool {
    address.len() <= 256
        && url::Url::parse(address).is_ok_and(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && url.path() == "/"
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none()
                && !address.ends_with('/')
                && !address[url.scheme().len() + 3..].contains('/')
        })
}

/// A key's lease as found.
pub(crate) enum Lease {
    /// This node holds it: fetch from the origin. Released when dropped.
    Held(LeaseGuard),
    /// A live peer holds it: ask it.
    Peer(String),
    /// No fleet fills, or the tier cannot say: fetch alone.
    Alone,
}

/// A lease this node holds; dropped, it is removed from the tier (on a task of its own).
pub(crate) struct LeaseGuard {
    tier: Arc<dyn Storage>,
    path: String,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !crate::rt::available() {
            return; // it expires
        }
        let (tier, path) = (Arc::clone(&self.tier), std::mem::take(&mut self.path));
        crate::rt::spawn(async move {
            let _ = tier.delete_note(&path).await;
        });
    }
}

/// A lease's note, sealed with the fleet's secret.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseNote {
    v: u32,
    holder: String,
    expires_ms: u64,
    #[serde(default)]
    seal: String,
}

impl StreamingManager {
    pub(crate) fn fleet_fills(&self) -> Option<&FleetFills> {
        self.inner.options.fleet_fills.as_ref()
    }

    /// Takes `key`'s lease, or finds who holds it. An expired lease, one naming this node
    /// (left by a run that died), or one naming `unreachable` (a holder that could not
    /// answer) is taken over.
    pub(crate) async fn take_lease(&self, key: &str, unreachable: Option<&str>) -> Lease {
        let (Some(fleet), Some(tier)) =
            (self.fleet_fills(), self.inner.options.shared_tier.as_ref())
        else {
            return Lease::Alone;
        };
        let path = format!("leases/{}", Hash32::of(key.as_bytes()).to_hex());
        for _ in 0..3 {
            let expires_ms = epoch_millis(SystemTime::now() + fleet.lease_ttl);
            let note = LeaseNote {
                v: 2,
                holder: fleet.advertise.clone(),
                expires_ms,
                seal: fleet.lease_seal(&path, &fleet.advertise, expires_ms),
            };
            let bytes = Bytes::from(serde_json::to_vec(&note).expect("a lease encodes"));
            match tier.put_note(&path, bytes, PutNote::Create).await {
                Ok(true) => {
                    return Lease::Held(LeaseGuard {
                        tier: Arc::clone(tier),
                        path,
                    });
                }
                Ok(false) => {}
                Err(error) => {
                    crate::log::debug_event!(%key, %error, "no lease: fetching alone");
                    return Lease::Alone;
                }
            }
            let found = match tier.read_note(&path, None).await {
                Ok(Note::Found { bytes, .. }) => serde_json::from_slice::<LeaseNote>(&bytes).ok(),
                Ok(_) => continue, // released meanwhile
                Err(_) => return Lease::Alone,
            };
            let now = epoch_millis(SystemTime::now());
            match found {
                Some(lease)
                    if fleet.sealed(&path, &lease)
                        && lease.expires_ms > now
                        && lease.holder != fleet.advertise
                        && Some(lease.holder.as_str()) != unreachable
                        && valid_peer(&lease.holder) =>
                {
                    return Lease::Peer(lease.holder);
                }
                // Expired, this node's own from a run that died, or not a lease (not
                // sealed with the fleet's secret: written by someone else).
                _ => {
                    let _ = tier.delete_note(&path).await;
                }
            }
        }
        Lease::Alone
    }

    /// Asks `holder` for its fill of `key`, for a request with `headers`: the response once
    /// its head has arrived with the holder's proof, else why not (ask the origin).
    pub(crate) async fn peer_fill(
        &self,
        holder: &str,
        key: &str,
        headers: &HeaderMap,
    ) -> std::result::Result<Response<StreamingBody>, NoFill> {
        let fleet = self.fleet_fills().ok_or(NoFill::Declined)?;
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

/// What this node has of a key for a peer that asks.
pub(crate) enum ForPeer {
    /// A fill under way: its head, and its body as it is written.
    Filling(Arc<super::fill::FillHead>, super::fill::FollowReader),
    /// The entry, stored.
    Stored(
        Box<Response<StreamingBody>>,
        Arc<crate::format::record::Entry>,
    ),
    Nothing,
}

impl StreamingManager {
    /// What a peer asking for `key` is served: the fill under way (waiting at most
    /// `wait` for its head), or else the entry on disk.
    pub(crate) async fn for_peer(&self, key: &str, wait: Duration) -> ForPeer {
        let key_hash = Hash32::of(key.as_bytes());
        if let Some(mut follower) = self.inner.fills.follow(key_hash) {
            match follower.head(wait).await {
                super::fill::Followed::Head(head) => {
                    return ForPeer::Filling(head, follower.body(64 * 1024));
                }
                super::fill::Followed::Alone => return ForPeer::Nothing,
                super::fill::Followed::Stored => {}
            }
        }
        match self.lookup_on_disk(key).await {
            Ok(Some((response, entry))) => ForPeer::Stored(Box::new(response), entry),
            _ => ForPeer::Nothing,
        }
    }
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

/// The origin's status, as the holder sends it (its own status says the fill is served).
pub(crate) const ORIGIN_STATUS: HeaderName = HeaderName::from_static("x-http-cache-fill-status");

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nowhere;

    impl PeerClient for Nowhere {
        fn get(
            &self,
            _: String,
            _: HeaderMap,
        ) -> BoxFuture<'static, Result<Response<StreamingBody>>> {
            Box::pin(async { Err(Error::new(ErrorKind::Io).with_subject("nowhere")) })
        }
    }

    fn fleet(secret: &str) -> FleetFills {
        FleetFills::new("http://10.0.0.7:9090", secret, Arc::new(Nowhere)).unwrap()
    }

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

    #[test]
    fn a_lease_is_one_only_with_the_fleets_seal_over_its_key_holder_and_expiry() {
        let (ours, theirs) = (
            fleet("a secret of the fleet"),
            fleet("another fleet's secret"),
        );
        let path = "leases/abc";
        let lease = |fleet: &FleetFills, holder: &str, expires_ms: u64| LeaseNote {
            v: 2,
            holder: holder.to_owned(),
            expires_ms,
            seal: fleet.lease_seal(path, holder, expires_ms),
        };
        assert!(ours.sealed(path, &lease(&ours, "http://10.0.0.8:9090", 5)));
        assert!(!ours.sealed(path, &lease(&theirs, "http://10.0.0.8:9090", 5)));
        assert!(!ours.sealed("leases/abd", &lease(&ours, "http://10.0.0.8:9090", 5)));
        let mut moved = lease(&ours, "http://10.0.0.8:9090", 5);
        moved.holder = "http://evil.example:80".into();
        assert!(!ours.sealed(path, &moved), "another holder");
        let mut longer = lease(&ours, "http://10.0.0.8:9090", 5);
        longer.expires_ms = u64::MAX;
        assert!(!ours.sealed(path, &longer), "another expiry");
        let unsealed: LeaseNote =
            serde_json::from_str(r#"{"v":1,"holder":"http://e:1","expires_ms":9}"#).unwrap();
        assert!(!ours.sealed(path, &unsealed));
    }

    #[test]
    fn peers_are_plain_addresses() {
        for good in [
            "http://10.0.0.7:9090",
            "https://node-3.internal",
            "http://[::1]:80",
        ] {
            assert!(valid_peer(good), "{good}");
        }
        for bad in [
            "http://10.0.0.7:9090/",
            "http://10.0.0.7/x",
            "http://u:p@10.0.0.7",
            "file:///etc/passwd",
            "http://10.0.0.7?x=1",
            "10.0.0.7:9090",
        ] {
            assert!(!valid_peer(bad), "{bad}");
        }
        assert!(FleetFills::new("http://a:1", "short", Arc::new(Nowhere)).is_err());
    }
}
