//! Purges that reach every node of a fleet through the shared tier alone: each purge is a
//! note in the tier's purge log, which every node reads on a timer and applies to its own
//! disk. No service besides the bucket.
//!
//! - A note's name says what a node needs: `purges/log/<ms>-<node>-<n>-k-<sha256 of key>`
//!   purges a key, `…-p-<sha256 of prefix>` every URL under a prefix (the prefix is the
//!   note's bytes, checked against its hash), `…-t-<sha256 of tags>` every entry carrying
//!   one of some tags (the tags, separated by spaces, are the note's bytes). `<ms>` is when
//!   it was written.
//! - Writing a purge: its note, then `purges/latest`, which every node polls with a
//!   conditional read, so a log that has not changed costs one small request per poll.
//!   The log itself is listed when `latest` changes and at least every
//!   [`LIST_AT_LEAST_EVERY`], from [`RELIST`] before the newest purge seen (so a note
//!   written late, or by a node whose clock is behind, is still found).
//! - Applying a purge: entries stored before its time (plus [`SKEW`], for clocks that
//!   differ) are dropped, entries fetched after it stay; a write of the key under way is
//!   not committed; a read-through of an entry it purged is a miss.
//! - A store reads the whole log before it serves, so a node that was down applies what it
//!   missed. Notes older than the retention are removed by whichever node compacts, after
//!   raising `purges/horizon`; a node that had not read the log since before the horizon
//!   drops everything it stored before it.
//!
//! Notes are untrusted input: a name that does not parse is ignored, a time later than the
//! note's write (as the bucket tells it) is taken as that write's, and a prefix note whose
//! bytes do not hash to its name is ignored. A purge can only remove entries. With fleet
//! fills, the fleet has a secret, and a note's name ends with its seal
//! (`…-<sha256>-<tag>`), `purges/horizon` holds `<ms>.<tag>`: notes and a horizon without a
//! valid seal (written by anyone else who can write to the bucket) are ignored. A horizon
//! later than now is ignored whatever its seal.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::rt::lock;
use crate::storage::{Note, PutNote, Storage};
use crate::support::{epoch_millis, from_epoch_millis, millis};

use super::seal::Secret;

mod node;
mod note;
pub(crate) use node::NodeStore;
use note::{Purge, Target};

const LOG: &str = "purges/log";
const LATEST: &str = "purges/latest";
const HORIZON: &str = "purges/horizon";

/// How far behind the newest purge seen the log is listed again.
pub(crate) const RELIST: Duration = Duration::from_secs(60);
/// The log is listed at least this often, even when `latest` says nothing changed (a node
/// that died between its note and `latest`).
pub(crate) const LIST_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// Entries stored up to this long after a purge's time are dropped by it too: clocks that
/// differ by up to this much still drop every older copy (at worst one more fetch).
pub(crate) const SKEW: Duration = Duration::from_secs(1);
/// Key purges remembered for checking read-throughs: long enough for any copy another node
/// was writing up to the tier when the purge came.
const KEYS_REMEMBERED: Duration = Duration::from_secs(600);
/// At most this many key purges are remembered; past it the oldest go.
const MAX_KEYS_REMEMBERED: usize = 100_000;
/// At most this many prefix purges, and as many tag purges, are remembered (for the
/// retention).
const MAX_PREFIXES_REMEMBERED: usize = 10_000;
/// Notes listed per request.
const PAGE: usize = 1000;
/// How long a store waits for the log at start before it serves anyway.
const START_WAIT: Duration = Duration::from_secs(5);

/// A store's part in its fleet's purge log.
pub(crate) struct PurgeLog {
    tier: Arc<dyn Storage>,
    every: Duration,
    retention: Duration,
    /// Names this store's notes: 12 hex digits, new each time the store is built.
    node: String,
    written: AtomicU64,
    state: Mutex<LogState>,
    /// Set once the log was read at start, whatever came of it: lookups wait for it.
    started: OnceCell<()>,
    /// Purges of other nodes applied here.
    pub(crate) applied: AtomicU64,
    failing: AtomicBool,
    /// The tier keeps no notes: purges stay on each node.
    unsupported: AtomicBool,
    /// The fleet's secret, which seals notes and the horizon; without it they are taken as
    /// they are.
    secret: Option<Secret>,
}

/// How far this node has read the fleet's purge log.
#[derive(Default)]
struct LogState {
    /// `latest`'s tag when last read.
    tag: Option<String>,
    /// The newest purge time seen (ms): the log is listed from [`RELIST`] before it.
    newest: u64,
    /// Names already applied or written here, back to `newest - RELIST`.
    seen: BTreeSet<String>,
    last_listed: Option<Instant>,
    last_compacted: Option<Instant>,
    /// Recent key purges (key hash → stored before, ms), for read-throughs.
    keys: HashMap<Hash32, u64>,
    /// Prefix purges within the retention (prefix, stored before, ms), for read-throughs.
    prefixes: Vec<(String, u64)>,
    /// Tag purges within the retention (tags, stored before, ms), for read-throughs.
    tags: Vec<(Vec<String>, u64)>,
}

impl PurgeLog {
    pub(crate) fn new(
        tier: Arc<dyn Storage>,
        every: Duration,
        retention: Duration,
        secret: Option<Secret>,
    ) -> Self {
        let seed = crate::support::unique_name();
        PurgeLog {
            tier,
            every: every.max(Duration::from_millis(10)),
            retention,
            node: Hash32::of(seed.as_bytes()).to_hex()[..12].to_owned(),
            written: AtomicU64::new(0),
            state: Mutex::default(),
            started: OnceCell::new(),
            applied: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            unsupported: AtomicBool::new(false),
            secret,
        }
    }

    /// Writes a purge of `key` to the log.
    pub(crate) async fn publish_key(&self, key: &str) -> Result<()> {
        self.publish(Target::Key(Hash32::of(key.as_bytes())), Bytes::new(), None)
            .await
    }

    /// Writes a purge of every URL starting with `prefix` to the log.
    pub(crate) async fn publish_prefix(&self, prefix: &str) -> Result<()> {
        let hash = Hash32::of(prefix.as_bytes());
        let bytes = Bytes::copy_from_slice(prefix.as_bytes());
        self.publish(Target::Prefix(hash), bytes, Some(prefix))
            .await
    }

    /// Keeps a purge of `tags` (of what was stored before `before`) for read-throughs,
    /// before it is written: this node's own read-throughs are misses from now on.
    pub(crate) fn remember_tags(&self, tags: &[&str], before: SystemTime) {
        let tags = tags.iter().map(|tag| (*tag).to_owned()).collect();
        lock(&self.state).remember_tags(tags, epoch_millis(before));
    }

    /// Writes a purge of every entry carrying one of `tags` to the log.
    pub(crate) async fn publish_tags(&self, tags: &[&str]) -> Result<()> {
        let list = tags.join(" ");
        let hash = Hash32::of(list.as_bytes());
        let bytes = Bytes::from(list.into_bytes());
        self.publish(Target::Tags(hash), bytes, None).await
    }

    async fn publish(&self, target: Target, bytes: Bytes, prefix: Option<&str>) -> Result<()> {
        let at = epoch_millis(SystemTime::now());
        let (kind, hash) = match &target {
            Target::Key(hash) => ("k", hash),
            Target::Prefix(hash) => ("p", hash),
            Target::Tags(hash) => ("t", hash),
        };
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("{at:013}-{}-{n}-{kind}-{}", self.node, hash.to_hex());
        if let Some(secret) = &self.secret {
            let tag = secret.short_tag(&[b"purge", name.as_bytes()]);
            name = format!("{name}-{tag}");
        }
        {
            // This node applied it already; its read-throughs are checked against it.
            let mut state = lock(&self.state);
            state.seen.insert(name.clone());
            let before = at.saturating_add(millis(SKEW));
            match (prefix, &target) {
                (Some(prefix), _) => state.remember_prefix(prefix.to_owned(), before),
                (None, Target::Key(hash)) => state.remember_key(*hash, before),
                (None, Target::Prefix(_) | Target::Tags(_)) => {}
            }
        }
        let written = async {
            let path = format!("{LOG}/{name}");
            self.tier.put_note(&path, bytes, PutNote::Overwrite).await?;
            let latest = Bytes::from(name.clone().into_bytes());
            self.tier.put_note(LATEST, latest, PutNote::Overwrite).await
        };
        match written.await {
            Ok(_) => Ok(()),
            Err(e) if self.keeps_no_notes(&e) => Ok(()),
            Err(e) => Err(Error::new(ErrorKind::Io)
                .with_subject("purged on this node, but the fleet's purge log could not be written")
                .with_source(e)),
        }
    }

    /// Whether `error` says the tier keeps no notes; the first time, says so in the log.
    fn keeps_no_notes(&self, error: &Error) -> bool {
        if error.kind() != ErrorKind::Unsupported {
            return false;
        }
        if !self.unsupported.swap(true, Ordering::Relaxed) {
            crate::log::warn_event!(
                "the shared tier keeps no notes: purges stay on the node they are sent to"
            );
        }
        true
    }

    /// Whether `entry`, read from the tier, was purged since it was stored.
    pub(crate) fn purged(&self, entry: &Entry) -> bool {
        let stored = epoch_millis(entry.stored_at);
        let state = lock(&self.state);
        let key = Hash32::of(entry.key.as_bytes());
        state.keys.get(&key).is_some_and(|&before| stored < before)
            || state
                .prefixes
                .iter()
                .any(|(prefix, before)| stored < *before && entry.is_under(prefix))
            || (!entry.tags.is_empty()
                && state.tags.iter().any(|(tags, before)| {
                    stored < *before && tags.iter().any(|tag| entry.tags.contains(tag))
                }))
    }

    /// One poll: a conditional read of `latest`, and when it changed (or the log was not
    /// listed for [`LIST_AT_LEAST_EVERY`]) a listing of the log, whose new purges are
    /// applied. Compacts the log when that is due.
    async fn poll(&self, node: &dyn NodeStore) -> Result<()> {
        let (tag, due) = {
            let state = lock(&self.state);
            let due = state
                .last_listed
                .is_none_or(|at| at.elapsed() >= LIST_AT_LEAST_EVERY);
            (state.tag.clone(), due)
        };
        let changed = match self.tier.read_note(LATEST, tag.as_deref()).await? {
            Note::Found { tag, .. } => {
                lock(&self.state).tag = Some(tag);
                true
            }
            _ => false,
        };
        if changed || due {
            self.read_log(node, false).await?;
        }
        self.compact_when_due().await
    }

    /// Lists the log (all of it, `from_start`, else from [`RELIST`] before the newest
    /// purge seen) and applies every purge not seen yet.
    async fn read_log(&self, node: &dyn NodeStore, from_start: bool) -> Result<()> {
        let started = (Instant::now(), SystemTime::now());
        let mut after = (!from_start).then(|| {
            let newest = lock(&self.state).newest;
            format!("{:013}", newest.saturating_sub(millis(RELIST)))
        });
        loop {
            let page = self.tier.list_notes(LOG, after.as_deref(), PAGE).await?;
            let more = page.len() == PAGE;
            after = page.last().map(|listed| listed.name.clone());
            let fresh: Vec<Purge> = {
                let mut state = lock(&self.state);
                let fresh: Vec<Purge> = page
                    .iter()
                    .filter(|listed| !state.seen.contains(&listed.name))
                    .filter_map(|listed| {
                        Purge::parse(&listed.name, listed.modified, self.secret.as_ref())
                    })
                    .collect();
                for purge in &fresh {
                    state.seen.insert(purge.name.clone());
                    state.newest = state.newest.max(purge.at);
                }
                fresh
            };
            self.apply(node, fresh).await;
            if !more {
                break;
            }
        }
        self.forget_old(started.0);
        node.note_log_read(started.1).await;
        Ok(())
    }

    /// Notes a listing begun at `listed`, and forgets names and purges no longer needed.
    fn forget_old(&self, listed: Instant) {
        let mut state = lock(&self.state);
        state.last_listed = Some(listed);
        let oldest = format!("{:013}", state.newest.saturating_sub(millis(RELIST)));
        state.seen = state.seen.split_off(oldest.as_str());
        let now = epoch_millis(SystemTime::now());
        let kept = now.saturating_sub(millis(KEYS_REMEMBERED));
        state.keys.retain(|_, before| *before >= kept);
        let kept = now.saturating_sub(millis(self.retention));
        state.prefixes.retain(|(_, before)| *before >= kept);
        state.tags.retain(|(_, before)| *before >= kept);
    }

    /// Applies purges other nodes wrote.
    async fn apply(&self, node: &dyn NodeStore, purges: Vec<Purge>) {
        let mut prefixes = Vec::new();
        for purge in purges {
            if purge.node == self.node {
                continue; // applied when written
            }
            let before = purge.before();
            match &purge.target {
                Target::Key(hash) => {
                    lock(&self.state).remember_key(*hash, before);
                    node.purge_key(*hash, from_epoch_millis(before)).await;
                }
                Target::Prefix(hash) => match self.content_of(&purge, *hash).await {
                    Some(prefix) => {
                        lock(&self.state).remember_prefix(prefix.clone(), before);
                        prefixes.push((prefix, from_epoch_millis(before)));
                    }
                    None => {
                        crate::log::warn_event!(name = %purge.name, "a prefix purge that could not be read: ignored");
                        continue;
                    }
                },
                Target::Tags(hash) => {
                    let tags: Option<Vec<String>> =
                        self.content_of(&purge, *hash).await.and_then(|list| {
                            let tags: Vec<String> = crate::format::tags::split(&list)
                                .map(str::to_owned)
                                .collect();
                            let valid = !tags.is_empty()
                                && tags.iter().all(|tag| crate::format::tags::is_tag(tag));
                            valid.then_some(tags)
                        });
                    let Some(tags) = tags else {
                        crate::log::warn_event!(name = %purge.name, "a tag purge that could not be read: ignored");
                        continue;
                    };
                    lock(&self.state).remember_tags(tags.clone(), before);
                    if let Err(error) = node.purge_tags(tags, from_epoch_millis(before)).await {
                        crate::log::warn_event!(%error, "could not apply a tag purge from the fleet's log");
                    }
                }
            }
            self.applied.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            metrics::counter!(crate::Counter::FleetPurgesApplied.name()).increment(1);
            crate::log::debug_event!(name = %purge.name, "applied a purge from the fleet's log");
        }
        if !prefixes.is_empty()
            && let Err(error) = node.purge_prefixes(prefixes).await
        {
            crate::log::warn_event!(%error, "could not apply prefix purges from the fleet's log");
        }
    }

    /// What a prefix or tag purge names: its note's bytes, when they hash to its name.
    async fn content_of(&self, purge: &Purge, hash: Hash32) -> Option<String> {
        let path = format!("{LOG}/{}", purge.name);
        let Ok(Note::Found { bytes, .. }) = self.tier.read_note(&path, None).await else {
            return None;
        };
        if Hash32::of(&bytes) != hash {
            return None;
        }
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// Every `retention / 24` (at least a minute): raises the horizon to `now - retention`
    /// and removes the notes older than it.
    async fn compact_when_due(&self) -> Result<()> {
        let every = (self.retention / 24).max(Duration::from_secs(60));
        {
            let mut state = lock(&self.state);
            match state.last_compacted {
                Some(at) if at.elapsed() < every => return Ok(()),
                Some(_) => state.last_compacted = Some(Instant::now()),
                // The first round waits a period: nodes that start together do not all
                // compact at once.
                None => {
                    state.last_compacted = Some(Instant::now());
                    return Ok(());
                }
            }
        }
        let cutoff = epoch_millis(SystemTime::now()).saturating_sub(millis(self.retention));
        if self.horizon().await? < cutoff {
            let bytes = Bytes::from(self.seal_horizon(cutoff));
            self.tier
                .put_note(HORIZON, bytes, PutNote::Overwrite)
                .await?;
        }
        let cutoff_name = format!("{cutoff:013}");
        let mut removed = 0;
        loop {
            let page = self.tier.list_notes(LOG, None, PAGE).await?;
            let old: Vec<_> = page
                .iter()
                .take_while(|listed| listed.name < cutoff_name)
                .collect();
            for listed in &old {
                self.tier
                    .delete_note(&format!("{LOG}/{}", listed.name))
                    .await?;
            }
            removed += old.len();
            if old.len() < PAGE {
                break;
            }
        }
        if removed > 0 {
            crate::log::info_event!(removed, "compacted the fleet's purge log");
        }
        Ok(())
    }

    /// The horizon's note for `ms`: the number, sealed when the fleet has a secret.
    fn seal_horizon(&self, ms: u64) -> String {
        let ms = ms.to_string();
        match &self.secret {
            Some(secret) => format!("{ms}.{}", secret.tag(&[b"horizon", ms.as_bytes()])),
            None => ms,
        }
    }

    /// The time (ms) before which the log was compacted away; 0 when it never was, or
    /// when what the note holds is not a horizon this fleet wrote (no valid seal, or a
    /// time to come: every node would drop everything it stored at each start).
    async fn horizon(&self) -> Result<u64> {
        let Note::Found { bytes, .. } = self.tier.read_note(HORIZON, None).await? else {
            return Ok(0);
        };
        let text = std::str::from_utf8(&bytes).unwrap_or_default().trim();
        let ms = match (&self.secret, text.split_once('.')) {
            (Some(secret), Some((ms, tag))) => secret
                .verify(&[b"horizon", ms.as_bytes()], tag)
                .then_some(ms),
            (Some(_), None) => None,
            (None, _) => Some(text),
        };
        let latest = epoch_millis(SystemTime::now()).saturating_add(millis(SKEW));
        Ok(ms
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|&ms| ms <= latest)
            .unwrap_or(0))
    }
}

impl LogState {
    fn remember_key(&mut self, hash: Hash32, before: u64) {
        if self.keys.len() >= MAX_KEYS_REMEMBERED
            && let Some(oldest) = self.keys.iter().min_by_key(|(_, b)| **b).map(|(k, _)| *k)
        {
            self.keys.remove(&oldest);
        }
        let kept = self.keys.entry(hash).or_insert(before);
        *kept = (*kept).max(before);
    }

    fn remember_tags(&mut self, tags: Vec<String>, before: u64) {
        if self.tags.len() >= MAX_PREFIXES_REMEMBERED {
            self.tags.remove(0);
        }
        self.tags.push((tags, before));
    }

    fn remember_prefix(&mut self, prefix: String, before: u64) {
        if self.prefixes.len() >= MAX_PREFIXES_REMEMBERED {
            self.prefixes.remove(0);
        }
        self.prefixes.push((prefix, before));
    }
}

#[cfg(test)]
mod tests;
