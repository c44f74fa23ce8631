//! The access log: one line per response, written when its body ends (or fails, or its
//! client leaves), with the bytes sent and the times to the first and the last byte. The same
//! bytes are counted for `/metrics`, by whether the cache or the upstream served them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_cache_streaming::StreamingBody;

/// What one response line says, filled in as its body goes.
pub(crate) struct Line {
    pub(crate) method: http::Method,
    pub(crate) uri: String,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) status: u16,
    /// Whether the cache served it (a hit).
    pub(crate) from_cache: bool,
    pub(crate) cache_status: String,
    pub(crate) started: Instant,
    pub(crate) head_sent: Instant,
    pub(crate) quiet: bool,
}

/// The counters of every response, by source (the cache, the upstream): registered once,
/// on the first response (after the recorder is installed), not looked up per response.
struct Counters {
    bytes: [metrics::Counter; 2],
    responses: [metrics::Counter; 2],
}

fn counters() -> &'static Counters {
    static COUNTERS: std::sync::OnceLock<Counters> = std::sync::OnceLock::new();
    COUNTERS.get_or_init(|| {
        let by_source = |name: &'static str| {
            ["cache", "upstream"].map(|source| metrics::counter!(name, "source" => source))
        };
        Counters {
            bytes: by_source("http_cache_proxy_response_bytes_total"),
            responses: by_source("http_cache_proxy_responses_total"),
        }
    })
}

/// A response body that logs its [`Line`] once, when it ends or is dropped.
pub(crate) struct Logged {
    inner: StreamingBody,
    line: Option<Line>,
    bytes: u64,
    first_byte: Option<Instant>,
    ended: bool,
}

impl Logged {
    pub(crate) fn new(inner: StreamingBody, line: Line) -> Self {
        Logged {
            inner,
            line: Some(line),
            bytes: 0,
            first_byte: None,
            ended: false,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        let Some(line) = self.line.take() else {
            return;
        };
        let counters = counters();
        let source = usize::from(!line.from_cache);
        counters.bytes[source].increment(self.bytes);
        counters.responses[source].increment(1);
        if line.quiet {
            return;
        }
        let millis = |at: Instant| at.duration_since(line.started).as_secs_f64() * 1e3;
        let first = self.first_byte.unwrap_or(line.head_sent);
        tracing::info!(
            target: "http_cache_proxy::access",
            peer = %line.peer,
            method = %line.method,
            uri = %line.uri,
            status = line.status,
            cache_status = %line.cache_status,
            bytes = self.bytes,
            first_byte_ms = format_args!("{:.1}", millis(first)),
            last_byte_ms = format_args!("{:.1}", millis(Instant::now())),
            outcome,
        );
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = http_cache_streaming::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.first_byte.get_or_insert_with(Instant::now);
                    this.bytes += data.len() as u64;
                }
            }
            Some(Err(_)) => this.finish("failed"),
            None => {
                this.ended = true;
                this.finish("complete");
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body that was over before it was polled (a HEAD, a 304) ended; any other the
        // client left before its end.
        let outcome = if self.ended || self.inner.is_end_stream() {
            "complete"
        } else {
            "client-left"
        };
        self.finish(outcome);
    }
}
