//! A note of the fleet's purge log: its name, read only in its exact form (see the parent
//! module), and what it purges.

use super::*;

/// One note of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Purge {
    pub(super) name: String,
    /// When it was written (ms), no later than the bucket says.
    pub(super) at: u64,
    pub(super) node: String,
    pub(super) target: Target,
}

/// What a purge removes: one key, every key under a prefix, or every entry carrying one
/// of some tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    Key(Hash32),
    /// A prefix, by the hash of its bytes (the note's content).
    Prefix(Hash32),
    /// Tags, by the hash of their list (the note's content: the tags separated by spaces).
    Tags(Hash32),
}

impl Purge {
    /// Reads a note's name; anything but the exact form (and, with `secret`, a valid seal
    /// at its end) is `None`.
    pub(super) fn parse(
        name: &str,
        modified: SystemTime,
        secret: Option<&Secret>,
    ) -> Option<Purge> {
        let unsealed = match secret {
            Some(secret) => {
                let (unsealed, tag) = name.rsplit_once('-')?;
                secret
                    .verify(&[b"purge", unsealed.as_bytes()], tag)
                    .then_some(unsealed)?
            }
            None => name,
        };
        let mut parts = unsealed.split('-');
        let (at, node, n, kind, hash) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some()
            || at.len() != 13
            || !at.bytes().all(|b| b.is_ascii_digit())
            || node.len() != 12
            || !node.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            || n.is_empty()
            || n.len() > 20
            || !n.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let hash = Hash32::from_hex(hash)?;
        let target = match kind {
            "k" => Target::Key(hash),
            "p" => Target::Prefix(hash),
            "t" => Target::Tags(hash),
            _ => return None,
        };
        // A time from the future is the bucket's time of the write (plus the skew).
        let written = epoch_millis(modified).saturating_add(millis(SKEW));
        Some(Purge {
            name: name.to_owned(),
            at: at.parse::<u64>().ok()?.min(written),
            node: node.to_owned(),
            target,
        })
    }

    /// Entries stored before this (ms) are purged.
    pub(super) fn before(&self) -> u64 {
        self.at.saturating_add(millis(SKEW))
    }
}
