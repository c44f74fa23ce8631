//! What an operator asks of a store when something is wrong: the record stored under a key,
//! and the records carrying a tag or under a prefix, a page at a time.

use super::StreamingManager;
use super::record_file::{ReadFailure, read_record};
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::rt::blocking;

/// Which records a listing reads.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    /// Those carrying the tag.
    Tag(String),
    /// Those whose URL (or, from `/`, path on every site) starts with it.
    Prefix(String),
}

/// The most records one page reads: a listing by prefix of a large store reads a page of
/// keys at a time, whatever it finds in them.
pub(crate) const READ_PER_PAGE: usize = 10_000;

/// Listings under way at once in a process: each reads up to [`READ_PER_PAGE`] records.
static LISTINGS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

impl StreamingManager {
    /// The record stored under `key` on this store's disk, without its body (`None`: none,
    /// or one a purge's note purges). An error when the store or the record cannot be read.
    pub(crate) async fn entry_here(&self, key: &str) -> Result<Option<Entry>> {
        let opened = self.serving().await?;
        let key_hash = Hash32::of(key.as_bytes());
        let key = key.to_owned();
        blocking(move || {
            let path = opened.layout.record_path(key_hash);
            match read_record(&path, key_hash) {
                Ok(Some((entry, _)))
                    if entry.key == key && !opened.notes.purges(&entry.tags, entry.stored_at) =>
                {
                    Ok(Some(entry))
                }
                Ok(_) | Err(ReadFailure::Unusable(_)) => Ok(None),
                Err(ReadFailure::Unavailable(e)) => Err(Error::io(e, &path)),
            }
        })
        .await
    }

    /// Up to `limit` records `selection` picks, in the order of their key hashes, from the
    /// first after `after`; and the key hash to go on after, when there may be more. Reads
    /// at most [`READ_PER_PAGE`] records a page, two listings at a time in a process (a
    /// third is refused with [`ErrorKind::Busy`](crate::ErrorKind::Busy)). Waits until the records
    /// are read in.
    pub(crate) async fn entries(
        &self,
        selection: Selection,
        after: Option<Hash32>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Hash32>)> {
        let turn = LISTINGS.try_acquire().map_err(|_| {
            Error::new(ErrorKind::Busy).with_subject("two listings under way already")
        })?;
        let opened = self.serving().await?;
        opened.read_in().await?;
        blocking(move || {
            let _turn = turn;
            let keys: Vec<Hash32> = match &selection {
                Selection::Tag(tag) => {
                    let mut keys = opened.index().tagged([tag.as_str()]);
                    keys.retain(|key| after.is_none_or(|after| *key > after));
                    keys.sort_unstable();
                    keys
                }
                Selection::Prefix(_) => opened.index().keys_after(after, READ_PER_PAGE + 1),
            };
            let mut found = Vec::new();
            for (read, key_hash) in keys.iter().enumerate() {
                if found.len() == limit.max(1) || read == READ_PER_PAGE {
                    return Ok((found, Some(keys[read - 1])));
                }
                let path = opened.layout.record_path(*key_hash);
                let entry = match read_record(&path, *key_hash) {
                    Ok(Some((entry, _))) => entry,
                    Ok(None) | Err(ReadFailure::Unusable(_)) => continue,
                    Err(ReadFailure::Unavailable(e)) => return Err(Error::io(e, &path)),
                };
                let picked = match &selection {
                    Selection::Tag(tag) => entry.tags.contains(tag),
                    Selection::Prefix(prefix) => entry.is_under(prefix),
                };
                if picked && !opened.notes.purges(&entry.tags, entry.stored_at) {
                    found.push(entry);
                }
            }
            Ok((found, None))
        })
        .await
    }
}
