//! The cache directory's on-disk primitives, shared by the store and the local storage: the
//! layout and digests, records, content files, chunked reads, scratch directories and the
//! file rules (modes, no symlinks, free space). Nothing here knows HTTP caching rules.

pub(crate) mod content;
pub(crate) mod files;
pub(crate) mod layout;
pub(crate) mod reader;
pub(crate) mod record;
pub(crate) mod scratch;
pub(crate) mod tags;
