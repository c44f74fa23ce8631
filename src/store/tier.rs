//! The shared tier behind a local store ([`StreamingManagerBuilder::shared_tier`]): a key
//! missing on disk is read through from it, and what is committed on disk is written
//! through to it in the background.
//!
//! [`StreamingManagerBuilder::shared_tier`]: super::StreamingManagerBuilder::shared_tier

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use url::Url;

use super::fill::{FillHead, FillLeader, Followed, Role};
use super::{StreamingManager, Teeing};
use crate::StreamingBody;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::Hash32;
use crate::format::reader;
use crate::format::record::Entry;
use crate::rt::blocking;
use crate::storage::{Name, Storage};

/// How much of a body is read from disk at a time to go up to the shared tier.
const SHARE_CHUNK: usize = 1 << 20;
/// How long a lookup waits for another's read-through of its key to start storing.
const READ_THROUGH_WAIT: Duration = Duration::from_secs(5);
/// How much a lookup following another's read-through reads from its file at a time.
const FOLLOW_CHUNK: usize = 64 * 1024;

impl StreamingManager {
    fn shared_tier(&self) -> Option<&Arc<dyn Storage>> {
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
        let mut follower = match self.inner.read_throughs.join(key_hash, None) {
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
        match follower.head(READ_THROUGH_WAIT).await {
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
        let Some((entry, body)) = crate::storage::read_entry(&**tier, key, None, None).await?
        else {
            return Ok(None);
        };
        if self.purge_log().is_some_and(|log| log.purged(&entry)) {
            // A copy written up before a purge the fleet's log names: gone for good.
            crate::log::debug_event!(%key, "a purged entry in the shared tier: a miss");
            let _ = tier.delete_record(Name(Hash32::of(key.as_bytes()))).await;
            return Ok(None);
        }
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
        let tier = self.shared_tier()?;
        let record = tier
            .read_record(Name(Hash32::of(key.as_bytes())))
            .await
            .ok()??;
        Entry::decode(&record)
            .ok()
            .filter(|entry| entry.key == key)
            .map(|entry| entry.headers)
    }

    /// Copies the entry just committed under `key_hash` (body `digest`, `length` bytes) to
    /// the shared tier, on a task of its own.
    /// `lease`, the fleet's lease on the key, is released once the copy is done.
    pub(crate) fn share(
        &self,
        key_hash: Hash32,
        digest: Hash32,
        length: u64,
        lease: Option<super::fill::HeldUntilShared>,
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
        if tier.body_length(Name(digest)).await? != Some(length) {
            let path = opened.layout.content_path(digest);
            let file = blocking({
                let path = path.clone();
                move || crate::format::files::open(&path).map_err(|e| Error::io(e, &path))
            })
            .await?;
            let file = Arc::new(file);
            let mut upload = tier.upload_as(Name(digest)).await?;
            let mut offset = 0;
            while offset < length {
                let n = (length - offset).min(SHARE_CHUNK as u64) as usize;
                let file = Arc::clone(&file);
                let path = path.clone();
                let chunk: Bytes = blocking(move || {
                    reader::read_chunk(&file, offset, n).map_err(|e| Error::io(e, &path))
                })
                .await?;
                upload.write(chunk).await?;
                offset += n as u64;
            }
            let committed = upload.commit().await?;
            if committed.digest.0 != digest {
                return Err(Error::new(ErrorKind::Integrity)
                    .with_subject(format!("{digest:?} went up as {:?}", committed.digest)));
            }
        }
        // The record as it is on disk now (a newer write of the key shares itself too).
        let path = opened.layout.record_path(key_hash);
        let record = blocking(move || match crate::format::files::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(e, &path)),
        })
        .await?;
        if let Some(record) = record {
            tier.write_record(Name(key_hash), Bytes::from(record))
                .await?;
        }
        Ok(())
    }

    /// Removes from the shared tier, on a task of its own, the records of URLs under `prefix`
    /// stored before `before` (reading each record: a prefix purge is rare, and until this
    /// is done the purge log keeps read-throughs from serving them).
    pub(crate) fn unshare_prefix(&self, prefix: String, before: std::time::SystemTime) {
        let Some(tier) = self.shared_tier().cloned() else {
            return;
        };
        crate::rt::spawn(async move {
            let swept = async {
                let mut removed = 0u64;
                for listed in tier.list_records().await? {
                    let Some(record) = tier.read_record(listed.name).await? else {
                        continue;
                    };
                    let Ok(entry) = Entry::decode(&record) else {
                        continue;
                    };
                    if entry.is_under(&prefix) && entry.stored_at < before {
                        tier.delete_record(listed.name).await?;
                        removed += 1;
                    }
                }
                Ok::<_, Error>(removed)
            };
            match swept.await {
                Ok(removed) => {
                    crate::log::info_event!(%prefix, removed, "prefix purged from the shared tier");
                }
                Err(error) => {
                    crate::log::warn_event!(%prefix, %error, "could not purge a prefix from the shared tier");
                }
            }
        });
    }

    /// Removes `key_hash`'s record from the shared tier (its body may be named by others).
    pub(crate) async fn unshare(&self, key_hash: Hash32) {
        let Some(tier) = self.shared_tier() else {
            return;
        };
        if let Err(error) = tier.delete_record(Name(key_hash)).await {
            crate::log::warn_event!(%error, "could not remove an entry from the shared tier");
        }
    }
}
