//! The fleet's secret and the tags it seals messages with: HMAC-SHA-256 over length-prefixed
//! parts (so that no two lists of parts read alike), written in lower-case hex. Asks and
//! answers between peers, leases, purge notes and the purge log's horizon are sealed; a
//! party that can write to the bucket but does not hold the secret can make none of them.

use std::fmt;
use std::sync::Arc;

use hmac::{KeyInit as _, Mac as _};

/// The MAC the fleet's seals are made with.
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of a tag in a note's name: 128 bits, as much as a guess has to match.
const SHORT: usize = 16;

/// The secret a fleet shares (16 bytes or more).
#[derive(Clone)]
pub(crate) struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        Secret(Arc::from(bytes))
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The tag of `parts`, 64 hex digits.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> String {
        crate::support::hex(&self.mac(parts).finalize().into_bytes())
    }

    /// The first half of [`tag`](Self::tag), 32 hex digits: short enough for a name.
    pub(crate) fn short_tag(&self, parts: &[&[u8]]) -> String {
        crate::support::hex(&self.mac(parts).finalize().into_bytes()[..SHORT])
    }

    /// Whether `tag` (a whole tag or a short one) seals `parts`, compared in constant time.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &str) -> bool {
        match unhex(tag) {
            Some(bytes) if bytes.len() == 32 => self.mac(parts).verify_slice(&bytes).is_ok(),
            Some(bytes) if bytes.len() == SHORT => {
                self.mac(parts).verify_truncated_left(&bytes).is_ok()
            }
            _ => false,
        }
    }
}

/// The bytes of a tag as written (at most 64 of them).
fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() > 128 {
        return None;
    }
    crate::support::unhex(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_holds_for_its_parts_and_its_secret_only() {
        let (ours, theirs) = (
            Secret::new(b"a secret of the fleet"),
            Secret::new(b"another fleet's secret"),
        );
        let parts: &[&[u8]] = &[b"purge", b"0001-k-abc"];
        for tag in [ours.tag(parts), ours.short_tag(parts)] {
            assert!(ours.verify(parts, &tag));
            assert!(!theirs.verify(parts, &tag), "another secret");
            assert!(
                !ours.verify(&[b"purge", b"0001-k-abd"], &tag),
                "other parts"
            );
            assert!(
                !ours.verify(&[b"purge0001", b"-k-abc"], &tag),
                "parts split otherwise"
            );
        }
        assert!(!ours.verify(parts, ""));
        assert!(!ours.verify(parts, "zz"));
        assert!(!ours.verify(parts, &"0".repeat(32)));
        assert_eq!(format!("{ours:?}"), "Secret(..)", "never printed");
    }
}
