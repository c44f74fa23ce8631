//! Reading one record file: the entry it holds, in full or in summary, or why it cannot be
//! read (damage to remove, or a system short of something, to leave alone).

use std::io;
use std::path::Path;

use crate::format::files::{self, Stamp};
use crate::format::layout::Hash32;
use crate::format::record::{self, Entry};

/// Records larger than this are damage, not records: decoding them could take unbounded
/// memory.
pub(super) const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Why a record could not be read.
#[derive(Debug)]
pub(super) enum ReadFailure {
    /// The file is damaged, unreadable or not a record: remove it.
    Unusable(String),
    /// The system cannot read it now (out of file handles or memory): the record may be
    /// fine, so it must not be removed, nor its content taken for an orphan.
    Unavailable(io::Error),
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFailure::Unusable(why) => f.write_str(why),
            ReadFailure::Unavailable(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        if is_transient(&e) {
            ReadFailure::Unavailable(e)
        } else {
            ReadFailure::Unusable(e.to_string())
        }
    }
}

/// Errors that say nothing about the file: the process or the system is short of something.
pub(super) fn is_transient(e: &io::Error) -> bool {
    // ENOMEM, EAGAIN, ENFILE, EMFILE have these numbers on Linux and the BSDs alike.
    #[cfg(unix)]
    if matches!(e.raw_os_error(), Some(12 | 11 | 23 | 24 | 35)) {
        return true;
    }
    matches!(
        e.kind(),
        io::ErrorKind::OutOfMemory | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// Reads a record in summary (what the store opens with), with the stamp of the file read.
/// `Ok(None)`: there is none.
pub(super) fn read_summary(
    path: &Path,
    key_hash: Hash32,
) -> std::result::Result<Option<(record::Summary, Stamp)>, ReadFailure> {
    read_as(path, key_hash, Entry::summarize, |summary| &summary.key)
}

/// Reads and decodes a record, with the stamp of the file read. `Ok(None)`: there is none.
pub(super) fn read_record(
    path: &Path,
    key_hash: Hash32,
) -> std::result::Result<Option<(Entry, Stamp)>, ReadFailure> {
    read_as(path, key_hash, Entry::decode, |entry| &entry.key)
}

/// Reads a record file and decodes it with `decode`, checking that the key it holds is the
/// one its file name is the hash of.
pub(super) fn read_as<T>(
    path: &Path,
    key_hash: Hash32,
    decode: fn(&[u8]) -> std::result::Result<T, record::DecodeError>,
    key: fn(&T) -> &str,
) -> std::result::Result<Option<(T, Stamp)>, ReadFailure> {
    use std::io::Read as _;
    let mut file = match files::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if meta.len() > MAX_RECORD_BYTES {
        return Err(ReadFailure::Unusable(format!(
            "record of {} bytes is larger than any this store writes",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    let decoded = decode(&bytes).map_err(|e| ReadFailure::Unusable(e.to_string()))?;
    if Hash32::of(key(&decoded).as_bytes()) != key_hash {
        return Err(ReadFailure::Unusable(
            "record is filed under another key's name".into(),
        ));
    }
    Ok(Some((decoded, Stamp::of(&meta))))
}
