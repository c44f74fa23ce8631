//! Range requests on stored responses (RFC 9110 §14): byte ranges answered `206` from the
//! stored body, read from their offsets (several as `multipart/byteranges`); `416` when no
//! byte of them exists.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{Segment, StreamingBody};

/// A boundary no body byte is likely to hold, different for every response.
fn boundary() -> String {
    format!("hcs-{}", crate::support::unique_name())
}

/// What a stored response of `length` bytes answers to a request's `Range`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// No `Range`, or one this cache answers with the whole body (a unit other than bytes,
    /// a syntax it does not read, more than `MAX_PARTS` ranges, an `If-Range` that does not
    /// match).
    Whole,
    /// Bytes `start..start + len`.
    Part { start: u64, len: u64 },
    /// Several ranges, each `(start, len)`: in the order asked, or, when some overlapped or
    /// touched, merged and in the order of the body.
    Parts(Vec<(u64, u64)>),
    /// No byte of the range exists.
    Unsatisfiable,
}

/// Reads the request's `Range` (and `If-Range`) against a stored response.
pub(crate) fn ranged(request: &HeaderMap, stored: &HeaderMap, length: u64) -> Ranged {
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ranged::Whole;
    };
    if let Some(if_range) = request.get(header::IF_RANGE)
        && !if_range_matches(if_range, stored)
    {
        return Ranged::Whole;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    let specs: Vec<&str> = spec.split(',').map(str::trim).collect();
    if specs.len() > MAX_PARTS {
        return Ranged::Whole;
    }
    let mut parts = Vec::with_capacity(specs.len());
    for spec in specs {
        match one_range(spec, length) {
            Some(Some(part)) => parts.push(part),
            Some(None) => {} // no byte of it exists; the others may
            None => return Ranged::Whole,
        }
    }
    // Ranges that ask for more bytes than the body has (the same bytes many times over) get
    // the body once; overlapping or adjacent ones are merged (RFC 9110 §14.2 lets a server
    // do both), so that no request multiplies what is sent.
    let asked: u64 = parts
        .iter()
        .map(|(_, len)| len)
        .fold(0, |a, b| a.saturating_add(*b));
    if asked > length {
        return Ranged::Whole;
    }
    let parts = merged(parts);
    match parts.as_slice() {
        [] => Ranged::Unsatisfiable,
        [(start, len)] => Ranged::Part {
            start: *start,
            len: *len,
        },
        _ => Ranged::Parts(parts),
    }
}

/// Ranges beyond this many are answered with the whole body: cheaper than hundreds of parts.
const MAX_PARTS: usize = 16;

/// `parts` as asked when no two overlap or touch; else sorted, with those that overlap or
/// touch made one.
fn merged(mut parts: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut sorted = parts.clone();
    sorted.sort_unstable();
    let apart = sorted.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0);
    if apart {
        return parts;
    }
    parts.clear();
    for (start, len) in sorted {
        match parts.last_mut() {
            Some((first, merged_len)) if start <= *first + *merged_len => {
                *merged_len = (*merged_len).max(start + len - *first);
            }
            _ => parts.push((start, len)),
        }
    }
    parts
}

/// One `first-last`, `first-` or `-suffix` range: `None` when it cannot be read,
/// `Some(None)` when no byte of it exists, else its `(start, len)`.
fn one_range(spec: &str, length: u64) -> Option<Option<(u64, u64)>> {
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        // A suffix: the last `last` bytes.
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 {
            return Some(None);
        }
        (length.saturating_sub(suffix), length)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = match last {
            "" => length,
            last => {
                let last: u64 = last.parse().ok()?;
                if last < start {
                    return None;
                }
                last.saturating_add(1).min(length)
            }
        };
        (start, end)
    };
    if start >= length || start >= end {
        return Some(None);
    }
    Some(Some((start, end - start)))
}

/// `If-Range` holds a strong entity tag equal to the stored one, or the stored
/// `Last-Modified` date exactly.
fn if_range_matches(if_range: &HeaderValue, stored: &HeaderMap) -> bool {
    let Ok(if_range) = if_range.to_str() else {
        return false;
    };
    let if_range = if_range.trim();
    if if_range.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|etag| etag.trim() == if_range);
    }
    if if_range.starts_with("W/") {
        return false;
    }
    stored
        .get(header::LAST_MODIFIED)
        .and_then(|d| d.to_str().ok())
        .is_some_and(|date| date.trim() == if_range)
}

/// Answers a hit's `Range`: a `206` of the part, a `416`, or the response as it is.
pub(crate) fn apply(
    request: &HeaderMap,
    response: Response<StreamingBody>,
    length: u64,
) -> Response<StreamingBody> {
    let (mut head, body) = response.into_parts();
    head.headers
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Only a stored body can be cut: one still arriving (read through from a shared tier)
    // is answered whole, which a server may always do.
    if head.status != StatusCode::OK || !body.is_stored() {
        return Response::from_parts(head, body);
    }
    match ranged(request, &head.headers, length) {
        Ranged::Whole => Response::from_parts(head, body),
        Ranged::Part { start, len } => {
            partial(&mut head, start, len, length);
            Response::from_parts(head, body.part(start, len))
        }
        Ranged::Parts(parts) => {
            let content_type = head.headers.remove(header::CONTENT_TYPE);
            let boundary = boundary();
            let mut segments = Vec::with_capacity(parts.len() * 2 + 1);
            let mut total = 0u64;
            for (i, (start, len)) in parts.iter().enumerate() {
                let mut part_head = format!("{}--{boundary}\r\n", if i == 0 { "" } else { "\r\n" });
                if let Some(ct) = content_type.as_ref().and_then(|v| v.to_str().ok()) {
                    part_head.push_str(&format!("Content-Type: {ct}\r\n"));
                }
                part_head.push_str(&format!(
                    "Content-Range: bytes {start}-{}/{length}\r\n\r\n",
                    start + len - 1
                ));
                total += part_head.len() as u64 + len;
                segments.push(Segment::Bytes(part_head.into()));
                segments.push(Segment::Range(*start, *len));
            }
            let tail = format!("\r\n--{boundary}--\r\n");
            total += tail.len() as u64;
            segments.push(Segment::Bytes(tail.into()));
            head.status = StatusCode::PARTIAL_CONTENT;
            let multipart = format!("multipart/byteranges; boundary={boundary}");
            if let Ok(value) = HeaderValue::try_from(multipart) {
                head.headers.insert(header::CONTENT_TYPE, value);
            }
            head.headers.remove(header::CONTENT_RANGE);
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            Response::from_parts(head, body.parts(segments))
        }
        Ranged::Unsatisfiable => {
            unsatisfiable(&mut head, length);
            Response::from_parts(head, StreamingBody::empty())
        }
    }
}

/// Makes `head` that of a `206` with bytes `start..start + len` of a body of `length`.
pub(crate) fn partial(head: &mut http::response::Parts, start: u64, len: u64, length: u64) {
    head.status = StatusCode::PARTIAL_CONTENT;
    let range = format!("bytes {start}-{}/{length}", start + len - 1);
    if let Ok(range) = HeaderValue::try_from(range) {
        head.headers.insert(header::CONTENT_RANGE, range);
    }
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// Makes `head` that of a `416` for a body of `length`, whose `Content-Range` it names.
pub(crate) fn unsatisfiable(head: &mut http::response::Parts, length: u64) {
    head.status = StatusCode::RANGE_NOT_SATISFIABLE;
    if let Ok(range) = HeaderValue::try_from(format!("bytes */{length}")) {
        head.headers.insert(header::CONTENT_RANGE, range);
    }
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, value.parse().unwrap());
        headers
    }

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says() {
        let stored = HeaderMap::new();
        let part = |start, len| Ranged::Part { start, len };
        assert_eq!(ranged(&range("bytes=0-9"), &stored, 100), part(0, 10));
        assert_eq!(ranged(&range("bytes=90-"), &stored, 100), part(90, 10));
        assert_eq!(ranged(&range("bytes=-5"), &stored, 100), part(95, 5));
        assert_eq!(ranged(&range("bytes=-500"), &stored, 100), part(0, 100));
        assert_eq!(ranged(&range("bytes=50-500"), &stored, 100), part(50, 50));
        assert_eq!(
            ranged(&range("bytes=100-"), &stored, 100),
            Ranged::Unsatisfiable
        );
        assert_eq!(
            ranged(&range("bytes=-0"), &stored, 100),
            Ranged::Unsatisfiable
        );
        assert_eq!(ranged(&range("bytes=5-1"), &stored, 100), Ranged::Whole);
        assert_eq!(
            ranged(&range("bytes=0-1, 5-6"), &stored, 100),
            Ranged::Parts(vec![(0, 2), (5, 2)])
        );
        assert_eq!(ranged(&range("bytes=0-1,500-"), &stored, 100), part(0, 2));
        assert_eq!(
            ranged(&range("bytes=200-,500-"), &stored, 100),
            Ranged::Unsatisfiable
        );
        // Overlapping and adjacent ranges are merged; more bytes than the body, the body.
        assert_eq!(ranged(&range("bytes=0-9,5-14"), &stored, 100), part(0, 15));
        assert_eq!(ranged(&range("bytes=10-19,0-9"), &stored, 100), part(0, 20));
        assert_eq!(
            ranged(&range("bytes=50-59,0-4,3-7"), &stored, 100),
            Ranged::Parts(vec![(0, 8), (50, 10)])
        );
        assert_eq!(
            ranged(&range("bytes=50-59,0-4"), &stored, 100),
            Ranged::Parts(vec![(50, 10), (0, 5)]),
            "apart: as asked"
        );
        let same = format!("bytes={}", ["0-49"; 3].join(","));
        assert_eq!(ranged(&range(&same), &stored, 100), Ranged::Whole);
        let overlapping = format!("bytes={}", ["0-9"; 16].join(","));
        assert_eq!(ranged(&range(&overlapping), &stored, 100), Ranged::Whole);
        assert_eq!(ranged(&range("bytes=0-9,0-9"), &stored, 100), part(0, 10));
        let many = format!("bytes={}", vec!["0-0"; 17].join(","));
        assert_eq!(ranged(&range(&many), &stored, 100), Ranged::Whole);
        assert_eq!(ranged(&range("items=0-1"), &stored, 100), Ranged::Whole);
        assert_eq!(ranged(&range("bytes=x-1"), &stored, 100), Ranged::Whole);
        assert_eq!(ranged(&HeaderMap::new(), &stored, 100), Ranged::Whole);
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, "\"v1\"".parse().unwrap());
        stored.insert(
            header::LAST_MODIFIED,
            "Tue, 01 Jan 2030 00:00:00 GMT".parse().unwrap(),
        );
        let with = |if_range: &str| {
            let mut headers = range("bytes=0-0");
            headers.insert(header::IF_RANGE, if_range.parse().unwrap());
            ranged(&headers, &stored, 10)
        };
        assert_eq!(with("\"v1\""), Ranged::Part { start: 0, len: 1 });
        assert_eq!(with("\"v2\""), Ranged::Whole);
        assert_eq!(with("W/\"v1\""), Ranged::Whole);
        assert_eq!(
            with("Tue, 01 Jan 2030 00:00:00 GMT"),
            Ranged::Part { start: 0, len: 1 }
        );
        assert_eq!(with("Wed, 02 Jan 2030 00:00:00 GMT"), Ranged::Whole);
    }
}
