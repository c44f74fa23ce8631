//! Fills across a fleet: concurrent misses for one key on several nodes reach the origin
//! once. The first node to miss takes the key's lease, a note `leases/<sha256 of key>`
//! created only if absent (a conditional put), naming its peer address; it fetches from the
//! origin as usual. A node that finds the lease taken asks the holder for its fill and
//! streams it while the holder writes it (its own followers follow it in turn; the ask and
//! its answer are in [`super::asks`]). The lease goes once the holder's copy is in the
//! shared tier, or by expiry when the holder died.
//!
//! A lease is sealed with the fleet's secret (its key, holder and expiry): one without a
//! valid seal, written by anyone else who can write to the bucket, is not a lease, and is
//! taken over.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response};

use super::seal::Secret;
use crate::StreamingBody;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::Hash32;
use crate::storage::{BoxFuture, Note, PutNote, Storage};
use crate::support::epoch_millis;

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
/// [`StreamingManagerBuilder::fleet_fills`](crate::StreamingManagerBuilder::fleet_fills)).
#[derive(Clone)]
pub struct FleetFills {
    pub(crate) advertise: String,
    pub(crate) secret: Secret,
    pub(crate) client: Arc<dyn PeerClient>,
    pub(crate) lease_ttl: Duration,
    /// Nonces of the asks answered, with their times (ms): a replayed ask is refused.
    pub(super) nonces: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
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
pub(super) fn valid_peer(address: &str) -> bool {
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

impl FleetFills {
    /// Takes `key`'s lease in `tier`, or finds who holds it. An expired lease, one naming
    /// this node (left by a run that died), or one naming `unreachable` (a holder that
    /// could not answer) is taken over.
    pub(crate) async fn take_lease(
        &self,
        tier: &Arc<dyn Storage>,
        key: &str,
        unreachable: Option<&str>,
    ) -> Lease {
        let fleet = self;
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
}

#[cfg(test)]
pub(super) mod tests {
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

    /// A node's fleet fills with `secret`, whose peers cannot be reached.
    pub(in crate::fleet) fn fleet(secret: &str) -> FleetFills {
        FleetFills::new("http://10.0.0.7:9090", secret, Arc::new(Nowhere)).unwrap()
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
