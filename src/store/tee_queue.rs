//! The queue between a tee'd body and its writer: chunks bounded in bytes (the client waits
//! for the disk only past [`TEE_QUEUE_BYTES`]), and the one message that says the body ended
//! complete. The body feeds it as a [`TeeSink`]; the writer reads it.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::PollSemaphore;

use crate::body::{SharedFill, TeeSink};

/// How a tee'd body ended, sent once by the body to its writer. A body dropped before its
/// end sends nothing, and the writer then abandons the entry.
#[derive(Debug)]
pub(crate) struct TeeEnd {
    /// A last chunk that the bounded queue had no room for when the body ended.
    pub(crate) tail: Option<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
}

/// A chunk on its way to the writer, holding its share of the queue's room until written.
pub(crate) type Queued = (Bytes, OwnedSemaphorePermit);

/// How many bytes of a tee may wait for the writer before the client waits for the disk.
const TEE_QUEUE_BYTES: usize = 4 << 20;
/// The queue's room is counted in units of this many bytes.
const ROOM_UNIT: usize = 1024;

/// The store's end of a tee: a queue of chunks to the writer bounded in bytes, and the one
/// message that says the body ended complete.
pub(crate) struct TeeQueue {
    tx: mpsc::UnboundedSender<Queued>,
    room: PollSemaphore,
    pending: Option<Bytes>,
    trailers: Option<HeaderMap>,
    end: oneshot::Sender<TeeEnd>,
    /// Called when the body has ended complete, just before the writer hears of it.
    on_end: Option<Box<dyn FnOnce() + Send>>,
    /// The fill other requests follow, when they do.
    fill: Option<Arc<dyn SharedFill>>,
}

impl TeeQueue {
    /// A sink and the queue its writer reads.
    pub(crate) fn new(
        end: oneshot::Sender<TeeEnd>,
        on_end: Box<dyn FnOnce() + Send>,
        fill: Option<Arc<dyn SharedFill>>,
    ) -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(TEE_QUEUE_BYTES / ROOM_UNIT));
        let sink = TeeQueue {
            tx,
            room: PollSemaphore::new(room),
            pending: None,
            trailers: None,
            end,
            on_end: Some(on_end),
            fill,
        };
        (sink, rx)
    }

    /// Moves the chunk waiting for queue room into the queue. `Ready(false)`: the writer is
    /// gone, store no more.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(len) = self.pending.as_ref().map(Bytes::len) else {
            return Poll::Ready(true);
        };
        if self.tx.is_closed() {
            return Poll::Ready(false);
        }
        // A chunk larger than the whole queue waits for all of it, then goes alone.
        let units = len
            .div_ceil(ROOM_UNIT)
            .clamp(1, TEE_QUEUE_BYTES / ROOM_UNIT);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        match self.room.poll_acquire_many(cx, units) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(false),
            Poll::Ready(Some(permit)) => {
                let chunk = self.pending.take();
                Poll::Ready(chunk.is_none_or(|c| self.tx.send((c, permit)).is_ok()))
            }
        }
    }

    /// Queues a chunk for the writer without making the client wait: when the queue is full
    /// the chunk is kept aside, and the next poll waits for room before reading more.
    fn queue(&mut self, cx: &mut Context<'_>, chunk: Bytes) -> bool {
        self.pending = Some(chunk);
        !matches!(self.flush(cx), Poll::Ready(false))
    }

    /// Gives up on the entry. Requests that come from now on ask the origin rather than
    /// follow a body that is known to fail: closed before the client hears of the failure.
    fn give_up(self) {
        if let Some(fill) = &self.fill {
            fill.close_to_newcomers();
        }
    }

    fn end(mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end();
        }
        let _ = self.end.send(TeeEnd {
            tail: self.pending,
            trailers: self.trailers,
        });
    }
}

impl TeeSink for TeeQueue {
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        self.flush(cx)
    }

    fn offer(&mut self, cx: &mut Context<'_>, chunk: Bytes) -> bool {
        self.queue(cx, chunk)
    }

    fn trailers(&mut self, trailers: HeaderMap) {
        self.trailers = Some(trailers);
    }

    fn finish(self: Box<Self>) {
        (*self).end();
    }

    fn abandon(self: Box<Self>) {
        (*self).give_up();
    }

    fn fill(&self) -> Option<&Arc<dyn SharedFill>> {
        self.fill.as_ref()
    }
}
