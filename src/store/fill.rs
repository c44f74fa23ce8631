//! Fills: entries being written that other requests follow. The first request for a key
//! that misses leads: its response is tee'd into a temp file as usual. Requests for the same
//! key that arrive meanwhile follow: they get the leader's response head as soon as it is
//! known and read the body from the growing temp file, woken as it grows, never asking the
//! origin themselves.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_cache_semantics::CachePolicy;
use tokio::sync::watch;

use super::layout::Hash32;
use super::reader::read_chunk;
use crate::error::{Error, ErrorKind};

/// The fills under way in one store, by key.
#[derive(Default)]
pub(crate) struct Fills {
    by_key: Mutex<HashMap<Hash32, Arc<Fill>>>,
}

/// One entry being written.
pub(crate) struct Fill {
    state: watch::Sender<FillState>,
    followers: AtomicUsize,
    /// Keep writing when the leader's client goes away, even with nobody following.
    complete_on_disconnect: bool,
}

/// What followers see of a fill.
#[derive(Clone, Default)]
pub(crate) struct FillState {
    head: Option<Arc<FillHead>>,
    file: Option<Arc<File>>,
    written: u64,
    end: Option<FillEnd>,
}

/// The response a fill is storing, as its followers answer it.
#[derive(Debug)]
pub(crate) struct FillHead {
    pub(crate) parts: http::response::Parts,
    pub(crate) policy: CachePolicy,
    /// The leader's values of the request headers the response's `Vary` names: a follower
    /// whose values differ asked for another variant.
    pub(crate) varying: HeaderMap,
}

/// How a fill ended.
#[derive(Debug, Clone)]
pub(crate) enum FillEnd {
    /// The entry is stored, its body this long.
    Stored(u64),
    /// A revalidation refreshed the stored entry's headers; its body was not rewritten.
    Updated,
    /// The body failed or fell short; nothing is stored.
    Failed(String),
    /// The leader's response is not one to share (not storable, another variant, an
    /// error): followers ask the origin themselves.
    Released,
}

/// A request's part in a fill.
pub(crate) enum Role {
    Leader(FillLeader),
    Follower(FillFollower),
}

/// The leader's hold on a fill. Dropped without an end, it releases the followers.
pub(crate) struct FillLeader {
    fills: Arc<Fills>,
    key: Hash32,
    fill: Arc<Fill>,
}

/// A follower's view of a fill.
pub(crate) struct FillFollower {
    fill: Arc<Fill>,
    state: watch::Receiver<FillState>,
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
    /// followers then look the entry up). A fill that failed or was released gets a new
    /// leader.
    pub(crate) fn join(self: &Arc<Self>, key: Hash32, complete_on_disconnect: bool) -> Role {
        let mut by_key = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fill) = by_key.get(&key)
            && !matches!(
                fill.state.borrow().end,
                Some(FillEnd::Failed(_) | FillEnd::Released)
            )
        {
            fill.followers.fetch_add(1, Ordering::SeqCst);
            return Role::Follower(FillFollower {
                fill: Arc::clone(fill),
                state: fill.state.subscribe(),
            });
        }
        let fill = Arc::new(Fill {
            state: watch::Sender::new(FillState::default()),
            followers: AtomicUsize::new(0),
            complete_on_disconnect,
        });
        by_key.insert(key, Arc::clone(&fill));
        Role::Leader(FillLeader {
            fills: Arc::clone(self),
            key,
            fill,
        })
    }
}

impl Fill {
    /// Whether a tee whose client went away should finish writing anyway.
    pub(crate) fn wanted(&self) -> bool {
        self.complete_on_disconnect || self.followers.load(Ordering::SeqCst) > 0
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

    pub(crate) fn end(&self, end: FillEnd) {
        self.state.send_modify(|s| {
            if s.end.is_none() {
                s.end = Some(end);
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
        let mut by_key = self.fills.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if by_key
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            by_key.remove(&self.key);
        }
    }
}

impl FillFollower {
    /// Waits, at most `timeout`, for the leader's response head or the fill's end.
    pub(crate) async fn head(&mut self, timeout: Duration) -> Followed {
        let decided = |s: &FillState| s.head.is_some() || s.end.is_some();
        let waited = tokio::time::timeout(timeout, self.state.wait_for(decided)).await;
        let Ok(Ok(state)) = waited else {
            return Followed::Alone;
        };
        match (&state.head, &state.end) {
            (_, Some(FillEnd::Stored(_) | FillEnd::Updated)) => Followed::Stored,
            (Some(head), None) => Followed::Head(Arc::clone(head)),
            _ => Followed::Alone,
        }
    }

    /// The body, read from the temp file as the leader writes it.
    pub(crate) fn body(self, chunk: usize) -> FollowReader {
        self.fill.followers.fetch_add(1, Ordering::SeqCst);
        FollowReader {
            _follower: FollowerCount(Arc::clone(&self.fill)),
            state: self.state.clone(),
            offset: 0,
            end: None,
            chunk: chunk.max(1),
            inflight: None,
            waiting: None,
        }
    }
}

impl Drop for FillFollower {
    fn drop(&mut self) {
        // A follower that reads on counts again through its reader.
        self.fill.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a reader among the fill's followers while it lives.
struct FollowerCount(Arc<Fill>);

impl Drop for FollowerCount {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads a fill's body from its growing temp file: whatever is written, in chunks, then
/// waits for more, until the fill ends.
pub(crate) struct FollowReader {
    _follower: FollowerCount,
    state: watch::Receiver<FillState>,
    offset: u64,
    /// Where to stop, for a range of the body; else its end.
    end: Option<u64>,
    chunk: usize,
    inflight: Option<crate::rt::Blocking<std::io::Result<Bytes>>>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl FollowReader {
    /// Reads only bytes `start..start + len` of the body, waiting for the writer to reach
    /// them.
    pub(crate) fn narrow(mut self, start: u64, len: u64) -> Self {
        self.offset = start;
        self.end = Some(start.saturating_add(len));
        self
    }

    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            if let Some(read) = self.inflight.as_mut() {
                let result = ready!(Pin::new(read).poll(cx));
                self.inflight = None;
                let bytes = match result {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(e)) => {
                        let error = Error::new(ErrorKind::Io).with_subject("a body being stored");
                        return Poll::Ready(Some(Err(error.with_source(e))));
                    }
                    Err(lost) => return Poll::Ready(Some(Err(lost))),
                };
                self.offset += bytes.len() as u64;
                return Poll::Ready(Some(Ok(bytes)));
            }
            if let Some(waiting) = self.waiting.as_mut() {
                ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
            }
            if self.end.is_some_and(|end| self.offset >= end) {
                return Poll::Ready(None);
            }
            let state = self.state.borrow_and_update().clone();
            if let Some(file) = state.file
                && self.offset < state.written
            {
                let until = self.end.map_or(state.written, |end| end.min(state.written));
                let len = (until - self.offset).min(self.chunk as u64) as usize;
                let offset = self.offset;
                match crate::rt::spawn_blocking(move || read_chunk(&file, offset, len)) {
                    Ok(read) => self.inflight = Some(read),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                continue;
            }
            match state.end {
                Some(FillEnd::Stored(length)) if self.offset >= length => return Poll::Ready(None),
                Some(FillEnd::Stored(_)) | None => {
                    // More is coming: wait for the writer to say so.
                    let mut state = self.state.clone();
                    self.waiting = Some(Box::pin(async move {
                        let _ = state.changed().await;
                    }));
                }
                Some(FillEnd::Failed(why)) => {
                    return Poll::Ready(Some(Err(
                        Error::new(ErrorKind::Incomplete).with_subject(why)
                    )));
                }
                Some(FillEnd::Released | FillEnd::Updated) => {
                    return Poll::Ready(Some(Err(Error::new(ErrorKind::Incomplete)
                        .with_subject("the response being followed was not stored"))));
                }
            }
        }
    }

    /// Bytes known to be left, once the fill's length is known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        if let Some(end) = self.end {
            return Some(end.saturating_sub(self.offset));
        }
        match self.state.borrow().end {
            Some(FillEnd::Stored(length)) => Some(length.saturating_sub(self.offset)),
            _ => None,
        }
    }
}
