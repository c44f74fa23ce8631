//! How the store creates and opens files: private by default whatever the umask, never
//! through a symbolic link, and only in directories that no other user can change.
//!
//! A shared cache holds other people's responses (and, in a private cache, one user's
//! private pages and the header values `Vary` names, such as `Cookie`): its files are `0600`
//! and its directories `0700` unless the builder widens them for a group. A symlink planted
//! in the cache directory is never followed when a file is opened, and a cache directory
//! that another user owns, or that anyone may write to, is refused when the store opens (as
//! ssh refuses a `~/.ssh` others can write).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// The permission bits of the files the store creates; its directories get the same bits
/// plus the search bit wherever a file is readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mode(u32);

impl Mode {
    /// Owner only: `0600` files, `0700` directories.
    pub(crate) const PRIVATE: Mode = Mode(0o600);

    /// `bits` (for example `0o640` for a group that reads the cache), without execute,
    /// set-id or sticky bits, and never writable by others.
    pub(crate) fn new(bits: u32) -> Mode {
        Mode(bits & 0o664 | 0o600)
    }

    pub(crate) fn file(self) -> u32 {
        self.0
    }

    pub(crate) fn dir(self) -> u32 {
        self.0 | (self.0 & 0o444) >> 2
    }
}

impl Default for Mode {
    fn default() -> Self {
        Mode::PRIVATE
    }
}

/// Options for a file opened in the cache directory: no symlink followed, not inherited by
/// child processes.
fn options() -> OpenOptions {
    #[cfg_attr(not(unix), expect(unused_mut, reason = "only Unix sets options here"))]
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
        options.custom_flags(flags.bits() as i32);
    }
    options
}

/// Opens a file of the store for reading; a symlink in its place is an error.
pub(crate) fn open(path: &Path) -> io::Result<File> {
    options().read(true).open(path)
}

/// Reads a whole file of the store; a symlink in its place is an error.
pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut open(path)?, &mut bytes)?;
    Ok(bytes)
}

/// Opens a file of the store for reading and writing (a lock file), without creating it.
pub(crate) fn open_rw(path: &Path) -> io::Result<File> {
    options().read(true).write(true).open(path)
}

/// Creates a new file with `mode` exactly (the umask may only narrow it, so wider bits are
/// set again); one in its place already, or a symlink, is an error.
pub(crate) fn create_new(path: &Path, mode: Mode, read: bool) -> io::Result<File> {
    let mut options = options();
    options.write(true).read(read).create_new(true);
    set_mode(&mut options, mode);
    let file = options.open(path)?;
    widen(&file, mode.file())?;
    Ok(file)
}

/// Opens (creating it when absent) a file to append to or lock.
pub(crate) fn open_or_create(path: &Path, mode: Mode, append: bool) -> io::Result<File> {
    let mut options = options();
    if append {
        options.append(true);
    } else {
        options.read(true).write(true);
    }
    options.create(true);
    set_mode(&mut options, mode);
    let file = options.open(path)?;
    widen(&file, mode.file())?;
    Ok(file)
}

/// Creates `dir` with the directory bits of `mode` (exactly, whatever the umask).
pub(crate) fn create_dir(dir: &Path, mode: Mode) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode.dir());
    builder.create(dir)?;
    set_dir_mode(dir, mode)
}

/// Creates `dir` and its missing parents with the directory bits of `mode`, or checks the
/// one there: it must be a directory owned by this process's user and writable by no one
/// else. The user's own cache directory (`root`) may be a symlink to one and keeps its
/// bits; the store's directories under it may not, and get `mode`'s.
pub(crate) fn ensure_dir(dir: &Path, mode: Mode, root: bool) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode.dir());
    builder.create(dir)?;
    let meta = if root {
        fs::metadata(dir)?
    } else {
        fs::symlink_metadata(dir)?
    };
    if !meta.is_dir() {
        return Err(unusable(
            dir,
            "is not a directory (a symbolic link is not followed)",
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let user = rustix::process::geteuid().as_raw();
        if meta.uid() != user {
            let why = format!(
                "is owned by user {}, not by this process's user {user}",
                meta.uid()
            );
            return Err(unusable(dir, &why));
        }
        if meta.mode() & 0o002 != 0 {
            return Err(unusable(dir, "is writable by every user"));
        }
    }
    if root {
        Ok(())
    } else {
        set_dir_mode(dir, mode)
    }
}

fn unusable(dir: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the cache directory {} {why}: it is refused, since another user could \
             read or replace what it serves",
            dir.display()
        ),
    )
}

fn set_mode(options: &mut OpenOptions, mode: Mode) {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, mode.file());
    #[cfg(not(unix))]
    let _ = (options, mode);
}

/// Sets bits the umask took away from a file created wider than owner-only.
fn widen(file: &File, bits: u32) -> io::Result<()> {
    #[cfg(unix)]
    if bits & 0o077 != 0 {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(bits))?;
    }
    #[cfg(not(unix))]
    let _ = (file, bits);
    Ok(())
}

fn set_dir_mode(dir: &Path, mode: Mode) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let now = fs::symlink_metadata(dir)?.permissions().mode() & 0o7777;
        if now != mode.dir() {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode.dir()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, mode);
    Ok(())
}

/// The free space a store keeps on its file system, as nginx's `min_free` does: under it,
/// the store evicts entries (in its eviction order) and commits nothing new until there is
/// room again. Read with `statvfs` at most once a second.
#[derive(Debug)]
pub(crate) struct FreeSpace {
    /// The floor asked for; `None`: 5 % of the file system, at most 1 GiB.
    floor: Option<u64>,
    /// When the file system was last looked at, and how many bytes short of the floor it
    /// was then.
    checked: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// The most the default floor asks for.
const DEFAULT_FLOOR_CAP: u64 = 1 << 30;

impl FreeSpace {
    pub(crate) fn new(floor: Option<u64>) -> Self {
        FreeSpace {
            floor,
            checked: std::sync::Mutex::new(None),
        }
    }

    /// How many bytes the file system holding `dir` is short of the floor (0: none), as of
    /// at most a second ago unless `now` asks for a fresh look.
    pub(crate) fn shortfall(&self, dir: &Path, now: bool) -> u64 {
        let mut checked = crate::rt::lock(&self.checked);
        if let Some((at, short)) = *checked
            && !now
            && at.elapsed() < std::time::Duration::from_secs(1)
        {
            return short;
        }
        let short = self.measure(dir).unwrap_or(0);
        *checked = Some((std::time::Instant::now(), short));
        short
    }

    #[cfg(unix)]
    fn measure(&self, dir: &Path) -> Option<u64> {
        let stats = rustix::fs::statvfs(dir).ok()?;
        let unit = stats.f_frsize.max(1);
        let total = stats.f_blocks.saturating_mul(unit);
        let free = stats.f_bavail.saturating_mul(unit);
        let floor = self
            .floor
            .unwrap_or_else(|| (total / 20).min(DEFAULT_FLOOR_CAP));
        Some(floor.saturating_sub(free))
    }

    #[cfg(not(unix))]
    fn measure(&self, _dir: &Path) -> Option<u64> {
        None
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn bits(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_floor_is_what_the_file_system_lacks_of_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(FreeSpace::new(Some(0)).shortfall(dir.path(), true), 0);
        let all = FreeSpace::new(Some(u64::MAX));
        let short = all.shortfall(dir.path(), true);
        assert!(short > 0 && short < u64::MAX, "{short}");
        assert_eq!(
            all.shortfall(dir.path(), false),
            short,
            "cached for a second"
        );
    }

    #[test]
    fn modes_are_owner_only_unless_widened_and_never_world_writable() {
        assert_eq!((Mode::PRIVATE.file(), Mode::PRIVATE.dir()), (0o600, 0o700));
        assert_eq!(
            (Mode::new(0o640).file(), Mode::new(0o640).dir()),
            (0o640, 0o750)
        );
        assert_eq!(Mode::new(0o777).file(), 0o664);
        assert_eq!(Mode::new(0o000).file(), 0o600);
    }

    #[test]
    fn files_and_directories_get_their_mode_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("a/b");
        ensure_dir(&cache, Mode::PRIVATE, false).unwrap();
        assert_eq!(bits(&cache), 0o700);
        let file = cache.join("f");
        create_new(&file, Mode::new(0o660), false).unwrap();
        assert_eq!(bits(&file), 0o660);
        assert!(create_new(&file, Mode::PRIVATE, false).is_err(), "exists");

        let target = dir.path().join("elsewhere");
        fs::write(&target, b"secret").unwrap();
        let link = cache.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open(&link).is_err(), "a symlink is not followed");
        assert!(open_or_create(&link, Mode::PRIVATE, true).is_err());

        let linked_dir = dir.path().join("linked");
        std::os::unix::fs::symlink(&cache, &linked_dir).unwrap();
        assert!(ensure_dir(&linked_dir, Mode::PRIVATE, false).is_err());
        assert!(ensure_dir(&linked_dir, Mode::PRIVATE, true).is_ok());

        fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&cache, Mode::PRIVATE, true).unwrap();
        assert_eq!(
            bits(&cache),
            0o755,
            "the user's own directory keeps its bits"
        );
        ensure_dir(&cache, Mode::PRIVATE, false).unwrap();
        assert_eq!(bits(&cache), 0o700, "the store's own are narrowed");
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
        let refused = ensure_dir(&cache, Mode::PRIVATE, true).unwrap_err();
        assert!(
            refused.to_string().contains("writable by every user"),
            "{refused}"
        );
    }
}

/// What a record file looked like when it was parsed. A hit compares it with a fresh `stat`
/// of the file, so a record that another process replaced, removed or damaged is read again
/// instead of served from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Stamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}
