//! Request collapsing, as a component of its own (as pingora's cache lock is): fills,
//! entries being written that other requests follow. It knows the body type, the on-disk
//! format and the runtime, and nothing of the store that writes a fill or the cache rules
//! that decide who may follow one; readers of a growing file are apart ([`follow`]).
//!
//! The first request for a key
//! that misses leads: its response is tee'd into a temp file as usual. Requests for the same
//! key that arrive meanwhile follow: they get the leader's response head as soon as it is
//! known and read the body from the growing temp file, woken as it grows, never asking the
//! origin themselves.

use crate::rt::lock;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_cache_semantics::CachePolicy;
use tokio::sync::watch;

use crate::error::Error;
use crate::format::layout::Hash32;

mod follow;
pub(crate) use follow::FollowReader;

/// The fills under way in one store, by key.
#[derive(Default)]
pub(crate) struct Fills {
    by_key: Mutex<HashMap<Hash32, Arc<Fill>>>,
    /// Followers check what they read against the body's digest (`verify_on_read`).
    verify: bool,
}

impl Fills {
    /// Fills whose followers check what they read from the file against the digest of
    /// the body as it arrived, when `verify`: bytes changed on disk under them are never
    /// passed off as the whole body.
    pub(crate) fn verifying(verify: bool) -> Self {
        Fills {
            by_key: Mutex::default(),
            verify,
        }
    }

    /// Fills under way.
    pub(crate) fn len(&self) -> usize {
        crate::rt::lock(&self.by_key).len()
    }
}

/// How much the fills of one cache may read on their own once nobody reads them: at most
/// `permits` such fills at once, each at most `bytes` more. Past that a fill whose last
/// reader left is given up and nothing is stored.
#[derive(Clone, Debug)]
pub(crate) struct Background {
    permits: Arc<tokio::sync::Semaphore>,
    at_once: usize,
    bytes: u64,
}

impl Background {
    pub(crate) fn new(at_once: usize, bytes: u64) -> Self {
        Background {
            permits: Arc::new(tokio::sync::Semaphore::new(at_once)),
            at_once,
            bytes,
        }
    }

    /// `(at once, bytes each)`.
    pub(crate) fn limits(&self) -> (usize, u64) {
        (self.at_once, self.bytes)
    }
}

/// The right of a fill to read on with nobody reading it, and how far.
pub(crate) type BackgroundBudget = (tokio::sync::OwnedSemaphorePermit, u64);

/// One entry being written.
pub(crate) struct Fill {
    state: watch::Sender<FillState>,
    followers: AtomicUsize,
    /// Keep writing when the leader's client goes away, even with nobody following, within
    /// this budget.
    complete_on_disconnect: Option<Background>,
    /// Where each body reader is: what the relay must keep.
    positions: Mutex<Vec<Weak<AtomicU64>>>,
    /// The rest of the body, when the store failed while others were following it.
    relay: Relay,
    /// Woken when a request starts following: the writer then writes through what it holds.
    joined: tokio::sync::Notify,
    /// Followers check what they read against `digest` (see [`Fills::verifying`]).
    verify: bool,
}

/// What followers see of a fill.
#[derive(Clone, Default)]
pub(crate) struct FillState {
    head: Option<Arc<FillHead>>,
    file: Option<Arc<File>>,
    written: u64,
    /// Body bytes handed to followers through the relay (from `written` on), once the
    /// store failed.
    relayed: Option<u64>,
    /// The store gave up on this fill: no new followers.
    closed: bool,
    end: Option<FillEnd>,
    /// The SHA-256 of the body as it arrived, once it is stored.
    digest: Option<Hash32>,
}

/// The response a fill is storing, as its followers answer it.
#[derive(Debug)]
pub(crate) struct FillHead {
    pub(crate) parts: http::response::Parts,
    pub(crate) policy: CachePolicy,
    /// The leader's values of the request headers the response's `Vary` names: a follower
    /// whose values differ asked for another variant.
    pub(crate) varying: HeaderMap,
    /// The record being stored, when it is known before the body (a read-through from
    /// the shared tier): what a follower's lookup answers.
    pub(crate) entry: Option<Arc<crate::format::record::Entry>>,
}

/// How a fill ended.
#[derive(Debug, Clone)]
pub(crate) enum FillEnd {
    /// The entry is stored, its body this long.
    Stored(u64),
    /// A revalidation refreshed the stored entry's headers; its body was not rewritten.
    Updated,
    /// The body failed or fell short (why); nothing is stored.
    Failed(Arc<Error>),
    /// The body is complete, this long, but the store could not keep it (a full disk):
    /// followers reading it finish from the temp file and the relay; later requests go to
    /// the origin.
    Unstored(u64),
    /// The leader's response is not one to share (not storable, another variant, an
    /// error): followers ask the origin themselves.
    Released,
}

/// Bytes a relay may hold for followers before the writer waits for them.
const RELAY_WINDOW: usize = 8 << 20;
/// How long the writer waits for a follower that keeps the relay full.
const RELAY_PATIENCE: Duration = Duration::from_secs(10);

/// The body past the point where the store failed, kept in memory for the followers.
#[derive(Default)]
struct Relay {
    chunks: Mutex<Option<Relayed>>,
    /// Signalled as followers read on, or leave.
    room: tokio::sync::Notify,
}

/// The chunks of a fill kept in memory for followers that read behind the writer.
struct Relayed {
    /// The body offset of the first chunk kept.
    from: u64,
    chunks: VecDeque<Bytes>,
    bytes: usize,
}

impl Relayed {
    fn until(&self) -> u64 {
        self.from + self.bytes as u64
    }

    /// Drops the chunks that end at or before `needed`.
    fn trim(&mut self, needed: u64) {
        while let Some(first) = self.chunks.front() {
            let end = self.from + first.len() as u64;
            if end > needed {
                break;
            }
            self.from = end;
            self.bytes -= first.len();
            self.chunks.pop_front();
        }
    }

    /// Up to `max` bytes from `offset`, if the relay still holds them.
    fn read(&self, offset: u64, max: u64) -> Option<Bytes> {
        let mut start = self.from;
        for chunk in &self.chunks {
            let end = start + chunk.len() as u64;
            if offset >= start && offset < end {
                let begin = (offset - start) as usize;
                let len = (end - offset).min(max) as usize;
                return Some(chunk.slice(begin..begin + len));
            }
            start = end;
        }
        None
    }
}

/// A request's part in a fill.
pub(crate) enum Role {
    Leader(FillLeader),
    Follower(FillFollower),
}

/// Something held until an entry is in the shared tier, then dropped: the fleet's lease.
pub(crate) type HeldUntilShared = Box<dyn std::any::Any + Send + Sync>;

/// The leader's hold on a fill. Dropped without an end, it releases the followers.
pub(crate) struct FillLeader {
    fills: Arc<Fills>,
    key: Hash32,
    fill: Arc<Fill>,
    /// The fleet's lease on the key, held until the entry is in the shared tier: a guard
    /// whose drop releases it (the fill need know no more of the fleet).
    pub(crate) lease: Option<HeldUntilShared>,
}

/// A follower's view of a fill.
pub(crate) struct FillFollower {
    fill: Arc<Fill>,
    state: watch::Receiver<FillState>,
    /// How long it waits for the leader's head before it asks the origin itself.
    wait: Duration,
}

/// What a follower waiting for the leader's response head learns.
pub(crate) enum Followed {
    /// The head of the response being stored; the body follows.
    Head(Arc<FillHead>),
    /// The entry is stored already: look it up.
    Stored,
    /// Ask the origin yourself (released, failed before a head, or waited too long).
    Alone,
}

impl Fills {
    /// Leads a new fill of `key`, or follows the one under way (or just stored: its
    /// followers then look the entry up), waiting at most `wait` for its leader's head. A
    /// fill that failed or was released gets a new leader.
    pub(crate) fn join(
        self: &Arc<Self>,
        key: Hash32,
        complete_on_disconnect: Option<Background>,
        wait: Duration,
    ) -> Role {
        let mut by_key = lock(&self.by_key);
        if let Some(fill) = by_key.get(&key)
            && fill.joinable()
        {
            return Role::Follower(Fill::follower(fill, wait));
        }
        let fill = Arc::new(Fill {
            state: watch::Sender::new(FillState::default()),
            followers: AtomicUsize::new(0),
            complete_on_disconnect,
            positions: Mutex::default(),
            relay: Relay::default(),
            joined: tokio::sync::Notify::new(),
            verify: self.verify,
        });
        by_key.insert(key, Arc::clone(&fill));
        Role::Leader(FillLeader {
            fills: Arc::clone(self),
            key,
            fill,
            lease: None,
        })
    }

    /// Follows the fill of `key` under way, if there is one that may be followed, waiting
    /// at most `wait` for its leader's head: never leads one.
    pub(crate) fn follow(&self, key: Hash32, wait: Duration) -> Option<FillFollower> {
        let by_key = lock(&self.by_key);
        let fill = by_key.get(&key).filter(|fill| fill.joinable())?;
        Some(Fill::follower(fill, wait))
    }
}

impl Fill {
    /// A new follower of `fill`, counted, its writer told.
    fn follower(fill: &Arc<Fill>, wait: Duration) -> FillFollower {
        fill.followers.fetch_add(1, Ordering::SeqCst);
        fill.joined.notify_waiters();
        FillFollower {
            fill: Arc::clone(fill),
            state: fill.state.subscribe(),
            wait,
        }
    }

    /// Whether a request may still follow this fill: it has not failed, been released, or
    /// been given up by the store (whose relay keeps only what the followers already there
    /// need).
    fn joinable(&self) -> bool {
        let state = self.state.borrow();
        !state.closed
            && !matches!(
                state.end,
                Some(FillEnd::Failed(_) | FillEnd::Released | FillEnd::Unstored(_))
            )
    }

    /// Makes every request that joins from now on lead a new fill (and every follower still
    /// waiting for the head ask the origin): the store has given up on this one.
    pub(crate) fn close_to_newcomers(&self) {
        self.state.send_modify(|s| {
            s.closed = true;
        });
    }

    /// Waits until a request starts following this fill, unless one does already.
    pub(crate) async fn until_followed(&self) {
        let joined = self.joined.notified();
        let mut joined = std::pin::pin!(joined);
        joined.as_mut().enable();
        if !self.followed() {
            joined.await;
        }
    }

    /// Whether anyone follows this fill.
    pub(crate) fn followed(&self) -> bool {
        self.followers.load(Ordering::SeqCst) > 0
    }

    /// A share of the cache's budget for reading on with nobody reading, when this fill
    /// completes on disconnect and the budget has room.
    pub(crate) fn background_budget(&self) -> Option<BackgroundBudget> {
        let background = self.complete_on_disconnect.as_ref()?;
        let permit = Arc::clone(&background.permits).try_acquire_owned().ok()?;
        Some((permit, background.bytes))
    }

    /// Whether a tee whose client went away should finish writing anyway.
    pub(crate) fn wanted(&self) -> bool {
        self.complete_on_disconnect.is_some() || self.followers.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn publish_head(&self, head: FillHead) {
        self.state.send_modify(|s| s.head = Some(Arc::new(head)));
    }

    pub(crate) fn publish_file(&self, file: File) {
        self.state.send_modify(|s| s.file = Some(Arc::new(file)));
    }

    /// Bytes now in the temp file, readable by followers.
    pub(crate) fn publish_written(&self, written: u64) {
        self.state.send_if_modified(|s| {
            let grew = written > s.written;
            s.written = s.written.max(written);
            grew
        });
    }

    /// After the store failed at body offset `from` (everything before it is in the temp
    /// file): hands `chunk`, the bytes from `from` on, to the followers. Waits while the
    /// relay holds [`RELAY_WINDOW`] bytes that some follower has yet to read, at most
    /// [`RELAY_PATIENCE`]; a follower that slow then fails rather than stall the others.
    pub(crate) async fn relay(&self, from: u64, chunk: Bytes) {
        let deadline = Instant::now() + RELAY_PATIENCE;
        loop {
            let room = self.relay.room.notified();
            let mut room = std::pin::pin!(room);
            // From here on a follower's move wakes this, even before it waits.
            room.as_mut().enable();
            {
                let mut relay = lock(&self.relay.chunks);
                let relayed = relay.get_or_insert_with(|| Relayed {
                    from,
                    chunks: VecDeque::new(),
                    bytes: 0,
                });
                relayed.trim(self.slowest_reader().unwrap_or(u64::MAX));
                let waited_enough = Instant::now() >= deadline;
                if waited_enough {
                    relayed.trim(u64::MAX);
                }
                if relayed.bytes < RELAY_WINDOW || waited_enough {
                    relayed.bytes += chunk.len();
                    relayed.chunks.push_back(chunk);
                    let until = relayed.until();
                    drop(relay);
                    self.state.send_modify(|s| s.relayed = Some(until));
                    return;
                }
            }
            tokio::select! {
                () = room => {}
                () = crate::rt::sleep_until(deadline) => {}
            }
        }
    }

    fn slowest_reader(&self) -> Option<u64> {
        let mut positions = lock(&self.positions);
        positions.retain(|p| p.strong_count() > 0);
        if self.followers.load(Ordering::SeqCst) > positions.len() {
            return Some(0);
        }
        positions
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.load(Ordering::Acquire))
            .min()
    }

    fn track(&self, position: &Arc<AtomicU64>) {
        lock(&self.positions).push(Arc::downgrade(position));
    }

    pub(crate) fn end(&self, end: FillEnd) {
        self.state.send_modify(|s| {
            if s.end.is_none() {
                s.end = Some(end);
            }
        });
    }

    /// Ends the fill with its body stored, `length` bytes whose SHA-256 is `digest`.
    pub(crate) fn end_stored(&self, length: u64, digest: Hash32) {
        self.state.send_modify(|s| {
            if s.end.is_none() {
                s.end = Some(FillEnd::Stored(length));
                s.digest = Some(digest);
            }
        });
    }
}

impl FillLeader {
    pub(crate) fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }
}

impl Drop for FillLeader {
    fn drop(&mut self) {
        self.fill.end(FillEnd::Released);
        let mut by_key = lock(&self.fills.by_key);
        if by_key
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            by_key.remove(&self.key);
        }
    }
}

impl FillFollower {
    /// Waits, at most the wait it joined with, for the leader's response head or the
    /// fill's end.
    pub(crate) async fn head(&mut self) -> Followed {
        let decided = |s: &FillState| s.head.is_some() || s.end.is_some();
        let waited = tokio::time::timeout(self.wait, self.state.wait_for(decided)).await;
        let Ok(Ok(state)) = waited else {
            return Followed::Alone;
        };
        match (&state.head, &state.end) {
            (_, Some(FillEnd::Stored(_) | FillEnd::Updated)) => Followed::Stored,
            (Some(head), None) if !state.closed => Followed::Head(Arc::clone(head)),
            _ => Followed::Alone,
        }
    }

    /// The body, read from the temp file as the leader writes it.
    pub(crate) fn body(self, chunk: usize) -> FollowReader {
        FollowReader::new(Arc::clone(&self.fill), self.state.clone(), chunk)
    }
}

impl Drop for FillFollower {
    fn drop(&mut self) {
        // A follower that reads on counts again through its reader.
        self.fill.followers.fetch_sub(1, Ordering::SeqCst);
        self.fill.relay.room.notify_waiters();
    }
}

impl crate::body::SharedFill for Fill {
    fn wanted(&self) -> bool {
        Fill::wanted(self)
    }

    fn followed(&self) -> bool {
        Fill::followed(self)
    }

    fn close_to_newcomers(&self) {
        Fill::close_to_newcomers(self)
    }

    fn background_budget(&self) -> Option<BackgroundBudget> {
        Fill::background_budget(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_waits_as_long_as_it_joined_for_and_no_longer() {
        let fills = Arc::new(Fills::verifying(false));
        let key = Hash32::of(b"GET:http://a/");
        let Role::Leader(leader) = fills.join(key, None, Duration::from_secs(60)) else {
            panic!("the first request leads");
        };
        let Role::Follower(mut impatient) = fills.join(key, None, Duration::from_millis(20)) else {
            panic!("the second follows");
        };
        // The leader never learns a head: the follower gives up after its own wait (well
        // before the leader's minute).
        let gave_up = tokio::time::timeout(Duration::from_secs(5), impatient.head()).await;
        assert!(matches!(gave_up, Ok(Followed::Alone)));
        let mut patient = fills
            .follow(key, Duration::from_secs(60))
            .expect("a fill under way may be followed");
        leader.fill().end(FillEnd::Updated);
        // Well before its minute: the fill's end wakes it.
        let woken = tokio::time::timeout(Duration::from_secs(5), patient.head()).await;
        assert!(matches!(woken, Ok(Followed::Stored)));
        drop(leader);
        assert!(
            matches!(fills.join(key, None, Duration::ZERO), Role::Leader(_)),
            "an ended fill gets a new leader"
        );
    }
}
