//! The fleet: what nodes sharing one bucket do together. Leases and fills across nodes
//! ([`leases`], [`asks`], [`peer_body`]), the purge log every node reads ([`purges`]),
//! what limits the purges one node sends ([`invalidations`]), the messages' authentication
//! ([`seal`]), and the bucket as the fleet uses it ([`bucket`]).
//!
//! The fleet knows the bucket ([`crate::storage`]), the on-disk format ([`crate::format`]),
//! the body type, the runtime and the counters, and nothing of the store or the cache rules:
//! the store reaches it through the handles it holds ([`leases::FleetFills`],
//! [`purges::PurgeLog`], the bucket's functions) and answers it through
//! [`purges::NodeStore`]; the cache through the lease, the ask and the answer of a peer, and
//! the invalidation budget.

pub(crate) mod asks;
pub(crate) mod bucket;
pub(crate) mod invalidations;
pub(crate) mod leases;
pub(crate) mod peer_body;
pub(crate) mod purges;
pub(crate) mod seal;

pub use asks::FILL_PATH;
pub use leases::{FleetFills, PeerClient};
