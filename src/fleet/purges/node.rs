//! A node's side of the fleet's purge log: reading it all before the node's store serves,
//! polling it on a timer, and applying purges through [`NodeStore`], the one way the log
//! reaches a node's disk (see the parent module for the log's format).

use super::*;
use crate::storage::BoxFuture;

/// What the purge log asks of the store on this node. The store implements it; the log
/// knows nothing else of the store.
pub(crate) trait NodeStore: Send + Sync {
    /// Drops the entry under `key_hash` if it was stored before `before`, with its partial
    /// entry; a write of the key under way is not committed.
    fn purge_key(&self, key_hash: Hash32, before: SystemTime) -> BoxFuture<'_, ()>;
    /// Drops every entry whose URL starts with one of the prefixes and which was stored
    /// before that prefix's time; writes under way are not committed. How many went.
    fn purge_prefixes(&self, prefixes: Vec<(String, SystemTime)>) -> BoxFuture<'_, Result<u64>>;
    /// Drops every entry carrying one of `tags` and stored before `before`; writes under
    /// way of such entries are not committed. How many went.
    fn purge_tags(&self, tags: Vec<String>, before: SystemTime) -> BoxFuture<'_, Result<u64>>;
    /// Drops every entry stored before `before`. How many went.
    fn purge_stored_before(&self, before: SystemTime) -> BoxFuture<'_, Result<u64>>;
    /// When this store last read the log whole (ms), if it keeps that.
    fn log_read(&self) -> BoxFuture<'_, Option<u64>>;
    /// Keeps `at` as when the log was last read whole (best effort: at worst entries older
    /// than the horizon go at the next start).
    fn note_log_read(&self, at: SystemTime) -> BoxFuture<'_, ()>;
}

impl PurgeLog {
    /// Whether the log was read once since the store was built (or given up on).
    pub(crate) fn started(&self) -> bool {
        self.started.initialized()
    }

    /// Waits until the log has been read once (at most [`START_WAIT`]), starting that read
    /// and the poll after it on first call. `node` is the store; `revive` gives the store
    /// back to the poll while it lives. Lookups go through here, so that a store never
    /// serves what the fleet purged while it was down.
    pub(crate) async fn read_at_start<N, R>(self: &Arc<Self>, node: &N, revive: R)
    where
        N: NodeStore + 'static,
        R: Fn() -> Option<N> + Send + Sync + 'static,
    {
        self.started
            .get_or_init(|| async {
                match tokio::time::timeout(START_WAIT, self.catch_up(node)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) if self.keeps_no_notes(&error) => return,
                    Ok(Err(error)) => {
                        crate::log::warn_event!(%error, "could not read the fleet's purge log; serving, and retrying");
                    }
                    Err(_) => {
                        crate::log::warn_event!("the fleet's purge log took too long to read; serving, and retrying");
                    }
                }
                Arc::clone(self).poll_while(revive);
            })
            .await;
    }

    /// At start: what was stored before the log's horizon goes when the log was not read
    /// since (it may have been purged), then the whole log is applied.
    async fn catch_up(&self, node: &dyn NodeStore) -> Result<()> {
        let horizon = self.horizon().await?;
        let read = node.log_read().await;
        if horizon > 0 && read.is_none_or(|read| read < horizon) {
            let removed = node.purge_stored_before(from_epoch_millis(horizon)).await?;
            if removed > 0 {
                crate::log::warn_event!(
                    removed,
                    "entries older than the fleet's purge log dropped: this store had not read it since"
                );
            }
        }
        self.read_log(node, true).await
    }

    /// Polls the log every `every` while `revive` gives a store back.
    fn poll_while<N, R>(self: Arc<Self>, revive: R)
    where
        N: NodeStore + 'static,
        R: Fn() -> Option<N> + Send + Sync + 'static,
    {
        if !crate::rt::available() {
            return;
        }
        crate::rt::spawn(async move {
            loop {
                tokio::time::sleep(self.every).await;
                let Some(node) = revive() else {
                    return;
                };
                match self.poll(&node).await {
                    Ok(()) => {
                        if self.failing.swap(false, Ordering::Relaxed) {
                            crate::log::info_event!("the fleet's purge log is read again");
                        }
                    }
                    Err(error) if self.keeps_no_notes(&error) => return,
                    Err(error) => {
                        if !self.failing.swap(true, Ordering::Relaxed) {
                            crate::log::warn_event!(%error, "could not read the fleet's purge log; retrying");
                        }
                    }
                }
            }
        });
    }
}
