//! [`StreamingBody`]: the body of every response the cache hands out.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{BoxError, Error};
use crate::format::reader::ChunkReader;

/// A body being written by another request, read as it grows (collapse's follower).
/// The body knows it by this alone, so that it depends on nothing of collapse or the store.
pub(crate) trait Growing: Send {
    /// The next chunk, once written.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>>;
    /// Bytes known to be left, once the whole length is known.
    fn remaining(&self) -> Option<u64>;
}

/// Where the bytes of a range fetched for a partial entry are kept as they pass (the
/// store's partial entry).
pub(crate) trait RangeSink: Send {
    /// Keeps `bytes`, the next of the range.
    fn push(&mut self, bytes: &Bytes);
}

/// The fill a tee's writer is storing, as its body sees it: whether to read on with
/// nobody reading, and when to stop others from following.
pub(crate) trait SharedFill: Send + Sync {
    /// Whether the body should be read to its end even though its client went away.
    fn wanted(&self) -> bool;
    /// Whether a request follows the fill now.
    fn followed(&self) -> bool;
    /// Requests that come from now on ask the origin rather than follow.
    fn close_to_newcomers(&self);
    /// A share of the budget for reading on with nobody reading: a permit and the bytes
    /// it allows, when the fill completes on disconnect and the budget has room.
    fn background_budget(&self) -> Option<(OwnedSemaphorePermit, u64)>;
}

/// A response body that streams from a stored file, is being stored while it streams (a tee),
/// or passes another body through.
///
/// It implements [`http_body::Body`] with `Data = Bytes` and reports an exact
/// [`size_hint`](Body::size_hint) for stored bodies. Stored trailers are replayed after the
/// data. However large the body, it holds at most three read chunks in memory.
pub struct StreamingBody {
    kind: Kind,
}

/// Where a body's bytes come from.
enum Kind {
    Disk {
        reader: ChunkReader,
        trailers: Option<HeaderMap>,
    },
    Bytes {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Tee {
        inner: UnsyncBoxBody<Bytes, BoxError>,
        sink: Option<Box<dyn TeeSink>>,
        /// Already handed to a task of its own to be read to its end: dropped again, it gives
        /// the entry up instead of handing itself off once more.
        detached: bool,
    },
    Pass {
        inner: UnsyncBoxBody<Bytes, BoxError>,
    },
    /// Read from the temp file of an entry another request is storing.
    Follow { reader: Box<dyn Growing> },
    /// Pieces one after the other: a `multipart/byteranges` answer.
    Parts {
        segments: std::collections::VecDeque<Part>,
    },
}

/// A piece of a multipart body, as a range answer describes it.
pub(crate) enum Segment {
    /// Bytes of its own (a part's head, the closing boundary).
    Bytes(Bytes),
    /// `(start, len)` of the stored body.
    Range(u64, u64),
}

/// A piece of a multipart body, ready to be sent.
enum Part {
    Bytes(Bytes),
    Disk(ChunkReader),
    /// `left` bytes from the origin, stored as they pass when there is a sink.
    Net {
        inner: UnsyncBoxBody<Bytes, BoxError>,
        sink: Option<Box<dyn RangeSink>>,
        left: u64,
    },
}

/// A piece of a body put together from a partial entry and the origin.
pub(crate) enum Piece {
    /// Held bytes, read from the partial entry's file.
    Held(ChunkReader),
    /// Exactly `len` bytes of `body`, each stored through `sink` as it passes.
    Fetched {
        body: UnsyncBoxBody<Bytes, BoxError>,
        sink: Option<Box<dyn RangeSink>>,
        len: u64,
    },
}

impl StreamingBody {
    /// An empty body.
    pub fn empty() -> Self {
        StreamingBody::from_bytes(Bytes::new())
    }

    /// A body of the given bytes.
    pub fn from_bytes(data: Bytes) -> Self {
        StreamingBody {
            kind: Kind::Bytes {
                data: (!data.is_empty()).then_some(data),
                trailers: None,
            },
        }
    }

    /// A body that passes `body` through unchanged.
    pub fn pass<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        StreamingBody {
            kind: Kind::Pass { inner: boxed(body) },
        }
    }

    /// A stored body read whole.
    pub(crate) fn stored_bytes(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        StreamingBody {
            kind: Kind::Bytes {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// The bytes `start..start + len` of a stored body that has not been read from yet
    /// (a `Range` request): its reader starts at `start`, and no trailers follow. Any
    /// other body is returned as it is.
    pub(crate) fn part(mut self, start: u64, len: u64) -> Self {
        match &mut self.kind {
            Kind::Bytes { data, trailers } => {
                let whole = data.take().unwrap_or_default();
                let begin = usize::try_from(start)
                    .unwrap_or(usize::MAX)
                    .min(whole.len());
                let end = begin.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                *data = Some(whole.slice(begin..end.min(whole.len()))).filter(|d| !d.is_empty());
                *trailers = None;
            }
            Kind::Disk { reader, trailers } => {
                reader.narrow(start, len);
                *trailers = None;
            }
            Kind::Tee { .. } | Kind::Pass { .. } | Kind::Follow { .. } | Kind::Parts { .. } => {}
        }
        self
    }

    /// A stored body cut into `segments` (a `multipart/byteranges` answer): its ranges are
    /// read from the stored file at their offsets, or sliced from memory. Any other body is
    /// returned as it is.
    pub(crate) fn parts(self, segments: Vec<Segment>) -> Self {
        let slice = |data: &Bytes, start: u64, len: u64| {
            let begin = usize::try_from(start).unwrap_or(usize::MAX).min(data.len());
            let end = begin.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            data.slice(begin..end.min(data.len()))
        };
        let parts = match &self.kind {
            Kind::Bytes { data, .. } => {
                let data = data.clone().unwrap_or_default();
                segments
                    .into_iter()
                    .map(|segment| match segment {
                        Segment::Bytes(bytes) => Part::Bytes(bytes),
                        Segment::Range(start, len) => Part::Bytes(slice(&data, start, len)),
                    })
                    .collect()
            }
            Kind::Disk { reader, .. } => segments
                .into_iter()
                .map(|segment| match segment {
                    Segment::Bytes(bytes) => Part::Bytes(bytes),
                    Segment::Range(start, len) => Part::Disk(reader.range(start, len)),
                })
                .collect(),
            Kind::Tee { .. } | Kind::Pass { .. } | Kind::Follow { .. } | Kind::Parts { .. } => {
                return self;
            }
        };
        StreamingBody {
            kind: Kind::Parts { segments: parts },
        }
    }

    /// The pieces one after the other: bytes a partial entry holds around those fetched
    /// now. A fetched piece that ends short of its length, or runs past it, fails the body.
    pub(crate) fn pieces(pieces: Vec<Piece>) -> Self {
        let segments = pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Held(reader) => Part::Disk(reader),
                Piece::Fetched { body, sink, len } => Part::Net {
                    inner: body,
                    sink,
                    left: len,
                },
            })
            .collect();
        StreamingBody {
            kind: Kind::Parts { segments },
        }
    }

    /// A stored body read from its file as it is polled.
    pub(crate) fn stored_file(reader: ChunkReader, trailers: Option<HeaderMap>) -> Self {
        StreamingBody {
            kind: Kind::Disk { reader, trailers },
        }
    }

    pub(crate) fn follow(reader: impl Growing + 'static) -> Self {
        StreamingBody {
            kind: Kind::Follow {
                reader: Box::new(reader),
            },
        }
    }

    pub(crate) fn tee(
        inner: UnsyncBoxBody<Bytes, BoxError>,
        sink: Option<Box<dyn TeeSink>>,
    ) -> Self {
        let mut body = StreamingBody {
            kind: Kind::Tee {
                inner,
                sink,
                detached: false,
            },
        };
        // A body that is over before it starts may never be polled: end the entry now.
        if let Kind::Tee { inner, sink, .. } = &mut body.kind
            && inner.is_end_stream()
            && let Some(sink) = sink.take()
        {
            sink.finish();
        }
        body
    }
}

pub(crate) fn boxed<B>(body: B) -> UnsyncBoxBody<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt as _;
    UnsyncBoxBody::new(body.map_err(Into::into))
}

impl StreamingBody {
    /// Whether this is a stored body, read from disk or memory, which a range can cut.
    pub(crate) fn is_stored(&self) -> bool {
        matches!(&self.kind, Kind::Disk { .. } | Kind::Bytes { .. })
    }

    /// Whether this is a tee whose writer still takes its chunks.
    fn is_storing(&self) -> bool {
        matches!(&self.kind, Kind::Tee { sink: Some(_), .. })
    }

    /// The fill this tee's writer is storing, when others may follow it.
    fn fill(&self) -> Option<&Arc<dyn SharedFill>> {
        match &self.kind {
            Kind::Tee {
                sink: Some(sink), ..
            } => sink.fill(),
            _ => None,
        }
    }
}

impl fmt::Debug for StreamingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Disk { .. } | Kind::Bytes { .. } => "Stored",
            Kind::Tee { .. } => "Tee",
            Kind::Pass { .. } => "Pass",
            Kind::Follow { .. } => "Follow",
            Kind::Parts { .. } => "Parts",
        };
        f.debug_tuple("StreamingBody").field(&kind).finish()
    }
}

impl Default for StreamingBody {
    fn default() -> Self {
        StreamingBody::empty()
    }
}

/// The store's end of a tee, as the body feeds it: a bounded queue of chunks to the
/// writer, and the one message that says the body ended complete (the store's queue).
pub(crate) trait TeeSink: Send {
    /// Moves the chunk waiting for queue room into the queue. `Ready(false)`: the writer is
    /// gone, store no more.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<bool>;
    /// Queues a chunk for the writer without making the client wait (when the queue is
    /// full the chunk is kept aside, and the next poll waits for room). `false`: the writer
    /// is gone.
    fn offer(&mut self, cx: &mut Context<'_>, chunk: Bytes) -> bool;
    /// Keeps the trailers the body ended with.
    fn trailers(&mut self, trailers: HeaderMap);
    /// The body ended complete: the writer may commit.
    fn finish(self: Box<Self>);
    /// The body failed or was dropped: the entry is given up, and requests from now on ask
    /// the origin rather than follow it.
    fn abandon(self: Box<Self>);
    /// The fill other requests follow, when they do.
    fn fill(&self) -> Option<&Arc<dyn SharedFill>>;
    /// Whether the body should be read to its end even though its client went away:
    /// others follow it, or the store was told to complete such fills.
    fn wanted(&self) -> bool {
        self.fill().is_some_and(|fill| fill.wanted())
    }
}

impl Body for StreamingBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match &mut self.get_mut().kind {
            Kind::Disk { reader, trailers } => match reader.poll_chunk(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(Some(Err(e))) => {
                    trailers.take();
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            Kind::Bytes { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            Kind::Pass { inner } => Pin::new(inner).poll_frame(cx).map_err(Error::body),
            Kind::Tee { inner, sink, .. } => poll_tee(inner, sink, cx),
            Kind::Follow { reader } => reader
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data))),
            Kind::Parts { segments } => loop {
                match segments.front_mut() {
                    None => return Poll::Ready(None),
                    Some(Part::Bytes(bytes)) => {
                        let bytes = std::mem::take(bytes);
                        segments.pop_front();
                        if !bytes.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                    }
                    Some(Part::Disk(reader)) => match reader.poll_chunk(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(None) => {
                            segments.pop_front();
                        }
                        Poll::Ready(Some(Ok(data))) => {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Poll::Ready(Some(Err(e))) => {
                            segments.clear();
                            return Poll::Ready(Some(Err(e)));
                        }
                    },
                    Some(Part::Net { inner, sink, left }) => {
                        match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                let Ok(data) = frame.into_data() else {
                                    continue; // the range's trailers: not the whole body's
                                };
                                let Some(after) = left.checked_sub(data.len() as u64) else {
                                    segments.clear();
                                    let error = "the origin sent more than the range it named";
                                    return Poll::Ready(Some(Err(Error::body(error))));
                                };
                                *left = after;
                                if let Some(sink) = sink {
                                    sink.push(&data);
                                }
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            Some(Err(e)) => {
                                segments.clear();
                                return Poll::Ready(Some(Err(Error::body(e))));
                            }
                            None if *left > 0 => {
                                segments.clear();
                                let error = "the origin's range ended short";
                                return Poll::Ready(Some(Err(Error::body(error))));
                            }
                            None => {
                                segments.pop_front();
                            }
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Disk { reader, trailers } => reader.is_done() && trailers.is_none(),
            Kind::Bytes { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Pass { inner } | Kind::Tee { inner, .. } => inner.is_end_stream(),
            Kind::Follow { reader } => reader.remaining() == Some(0),
            Kind::Parts { segments } => segments.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Disk { reader, .. } => SizeHint::with_exact(reader.remaining()),
            Kind::Bytes { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Pass { inner } | Kind::Tee { inner, .. } => inner.size_hint(),
            Kind::Follow { reader } => reader
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            Kind::Parts { segments } => SizeHint::with_exact(
                segments
                    .iter()
                    .map(|part| match part {
                        Part::Bytes(bytes) => bytes.len() as u64,
                        Part::Disk(reader) => reader.remaining(),
                        Part::Net { left, .. } => *left,
                    })
                    .sum(),
            ),
        }
    }
}

impl Drop for StreamingBody {
    /// A tee that others follow is read to its end even when its own client goes away, on a
    /// task of its own, so that the followers and the store still get the whole body. That
    /// hand-off happens once: a body dropped by its background task (a runtime that shuts
    /// down drops new and running tasks alike) gives its entry up, so nothing partial is
    /// committed and the drop never recurses.
    fn drop(&mut self) {
        let Kind::Tee {
            inner,
            sink,
            detached,
        } = &mut self.kind
        else {
            return;
        };
        let Some(sink) = sink.take() else {
            return;
        };
        if *detached || !sink.wanted() || !crate::rt::available() {
            sink.abandon();
            return;
        }
        let inner = std::mem::replace(inner, boxed(http_body_util::Empty::new()));
        complete_in_background(StreamingBody {
            kind: Kind::Tee {
                inner,
                sink: Some(sink),
                detached: false,
            },
        });
    }
}

/// Reads `body` to its end on a task of its own, for the store and whoever follows its fill,
/// and stops early once the store has what it wants or gives up on it (a body too large).
/// While others follow the fill it reads on for them; with nobody following, only within
/// the cache's budget for fills completing in the background (so many at once, so many
/// bytes each), and a fill that finds no room is given up. When no task can be started, or
/// the task is dropped before it ends (a runtime shutting down), the body is dropped as it
/// is and its entry given up. `false`: there was no runtime to start the task on.
pub(crate) fn complete_in_background(mut body: StreamingBody) -> bool {
    if let Kind::Tee { detached, .. } = &mut body.kind {
        *detached = true;
    }
    let followed = |body: &StreamingBody| body.fill().is_some_and(|fill| fill.followed());
    let budget = body.fill().and_then(|fill| fill.background_budget());
    if budget.is_none() && !followed(&body) {
        crate::log::debug_event!("not stored: no room to complete another fill in the background");
        drop(body);
        return true;
    }
    crate::rt::spawn(async move {
        use http_body_util::BodyExt as _;
        let (permit, allowed) = budget.unzip();
        let mut read = 0u64;
        let mut body = std::pin::pin!(body);
        while body.is_storing() {
            let on_its_own = !followed(&body);
            if on_its_own && (permit.is_none() || allowed.is_some_and(|bytes| read > bytes)) {
                crate::log::debug_event!(
                    read,
                    "not stored: a fill nobody reads went past its budget"
                );
                break;
            }
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
        drop(permit);
    })
}

fn poll_tee(
    inner: &mut UnsyncBoxBody<Bytes, BoxError>,
    sink: &mut Option<Box<dyn TeeSink>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    if let Some(s) = sink.as_mut() {
        match s.poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(true) => {}
            Poll::Ready(false) => *sink = None,
        }
    }
    let frame = match Pin::new(&mut *inner).poll_frame(cx) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(None) => {
            if let Some(s) = sink.take() {
                s.finish();
            }
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Err(e))) => {
            if let Some(s) = sink.take() {
                s.abandon();
            }
            return Poll::Ready(Some(Err(Error::body(e))));
        }
        Poll::Ready(Some(Ok(frame))) => frame,
    };
    if let Some(s) = sink.as_mut() {
        if let Some(data) = frame.data_ref() {
            if !s.offer(cx, data.clone()) {
                *sink = None;
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            s.trailers(trailers.clone());
        }
    }
    // The client may stop polling once the inner body says it is over.
    if inner.is_end_stream()
        && let Some(s) = sink.take()
    {
        s.finish();
    }
    Poll::Ready(Some(Ok(frame)))
}
