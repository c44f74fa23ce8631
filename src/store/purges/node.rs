//! A node's side of the fleet's purge log: reading it all before the store serves, polling
//! it on a timer, and applying purges to this node's disk (see the parent module for the
//! log's format).

use super::*;

impl StreamingManager {
    pub(in crate::store) fn purge_log(&self) -> Option<&Arc<PurgeLog>> {
        self.inner.purges.as_ref()
    }

    /// Whether deletes here go to a purge log that the fleet reads.
    pub(crate) fn shares_purges(&self) -> bool {
        self.purge_log().is_some()
    }

    /// Purges of other nodes applied here since the store was opened (0 without a log).
    pub(crate) fn purges_applied(&self) -> u64 {
        self.purge_log()
            .map_or(0, |log| log.applied.load(Ordering::Relaxed))
    }

    /// Waits until the purge log has been read once (at most [`START_WAIT`]), starting
    /// that read and the poll after it on first call. Lookups go through here, so that a
    /// store never serves what the fleet purged while it was down.
    pub(in crate::store) async fn purges_read(&self) {
        let Some(log) = self.purge_log() else {
            return;
        };
        if log.started.initialized() {
            return;
        }
        log.started
            .get_or_init(|| async {
                match tokio::time::timeout(START_WAIT, self.catch_up(log)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) if log.keeps_no_notes(&error) => return,
                    Ok(Err(error)) => {
                        crate::log::warn_event!(%error, "could not read the fleet's purge log; serving, and retrying");
                    }
                    Err(_) => {
                        crate::log::warn_event!("the fleet's purge log took too long to read; serving, and retrying");
                    }
                }
                self.poll_purges(Arc::downgrade(&self.inner), log.every);
            })
            .await;
    }

    /// At start: what was stored before the log's horizon goes when the log was not read
    /// since (it may have been purged), then the whole log is applied.
    async fn catch_up(&self, log: &PurgeLog) -> Result<()> {
        let horizon = log.horizon().await?;
        let read = self.log_last_read().await;
        if horizon > 0 && read.is_none_or(|read| read < horizon) {
            let before = from_epoch_millis(horizon);
            let removed = self
                .remove_where(move |entry| entry.stored_at < before)
                .await?;
            if removed > 0 {
                crate::log::warn_event!(
                    removed,
                    "entries older than the fleet's purge log dropped: this store had not read it since"
                );
            }
        }
        log.read_log(self, true).await
    }

    /// Polls the log every `every` while the store lives.
    fn poll_purges(&self, inner: Weak<Inner>, every: Duration) {
        if !crate::rt::available() {
            return;
        }
        crate::rt::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let manager = StreamingManager { inner };
                let Some(log) = manager.purge_log().cloned() else {
                    return;
                };
                match log.poll(&manager).await {
                    Ok(()) => {
                        if log.failing.swap(false, Ordering::Relaxed) {
                            crate::log::info_event!("the fleet's purge log is read again");
                        }
                    }
                    Err(error) if log.keeps_no_notes(&error) => return,
                    Err(error) => {
                        if !log.failing.swap(true, Ordering::Relaxed) {
                            crate::log::warn_event!(%error, "could not read the fleet's purge log; retrying");
                        }
                    }
                }
            }
        });
    }

    /// When this store last read the log (ms), as its `purges-read` file says.
    async fn log_last_read(&self) -> Option<u64> {
        let path = self.inner.layout.format_dir().join(READ_FILE);
        blocking(move || Ok(crate::format::files::read(&path).ok()))
            .await
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|s| s.trim().parse().ok())
    }

    /// Notes that the log was read whole up to `at` (best effort: at worst entries older
    /// than the horizon go at the next start).
    pub(super) async fn note_log_read(&self, at: SystemTime) {
        let Ok(opened) = self.opened().await else {
            return;
        };
        let path = self.inner.layout.format_dir().join(READ_FILE);
        let at = epoch_millis(at).to_string();
        let _ = blocking(move || {
            let temp = opened.scratch.temp_path();
            let mode = opened.layout.mode();
            let (temp, _) = crate::format::content::write_temp(temp, at.as_bytes(), false, mode)?;
            temp.persist(&path).map_err(|e| Error::io(e, &path))
        })
        .await;
    }

    /// Drops the entry under `key_hash` on this node's disk if it was stored before
    /// `before`, with its partial entry; a write of the key under way is not committed.
    pub(in crate::store) async fn purge_here(&self, key_hash: Hash32, before: SystemTime) {
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
    }

    /// Drops every entry on this node's disk whose URL starts with one of the prefixes
    /// and which was stored before that prefix's time. Writes under way are not committed.
    pub(in crate::store) async fn purge_prefixes_here(
        &self,
        prefixes: Vec<(String, SystemTime)>,
    ) -> Result<u64> {
        lock(&self.inner.deletions).record(None);
        self.clear_partials();
        self.remove_where(move |entry| {
            prefixes
                .iter()
                .any(|(prefix, before)| entry.stored_at < *before && entry.is_under(prefix))
        })
        .await
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
