//! [`FileStorage`]: the seam over a local directory, in the same `cache-v2/` layout as
//! [`StreamingManager`](crate::StreamingManager) (which reads and writes the disk directly,
//! with its own index, for speed).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use super::{BodyUpload, BoxFuture, Committed, Listed, Name, Note, NoteListed, PutNote, Storage};
use crate::StreamingBody;
use crate::error::{Error, Result};
use crate::format::content::install_content;
use crate::format::content::remove_if_present;
use crate::format::content::{ContentWriter, write_temp};
use crate::format::files;
use crate::format::layout::Layout;
use crate::format::reader::ChunkReader;
use crate::format::scratch::Scratch;
use crate::format::scratch::prepare;
use crate::rt::blocking;

/// How much of a body a read hands out at a time.
const READ_CHUNK: usize = 512 * 1024;

/// Bodies and records as files under `<dir>/cache-v2/`: `content/<sha256>` and
/// `metadata/<sha256>.json`. Writes go to a locked scratch directory of this instance under
/// `tmp/` and are renamed into place.
#[derive(Debug, Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

/// A file storage's directory layout and its scratch directory, once made.
#[derive(Debug)]
struct Inner {
    layout: Layout,
    scratch: Mutex<Option<Arc<Scratch>>>,
}

impl FileStorage {
    /// A storage in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStorage {
            inner: Arc::new(Inner {
                layout: Layout::new(&dir.into()),
                scratch: Mutex::new(None),
            }),
        }
    }

    /// This instance's scratch directory, made (with the layout's directories) at first use.
    fn scratch(&self) -> Result<Arc<Scratch>> {
        let mut scratch = self.inner.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(scratch) = scratch.as_ref() {
            return Ok(Arc::clone(scratch));
        }
        let (made, _) = prepare(&self.inner.layout)?;
        let made = Arc::new(made);
        *scratch = Some(Arc::clone(&made));
        Ok(made)
    }

    fn run<T, F>(&self, work: F) -> BoxFuture<'_, Result<T>>
    where
        F: FnOnce(&FileStorage) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        Box::pin(blocking(move || work(&this)))
    }
}

fn list(dir: &Path, suffix: &str) -> Result<Vec<Listed>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(e, dir)),
    };
    let mut listed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(e, dir))?;
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(Name::from_hex)
        else {
            continue;
        };
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        listed.push(Listed { name, modified });
    }
    Ok(listed)
}

impl Storage for FileStorage {
    fn upload(&self) -> BoxFuture<'_, Result<Box<dyn BodyUpload>>> {
        self.run(|this| {
            let scratch = this.scratch()?;
            let mode = this.inner.layout.mode();
            let writer = ContentWriter::create(scratch.temp_path(), mode)?;
            let upload: Box<dyn BodyUpload> = Box::new(FileUpload {
                storage: this.clone(),
                writer: Some(writer),
            });
            Ok(upload)
        })
    }

    fn read_body(
        &self,
        digest: Name,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<Option<StreamingBody>>> {
        self.run(move |this| {
            let path = this.inner.layout.content_path(digest.0);
            let file = match files::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(e, &path)),
            };
            let reader = ChunkReader::new(Arc::new(file), offset, len, READ_CHUNK);
            Ok(Some(StreamingBody::stored_file(reader, None)))
        })
    }

    fn body_length(&self, digest: Name) -> BoxFuture<'_, Result<Option<u64>>> {
        self.run(move |this| {
            let path = this.inner.layout.content_path(digest.0);
            match fs::symlink_metadata(&path) {
                Ok(meta) => Ok(Some(meta.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(e, &path)),
            }
        })
    }

    fn delete_body(&self, digest: Name) -> BoxFuture<'_, Result<()>> {
        self.run(move |this| {
            let path = this.inner.layout.content_path(digest.0);
            remove_if_present(&path).map_err(|e| Error::io(e, &path))
        })
    }

    fn list_bodies(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        self.run(|this| list(&this.inner.layout.content_dir(), ""))
    }

    fn read_record(&self, name: Name) -> BoxFuture<'_, Result<Option<Bytes>>> {
        self.run(move |this| {
            let path = this.inner.layout.record_path(name.0);
            match files::read(&path) {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(e, &path)),
            }
        })
    }

    fn write_record(&self, name: Name, record: Bytes) -> BoxFuture<'_, Result<()>> {
        self.run(move |this| {
            let scratch = this.scratch()?;
            let mode = this.inner.layout.mode();
            let (temp, _) = write_temp(scratch.temp_path(), &record, false, mode)?;
            let path = this.inner.layout.record_path(name.0);
            temp.persist(&path).map_err(|e| Error::io(e, &path))
        })
    }

    fn delete_record(&self, name: Name) -> BoxFuture<'_, Result<()>> {
        self.run(move |this| {
            let path = this.inner.layout.record_path(name.0);
            remove_if_present(&path).map_err(|e| Error::io(e, &path))
        })
    }

    fn list_records(&self) -> BoxFuture<'_, Result<Vec<Listed>>> {
        self.run(|this| list(&this.inner.layout.metadata_dir(), ".json"))
    }

    /// A note is a file under `cache-v2/`, written to a temp file and renamed into place
    /// (or, to create it only if absent, hard-linked: the link fails if the name is taken).
    fn put_note(&self, path: &str, bytes: Bytes, how: PutNote) -> BoxFuture<'_, Result<bool>> {
        let path = self.note_path(path);
        self.run(move |this| {
            let path = path?;
            let scratch = this.scratch()?;
            let mode = this.inner.layout.mode();
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(e, parent))?;
            }
            let (temp, _) = write_temp(scratch.temp_path(), &bytes, false, mode)?;
            match how {
                PutNote::Create => match fs::hard_link(temp.path(), &path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(Error::io(e, &path)),
                },
                PutNote::Overwrite => {
                    temp.persist(&path).map_err(|e| Error::io(e, &path))?;
                    Ok(true)
                }
            }
        })
    }

    /// A note's tag is its length, modification time and inode.
    fn read_note<'a>(
        &'a self,
        path: &'a str,
        unless_tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Note>> {
        let path = self.note_path(path);
        let unless_tag = unless_tag.map(str::to_owned);
        self.run(move |_| {
            let path = path?;
            let file = match files::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Note::Missing),
                Err(e) => return Err(Error::io(e, &path)),
            };
            let meta = file.metadata().map_err(|e| Error::io(e, &path))?;
            let tag = note_tag(&meta);
            if unless_tag.as_deref() == Some(tag.as_str()) {
                return Ok(Note::Unchanged);
            }
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| Error::io(e, &path))?;
            Ok(Note::Found {
                bytes: Bytes::from(bytes),
                tag,
            })
        })
    }

    fn list_notes<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<NoteListed>>> {
        let dir = self.note_path(dir);
        let after = after.map(str::to_owned);
        self.run(move |_| {
            let dir = dir?;
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(Error::io(e, &dir)),
            };
            let mut listed = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(e, &dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let later = after.as_deref().is_none_or(|after| name.as_str() > after);
                if !later || !super::valid_note_path(&name) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else {
                    continue; // removed meanwhile
                };
                if meta.is_file() {
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    listed.push(NoteListed { name, modified });
                }
            }
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            listed.truncate(limit);
            Ok(listed)
        })
    }

    fn delete_note<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        let path = self.note_path(path);
        self.run(move |_| {
            let path = path?;
            remove_if_present(&path).map_err(|e| Error::io(e, &path))
        })
    }
}

impl FileStorage {
    /// Where the note `path` is, once it is found to be a valid name.
    fn note_path(&self, path: &str) -> Result<PathBuf> {
        Ok(self
            .inner
            .layout
            .format_dir()
            .join(super::checked_note_path(path)?))
    }
}

fn note_tag(meta: &fs::Metadata) -> String {
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    format!("{}-{modified}-{inode}", meta.len())
}

/// A body being written to a temp file, hashed as it goes.
struct FileUpload {
    storage: FileStorage,
    writer: Option<ContentWriter>,
}

impl BodyUpload for FileUpload {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(mut writer) = self.writer.take() else {
                return Err(Error::new(crate::ErrorKind::Io).with_subject("an upload that failed"));
            };
            let writer = blocking(move || writer.write(&chunk).map(|()| writer)).await?;
            self.writer = Some(writer);
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<Committed>> {
        let FileUpload { storage, writer } = *self;
        Box::pin(blocking(move || {
            let writer = writer.ok_or_else(|| {
                Error::new(crate::ErrorKind::Io).with_subject("an upload that failed")
            })?;
            let content = writer.finish(false)?;
            let committed = Committed {
                digest: Name(content.digest),
                length: content.length,
            };
            let path = storage.inner.layout.content_path(content.digest);
            install_content(content.temp, &path, content.length)?;
            Ok(committed)
        }))
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        // The temp file goes with the writer.
        Box::pin(async move {
            drop(self);
            Ok(())
        })
    }
}
