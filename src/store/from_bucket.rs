//! A key missing on disk, read through from the fleet's bucket
//! ([`StreamingManagerBuilder::shared_tier`]) and stored on disk as it streams; and what is
//! committed on disk, copied up to it in the background. What the bucket holds and how it
//! is read and written is the fleet's ([`crate::fleet::bucket`]); which lookups wait for a
//! read-through, and how its copy is stored, is the store's.
//!
//! [`StreamingManagerBuilder::shared_tier`]: super::StreamingManagerBuilder::shared_tier

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use url::Url;

use super::{StreamingManager, Teeing};
use crate::StreamingBody;
use crate::collapse::{FillHead, FillLeader, Followed, Role};
use crate::error::{Error, ErrorKind, Result};
use crate::fleet::bucket;
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::storage::Storage;

/// How long a lookup waits for another's read-through of its key to start storing.
const READ_THROUGH_WAIT: Duration = Duration::from_secs(5);
/// How much a lookup following another's read-through reads from its file at a time.
const FOLLOW_CHUNK: usize = 64 * 1024;

impl StreamingManager {
    pub(super) fn shared_tier(&self) -> Option<&Arc<dyn Storage>> {
        self.inner.options.shared_tier.as_ref()
    }

    /// A key missing on disk, looked up in the shared tier: the stored response, streaming
    /// from the tier and stored on disk as it goes. Any failure is a miss.
    ///
    /// Concurrent lookups of one key read the tier once: the first leads, the others follow
    /// its copy as it is written to disk (or, once it is stored, find it there).
    pub(crate) async fn read_through(
        &self,
        key: &str,
    ) -> Option<(Response<StreamingBody>, Arc<Entry>)> {
        let tier = self.shared_tier()?;
        let key_hash = Hash32::of(key.as_bytes());
        let mut follower = match self
            .inner
            .read_throughs
            .join(key_hash, None, READ_THROUGH_WAIT)
        {
            Role::Leader(leader) => {
                // A read-through that ended between this request's look at the disk and
                // its joining (the fill goes once its copy is committed) left the copy on
                // disk: look again before reading the tier.
                if let Ok(Some(found)) = self.lookup_on_disk(key).await {
                    leader.fill().end_stored(found.1.length, found.1.digest);
                    return Some(found);
                }
                return match self.read_from(tier, key, leader).await {
                    Ok(found) => found,
                    Err(error) => {
                        crate::log::warn_event!(%key, %error, "shared tier lookup failed; a miss");
                        None
                    }
                };
            }
            Role::Follower(follower) => follower,
        };
        match follower.head().await {
            Followed::Head(head) => {
                let entry = Arc::clone(head.entry.as_ref()?);
                let body = StreamingBody::follow(follower.body(FOLLOW_CHUNK));
                Some((entry.response(body), entry))
            }
            Followed::Stored => {
                drop(follower);
                self.lookup_on_disk(key).await.ok().flatten()
            }
            // Not in the tier, or the read failed: a miss, as it was for the leader.
            Followed::Alone => None,
        }
    }

    async fn read_from(
        &self,
        tier: &Arc<dyn Storage>,
        key: &str,
        leader: FillLeader,
    ) -> Result<Option<(Response<StreamingBody>, Arc<Entry>)>> {
        let Some((entry, body)) =
            bucket::read(&**tier, key, self.purge_log().map(|log| &**log)).await?
        else {
            return Ok(None);
        };
        let url = Url::parse(&entry.url).map_err(|e| {
            Error::new(ErrorKind::Record)
                .with_subject(key)
                .with_source(e)
        })?;
        let entry = Arc::new(entry);
        let response = entry.response(body);
        let head = FillHead {
            parts: entry.response(()).into_parts().0,
            policy: entry.policy.clone(),
            varying: http::HeaderMap::new(),
            entry: Some(Arc::clone(&entry)),
        };
        // Stored on disk as it streams, and not sent back up; it keeps the time the
        // response was first stored.
        let how = Teeing {
            stored_at: Some(entry.stored_at),
            ..Teeing::READ_THROUGH
        };
        let (teed, _) = self.start_tee(
            entry.key.clone(),
            response,
            entry.policy.clone(),
            url,
            how,
            Some((leader, head)),
        );
        crate::log::debug_event!(%key, "read through from the shared tier");
        Ok(Some((teed, entry)))
    }

    /// The headers of `key`'s record in the shared tier, if it has one.
    pub(crate) async fn shared_headers(&self, key: &str) -> Option<http::HeaderMap> {
        bucket::headers(&**self.shared_tier()?, key).await
    }

    /// Copies the entry just committed under `key_hash` (body `digest`, `length` bytes) to
    /// the shared tier, on a task of its own.
    /// `lease`, the fleet's lease on the key, is released once the copy is done.
    pub(crate) fn share(
        &self,
        key_hash: Hash32,
        digest: Hash32,
        length: u64,
        lease: Option<crate::collapse::HeldUntilShared>,
    ) {
        let Some(tier) = self.shared_tier().cloned() else {
            return;
        };
        let manager = self.clone();
        crate::rt::spawn(async move {
            if let Err(error) = manager.copy_up(&tier, key_hash, digest, length).await {
                crate::log::warn_event!(%error, "could not copy an entry to the shared tier");
            }
            drop(lease);
        });
    }

    async fn copy_up(
        &self,
        tier: &Arc<dyn Storage>,
        key_hash: Hash32,
        digest: Hash32,
        length: u64,
    ) -> Result<()> {
        let opened = self.opened().await?;
        let current = || opened.index().digest(key_hash) == Some(digest);
        bucket::copy_up(&**tier, &opened.layout, (key_hash, digest, length), current).await
    }

    /// Removes from the shared tier, on a task of its own, the records of URLs under
    /// `prefix` stored before `before`.
    pub(crate) fn unshare_prefix(&self, prefix: String, before: std::time::SystemTime) {
        if let Some(tier) = self.shared_tier().cloned() {
            bucket::remove_prefix(tier, prefix, before);
        }
    }

    /// Removes `key_hash`'s record from the shared tier (its body may be named by others).
    pub(crate) async fn unshare(&self, key_hash: Hash32) {
        if let Some(tier) = self.shared_tier() {
            bucket::remove(&**tier, key_hash).await;
        }
    }
}
