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
