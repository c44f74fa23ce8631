//! The access log: uses appended to `cache-v2/access.log` so that the eviction order
//! survives a restart, rewritten short when it grows.

use super::parsed::HeldEntry;
use crate::format::layout::Hash32;

use super::open_store::OpenStore;
use crate::format::files;
use crate::rt::lock;

impl OpenStore {
    /// The parsed record of `key_hash`, noting the use (in the access log once a minute).
    pub(super) fn used(&self, key_hash: Hash32) -> Option<HeldEntry> {
        let (known, logged) = {
            let mut index = self.index();
            (index.entry(key_hash), index.touch(key_hash))
        };
        if let Some(at) = logged {
            self.log_use(key_hash, at);
        }
        known
    }

    /// Notes a use of `key_hash` in the eviction order (and in the access log once a minute).
    pub(super) fn note_use(&self, key_hash: Hash32) {
        let logged = self.index().touch(key_hash);
        if let Some(at) = logged {
            self.log_use(key_hash, at);
        }
    }

    /// Appends a use to the access log. Lines are short and appended whole, so processes
    /// sharing the store do not tear each other's; a lost line only ages an entry.
    pub(super) fn log_use(&self, key_hash: Hash32, at: u64) {
        use std::io::Write as _;
        let mut log = lock(&self.access_log);
        if log.is_none() {
            let path = self.layout.access_log();
            *log = files::open_or_create(&path, self.layout.mode(), true).ok();
        }
        if let Some(file) = log.as_mut() {
            let line = format!("{} {at}\n", key_hash.to_hex());
            let _ = file.write_all(line.as_bytes());
        }
        drop(log);
        let lines = 1 + self
            .access_log_lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if lines > self.access_log_bound() {
            self.rewrite_access_log();
        }
    }

    /// Lines past which the access log is rewritten with one line an entry.
    pub(super) fn access_log_bound(&self) -> u64 {
        4 * self.index().len() as u64 + 1024
    }

    /// Rewrites the access log with each entry's last use, one line each.
    pub(super) fn rewrite_access_log(&self) {
        let uses = self.index().uses();
        let text: String = uses
            .iter()
            .map(|(key, at)| format!("{} {at}\n", key.to_hex()))
            .collect();
        let mut log = lock(&self.access_log);
        if let Ok((temp, _)) = crate::format::content::write_temp(
            self.scratch.temp_path(),
            text.as_bytes(),
            false,
            self.layout.mode(),
        ) && temp.persist(&self.layout.access_log()).is_ok()
        {
            // The handle held points at the old file: the next use opens the new one.
            *log = None;
            self.access_log_lines
                .store(uses.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reads the access log into the index's eviction order, and rewrites it short when it
    /// has grown well past one line an entry.
    pub(super) fn read_access_log(&self) {
        use std::io::BufRead as _;
        let path = self.layout.access_log();
        let Ok(file) = files::open(&path) else {
            return;
        };
        let mut lines = 0u64;
        {
            let mut index = self.index();
            for line in std::io::BufReader::new(file).lines().map_while(|l| l.ok()) {
                lines += 1;
                let mut words = line.split(' ');
                if let (Some(Some(key)), Some(Ok(at))) = (
                    words.next().map(Hash32::from_hex),
                    words.next().map(str::parse::<u64>),
                ) {
                    index.set_last_used(key, at);
                }
            }
        }
        self.access_log_lines
            .store(lines, std::sync::atomic::Ordering::Relaxed);
        if lines > self.access_log_bound() {
            self.rewrite_access_log();
        }
    }
}
