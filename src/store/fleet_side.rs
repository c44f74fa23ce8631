//! The store's side of the fleet ([`crate::fleet`]): the fleet's handles a store holds (its
//! fills and leases, its part in the purge log), what the purge log asks of this node's
//! disk ([`NodeStore`]), and what this node has of a key for a peer that asks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Response;

use super::StreamingManager;
use crate::StreamingBody;
use crate::collapse::{FillHead, FollowReader, Followed};
use crate::error::{Error, Result};
use crate::fleet::leases::{FleetFills, Lease};
use crate::fleet::purges::{NodeStore, PurgeLog, SKEW};
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::rt::{blocking, lock};
use crate::storage::BoxFuture;
use crate::support::epoch_millis;

/// The file in the store's `cache-v2/` that says when this store last read the purge log.
const READ_FILE: &str = "purges-read";

/// What this node has of a key for a peer that asks.
pub(crate) enum ForPeer {
    /// A fill under way: its head, and its body as it is written.
    Filling(Arc<FillHead>, FollowReader),
    /// The entry, stored.
    Stored(Box<Response<StreamingBody>>, Arc<Entry>),
    Nothing,
}

impl StreamingManager {
    /// The fleet's fills this store takes part in, if any.
    pub(crate) fn fleet_fills(&self) -> Option<&FleetFills> {
        self.inner.options.fleet_fills.as_ref()
    }

    /// Takes `key`'s lease in the shared tier, or finds who holds it (see
    /// [`FleetFills::take_lease`]); [`Lease::Alone`] without fleet fills.
    pub(crate) async fn take_lease(&self, key: &str, unreachable: Option<&str>) -> Lease {
        match (self.fleet_fills(), self.inner.options.shared_tier.as_ref()) {
            (Some(fleet), Some(tier)) => fleet.take_lease(tier, key, unreachable).await,
            _ => Lease::Alone,
        }
    }

    /// What a peer asking for `key` is served: the fill under way (waiting at most
    /// `wait` for its head), or else the entry on disk.
    pub(crate) async fn for_peer(&self, key: &str, wait: Duration) -> ForPeer {
        let key_hash = Hash32::of(key.as_bytes());
        if let Some(mut follower) = self.inner.fills.follow(key_hash, wait) {
            match follower.head().await {
                Followed::Head(head) => {
                    return ForPeer::Filling(head, follower.body(64 * 1024));
                }
                Followed::Alone => return ForPeer::Nothing,
                Followed::Stored => {}
            }
        }
        match self.lookup_on_disk(key).await {
            Ok(Some((response, entry))) => ForPeer::Stored(Box::new(response), entry),
            _ => ForPeer::Nothing,
        }
    }

    pub(in crate::store) fn purge_log(&self) -> Option<&Arc<PurgeLog>> {
        self.inner.purges.as_ref()
    }

    /// Whether deletes here go to a purge log that the fleet reads.
    pub(crate) fn shares_purges(&self) -> bool {
        self.purge_log().is_some()
    }

    /// Purges of other nodes applied here since the store was opened (0 without a log).
    pub(crate) fn purges_applied(&self) -> u64 {
        self.purge_log().map_or(0, |log| {
            log.applied.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Waits until the purge log has been read once, starting that read and the poll
    /// after it on first call (see [`PurgeLog::read_at_start`]).
    pub(in crate::store) async fn purges_read(&self) {
        let Some(log) = self.purge_log() else {
            return;
        };
        // Read already (every lookup comes here): no handle for the poll is made.
        if log.started() {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        let revive = move || inner.upgrade().map(|inner| StreamingManager { inner });
        log.read_at_start(self, revive).await;
    }

    /// Writes a purge of `prefix` to the fleet's log, when there is one, and removes the
    /// entries under it from the shared tier in the background.
    pub(crate) async fn publish_prefix_purge(&self, prefix: &str) -> Result<()> {
        let Some(log) = self.purge_log() else {
            return Ok(());
        };
        log.publish_prefix(prefix).await?;
        self.unshare_prefix(prefix.to_owned(), SystemTime::now() + SKEW);
        Ok(())
    }
}

impl NodeStore for StreamingManager {
    fn purge_key(&self, key_hash: Hash32, before: SystemTime) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            lock(&self.inner.deletions).record(Some(key_hash));
            self.drop_partials_where(|key| Hash32::of(key.as_bytes()) == key_hash);
            let Ok(opened) = self.opened().await else {
                return;
            };
            let _ = blocking(move || {
                opened.drop_stored_before(key_hash, before);
                Ok(())
            })
            .await;
        })
    }

    fn purge_prefixes(&self, prefixes: Vec<(String, SystemTime)>) -> BoxFuture<'_, Result<u64>> {
        lock(&self.inner.deletions).record(None);
        self.clear_partials();
        Box::pin(self.remove_where(move |entry| {
            prefixes
                .iter()
                .any(|(prefix, before)| entry.stored_at < *before && entry.is_under(prefix))
        }))
    }

    fn purge_tags(&self, tags: Vec<String>, before: SystemTime) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            Ok(self.remove_tagged(&tags, before).await?.0)
        })
    }

    fn purge_stored_before(&self, before: SystemTime) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.remove_where(move |entry| entry.stored_at < before))
    }

    fn log_read(&self) -> BoxFuture<'_, Option<u64>> {
        let path = self.inner.layout.format_dir().join(READ_FILE);
        Box::pin(async move {
            blocking(move || Ok(crate::format::files::read(&path).ok()))
                .await
                .ok()
                .flatten()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|s| s.trim().parse().ok())
        })
    }

    fn note_log_read(&self, at: SystemTime) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Ok(opened) = self.opened().await else {
                return;
            };
            let path = self.inner.layout.format_dir().join(READ_FILE);
            let at = epoch_millis(at).to_string();
            let _ = blocking(move || {
                let temp = opened.scratch.temp_path();
                let mode = opened.layout.mode();
                let (temp, _) =
                    crate::format::content::write_temp(temp, at.as_bytes(), false, mode)?;
                temp.persist(&path).map_err(|e| Error::io(e, &path))
            })
            .await;
        })
    }
}
