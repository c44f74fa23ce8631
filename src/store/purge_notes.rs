//! [`PurgeNotes`]: the purges this store has answered whose work on disk is not all done,
//! each a file in `cache-v2/purges-pending/` until it is.
//!
//! A tag purge answers once its entries are out of the index, which takes milliseconds for
//! a hundred thousand of them; removing their files takes an unlink or two each, done in
//! the background. Until that is done, the note stands in for the files: a record read
//! from disk that a note purges is a miss, and a store opened again (after a crash, or a
//! stop before the work ended) applies the notes as it reads its records in. A note is
//! written (and with `durable`, synced) before the purge answers, and removed when its
//! work is done. One file a note, so that processes sharing the directory never rewrite
//! each other's.

use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::format::content::{remove_if_present, write_temp};
use crate::format::files;
use crate::format::tags::{self, Tags};
use crate::rt::lock;
use crate::support::{epoch_millis, unique_name};

/// The directory the notes are kept in, in the store's `cache-v2/`.
pub(super) const DIR: &str = "purges-pending";

/// A purge whose work on disk is not all done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Note {
    /// Its file's name.
    #[serde(skip)]
    pub(super) name: String,
    /// Entries stored before this (ms since the epoch) are purged.
    pub(super) at_ms: u64,
    /// The tags it purges.
    pub(super) tags: Vec<String>,
}

impl Note {
    /// Whether it purges an entry carrying `tags`, stored at `stored_at`.
    fn purges(&self, tags: &Tags, stored_at: SystemTime) -> bool {
        epoch_millis(stored_at) < self.at_ms && self.tags.iter().any(|tag| tags.contains(tag))
    }
}

/// The notes of a store, in memory and in their directory.
#[derive(Debug)]
pub(super) struct PurgeNotes {
    dir: PathBuf,
    durable: bool,
    mode: files::Mode,
    notes: Mutex<Vec<Note>>,
    /// How many notes there are: read without the lock on every record read from disk.
    count: AtomicUsize,
}

impl PurgeNotes {
    /// The notes in `dir` (made on the first note). A file that is not a note is removed
    /// and said in the log.
    pub(super) fn open(dir: PathBuf, durable: bool, mode: files::Mode) -> Result<Self> {
        let mut notes = Vec::new();
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => Some(listing),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(e, &dir)),
        };
        for item in listing.into_iter().flatten() {
            let path = item.map_err(|e| Error::io(e, &dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let note = name
                .strip_suffix(".json")
                .and_then(|_| files::read(&path).ok())
                .and_then(|bytes| serde_json::from_slice::<Note>(&bytes).ok())
                .filter(|note| !note.tags.is_empty() && note.tags.iter().all(|t| tags::is_tag(t)));
            match note {
                Some(note) => notes.push(Note {
                    name: name.to_owned(),
                    ..note
                }),
                None => {
                    if !name.ends_with(".tmp") {
                        crate::log::warn_event!(path = %path.display(), "not a pending purge: removed");
                    }
                    let _ = remove_if_present(&path);
                }
            }
        }
        if !notes.is_empty() {
            crate::log::info_event!(
                pending = notes.len(),
                "purges whose work was not done: applied again"
            );
        }
        let count = AtomicUsize::new(notes.len());
        Ok(PurgeNotes {
            dir,
            durable,
            mode,
            notes: Mutex::new(notes),
            count,
        })
    }

    /// Whether there are none: the one check a record read from disk costs then.
    pub(super) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Writes a note purging `tags` at `at`, and returns its name.
    pub(super) fn add(&self, tags: &[impl AsRef<str>], at: SystemTime) -> Result<String> {
        let at_ms = epoch_millis(at);
        let name = format!("{at_ms:013}-{}.json", unique_name());
        let note = Note {
            name: name.clone(),
            at_ms,
            tags: tags.iter().map(|tag| tag.as_ref().to_owned()).collect(),
        };
        let bytes =
            serde_json::to_vec(&note).map_err(|e| Error::new(ErrorKind::Record).with_source(e))?;
        files::ensure_dir(&self.dir, self.mode, false).map_err(|e| Error::io(e, &self.dir))?;
        let path = self.dir.join(&name);
        let (temp, _) = write_temp(path.with_extension("tmp"), &bytes, self.durable, self.mode)?;
        temp.persist(&path).map_err(|e| Error::io(e, &path))?;
        if self.durable {
            fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(e, &self.dir))?;
        }
        let mut notes = lock(&self.notes);
        notes.push(note);
        self.count.store(notes.len(), Ordering::Release);
        Ok(name)
    }

    /// The note named `name` is done: it goes, from memory and from disk.
    pub(super) fn done(&self, name: &str) {
        let mut notes = lock(&self.notes);
        notes.retain(|note| note.name != name);
        self.count.store(notes.len(), Ordering::Release);
        let path = self.dir.join(name);
        if let Err(error) = remove_if_present(&path) {
            crate::log::warn_event!(path = %path.display(), %error, "could not remove a done purge: applied again at the next start");
        }
    }

    /// The names of the notes now.
    pub(super) fn names(&self) -> Vec<String> {
        lock(&self.notes)
            .iter()
            .map(|note| note.name.clone())
            .collect()
    }

    /// Whether a note purges an entry carrying `tags`, stored at `stored_at`.
    pub(super) fn purges(&self, tags: &Tags, stored_at: SystemTime) -> bool {
        !self.is_empty()
            && !tags.is_empty()
            && lock(&self.notes)
                .iter()
                .any(|note| note.purges(tags, stored_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Tags {
        Tags::from_stored(list.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn notes_stay_on_disk_until_their_work_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DIR);
        let open = || PurgeNotes::open(path.clone(), false, files::Mode::PRIVATE).unwrap();
        let notes = open();
        assert!(notes.is_empty());
        let at = crate::support::from_epoch_millis(1_000_000);
        let first = notes.add(&["a", "b"], at).unwrap();
        let second = notes.add(&["c"], at).unwrap();
        let before = crate::support::from_epoch_millis(999_999);
        assert!(notes.purges(&tags(&["x", "b"]), before));
        assert!(
            !notes.purges(&tags(&["b"]), at),
            "stored at the purge's time: kept"
        );
        assert!(!notes.purges(&tags(&["x"]), before));

        // Opened again (a crash): both are there.
        let again = open();
        let mut names = again.names();
        names.sort();
        let mut expected = vec![first.clone(), second.clone()];
        expected.sort();
        assert_eq!(names, expected);
        assert!(again.purges(&tags(&["c"]), before));
        // Another store on the directory finishing its note leaves this one's.
        again.done(&first);
        assert_eq!(open().names(), std::slice::from_ref(&second));
        notes.done(&second);
        assert!(open().is_empty());

        // A file that is not a note goes.
        fs::write(path.join("1-x.json"), "not json").unwrap();
        fs::write(path.join("2-x.json"), r#"{"at_ms":5,"tags":["bad tag"]}"#).unwrap();
        fs::write(path.join("3-x.json"), r#"{"at_ms":5,"tags":["ok"]}"#).unwrap();
        assert_eq!(open().names(), ["3-x.json"]);
        assert_eq!(fs::read_dir(&path).unwrap().count(), 1);
    }
}
