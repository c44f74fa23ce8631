//! Entry points for the fuzz targets under `fuzz/`: the parsers that read what the disk or
//! a client hands the cache. Not a public API; built only with the `fuzzing` feature.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::format::record::Entry;

/// Decodes `bytes` as a stored record (in full and in summary). A record that decodes is
/// encoded again and must decode to the same fields.
pub fn record(bytes: &[u8]) {
    let _ = Entry::summarize(bytes);
    let Ok(entry) = Entry::decode(bytes) else {
        return;
    };
    let again = Entry::decode(&entry.encode().expect("a decoded record encodes"))
        .expect("an encoded record decodes");
    assert_eq!(again.key, entry.key);
    assert_eq!(again.status, entry.status);
    assert_eq!(again.headers, entry.headers);
    assert_eq!(again.trailers, entry.trailers);
    assert_eq!((again.digest, again.length), (entry.digest, entry.length));
}

/// Splits `bytes` into header lines (`name: value`, one per line, values of any bytes).
fn headers(bytes: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// `bytes`: a response's headers, a `0xff` byte, a request's headers. Reads the response's
/// `Vary` and keys the request's variant, twice (the key must not change), and reads the
/// request's `Range` against the response for bodies of several lengths.
pub fn vary_and_range(bytes: &[u8]) {
    let split = bytes.iter().position(|&b| b == 0xff).unwrap_or(bytes.len());
    let response = headers(&bytes[..split]);
    let request = headers(bytes.get(split + 1..).unwrap_or_default());
    if let Some(names) = crate::key::vary_names(&response) {
        let key = crate::key::variant_key("GET:https://example.com/", "1", &names, &request);
        let again = crate::key::variant_key("GET:https://example.com/", "1", &names, &request);
        assert_eq!(key, again);
        assert!(
            key.len() < 128,
            "a variant key is bounded whatever the headers"
        );
    }
    for length in [0, 1, 100, u64::MAX] {
        let within = |&(start, len): &(u64, u64)| {
            len > 0 && start.checked_add(len).is_some_and(|end| end <= length)
        };
        match crate::fields::range::ranged(&request, &response, length) {
            crate::fields::range::Ranged::Part { start, len } => assert!(within(&(start, len))),
            crate::fields::range::Ranged::Parts(parts) => assert!(parts.iter().all(within)),
            crate::fields::range::Ranged::Whole | crate::fields::range::Ranged::Unsatisfiable => {}
        }
    }
}

/// `bytes`: edits, three bytes each (a position in two, a new byte), applied to a good
/// record. Whatever the edits, the record decodes only if it is unchanged.
pub fn record_edits(bytes: &[u8]) {
    let request = http::Request::get("https://example.com/a")
        .body(())
        .unwrap();
    let response = http::Response::builder()
        .header("cache-control", "max-age=60")
        .header("vary", "accept-encoding")
        .body(())
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.append("set-cookie", HeaderValue::from_static("a=1"));
    headers.append("x-raw", HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap());
    let entry = Entry {
        key: "GET:https://example.com/a".into(),
        url: "https://example.com/a".into(),
        status: http::StatusCode::OK,
        version: http::Version::HTTP_11,
        headers,
        trailers: None,
        policy: http_cache_semantics::CachePolicy::new(&request, &response),
        digest: crate::format::layout::Hash32::of(b"body"),
        length: 4,
        stored_at: std::time::UNIX_EPOCH,
        tags: Default::default(),
    };
    let good = entry.encode().expect("the sample encodes");
    let mut edited = good.clone();
    for edit in bytes.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % edited.len();
        edited[at] = edit[2];
    }
    let _ = Entry::summarize(&edited);
    if Entry::decode(&edited).is_ok() {
        assert_eq!(edited, good, "a changed record decoded");
    }
}
