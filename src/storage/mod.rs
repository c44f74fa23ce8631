//! The seam between the cache and where its bytes live: write a body as a stream and commit
//! it under its SHA-256, read a body from an offset, read, write and delete records, and
//! list both for sweeping. [`FileStorage`] keeps them in the `cache-v2/` layout on a local
//! disk; `ObjectStorage` (feature `object-store`) in the same layout in any
//! [`object_store`](https://docs.rs/object_store) bucket.
//!
//! Records are the store's own versioned JSON, named by the SHA-256 of their key; bodies are
//! named by the SHA-256 of their bytes, so a body committed twice is stored once. A storage
//! only keeps bytes: what a record means, and which bodies are still named by a record, is
//! [`ObjectStoreManager`]'s business.

mod file;
mod manager;
#[cfg(feature = "object-store")]
mod object;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;

use crate::StreamingBody;
use crate::error::Result;
use crate::format::layout::Hash32;

pub use file::FileStorage;
pub(crate) use manager::read_entry;
pub use manager::{ObjectStoreManager, Swept};
#[cfg(feature = "object-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store")))]
pub use object::ObjectStorage;

/// A boxed future, as the seam's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A SHA-256 value naming a body (of its bytes) or a record (of its key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub(crate) Hash32);

impl Name {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Name(Hash32::of(bytes))
    }

    /// 64 lowercase hex digits: the name as it appears in paths.
    pub fn to_hex(self) -> String {
        self.0.to_hex()
    }

    /// Parses 64 lowercase hex digits; anything else is `None`.
    pub fn from_hex(hex: &str) -> Option<Self> {
        Hash32::from_hex(hex).map(Name)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A body committed to a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The SHA-256 of its bytes, which names it.
    pub digest: Name,
    /// Its length in bytes.
    pub length: u64,
}

/// An object listed for sweeping: its name and when it was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// The record's or body's name.
    pub name: Name,
    /// When it was last written, as the storage tells.
    pub modified: SystemTime,
}

/// How [`Storage::put_note`] writes a note.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutNote {
    /// Replace any note of that path.
    Overwrite,
    /// Write only if there is no note of that path (a conditional put): `Ok(false)` when
    /// there is one.
    Create,
}

/// A note as [`Storage::read_note`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Note {
    /// There is no note of that path.
    Missing,
    /// The note still has the tag the caller knew.
    Unchanged,
    /// The note's bytes, and a tag that changes whenever it is written (an ETag).
    Found {
        /// The note's bytes.
        bytes: Bytes,
        /// What to pass as `unless_tag` to learn cheaply that it has not changed.
        tag: String,
    },
}

/// A note listed by [`Storage::list_notes`]: its name within the listed directory, and when
/// it was last written as the storage tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteListed {
    /// The name, within the directory listed.
    pub name: String,
    /// When it was written.
    pub modified: SystemTime,
}

/// Whether `path` may name a note: segments of `[a-z0-9._-]` (none empty or all dots)
/// joined by `/`, at most 512 bytes.
pub fn valid_note_path(path: &str) -> bool {
    path.len() <= 512
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.bytes().all(|b| b == b'.')
                && segment
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        })
}

/// `path` when it may name a note ([`valid_note_path`]), else the error saying it may not.
fn checked_note_path(path: &str) -> Result<&str> {
    if valid_note_path(path) {
        return Ok(path);
    }
    Err(crate::Error::new(crate::ErrorKind::InvalidInput)
        .with_subject(format!("{path:?} is not a note's path")))
}

/// The error of a storage that keeps no notes.
fn no_notes<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T>> {
    Box::pin(async {
        Err(crate::Error::new(crate::ErrorKind::Unsupported)
            .with_subject("this storage keeps no notes"))
    })
}

/// Where a cache keeps its bodies and records.
///
/// Every method may be called from many tasks at once. A body being written is invisible
/// until [`BodyUpload::commit`]; a record write replaces the record whole or not at all.
pub trait Storage: fmt::Debug + Send + Sync + 'static {
    /// Starts writing a body; its chunks follow through the upload.
    fn upload(&self) -> BoxFuture<'_, Result<Box<dyn BodyUpload>>>;

    /// Starts writing a body whose digest is known already (a copy of a stored body), which
    /// a storage may write under its name directly. The commit still checks the digest,
    /// and a body that turns out to be another is not kept.
    fn upload_as(&self, digest: Name) -> BoxFuture<'_, Result<Box<dyn BodyUpload>>> {
        let _ = digest;
        self.upload()
    }

    /// `len` bytes of body `digest` from `offset`, streamed; `None` when there is no such
    /// body. The stream fails if the body turns out shorter.
    fn read_body(
        &self,
        digest: Name,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<Option<StreamingBody>>>;

    /// The length of body `digest`, or `None` when there is none.
    fn body_length(&self, digest: Name) -> BoxFuture<'_, Result<Option<u64>>>;

    /// Removes body `digest`; removing a body that is not there is not an error.
    fn delete_body(&self, digest: Name) -> BoxFuture<'_, Result<()>>;

    /// Every body, for sweeping.
    fn list_bodies(&self) -> BoxFuture<'_, Result<Vec<Listed>>>;

    /// The bytes of record `name`, or `None` when there is none.
    fn read_record(&self, name: Name) -> BoxFuture<'_, Result<Option<Bytes>>>;

    /// Writes record `name` whole, replacing any record of that name.
    fn write_record(&self, name: Name, record: Bytes) -> BoxFuture<'_, Result<()>>;

    /// Removes record `name`; removing a record that is not there is not an error.
    fn delete_record(&self, name: Name) -> BoxFuture<'_, Result<()>>;

    /// Every record, for sweeping.
    fn list_records(&self) -> BoxFuture<'_, Result<Vec<Listed>>>;

    /// Writes the note `path` (see [`valid_note_path`]; under `cache-v2/`), whole. Notes are
    /// the small objects the nodes of a fleet coordinate through: the purge log, leases.
    /// `Ok(false)`: [`PutNote::Create`] found a note there already.
    ///
    /// A storage that keeps no notes (the default) fails with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), and the fleet's features
    /// are off over it.
    fn put_note(&self, path: &str, bytes: Bytes, how: PutNote) -> BoxFuture<'_, Result<bool>> {
        let _ = (path, bytes, how);
        no_notes()
    }

    /// Reads the note `path`; when `unless_tag` is the tag it still has, answers
    /// [`Note::Unchanged`] without its bytes (a conditional read).
    fn read_note<'a>(
        &'a self,
        path: &'a str,
        unless_tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Note>> {
        let _ = (path, unless_tag);
        no_notes()
    }

    /// The notes directly in directory `dir`, in the byte order of their names, from the
    /// first whose name is greater than `after`, at most `limit` of them.
    fn list_notes<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<NoteListed>>> {
        let _ = (dir, after, limit);
        no_notes()
    }

    /// Removes the note `path`; removing a note that is not there is not an error.
    fn delete_note<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        let _ = path;
        no_notes()
    }
}

/// A body being written to a [`Storage`]: chunks in order, then a commit that names it by
/// its SHA-256, or an abort. Dropped without either, it is abandoned (what was written is
/// removed, at the latest by a sweep).
pub trait BodyUpload: Send {
    /// Appends a chunk. It may wait while earlier chunks are on their way (backpressure).
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<()>>;

    /// Finishes the body and stores it under its digest. A body whose digest is stored
    /// already is not stored again.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<Committed>>;

    /// Abandons the body and removes what was written of it.
    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}
