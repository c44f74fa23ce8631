//! The versioned JSON record stored for each key, and its parsed, ready-to-serve form.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};

use super::layout::Hash32;
use super::tags::Tags;

/// The record format this build writes and reads. Records of any other version are a miss.
/// Version 2 records end with a `check` field: the SHA-256 of the record without it.
pub(crate) const FORMAT_VERSION: u32 = 2;

/// What precedes the check's hex digits at the end of a record.
const CHECK_FIELD: &[u8] = b",\"check\":\"";
/// The check field and the record's closing brace: `,"check":"<64 hex digits>"}`.
const CHECK_TAIL: usize = CHECK_FIELD.len() + 64 + 2;

/// Ends an encoded record (a JSON object) with its check field.
fn seal(mut json: Vec<u8>) -> Vec<u8> {
    let check = Hash32::of(&json).to_hex();
    json.pop();
    json.extend_from_slice(CHECK_FIELD);
    json.extend_from_slice(check.as_bytes());
    json.extend_from_slice(b"\"}");
    json
}

/// Checks a record's check field against the rest of it: any byte changed on disk, in a
/// header value as anywhere else, makes the record unusable rather than served.
fn unseal(bytes: &[u8]) -> Result<(), DecodeError> {
    let Some(split) = bytes.len().checked_sub(CHECK_TAIL).filter(|&n| n > 0) else {
        return Err(DecodeError::Field("check"));
    };
    let (body, tail) = bytes.split_at(split);
    let hex = tail
        .strip_prefix(CHECK_FIELD)
        .and_then(|rest| rest.strip_suffix(b"\"}"))
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(Hash32::from_hex)
        .ok_or(DecodeError::Field("check"))?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut hasher, body);
    sha2::Digest::update(&mut hasher, b"}");
    if Hash32::from_hasher(hasher) != hex {
        return Err(DecodeError::Check);
    }
    Ok(())
}

/// A header value as stored: text where the value is visible ASCII, raw bytes otherwise, so
/// that no value is altered on the way through the store.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredValue {
    Text(String),
    Bytes(Vec<u8>),
}

/// One header field as a record holds it: its name and value.
#[derive(Serialize, Deserialize)]
struct StoredHeader(String, StoredValue);

/// The record as it is on disk.
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    version: u32,
    key: String,
    url: String,
    status: u16,
    http_version: String,
    headers: Vec<StoredHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trailers: Option<Vec<StoredHeader>>,
    policy: CachePolicy,
    digest: String,
    length: u64,
    stored_at_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
}

/// Just what the store needs of a record when it opens: which content it names, and when
/// it was stored. The rest is parsed when the entry is first looked up.
#[derive(Deserialize)]
struct StoredSummary {
    version: u32,
    key: String,
    digest: String,
    length: u64,
    stored_at_ms: u64,
    #[serde(default)]
    tags: Vec<String>,
}

/// What [`Entry::summarize`] reads of a record.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) key: String,
    pub(crate) digest: Hash32,
    pub(crate) length: u64,
    pub(crate) stored_at: SystemTime,
    pub(crate) tags: Tags,
}

/// A stored response, parsed: everything needed to answer a hit but the body.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) url: String,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) policy: CachePolicy,
    pub(crate) digest: Hash32,
    pub(crate) length: u64,
    pub(crate) stored_at: SystemTime,
    /// Its tags, read from its fields when it was stored ([`Tags`]).
    pub(crate) tags: Tags,
}

/// Why a record could not be decoded; every case is treated as a miss.
#[derive(Debug)]
pub(crate) enum DecodeError {
    Json(serde_json::Error),
    Version(u32),
    Field(&'static str),
    /// The record's bytes are not those it was written with.
    Check,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "not a record: {e}"),
            DecodeError::Version(v) => {
                write!(f, "record format version {v} is not {FORMAT_VERSION}")
            }
            DecodeError::Field(name) => write!(f, "record field `{name}` is invalid"),
            DecodeError::Check => f.write_str("record fails its check (damaged on disk)"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn parse_version(s: &str) -> Option<Version> {
    Some(match s {
        "HTTP/0.9" => Version::HTTP_09,
        "HTTP/1.0" => Version::HTTP_10,
        "HTTP/1.1" => Version::HTTP_11,
        "HTTP/2.0" => Version::HTTP_2,
        "HTTP/3.0" => Version::HTTP_3,
        _ => return None,
    })
}

fn store_headers(map: &HeaderMap) -> Vec<StoredHeader> {
    map.iter()
        .map(|(name, value)| {
            let value = match value.to_str() {
                Ok(text) => StoredValue::Text(text.to_owned()),
                Err(_) => StoredValue::Bytes(value.as_bytes().to_vec()),
            };
            StoredHeader(name.as_str().to_owned(), value)
        })
        .collect()
}

fn load_headers(stored: Vec<StoredHeader>) -> Result<HeaderMap, DecodeError> {
    let mut map = HeaderMap::with_capacity(stored.len());
    for StoredHeader(name, value) in stored {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| DecodeError::Field("headers"))?;
        let value = match value {
            StoredValue::Text(text) => HeaderValue::from_str(&text),
            StoredValue::Bytes(bytes) => HeaderValue::from_bytes(&bytes),
        }
        .map_err(|_| DecodeError::Field("headers"))?;
        map.append(name, value);
    }
    Ok(map)
}

impl Entry {
    /// Whether this entry's URL is under `prefix`: a URL prefix
    /// (`https://example.com/items`), or, when `prefix` starts with `/`, a prefix of the
    /// path and query on every host (`/items` is under `/items` on any site).
    pub(crate) fn is_under(&self, prefix: &str) -> bool {
        if !prefix.starts_with('/') {
            return self.url.starts_with(prefix);
        }
        let after_scheme = self.url.split_once("://").map_or("", |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
        path.starts_with(prefix)
    }

    /// The stored response with `body`: its status, version and headers.
    pub(crate) fn response<B>(&self, body: B) -> http::Response<B> {
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers.clone();
        response
    }

    /// Encodes the record as JSON bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let stored_at_ms = crate::support::epoch_millis(self.stored_at);
        let record = StoredRecord {
            version: FORMAT_VERSION,
            key: self.key.clone(),
            url: self.url.clone(),
            status: self.status.as_u16(),
            http_version: version_name(self.version).to_owned(),
            headers: store_headers(&self.headers),
            trailers: self.trailers.as_ref().map(store_headers),
            policy: self.policy.clone(),
            digest: self.digest.to_hex(),
            length: self.length,
            stored_at_ms,
            tags: self.tags.to_vec(),
        };
        serde_json::to_vec(&record).map(seal)
    }

    /// Reads only what the store needs when it opens; the JSON must still be whole and of
    /// this format version. Damage in the other fields is found when the entry is looked up.
    pub(crate) fn summarize(bytes: &[u8]) -> Result<Summary, DecodeError> {
        let record: StoredSummary = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
        if record.version != FORMAT_VERSION {
            return Err(DecodeError::Version(record.version));
        }
        Ok(Summary {
            key: record.key,
            digest: Hash32::from_hex(&record.digest).ok_or(DecodeError::Field("digest"))?,
            length: record.length,
            stored_at: crate::support::from_epoch_millis(record.stored_at_ms),
            tags: Tags::from_stored(record.tags),
        })
    }

    /// Decodes a record; any damage, or another format version, is an error (a miss).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let record: StoredRecord = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
        if record.version != FORMAT_VERSION {
            return Err(DecodeError::Version(record.version));
        }
        unseal(bytes)?;
        Ok(Entry {
            key: record.key,
            url: record.url,
            status: StatusCode::from_u16(record.status)
                .map_err(|_| DecodeError::Field("status"))?,
            version: parse_version(&record.http_version)
                .ok_or(DecodeError::Field("http_version"))?,
            headers: load_headers(record.headers)?,
            trailers: record.trailers.map(load_headers).transpose()?,
            policy: record.policy,
            digest: Hash32::from_hex(&record.digest).ok_or(DecodeError::Field("digest"))?,
            length: record.length,
            stored_at: crate::support::from_epoch_millis(record.stored_at_ms),
            tags: Tags::from_stored(record.tags),
        })
    }
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let req = http::Request::get("https://example.com/a")
            .body(())
            .unwrap();
        let res = http::Response::builder()
            .header("cache-control", "max-age=60")
            .body(())
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.append("x-raw", HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap());
        Entry {
            key: "GET:https://example.com/a".into(),
            url: "https://example.com/a".into(),
            status: StatusCode::from_u16(299).unwrap(),
            version: Version::HTTP_2,
            headers,
            trailers: Some(HeaderMap::from_iter([(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from_static("0"),
            )])),
            policy: CachePolicy::new(&req, &res),
            digest: Hash32::of(b"body"),
            length: 4,
            stored_at: crate::support::from_epoch_millis(1_700_000_000_123),
            tags: Tags::from_stored(vec!["product-42".into(), "home".into()]),
        }
    }

    #[test]
    fn a_summary_reads_what_the_store_opens_with() {
        let entry = sample();
        let summary = Entry::summarize(&entry.encode().unwrap()).unwrap();
        assert_eq!(
            (
                summary.key,
                summary.digest,
                summary.length,
                summary.stored_at,
                summary.tags
            ),
            (
                entry.key,
                entry.digest,
                entry.length,
                entry.stored_at,
                entry.tags
            )
        );
        let mut value: serde_json::Value =
            serde_json::from_slice(&sample().encode().unwrap()).unwrap();
        value["version"] = 99.into();
        let future = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            Entry::summarize(&future),
            Err(DecodeError::Version(99))
        ));
        assert!(Entry::summarize(b"{\"version\":1").is_err());
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let entry = sample();
        let back = Entry::decode(&entry.encode().unwrap()).unwrap();
        assert_eq!(back.key, entry.key);
        assert_eq!(back.url, entry.url);
        assert_eq!(back.status, entry.status);
        assert_eq!(back.version, entry.version);
        assert_eq!(back.headers, entry.headers);
        assert_eq!(back.trailers, entry.trailers);
        assert_eq!(back.digest, entry.digest);
        assert_eq!(back.length, 4);
        assert_eq!(back.stored_at, entry.stored_at);
        assert_eq!(back.tags.to_vec(), ["product-42", "home"]);
        assert_eq!(
            serde_json::to_value(&back.policy).unwrap(),
            serde_json::to_value(&entry.policy).unwrap()
        );
    }

    /// A record edited as JSON, with a check that matches the edit: what decoding does
    /// with well-formed records of bad values.
    fn reseal(value: &serde_json::Value) -> Vec<u8> {
        let mut value = value.clone();
        value.as_object_mut().unwrap().remove("check");
        seal(serde_json::to_vec(&value).unwrap())
    }

    #[test]
    fn a_changed_header_fails_the_check() {
        let good = sample().encode().unwrap();
        let text = String::from_utf8(good.clone()).unwrap();
        let edited = text.replace("max-age=60", "max-age=99");
        assert_ne!(edited, text);
        assert!(matches!(
            Entry::decode(edited.as_bytes()),
            Err(DecodeError::Check)
        ));
        assert!(Entry::decode(&good).is_ok());
    }

    #[test]
    fn damaged_or_foreign_records_are_errors() {
        assert!(matches!(
            Entry::decode(b"{not json"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(Entry::decode(b""), Err(DecodeError::Json(_))));
        let good = sample().encode().unwrap();
        assert!(matches!(
            Entry::decode(&good[..good.len() / 2]),
            Err(DecodeError::Json(_))
        ));

        let mut value: serde_json::Value = serde_json::from_slice(&good).unwrap();
        value["version"] = 3.into();
        let future = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            Entry::decode(&future),
            Err(DecodeError::Version(3))
        ));

        let mut value: serde_json::Value = serde_json::from_slice(&good).unwrap();
        value["digest"] = "../../etc/passwd".into();
        let bad = reseal(&value);
        assert!(matches!(
            Entry::decode(&bad),
            Err(DecodeError::Field("digest"))
        ));

        let mut value: serde_json::Value = serde_json::from_slice(&good).unwrap();
        value["status"] = 1000.into();
        let bad = reseal(&value);
        assert!(matches!(
            Entry::decode(&bad),
            Err(DecodeError::Field("status"))
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Header values of any bytes a `HeaderValue` takes: visible ASCII, tabs, spaces and
        /// bytes above 0x7f (opaque, not UTF-8).
        fn value() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40)
        }

        fn name() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9-]{0,20}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any bytes at all decode to a record or an error, never a panic.
            #[test]
            fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = Entry::decode(&bytes);
            }

            /// Any byte of a good record changed, or the record cut anywhere, is an error:
            /// never a panic, never a record with a changed field.
            #[test]
            fn damaged_records_are_errors(at in 0usize..4096, flip in 1u8..=255) {
                let mut bytes = sample().encode().unwrap();
                let at = at % bytes.len();
                bytes[at] ^= flip;
                prop_assert!(Entry::decode(&bytes).is_err());
                bytes.truncate(at);
                prop_assert!(Entry::decode(&bytes).is_err());
            }

            /// Headers of any names, values and repetitions come back as they went in.
            #[test]
            fn any_headers_round_trip(
                headers in proptest::collection::vec((name(), value()), 0..12),
                status in 100u16..1000,
                key in "\\PC{0,200}",
            ) {
                let mut entry = sample();
                entry.key = key;
                entry.status = StatusCode::from_u16(status).unwrap();
                entry.headers = HeaderMap::new();
                for (name, value) in &headers {
                    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                    entry.headers.append(name, HeaderValue::from_bytes(value).unwrap());
                }
                let back = Entry::decode(&entry.encode().unwrap()).unwrap();
                prop_assert_eq!(&back.headers, &entry.headers);
                prop_assert_eq!(back.status, entry.status);
                prop_assert_eq!(back.key, entry.key);
            }
        }
    }
}
