//! Reading content files: large positioned reads on the blocking pool, one chunk ahead of the
//! consumer, with an optional digest check that withholds the last chunk until it passes.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::layout::Hash32;
use crate::error::{Error, ErrorKind};

/// Reads exactly `buf.len()` bytes at `offset`; a file shorter than that is an error.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// Reads `len` bytes at `offset` into a new buffer.
pub(crate) fn read_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, offset)?;
    Ok(Bytes::from(buf))
}

/// Reads `len` bytes at `offset` into a new buffer that is never zero-filled first: a seek
/// and a read into spare capacity. The file's position moves, so this is for a file handle
/// that one reader owns, one read at a time.
pub(crate) fn read_owned_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::io::{Read as _, Seek as _};
    let mut reader = file;
    reader.seek(io::SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from(buf))
}

/// The digest check of a body being read.
pub(crate) struct Verify {
    hasher: Option<Sha256>,
    expected: Hash32,
}

impl Verify {
    pub(crate) fn new(expected: Hash32) -> Self {
        Verify {
            hasher: Some(Sha256::new()),
            expected,
        }
    }
}

/// Checks that `bytes` hash to `expected`.
pub(crate) fn digest_matches(bytes: &[u8], expected: Hash32) -> bool {
    Hash32::of(bytes) == expected
}

type Read = io::Result<(Bytes, Option<Sha256>)>;

/// A content file read in chunks from an offset.
pub(crate) struct ChunkReader {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    chunk: usize,
    verify: Option<Verify>,
    inflight: Option<crate::rt::Blocking<Read>>,
    /// What to tell the store when the content turns out to be corrupt.
    on_corrupt: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ChunkReader {
    pub(crate) fn new(file: Arc<File>, offset: u64, len: u64, chunk: usize) -> Self {
        ChunkReader {
            file,
            offset,
            remaining: len,
            chunk: chunk.max(1),
            verify: None,
            inflight: None,
            on_corrupt: None,
        }
    }

    pub(crate) fn verify(
        mut self,
        verify: Verify,
        on_corrupt: Box<dyn FnOnce() + Send + Sync>,
    ) -> Self {
        self.verify = Some(verify);
        self.on_corrupt = Some(on_corrupt);
        self
    }

    /// Reads only bytes `start..start + len` of what it was made for, before any read: a
    /// digest check, which needs every byte, is dropped.
    pub(crate) fn narrow(&mut self, start: u64, len: u64) {
        if self.inflight.is_some() {
            return;
        }
        let start = start.min(self.remaining);
        self.offset += start;
        self.remaining = len.min(self.remaining - start);
        self.verify = None;
        self.on_corrupt = None;
    }

    /// A reader of bytes `start..start + len` of the same file, from the offset this one
    /// started at, without a digest check. Readers of one file must be polled one after the
    /// other (each seeks the shared handle before it reads).
    pub(crate) fn range(&self, start: u64, len: u64) -> ChunkReader {
        ChunkReader::new(Arc::clone(&self.file), self.offset + start, len, self.chunk)
    }

    /// Bytes not yet handed out.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    pub(crate) fn is_done(&self) -> bool {
        self.remaining == 0
    }

    fn start(&mut self) -> Result<(), Error> {
        let len = usize::try_from(self.remaining.min(self.chunk as u64)).unwrap_or(self.chunk);
        let offset = self.offset;
        let last = len as u64 == self.remaining;
        let file = Arc::clone(&self.file);
        let mut hasher = self.verify.as_mut().and_then(|v| v.hasher.take());
        let expected = self.verify.as_ref().map(|v| v.expected);
        self.inflight = Some(crate::rt::spawn_blocking(move || {
            // The reader owns its handle and has one read in flight at a time.
            let bytes = read_owned_chunk(&file, offset, len)?;
            if let Some(h) = hasher.as_mut() {
                h.update(&bytes);
            }
            if last
                && let (Some(h), Some(expected)) = (hasher.take(), expected)
                && Hash32::from_hasher(h) != expected
            {
                return Err(io::Error::new(io::ErrorKind::InvalidData, DigestMismatch));
            }
            Ok((bytes, hasher))
        })?);
        Ok(())
    }

    /// The next chunk, or `None` at the end. The chunk after it is already being read when
    /// this returns, unless a digest check makes the reads sequential.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        if self.inflight.is_none() {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            if let Err(e) = self.start() {
                self.remaining = 0;
                return Poll::Ready(Some(Err(e)));
            }
        }
        let Some(inflight) = self.inflight.as_mut() else {
            return Poll::Ready(None);
        };
        let joined = ready!(std::pin::Pin::new(inflight).poll(cx));
        self.inflight = None;
        let result = match joined {
            Ok(Ok((bytes, hasher))) => {
                if let Some(v) = self.verify.as_mut() {
                    v.hasher = hasher;
                }
                self.offset += bytes.len() as u64;
                self.remaining -= bytes.len() as u64;
                if self.remaining > 0
                    && let Err(e) = self.start()
                {
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(bytes)
            }
            Ok(Err(e)) => {
                self.remaining = 0;
                let is_mismatch = e
                    .get_ref()
                    .is_some_and(|inner| inner.is::<DigestMismatch>());
                if is_mismatch {
                    if let Some(report) = self.on_corrupt.take() {
                        report();
                    }
                    Err(Error::new(ErrorKind::Integrity).with_source(e))
                } else {
                    Err(Error::new(ErrorKind::Io).with_source(e))
                }
            }
            Err(lost) => {
                self.remaining = 0;
                Err(lost)
            }
        };
        Poll::Ready(Some(result))
    }
}

use std::future::Future as _;

impl Drop for ChunkReader {
    fn drop(&mut self) {
        if let Some(handle) = self.inflight.take() {
            handle.abort();
        }
    }
}

#[derive(Debug)]
struct DigestMismatch;

impl std::fmt::Display for DigestMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("content digest differs from the digest it was stored under")
    }
}

impl std::error::Error for DigestMismatch {}
