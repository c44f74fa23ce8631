//! An entry's tags (surrogate keys): names an origin gives a response in fields such as
//! `Surrogate-Key` (Fastly, space-separated) or `Cache-Tag` (Cloudflare, comma-separated),
//! so that one purge of a tag removes every response that carries it. They are read from
//! the response's fields when it is stored and kept in its record.
//!
//! What is read is bounded as Fastly bounds it: at most [`MAX_FIELD_BYTES`] of field
//! values, [`MAX_TAGS`] distinct tags, each at most [`MAX_TAG_BYTES`] of visible ASCII.
//! Past a bound the rest is ignored (said in the log at debug level); a token that is not a
//! tag is skipped, the others of its field kept.

use http::{HeaderMap, HeaderName};

/// The longest tag, in bytes.
pub(crate) const MAX_TAG_BYTES: usize = 1024;
/// The most tags one response keeps.
pub(crate) const MAX_TAGS: usize = 128;
/// The most bytes of tag fields read of one response.
pub(crate) const MAX_FIELD_BYTES: usize = 16 * 1024;

/// The fields tags are read from unless a store is told others: `Surrogate-Key` (Fastly's
/// name) and `Cache-Tag` (Cloudflare's).
pub(crate) fn default_fields() -> [HeaderName; 2] {
    [
        HeaderName::from_static("surrogate-key"),
        HeaderName::from_static("cache-tag"),
    ]
}

/// Fields that HTTP (or this cache) gives a meaning of its own: never tag fields, since a
/// shared cache removes its tag fields from what clients receive.
const NOT_TAG_FIELDS: &[&str] = &[
    "age",
    "alt-svc",
    "authorization",
    "cache-control",
    "cache-status",
    "cdn-cache-control",
    "connection",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-security-policy",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expires",
    "keep-alive",
    "last-modified",
    "link",
    "location",
    "pragma",
    "proxy-authenticate",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "vary",
    "via",
    "www-authenticate",
];

/// Whether a response field named `name` may hold tags
/// ([`StreamingManagerBuilder::tag_fields`](crate::StreamingManagerBuilder::tag_fields)):
/// not a field HTTP gives a meaning of its own (`Cache-Control`, `Vary`, `Content-Type`,
/// `Set-Cookie`, `Location`, security fields…), nor one of CORS (`access-control-*`), nor
/// of this cache (`x-http-cache-streaming-*`). A shared cache removes its tag fields from
/// what clients receive: one of these would be lost to them.
///
/// ```
/// use http::HeaderName;
/// use http_cache_streaming::may_be_tag_field;
/// assert!(may_be_tag_field(&HeaderName::from_static("surrogate-key")));
/// assert!(!may_be_tag_field(&HeaderName::from_static("vary")));
/// ```
pub fn may_be_tag_field(name: &HeaderName) -> bool {
    let name = name.as_str();
    !NOT_TAG_FIELDS.contains(&name)
        && !name.starts_with("access-control-")
        && !name.starts_with("x-http-cache-streaming-")
}

/// An entry's tags, distinct, in the order the response gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tags(Box<[Box<str>]>);

impl Tags {
    /// The tags the fields named `names` give, within the bounds.
    pub(crate) fn from_fields(headers: &HeaderMap, names: &[HeaderName]) -> Tags {
        let mut tags: Vec<Box<str>> = Vec::new();
        let mut left = MAX_FIELD_BYTES;
        'fields: for name in names {
            for value in headers.get_all(name) {
                // Within the bound: a token cut at it is no tag of the response's.
                let bytes = value.as_bytes();
                let within = &bytes[..bytes.len().min(left)];
                let cut = within.len() < bytes.len();
                left -= within.len();
                let mut tokens = within
                    .split(|b| matches!(b, b' ' | b'\t' | b','))
                    .filter(|token| !token.is_empty())
                    .peekable();
                while let Some(token) = tokens.next() {
                    if cut && tokens.peek().is_none() {
                        break;
                    }
                    let Some(tag) = std::str::from_utf8(token).ok().filter(|t| is_tag(t)) else {
                        continue;
                    };
                    if !tags.iter().any(|t| &**t == tag) {
                        if tags.len() == MAX_TAGS {
                            crate::log::debug_event!(
                                limit = MAX_TAGS,
                                "tags past the bound left out"
                            );
                            break 'fields;
                        }
                        tags.push(tag.into());
                    }
                }
                if left == 0 {
                    crate::log::debug_event!(
                        limit = MAX_FIELD_BYTES,
                        "tag fields past the bound left out"
                    );
                    break 'fields;
                }
            }
        }
        Tags(tags.into_boxed_slice())
    }

    /// Tags as they are kept in a record: only the valid ones, within the bounds.
    pub(crate) fn from_stored(stored: Vec<String>) -> Tags {
        let mut tags: Vec<Box<str>> = Vec::with_capacity(stored.len().min(MAX_TAGS));
        for tag in stored.into_iter().filter(|tag| is_tag(tag)) {
            if tags.len() < MAX_TAGS && !tags.iter().any(|t| **t == *tag) {
                tags.push(tag.into_boxed_str());
            }
        }
        Tags(tags.into_boxed_slice())
    }

    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.iter().map(|tag| &**tag)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn contains(&self, tag: &str) -> bool {
        self.iter().any(|t| t == tag)
    }

    pub(crate) fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

/// Checks the tags of a purge: at least one, each a tag ([`is_tag`]).
pub(crate) fn check_purge(tags: &[&str]) -> crate::Result<()> {
    let invalid =
        |why: String| Err(crate::Error::new(crate::ErrorKind::InvalidInput).with_subject(why));
    if tags.is_empty() {
        return invalid("no tag to purge".into());
    }
    match tags.iter().find(|tag| !is_tag(tag)) {
        Some(bad) => {
            let shown: String = bad.chars().take(64).collect();
            invalid(format!(
                "{shown:?} is not a tag (1 to 1024 bytes of visible ASCII, no comma)"
            ))
        }
        None => Ok(()),
    }
}

/// The tokens of a tag field's value: separated by spaces, tabs or commas.
pub(crate) fn split(value: &str) -> impl Iterator<Item = &str> {
    value
        .split([' ', '\t', ','])
        .filter(|token| !token.is_empty())
}

/// Whether `tag` is one: 1 to [`MAX_TAG_BYTES`] bytes of visible ASCII but the comma.
pub(crate) fn is_tag(tag: &str) -> bool {
    (1..=MAX_TAG_BYTES).contains(&tag.len())
        && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> [HeaderName; 2] {
        default_fields()
    }

    fn tags(fields: &[(&str, &str)]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Tags::from_fields(&headers, &names()).to_vec()
    }

    #[test]
    fn tags_are_read_from_every_named_field_space_or_comma_separated_once_each() {
        assert_eq!(
            tags(&[
                ("surrogate-key", "product-42  home"),
                ("cache-tag", "home,category-7, product-42"),
                ("surrogate-key", "\tsale"),
                ("x-other", "ignored"),
            ]),
            ["product-42", "home", "sale", "category-7"]
        );
        assert!(tags(&[("x-other", "a b")]).is_empty());
    }

    #[test]
    fn what_is_not_a_tag_and_what_is_past_the_bounds_is_left_out() {
        let long = "x".repeat(MAX_TAG_BYTES + 1);
        let just = "y".repeat(MAX_TAG_BYTES);
        let got = tags(&[("surrogate-key", &format!("{long} {just} ok"))]);
        assert_eq!(got, [just.clone(), "ok".to_owned()]);

        let many: Vec<String> = (0..MAX_TAGS + 10).map(|i| format!("t{i}")).collect();
        let got = tags(&[("surrogate-key", &many.join(" "))]);
        assert_eq!(got.len(), MAX_TAGS);
        assert_eq!(got[..], many[..MAX_TAGS]);

        // Past 16 KiB of fields, nothing more is read: the tags before the bound are kept,
        // the one it cuts is not.
        let big: Vec<String> = (0..20)
            .map(|i| format!("{i:02}{}", "z".repeat(998)))
            .collect();
        let got = tags(&[
            ("surrogate-key", "first"),
            ("surrogate-key", &big.join(" ")),
        ]);
        assert_eq!(
            got.len(),
            1 + 16,
            "{:?}",
            got.iter().map(|t| &t[..2]).collect::<Vec<_>>()
        );
        assert_eq!(got[16], big[15]);
        // A token that is not visible ASCII is skipped, the others of its field kept.
        let mut headers = HeaderMap::new();
        headers.insert(
            "surrogate-key",
            http::HeaderValue::from_bytes(b"caf\xe9 ok").unwrap(),
        );
        assert_eq!(Tags::from_fields(&headers, &names()).to_vec(), ["ok"]);
    }

    #[test]
    fn stored_tags_are_checked_as_fields_are() {
        let stored = vec![
            "a".into(),
            "a".into(),
            "bad tag".into(),
            String::new(),
            "b".into(),
        ];
        assert_eq!(Tags::from_stored(stored).to_vec(), ["a", "b"]);
    }
}
