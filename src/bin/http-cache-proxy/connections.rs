//! What one client may hold of a listener, on every listener (clients', admin, fleet): a
//! share of the connection slots per address, a first request within the header timeout,
//! and no connection kept once it has had no request in flight for the idle timeout (an
//! HTTP/2 client sending only PINGs, or a TLS handshake left half done, included).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The connection slots of one listener, and how many each client address holds.
pub(crate) struct Gate {
    slots: Arc<tokio::sync::Semaphore>,
    per_client: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
    listener: &'static str,
}

/// A connection slot, and the client's share of them, held until the connection ends.
pub(crate) struct Admitted {
    gate: Arc<Gate>,
    client: IpAddr,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Gate {
    /// `max` connections at once on the listener named `listener` (for logs and metrics),
    /// at most `per_client` from one client.
    pub(crate) fn new(max: usize, per_client: usize, listener: &'static str) -> Arc<Self> {
        Arc::new(Gate {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            per_client,
            held: Mutex::new(HashMap::new()),
            listener,
        })
    }

    /// Waits for a free slot: past the cap, connections wait in the listen backlog.
    pub(crate) async fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }

    /// Lets a connection from `peer` take `slot`, unless its client holds its share
    /// already: then the connection is to be closed at once (and is counted).
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<Admitted> {
        let client = client_of(peer);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(client).or_insert(0);
        if *count >= self.per_client {
            drop(held);
            metrics::counter!(
                "http_cache_proxy_connections_refused_total",
                "listener" => self.listener,
                "reason" => "per-client",
            )
            .increment(1);
            tracing::debug!(%client, listener = self.listener, "connection refused: the client holds its share");
            return None;
        }
        *count += 1;
        Some(Admitted {
            gate: Arc::clone(self),
            client,
            _slot: slot,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut held = self.gate.held.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut entry) = held.entry(self.client) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// The client a connection counts against: its IPv4 address, or its IPv6 /64 (one
/// subscriber's prefix: an attacker holding one has billions of addresses in it).
fn client_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

/// What a connection is doing, for its bounds: requests whose responses are being sent,
/// how many it has begun, and when the last began or ended.
pub(crate) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    begun: AtomicU64,
    /// Milliseconds from `born` to the last request begun or ended.
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// A request begun: in flight until the guard (held by its response body) goes.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(Arc::clone(self))
    }

    /// When the connection may be closed if nothing changes: `None` while a response is
    /// in flight. The first request must begin within `first`, each next one within
    /// `idle` of the last response's end.
    fn deadline(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let bound = if self.begun.load(Ordering::Relaxed) == 0 {
            first
        } else {
            idle
        };
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(self.born + last + bound)
    }
}

/// A request in flight on a connection: dropped with its response body.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Serves `connection` until it ends, or until it has had no request in flight for its
/// bound (`first` for the first request, `idle` after): then it is dropped, which closes
/// it. What `activity` says comes from the requests `connection` serves.
pub(crate) async fn within_bounds<F, E>(
    connection: F,
    activity: &Activity,
    first: Duration,
    idle: Duration,
) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    let mut connection = std::pin::pin!(connection);
    loop {
        let wake = match activity.deadline(first, idle) {
            Some(deadline) if deadline <= Instant::now() => return Ok(()),
            Some(deadline) => deadline,
            // In flight: looked at again once a bound has passed.
            None => Instant::now() + first.min(idle),
        };
        tokio::select! {
            served = &mut connection => return served,
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it ends or is dropped.
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.in_flight.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_ne!(client_of(a), client_of(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_client_holds_its_share_of_slots_and_no_more() {
        let gate = Gate::new(10, 2, "test");
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = gate.admit(a, gate.slot().await.unwrap()).unwrap();
        let _second = gate.admit(a, gate.slot().await.unwrap()).unwrap();
        assert!(gate.admit(a, gate.slot().await.unwrap()).is_none());
        assert!(gate.admit(b, gate.slot().await.unwrap()).is_some());
        drop(first);
        assert!(gate.admit(a, gate.slot().await.unwrap()).is_some());
    }

    #[test]
    fn a_connection_is_bounded_only_while_nothing_is_in_flight() {
        let activity = Activity::new();
        let (first, idle) = (Duration::from_secs(5), Duration::from_secs(60));
        let before = activity.deadline(first, idle).unwrap();
        assert!(before <= activity.born + first);
        let request = activity.begin();
        assert_eq!(activity.deadline(first, idle), None);
        drop(request);
        let after = activity.deadline(first, idle).unwrap();
        assert!(
            after >= activity.born + idle,
            "the idle bound once a request was served"
        );
    }
}
