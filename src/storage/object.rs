//! [`ObjectStorage`]: the seam over any `object_store` bucket (S3, GCS, Azure Blob, an
//! S3-compatible server, or memory), in the same `cache-v2/` layout as on disk.

use std::pin::Pin;
use std::sync::Arc;

use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use http_body::{Body, Frame, SizeHint};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
    WriteMultipart,
};
use sha2::{Digest as _, Sha256};

use super::{BodyUpload, BoxFuture, Committed, Listed, Name, Note, NoteListed, PutNote, Storage};
use crate::StreamingBody;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::{FORMAT_DIR, Hash32};

/// Bodies up to this size are uploaded in one request; longer ones in parts of it.
const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts of one body on their way at once: with the part being filled, what an upload holds.
const PARTS_IN_FLIGHT: usize = 2;

/// Bodies and records as objects under `cache-v2/` in a bucket: `content/<sha256>` and
/// `metadata/<sha256>.json`, as on disk.
///
/// A body is hashed while it goes up. One of up to the part size (8 MiB by default) is held
/// in memory and put whole, under its digest, once it is complete; a longer one goes up as a
/// multipart upload under `tmp/`, at most two parts in flight, and is copied to its digest's
/// name when complete (a body whose digest is there already is not copied again). Memory per
/// upload is therefore about three parts, whatever the body's size.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    part_size: usize,
}

impl ObjectStorage {
    /// A storage in `store`, under `cache-v2/` at its root.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStorage {
            store,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// The size of the parts of multipart uploads (at least 5 MiB, S3's smallest part), and
    /// of the largest body put in one request.
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(5 << 20);
        self
    }

    fn content(&self, digest: Name) -> Path {
        Path::from(format!("{FORMAT_DIR}/content/{}", digest.to_hex()))
    }

    fn record(&self, name: Name) -> Path {
        Path::from(format!("{FORMAT_DIR}/metadata/{}.json", name.to_hex()))
    }

    /// Where the note `path` is, once it is found to be a valid name.
    fn note(&self, path: &str) -> Result<Path> {
        let path = super::checked_note_path(path)?;
        Ok(Path::from(format!("{FORMAT_DIR}/{path}")))
    }

    fn temp(&self) -> Path {
        Path::from(format!(
            "{FORMAT_DIR}/tmp/{}",
            crate::support::unique_name()
        ))
    }

    async fn list(&self, dir: &str, suffix: &str) -> Result<Vec<Listed>> {
        let prefix = Path::from(format!("{FORMAT_DIR}/{dir}"));
        let mut objects = self.store.list(Some(&prefix));
        let mut listed = Vec::new();
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(failed("listing the bucket"))?;
            let Some(name) = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(suffix))
                .and_then(Name::from_hex)
            else {
                continue;
            };
            let modified = SystemTime::from(meta.last_modified);
            listed.push(Listed { name, modified });
        }
        Ok(listed)
    }
}

/// An `object_store` error as this crate's, saying what was being done.
fn failed(doing: &'static str) -> impl Fn(object_store::Error) -> Error {
    move |e| Error::new(ErrorKind::Io).with_subject(doing).with_source(e)
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl ObjectStorage {
    fn start(&self, named: Option<Name>) -> BoxFuture<'_, Result<Box<dyn BodyUpload>>> {
        let upload: Box<dyn BodyUpload> = Box::new(ObjectUpload {
            storage: self.clone(),
            named,
            hasher: Sha256::new(),
            length: 0,
            state: UploadState::Small(Vec::new()),
        });
        Box::pin(async move { Ok(upload) })
    }
}

impl Storage for ObjectStorage {
    fn upload(&self) -> BoxFuture<'_, Result<Box<dyn BodyUpload>>> {
        self.start(None)
    }

    /// Long bodies go up under their digest's name directly: no copy at the end (S3 copies
    /// objects of at most 5 GiB in one request), and the digest is checked at the commit.
    fn upload_as(&self, digest: Name) -> BoxFuture<'_, Result<Box<dyn BodyUpload>>> {
        self.start(Some(digest))
    }

    fn read_body(
        &self,
        digest: Name,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<Option<StreamingBody>>> {
        Box::pin(async move {
            let path = self.content(digest);
            if len == 0 {
                return match self.store.head(&path).await {
                    Ok(_) => Ok(Some(StreamingBody::empty())),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(failed("reading a body's length")(e)),
                };
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(offset..offset.saturating_add(len))),
                ..GetOptions::default()
            };
            match self.store.get_opts(&path, options).await {
                Ok(got) => Ok(Some(StreamingBody::pass(Exact {
                    chunks: got.into_stream(),
                    remaining: len,
                }))),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(failed("reading a body")(e)),
            }
        })
    }

    fn body_length(&self, digest: Name) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(async move {
            match self.store.head(&self.content(digest)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(failed("reading a body's length")(e)),
            }
        })
    }

    fn delete_body(&self, digest: Name) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.store.delete(&self.content(digest)).await {
                Err(e) if !not_found(&e) => Err(failed("deleting a body")(e)),
                _ => Ok(()),
            }
        })
    }

    fn list_bodies(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        Box::pin(self.list("content", ""))
    }

    fn read_record(&self, name: Name) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(async move {
            let got = match self.store.get(&self.record(name)).await {
                Ok(got) => got,
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(failed("reading a record")(e)),
            };
            got.bytes()
                .await
                .map(Some)
                .map_err(failed("reading a record"))
        })
    }

    fn write_record(&self, name: Name, record: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.store
                .put(&self.record(name), PutPayload::from(record))
                .await
                .map(|_| ())
                .map_err(failed("writing a record"))
        })
    }

    fn delete_record(&self, name: Name) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.store.delete(&self.record(name)).await {
                Err(e) if !not_found(&e) => Err(failed("deleting a record")(e)),
                _ => Ok(()),
            }
        })
    }

    fn list_records(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        Box::pin(self.list("metadata", ".json"))
    }

    /// A put, or a conditional put (`If-None-Match: *`) to create a note only if absent.
    fn put_note(&self, path: &str, bytes: Bytes, how: PutNote) -> BoxFuture<'_, Result<bool>> {
        let location = self.note(path);
        Box::pin(async move {
            let mode = match how {
                PutNote::Overwrite => PutMode::Overwrite,
                PutNote::Create => PutMode::Create,
            };
            let options = PutOptions {
                mode,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&location?, PutPayload::from(bytes), options)
                .await
            {
                Ok(_) => Ok(true),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(false),
                Err(e) => Err(failed("writing a note")(e)),
            }
        })
    }

    /// A conditional get (`If-None-Match: <tag>`): an unchanged note costs no bytes.
    fn read_note<'a>(
        &'a self,
        path: &'a str,
        unless_tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Note>> {
        Box::pin(async move {
            let options = GetOptions {
                if_none_match: unless_tag.map(str::to_owned),
                ..GetOptions::default()
            };
            let got = match self.store.get_opts(&self.note(path)?, options).await {
                Ok(got) => got,
                Err(e) if not_found(&e) => return Ok(Note::Missing),
                Err(object_store::Error::NotModified { .. }) => return Ok(Note::Unchanged),
                Err(e) => return Err(failed("reading a note")(e)),
            };
            let tag = got.meta.e_tag.clone().unwrap_or_default();
            if !tag.is_empty() && unless_tag == Some(tag.as_str()) {
                return Ok(Note::Unchanged);
            }
            let bytes = got.bytes().await.map_err(failed("reading a note"))?;
            Ok(Note::Found { bytes, tag })
        })
    }

    fn list_notes<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<NoteListed>>> {
        Box::pin(async move {
            let prefix = self.note(dir)?;
            let mut objects = match after {
                Some(after) => {
                    let offset = Path::from(format!("{prefix}/{after}"));
                    self.store.list_with_offset(Some(&prefix), &offset)
                }
                None => self.store.list(Some(&prefix)),
            };
            let mut listed = Vec::new();
            while let Some(meta) = objects.next().await {
                let meta = meta.map_err(failed("listing notes"))?;
                // Only the notes directly in `dir`, with names a note may have.
                let Some(name) = meta
                    .location
                    .prefix_match(&prefix)
                    .and_then(|mut parts| match (parts.next(), parts.next()) {
                        (Some(name), None) => Some(name.as_ref().to_owned()),
                        _ => None,
                    })
                    .filter(|name| super::valid_note_path(name))
                else {
                    continue;
                };
                let modified = SystemTime::from(meta.last_modified);
                listed.push(NoteListed { name, modified });
                // Not every store lists in name order: the first `limit` are found by
                // sorting them all, kept to the least `limit` as they come.
                if listed.len() >= limit.saturating_mul(2).max(1024) {
                    listed.sort_by(|a, b| a.name.cmp(&b.name));
                    listed.truncate(limit);
                }
            }
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            listed.truncate(limit);
            Ok(listed)
        })
    }

    fn delete_note<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.store.delete(&self.note(path)?).await {
                Err(e) if !not_found(&e) => Err(failed("deleting a note")(e)),
                _ => Ok(()),
            }
        })
    }
}

/// How far a body going up to the bucket has come.
enum UploadState {
    /// Up to a part's worth, held until the body ends or outgrows it.
    Small(Vec<Bytes>),
    /// A multipart upload under a temp name.
    Parts { temp: Path, upload: WriteMultipart },
    /// Failed or finished.
    Done,
}

/// A body being uploaded to the bucket, named by its digest once it is whole.
struct ObjectUpload {
    storage: ObjectStorage,
    /// The digest the body is said to have: it goes up under that name.
    named: Option<Name>,
    hasher: Sha256,
    length: u64,
    state: UploadState,
}

impl BodyUpload for ObjectUpload {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.hasher.update(&chunk);
            self.length += chunk.len() as u64;
            let part_size = self.storage.part_size;
            match &mut self.state {
                UploadState::Small(held) if self.length <= part_size as u64 => {
                    held.push(chunk);
                }
                UploadState::Small(held) => {
                    let held = std::mem::take(held);
                    self.state = UploadState::Done;
                    let temp = match self.named {
                        Some(digest) => self.storage.content(digest),
                        None => self.storage.temp(),
                    };
                    let upload = self
                        .storage
                        .store
                        .put_multipart(&temp)
                        .await
                        .map_err(failed("starting a multipart upload"))?;
                    let mut upload = WriteMultipart::new_with_chunk_size(upload, part_size);
                    for piece in held {
                        upload.put(piece);
                    }
                    upload.put(chunk);
                    self.state = UploadState::Parts { temp, upload };
                }
                UploadState::Parts { upload, .. } => {
                    upload
                        .wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(failed("uploading a part"))?;
                    upload.put(chunk);
                }
                UploadState::Done => {
                    return Err(Error::new(ErrorKind::Io).with_subject("an upload that failed"));
                }
            }
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<Committed>> {
        Box::pin(async move {
            let ObjectUpload {
                storage,
                named,
                hasher,
                length,
                state,
            } = *self;
            let digest = Name(Hash32::from_hasher(hasher));
            let committed = Committed { digest, length };
            let content = storage.content(digest);
            let stored = |meta: &object_store::ObjectMeta| meta.size == length;
            match state {
                UploadState::Small(held) => {
                    if storage.store.head(&content).await.is_ok_and(|m| stored(&m)) {
                        return Ok(committed);
                    }
                    let payload: PutPayload = held.into_iter().collect();
                    storage
                        .store
                        .put(&content, payload)
                        .await
                        .map_err(failed("putting a body"))?;
                }
                UploadState::Parts { temp, upload } if named.is_some() => {
                    upload
                        .finish()
                        .await
                        .map_err(failed("finishing a multipart upload"))?;
                    if named != Some(digest) {
                        let _ = storage.store.delete(&temp).await;
                        return Err(Error::new(ErrorKind::Integrity)
                            .with_subject(format!("a body uploaded as {named:?} is {digest:?}")));
                    }
                }
                UploadState::Parts { temp, upload } => {
                    upload
                        .finish()
                        .await
                        .map_err(failed("finishing a multipart upload"))?;
                    let there = storage.store.head(&content).await.is_ok_and(|m| stored(&m));
                    let copied = if there {
                        Ok(())
                    } else {
                        storage.store.copy(&temp, &content).await
                    };
                    let _ = storage.store.delete(&temp).await;
                    copied.map_err(failed("naming an uploaded body by its digest"))?;
                }
                UploadState::Done => {
                    return Err(Error::new(ErrorKind::Io).with_subject("an upload that failed"));
                }
            }
            Ok(committed)
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if let UploadState::Parts { upload, .. } = self.state {
                upload
                    .abort()
                    .await
                    .map_err(failed("aborting a multipart upload"))?;
            }
            Ok(())
        })
    }
}

/// A ranged read that must deliver exactly the bytes asked for: a body found shorter (or
/// longer) than its record says fails instead of passing for whole.
struct Exact {
    chunks: BoxStream<'static, object_store::Result<Bytes>>,
    remaining: u64,
}

impl Body for Exact {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>>>> {
        match self.chunks.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let Some(left) = self.remaining.checked_sub(chunk.len() as u64) else {
                    return Poll::Ready(Some(Err(Error::new(ErrorKind::Length)
                        .with_subject("a stored body longer than its record"))));
                };
                self.remaining = left;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(failed("reading a body")(e)))),
            Poll::Ready(None) if self.remaining > 0 => {
                Poll::Ready(Some(Err(Error::new(ErrorKind::Length)
                    .with_subject("a stored body shorter than its record"))))
            }
            Poll::Ready(None) => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
