//! Reading a fill's body as it grows: from the relay's chunks in memory while they are
//! there, else from the temp file, waiting for the writer when it is ahead, and (with
//! `verify_on_read`) holding the last chunk back until the whole matches the fill's digest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::sync::watch;

use super::{Fill, FillEnd, FillState};
use crate::error::{Error, ErrorKind};
use crate::format::layout::Hash32;
use crate::format::reader::read_pooled;
use crate::rt::lock;

/// Counts a reader among the fill's followers while it lives.
struct FollowerCount(Arc<Fill>);

impl Drop for FollowerCount {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::SeqCst);
        self.0.relay.room.notify_waiters();
    }
}

/// Reads a fill's body from its growing temp file: whatever is written, in chunks, then
/// waits for more, until the fill ends.
pub(crate) struct FollowReader {
    follower: FollowerCount,
    state: watch::Receiver<FillState>,
    /// `offset`, as the fill's relay sees it.
    position: Arc<AtomicU64>,
    offset: u64,
    /// Where to stop, for a range of the body; else its end.
    end: Option<u64>,
    chunk: usize,
    inflight: Option<crate::rt::Blocking<std::io::Result<Bytes>>>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// With `verify_on_read`, a whole body's check (none for a range).
    check: Option<Box<Check>>,
}

/// A followed body checked as it is read: the SHA-256 of what was read, and the last chunk
/// held back until the fill's digest says the bytes are the body's.
#[derive(Default)]
struct Check {
    hasher: sha2::Sha256,
    held: Option<Bytes>,
    /// The check was made (passed): what is held may go.
    done: bool,
}

impl FollowReader {
    /// A reader of `fill`'s body from its start, counted among its followers while it lives.
    pub(super) fn new(fill: Arc<Fill>, state: watch::Receiver<FillState>, chunk: usize) -> Self {
        fill.followers.fetch_add(1, Ordering::SeqCst);
        let position = Arc::new(AtomicU64::new(0));
        fill.track(&position);
        let check = fill.verify.then(Box::<Check>::default);
        FollowReader {
            follower: FollowerCount(fill),
            state,
            position,
            offset: 0,
            end: None,
            chunk: chunk.max(1),
            inflight: None,
            waiting: None,
            check,
        }
    }

    /// Reads only bytes `start..start + len` of the body, waiting for the writer to reach
    /// them.
    pub(crate) fn narrow(mut self, start: u64, len: u64) -> Self {
        self.offset = start;
        self.position.store(start, Ordering::Release);
        self.end = Some(start.saturating_add(len));
        // A range cannot be checked against the whole body's digest.
        self.check = None;
        self
    }

    /// The next chunk of the body; with a check, one chunk behind what was read, the last
    /// only once the whole matches the fill's digest.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        use sha2::Digest as _;
        if self.check.is_none() {
            return self.poll_read(cx);
        }
        loop {
            let read = ready!(self.poll_read(cx));
            let check = self.check.as_mut().expect("checked above");
            if check.done {
                return Poll::Ready(check.held.take().map(Ok));
            }
            match read {
                Some(Ok(bytes)) => {
                    check.hasher.update(&bytes);
                    if let Some(before) = check.held.replace(bytes) {
                        return Poll::Ready(Some(Ok(before)));
                    }
                }
                Some(Err(error)) => {
                    check.held = None;
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    let digest = Hash32(std::mem::take(&mut check.hasher).finalize().into());
                    let expected = self.state.borrow().digest;
                    if expected.is_some_and(|expected| expected != digest) {
                        check.held = None;
                        check.done = true;
                        crate::log::warn_event!("a body being followed changed on disk: cut off");
                        return Poll::Ready(Some(Err(Error::new(ErrorKind::Integrity)
                            .with_subject("a body being stored changed on disk"))));
                    }
                    check.done = true;
                    return Poll::Ready(check.held.take().map(Ok));
                }
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
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
                self.advance(bytes.len());
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
                match crate::rt::spawn_blocking(move || read_pooled(&file, offset, len)) {
                    Ok(read) => self.inflight = Some(read),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                continue;
            }
            if state.relayed.is_some() && self.offset >= state.written {
                let max = self.end.map_or(u64::MAX, |end| end - self.offset);
                let relayed = lock(&self.fill().relay.chunks)
                    .as_ref()
                    .map(|r| (r.from, r.read(self.offset, max)));
                match relayed {
                    Some((_, Some(bytes))) => {
                        self.advance(bytes.len());
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    Some((from, None)) if self.offset < from => {
                        return Poll::Ready(Some(Err(Error::new(ErrorKind::Incomplete)
                            .with_subject("a follower too slow for the relay of a body the store could not keep"))));
                    }
                    _ => {}
                }
            }
            match state.end {
                Some(FillEnd::Stored(length) | FillEnd::Unstored(length))
                    if self.offset >= length =>
                {
                    return Poll::Ready(None);
                }
                Some(FillEnd::Stored(_) | FillEnd::Unstored(_)) | None => {
                    // More is coming: wait for the writer to say so.
                    let mut state = self.state.clone();
                    self.waiting = Some(Box::pin(async move {
                        let _ = state.changed().await;
                    }));
                }
                Some(FillEnd::Failed(why)) => {
                    return Poll::Ready(Some(Err(Error::new(ErrorKind::Incomplete)
                        .with_subject("the response being followed failed")
                        .with_source(why))));
                }
                Some(FillEnd::Released | FillEnd::Updated) => {
                    return Poll::Ready(Some(Err(Error::new(ErrorKind::Incomplete)
                        .with_subject("the response being followed was not stored"))));
                }
            }
        }
    }

    fn fill(&self) -> &Fill {
        &self.follower.0
    }

    /// Moves on past `n` bytes read, and lets a writer waiting for the relay know.
    fn advance(&mut self, n: usize) {
        self.offset += n as u64;
        self.position.store(self.offset, Ordering::Release);
        if self.state.borrow().relayed.is_some() {
            self.fill().relay.room.notify_waiters();
        }
    }

    /// Bytes known to be left, once the fill's length is known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        if let Some(end) = self.end {
            return Some(end.saturating_sub(self.offset));
        }
        match self.state.borrow().end {
            Some(FillEnd::Stored(length) | FillEnd::Unstored(length)) => {
                Some(length.saturating_sub(self.offset))
            }
            _ => None,
        }
    }
}

impl crate::body::Growing for FollowReader {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        FollowReader::poll_chunk(self, cx)
    }

    fn remaining(&self) -> Option<u64> {
        FollowReader::remaining(self)
    }
}
