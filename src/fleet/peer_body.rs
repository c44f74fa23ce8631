//! What passes between peers in a fill, sealed end to end with the fleet's secret: the
//! holder's answer head (the origin's status and headers) carries a seal over them, and its
//! body ends with a trailer sealing the SHA-256 of what was sent. The asker checks the head
//! before anything is used, and holds the body's last bytes until its seal matches: whoever
//! sits between two nodes can cut a fill short, never make one node store or pass off as
//! whole a byte the other did not send.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use sha2::Digest as _;

use super::seal::Secret;
use crate::error::{Error, ErrorKind};

/// The trailer that seals the body: the tag of its SHA-256.
pub(crate) const BODY_SEAL: HeaderName = HeaderName::from_static("x-http-cache-fill-seal");
/// The origin's `Content-Length`, moved here so that the body can end with a trailer.
pub(crate) const ORIGIN_LENGTH: HeaderName = HeaderName::from_static("x-http-cache-fill-length");
/// How long a peer's body may pause before the asker gives it up (the proxy's default
/// upstream timeout: an origin that pauses so long mid-body is waited on as directly).
pub(crate) const PEER_STALL: Duration = Duration::from_secs(30);

/// Headers that describe a hop, not the answer: left out of the head's seal (a proxy or
/// the HTTP stack may set them anew).
const UNSEALED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-http-cache-fill-proof",
    "x-http-cache-fill-seal",
];

/// The parts a head's seal covers: the key, the ask's nonce, the origin's status, and every
/// header but [`UNSEALED`], by name (values of a name in their order).
fn head_parts(key: &str, nonce: &str, status: StatusCode, headers: &HeaderMap) -> Vec<Vec<u8>> {
    let mut names: Vec<&HeaderName> = headers
        .keys()
        .filter(|name| !UNSEALED.contains(&name.as_str()))
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut parts = vec![
        b"answer".to_vec(),
        key.as_bytes().to_vec(),
        nonce.as_bytes().to_vec(),
        status.as_str().as_bytes().to_vec(),
    ];
    for name in names {
        for value in headers.get_all(name) {
            parts.push(name.as_str().as_bytes().to_vec());
            parts.push(value.as_bytes().to_vec());
        }
    }
    parts
}

fn as_slices(parts: &[Vec<u8>]) -> Vec<&[u8]> {
    parts.iter().map(Vec::as_slice).collect()
}

/// The seal of an answer head: `status` and `headers` for `key`, to the ask `nonce`.
pub(crate) fn head_seal(
    secret: &Secret,
    key: &str,
    nonce: &str,
    status: StatusCode,
    headers: &HeaderMap,
) -> HeaderValue {
    let parts = head_parts(key, nonce, status, headers);
    HeaderValue::from_str(&secret.tag(&as_slices(&parts))).expect("hex")
}

/// Whether `seal` seals `status` and `headers` for `key` and `nonce`.
pub(crate) fn head_sealed(
    secret: &Secret,
    key: &str,
    nonce: &str,
    status: StatusCode,
    headers: &HeaderMap,
    seal: Option<&HeaderValue>,
) -> bool {
    let Some(seal) = seal.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let parts = head_parts(key, nonce, status, headers);
    secret.verify(&as_slices(&parts), seal)
}

fn body_parts<'a>(key: &'a str, nonce: &'a str, digest: &'a [u8]) -> [&'a [u8]; 4] {
    [b"body", key.as_bytes(), nonce.as_bytes(), digest]
}

/// Who a sealed body is for: the fleet's secret, the key and the ask's nonce.
#[derive(Clone, Debug)]
pub(crate) struct SealFor {
    pub(crate) secret: Secret,
    pub(crate) key: String,
    pub(crate) nonce: String,
}

/// The holder's body: what it sends, then a trailer sealing the SHA-256 of it.
pub(crate) struct SealingBody<B> {
    inner: B,
    hasher: sha2::Sha256,
    seal: Option<SealFor>,
}

impl<B> SealingBody<B> {
    pub(crate) fn new(inner: B, seal: SealFor) -> Self {
        SealingBody {
            inner,
            hasher: sha2::Sha256::new(),
            seal: Some(seal),
        }
    }

    fn trailers(&mut self) -> Option<Frame<Bytes>> {
        let seal = self.seal.take()?;
        let digest = std::mem::take(&mut self.hasher).finalize();
        let tag = seal
            .secret
            .tag(&body_parts(&seal.key, &seal.nonce, &digest));
        let mut trailers = HeaderMap::new();
        trailers.insert(BODY_SEAL, HeaderValue::from_str(&tag).expect("hex"));
        Some(Frame::trailers(trailers))
    }
}

impl<B: Body<Data = Bytes, Error = Error> + Unpin> Body for SealingBody<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.seal.is_none() {
            return Poll::Ready(None);
        }
        loop {
            return match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.hasher.update(&data);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    // The origin's own trailers are not passed between peers.
                    Err(_) => continue,
                },
                Some(Err(error)) => {
                    this.seal = None;
                    Poll::Ready(Some(Err(error)))
                }
                None => Poll::Ready(this.trailers().map(Ok)),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.seal.is_none()
    }

    /// Unknown, whatever the body's length: an HTTP/1.1 server would send a known one with
    /// its length, and no trailer can follow a body sent so.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The asker's view of a peer's body: its bytes passed on as they come, but for the last
/// chunk, held until the trailer's seal matches the SHA-256 of everything; a body that
/// ends without the seal, with another, or pauses for [`PEER_STALL`] fails instead.
pub(crate) struct CheckedBody<B> {
    inner: B,
    hasher: sha2::Sha256,
    held: Option<Bytes>,
    seal: SealFor,
    /// Armed when a read finds nothing to take, so that a client that paused never reads as
    /// a peer that stalled.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<B> CheckedBody<B> {
    pub(crate) fn new(inner: B, seal: SealFor) -> Self {
        CheckedBody {
            inner,
            hasher: sha2::Sha256::new(),
            held: None,
            seal,
            stall: None,
            done: false,
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.done = true;
        self.held = None;
        crate::log::warn_event!(key = %self.seal.key, why, "a peer's fill failed its check: cut off, not stored");
        Poll::Ready(Some(
            Err(Error::new(ErrorKind::Integrity).with_subject(why)),
        ))
    }
}

impl<B: Body<Data = Bytes, Error = Error> + Unpin> Body for CheckedBody<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(this.held.take().map(|data| Ok(Frame::data(data))));
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    let stall = this
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(PEER_STALL)));
                    if stall.as_mut().poll(cx).is_ready() {
                        return this.fail("a peer's body stalled");
                    }
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            this.stall = None;
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        this.hasher.update(&data);
                        if let Some(before) = this.held.replace(data) {
                            return Poll::Ready(Some(Ok(Frame::data(before))));
                        }
                    }
                    Err(frame) => {
                        let seal = frame
                            .trailers_ref()
                            .and_then(|t| t.get(BODY_SEAL))
                            .and_then(|v| v.to_str().ok());
                        let digest = std::mem::take(&mut this.hasher).finalize();
                        let SealFor { secret, key, nonce } = &this.seal;
                        let parts = body_parts(key, nonce, &digest);
                        if !seal.is_some_and(|seal| secret.verify(&parts, seal)) {
                            return this.fail("a peer's body does not match its seal");
                        }
                        this.done = true;
                        return Poll::Ready(this.held.take().map(|data| Ok(Frame::data(data))));
                    }
                },
                Some(Err(error)) => {
                    this.done = true;
                    this.held = None;
                    return Poll::Ready(Some(Err(error)));
                }
                None => return this.fail("a peer's body ended without its seal"),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn seal_for(secret: &str) -> SealFor {
        SealFor {
            secret: Secret::new(secret.as_bytes()),
            key: "GET:http://a/x".into(),
            nonce: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    /// Frames handed out one by one.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// A body of `chunks`, then `trailers` if any.
    fn body(chunks: &[&'static str], trailers: Option<HeaderMap>) -> Frames {
        let mut frames: std::collections::VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if let Some(trailers) = trailers {
            frames.push_back(Frame::trailers(trailers));
        }
        Frames(frames)
    }

    async fn sealed_trailers(seal: &SealFor, chunks: &[&'static str]) -> HeaderMap {
        let sealing = SealingBody::new(body(chunks, None), seal.clone());
        let collected = sealing.collect().await.unwrap();
        collected.trailers().cloned().unwrap()
    }

    #[tokio::test]
    async fn a_body_passes_whole_only_with_the_seal_of_its_own_bytes() {
        let seal = seal_for("a secret of the fleet");
        let chunks = ["one, ", "two, ", "three"];
        let trailers = sealed_trailers(&seal, &chunks).await;
        let checked = CheckedBody::new(body(&chunks, Some(trailers.clone())), seal.clone());
        let got = checked.collect().await.unwrap();
        assert!(got.trailers().is_none(), "the seal is not passed on");
        assert_eq!(got.to_bytes(), "one, two, three");

        // Changed bytes, a missing seal, another secret's seal: never whole.
        let changed = CheckedBody::new(
            body(&["one, ", "TWO, ", "three"], Some(trailers)),
            seal.clone(),
        );
        let other = sealed_trailers(&seal_for("another fleet's secret"), &chunks).await;
        let cases = [
            changed,
            CheckedBody::new(body(&chunks, None), seal.clone()),
            CheckedBody::new(body(&chunks, Some(other)), seal.clone()),
        ];
        for mut checked in cases {
            let mut passed = Vec::new();
            let failed = loop {
                match checked.frame().await {
                    Some(Ok(frame)) => passed.extend_from_slice(&frame.into_data().unwrap()),
                    Some(Err(_)) => break true,
                    None => break false,
                }
            };
            assert!(failed);
            assert!(!passed.ends_with(b"three"), "the last chunk is held back");
        }
    }

    #[test]
    fn an_answer_head_is_sealed_with_its_status_and_every_header() {
        let (ours, theirs) = (
            Secret::new(b"a secret of the fleet"),
            Secret::new(b"another fleet's secret"),
        );
        let nonce = "0123456789abcdef0123456789abcdef".to_owned();
        // The answer's head is sealed: its status and every header it carries.
        let key = "GET:http://a/x";
        let ok = http::StatusCode::OK;
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        let proof = head_seal(&ours, key, &nonce, ok, &headers);
        assert!(head_sealed(&ours, key, &nonce, ok, &headers, Some(&proof)));
        let other_nonce = "0".repeat(32);
        assert!(!head_sealed(
            &ours,
            key,
            &other_nonce,
            ok,
            &headers,
            Some(&proof)
        ));
        assert!(!head_sealed(
            &theirs,
            key,
            &nonce,
            ok,
            &headers,
            Some(&proof)
        ));
        assert!(!head_sealed(&ours, key, &nonce, ok, &headers, None));
        let gone = http::StatusCode::GONE;
        assert!(
            !head_sealed(&ours, key, &nonce, gone, &headers, Some(&proof)),
            "status"
        );
        let mut changed = headers.clone();
        changed.insert("cache-control", HeaderValue::from_static("max-age=600000"));
        assert!(
            !head_sealed(&ours, key, &nonce, ok, &changed, Some(&proof)),
            "a header"
        );
        let mut added = headers.clone();
        added.append("set-cookie", HeaderValue::from_static("b=2"));
        assert!(
            !head_sealed(&ours, key, &nonce, ok, &added, Some(&proof)),
            "a value added"
        );
        // What the hop sets anew is not sealed.
        let mut hop = headers.clone();
        hop.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert!(head_sealed(&ours, key, &nonce, ok, &hop, Some(&proof)));
    }
}
