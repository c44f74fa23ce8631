//! The bucket a fleet shares ([`StreamingManagerBuilder::shared_tier`]), as the fleet uses
//! it: an entry read from it (unless the purge log names it), an entry committed on a
//! node's disk copied up to it, and entries removed from it. Which local lookups wait for a
//! read-through, and how its copy is stored on disk, is the store's (`store/from_bucket.rs`).
//!
//! [`StreamingManagerBuilder::shared_tier`]: crate::StreamingManagerBuilder::shared_tier

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::purges::PurgeLog;
use crate::StreamingBody;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::{Hash32, Layout};
use crate::format::reader;
use crate::format::record::Entry;
use crate::rt::blocking;
use crate::storage::{Name, Storage};

/// How much of a body is read from disk at a time to go up to the bucket.
const SHARE_CHUNK: usize = 1 << 20;

/// `key`'s entry in the bucket, its body streaming from it; `None` when it has none, or
/// when the fleet's purge `log` says the copy there was purged (the record is removed).
pub(crate) async fn read(
    tier: &dyn Storage,
    key: &str,
    log: Option<&PurgeLog>,
) -> Result<Option<(Entry, StreamingBody)>> {
    let Some((entry, body)) = crate::storage::read_entry(tier, key, None, None).await? else {
        return Ok(None);
    };
    if log.is_some_and(|log| log.purged(&entry)) {
        // A copy written up before a purge the fleet's log names: gone for good.
        crate::log::debug_event!(%key, "a purged entry in the shared tier: a miss");
        let _ = tier.delete_record(Name(Hash32::of(key.as_bytes()))).await;
        return Ok(None);
    }
    Ok(Some((entry, body)))
}

/// The headers of `key`'s record in the bucket, if it has one.
pub(crate) async fn headers(tier: &dyn Storage, key: &str) -> Option<http::HeaderMap> {
    let record = tier
        .read_record(Name(Hash32::of(key.as_bytes())))
        .await
        .ok()??;
    Entry::decode(&record)
        .ok()
        .filter(|entry| entry.key == key)
        .map(|entry| entry.headers)
}

/// Copies the entry committed on disk under `key_hash` (body `digest`, `length` bytes, in
/// the store laid out by `layout`) up to the bucket: the body unless the bucket has it, then
/// the record as it is on disk now (a newer write of the key shares itself too), if it is
/// `current` still (not purged or replaced while the body went up).
pub(crate) async fn copy_up(
    tier: &dyn Storage,
    layout: &Layout,
    (key_hash, digest, length): (Hash32, Hash32, u64),
    current: impl Fn() -> bool,
) -> Result<()> {
    if tier.body_length(Name(digest)).await? != Some(length) {
        let path = layout.content_path(digest);
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
    let path = layout.record_path(key_hash);
    let record = blocking(move || match crate::format::files::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(e, &path)),
    })
    .await?;
    if let Some(record) = record
        && current()
    {
        tier.write_record(Name(key_hash), Bytes::from(record))
            .await?;
    }
    Ok(())
}

/// Removes from the bucket, on a task of its own, the records of URLs under `prefix`
/// stored before `before` (reading each record: a prefix purge is rare, and until this
/// is done the purge log keeps read-throughs from serving them).
pub(crate) fn remove_prefix(tier: Arc<dyn Storage>, prefix: String, before: SystemTime) {
    let what = format!("prefix {prefix}");
    remove_matching(tier, what, move |entry| {
        entry.is_under(&prefix) && entry.stored_at < before
    });
}

/// Removes from the bucket, on a task of its own, the records carrying one of `tags`
/// stored before `before` (reading each record, as for a prefix).
pub(crate) fn remove_tagged(tier: Arc<dyn Storage>, tags: Vec<String>, before: SystemTime) {
    let what = format!("tags {}", tags.join(" "));
    remove_matching(tier, what, move |entry| {
        entry.stored_at < before && tags.iter().any(|tag| entry.tags.contains(tag))
    });
}

/// Removes from the bucket, on a task of its own, every record that `matches`.
fn remove_matching<F>(tier: Arc<dyn Storage>, what: String, matches: F)
where
    F: Fn(&Entry) -> bool + Send + Sync + 'static,
{
    crate::rt::spawn(async move {
        // Each reads the whole bucket: a few at once, the others wait their turn.
        static SWEEPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _turn = SWEEPS.acquire().await;
        let swept = async {
            let mut removed = 0u64;
            for listed in tier.list_records().await? {
                let Some(record) = tier.read_record(listed.name).await? else {
                    continue;
                };
                let Ok(entry) = Entry::decode(&record) else {
                    continue;
                };
                if matches(&entry) {
                    tier.delete_record(listed.name).await?;
                    removed += 1;
                }
            }
            Ok::<_, Error>(removed)
        };
        match swept.await {
            Ok(removed) => {
                crate::log::info_event!(%what, removed, "purged from the shared tier");
            }
            Err(error) => {
                crate::log::warn_event!(%what, %error, "could not purge from the shared tier");
            }
        }
    });
}

/// Removes `key_hash`'s record from the bucket (its body may be named by others).
pub(crate) async fn remove(tier: &dyn Storage, key_hash: Hash32) {
    if let Err(error) = tier.delete_record(Name(key_hash)).await {
        crate::log::warn_event!(%error, "could not remove an entry from the shared tier");
    }
}
