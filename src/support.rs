//! Small helpers every room uses, depending on nothing of the crate: lowercase hex, names
//! no other instance or call makes, and times as milliseconds since the epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `bytes` as lowercase hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Whether `b` is a lowercase hex digit.
pub(crate) fn is_hex_digit(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

/// The bytes `text` writes in lowercase hex digits (an even number of them); anything else
/// is `None`.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// A name no other call in any process makes: this process's id (in decimal, as `ps`
/// shows it, so that an operator can tell whose a scratch directory is), then the time in
/// nanoseconds and a count in hex (`16170-17c4e0b1d2f3a4b5-0`). For temporary files,
/// scratch directories, boundaries and generations.
pub(crate) fn unique_name() -> String {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos:x}-{:x}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    )
}

/// `duration` in whole milliseconds, the largest number past `u64::MAX` of them.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `time` as milliseconds since the epoch (0 before it).
pub(crate) fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// The time `ms` milliseconds after the epoch.
pub(crate) fn from_epoch_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_what_is_not_lowercase_hex() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xab, 0xff];
        assert_eq!(hex(&bytes), "00017f80abff");
        assert_eq!(unhex(&hex(&bytes)).as_deref(), Some(&bytes[..]));
        for bad in ["0", "0g", "AB", "0x00", " 00"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
        assert_eq!(unhex(""), Some(Vec::new()));
    }

    #[test]
    fn unique_names_differ_and_epoch_millis_round_trip() {
        let names: std::collections::HashSet<String> = (0..1000).map(|_| unique_name()).collect();
        assert_eq!(names.len(), 1000);
        let pid = format!("{}-", std::process::id());
        assert!(names.iter().all(|name| name.starts_with(&pid)));
        let at = from_epoch_millis(1_700_000_000_123);
        assert_eq!(epoch_millis(at), 1_700_000_000_123);
        assert_eq!(epoch_millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
