//! Clean-up: the scratch directory each open store writes in, removal of what dead writers
//! left in `tmp/`, and removal of content that no record uses.
//!
//! Several processes may share one cache directory. Each open store writes its temp files in
//! `tmp/<instance>/` and holds an exclusive lock on `tmp/<instance>.lock` for as long as it is
//! open; the operating system drops the lock when the process dies, however it dies. A store
//! that opens removes every instance directory whose lock it can take, so a crashed writer's
//! partial files go, and a live writer's stay. `tmp/.open.lock` serialises that sweep with the
//! creation of new instances, so a lock file is never swept between its creation and locking.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::files::{self, Mode};
use super::layout::{Hash32, Layout};
use crate::error::{Error, Result};

const LOCK_SUFFIX: &str = ".lock";
const OPEN_LOCK: &str = ".open.lock";

/// Unreferenced content younger than this is left alone at open: another process may have
/// renamed it into place and be about to write the record that uses it.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// This store's private directory under `tmp/`.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    next: AtomicU64,
}

impl Scratch {
    pub(crate) fn temp_path(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{n}.part"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

fn open_lock(tmp: &Path, mode: Mode) -> io::Result<File> {
    let file = files::open_or_create(&tmp.join(OPEN_LOCK), mode, false)?;
    file.lock()?;
    Ok(file)
}

/// Removes what dead instances left in `tmp/` and creates this instance's scratch directory.
/// Returns the scratch directory and how many leftovers were removed.
pub(crate) fn sweep_tmp_and_create_scratch(tmp: &Path, mode: Mode) -> io::Result<(Scratch, usize)> {
    let guard = open_lock(tmp, mode)?;
    let mut removed = 0;
    for item in fs::read_dir(tmp)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name == OPEN_LOCK {
            continue;
        }
        let path = item.path();
        if let Some(stem) = name.strip_suffix(LOCK_SUFFIX) {
            let Ok(lock) = files::open_rw(&path) else {
                continue;
            };
            // Taking the lock succeeds only when its owner is gone.
            if lock.try_lock().is_ok() {
                let dir = tmp.join(stem);
                removed += count_files(&dir);
                let _ = fs::remove_dir_all(&dir);
                let _ = fs::remove_file(&path);
            }
        } else if item.file_type()?.is_dir() {
            if !tmp.join(format!("{name}{LOCK_SUFFIX}")).exists() {
                removed += count_files(&path);
                let _ = fs::remove_dir_all(&path);
            }
        } else {
            let _ = fs::remove_file(&path);
            removed += 1;
        }
    }

    let name = crate::support::unique_name();
    let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
    let lock = files::create_new(&lock_path, mode, true)?;
    lock.lock()?;
    let dir = tmp.join(&name);
    files::create_dir(&dir, mode)?;
    drop(guard);
    Ok((
        Scratch {
            dir,
            lock_path,
            _lock: lock,
            next: AtomicU64::new(0),
        },
        removed,
    ))
}

/// How many stores have `tmp` open now (in this process or others): the instance locks
/// there. A lock a crashed store left counts until the next open sweeps it.
pub(crate) fn instances(tmp: &Path) -> io::Result<usize> {
    let mut count = 0;
    for item in fs::read_dir(tmp)? {
        let name = item?.file_name();
        if name
            .to_str()
            .is_some_and(|name| name != OPEN_LOCK && name.ends_with(LOCK_SUFFIX))
        {
            count += 1;
        }
    }
    Ok(count)
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |items| items.count())
}

/// Removes content files that no record uses and that are older than [`ORPHAN_GRACE`]: what a
/// crash between committing content and committing its record left. Files whose names are not
/// digests are not ours and are left alone. `remove_unused` removes a file if it is still
/// unused when it is asked (checked where a commit cannot start using it meanwhile) and says
/// whether it did.
pub(crate) fn sweep_orphans(
    content: &Path,
    in_use: impl Fn(Hash32) -> bool,
    remove_unused: impl Fn(Hash32, &Path) -> bool,
) -> io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for item in fs::read_dir(content)? {
        let item = item?;
        let Some(digest) = item.file_name().to_str().and_then(Hash32::from_hex) else {
            continue;
        };
        if in_use(digest) {
            continue;
        }
        let old = item
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= ORPHAN_GRACE);
        if old && remove_unused(digest, &item.path()) {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes the layout's directories, sweeps what dead instances left in `tmp/`, and makes
/// this instance's scratch directory there. Returns it and how many leftovers went.
/// The user's directory must be this process's user's and writable by no other user, and
/// the store's own directories real directories with the store's bits (`files`).
pub(crate) fn prepare(layout: &Layout) -> Result<(Scratch, usize)> {
    let mode = layout.mode();
    let dir = layout.user_dir();
    files::ensure_dir(dir, mode, true).map_err(|e| Error::io(e, dir))?;
    for dir in [
        layout.format_dir().to_path_buf(),
        layout.metadata_dir(),
        layout.content_dir(),
        layout.tmp_dir(),
    ] {
        files::ensure_dir(&dir, mode, false).map_err(|e| Error::io(e, &dir))?;
    }
    let tmp = layout.tmp_dir();
    sweep_tmp_and_create_scratch(&tmp, mode).map_err(|e| Error::io(e, &tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_instance_is_kept_and_a_dead_one_swept() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path();
        let (live, _) = sweep_tmp_and_create_scratch(tmp, Mode::PRIVATE).unwrap();
        fs::write(live.temp_path(), b"partial").unwrap();

        // A dead instance: a directory whose lock file nobody holds, and stray files.
        fs::create_dir(tmp.join("dead")).unwrap();
        fs::write(tmp.join("dead/0.part"), b"x").unwrap();
        fs::write(tmp.join("dead.lock"), b"").unwrap();
        fs::create_dir(tmp.join("nolock")).unwrap();
        fs::write(tmp.join("nolock/1.part"), b"x").unwrap();
        fs::write(tmp.join("stray"), b"x").unwrap();

        let (other, removed) = sweep_tmp_and_create_scratch(tmp, Mode::PRIVATE).unwrap();
        assert_eq!(removed, 3, "dead/0.part, nolock/1.part, stray");
        assert!(!tmp.join("dead").exists());
        assert!(!tmp.join("dead.lock").exists());
        assert!(!tmp.join("nolock").exists());
        assert!(!tmp.join("stray").exists());
        assert_eq!(count_files(&live.dir), 1, "a live instance's files stay");

        drop(live);
        drop(other);
        let names: Vec<_> = fs::read_dir(tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(OPEN_LOCK)]);
    }

    #[test]
    fn orphans_are_removed_only_when_old_and_unused() {
        let dir = tempfile::tempdir().unwrap();
        let used = Hash32::of(b"used");
        let orphan = Hash32::of(b"orphan");
        for d in [used, orphan] {
            let f = File::create(dir.path().join(d.to_hex())).unwrap();
            f.set_modified(SystemTime::now() - ORPHAN_GRACE * 2)
                .unwrap();
        }
        let young = Hash32::of(b"young");
        fs::write(dir.path().join(young.to_hex()), b"").unwrap();
        fs::write(dir.path().join("README"), b"not ours").unwrap();

        let removed = sweep_orphans(
            dir.path(),
            |d| d == used,
            |_, path| fs::remove_file(path).is_ok(),
        )
        .unwrap();
        assert_eq!(removed, 1);
        assert!(dir.path().join(used.to_hex()).exists());
        assert!(!dir.path().join(orphan.to_hex()).exists());
        assert!(dir.path().join(young.to_hex()).exists());
        assert!(dir.path().join("README").exists());
    }
}
