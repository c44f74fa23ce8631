//! Range requests on stored responses (RFC 9110 §14): one byte range answered `206` from the
//! stored body, read from its offset; `416` when no byte of it exists.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::StreamingBody;

/// What a stored response of `length` bytes answers to a request's `Range`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// No `Range`, or one this cache answers with the whole body (several ranges, a unit
    /// other than bytes, a syntax it does not read, an `If-Range` that does not match).
    Whole,
    /// Bytes `start..start + len`.
    Part { start: u64, len: u64 },
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
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        // A suffix: the last `last` bytes.
        let Ok(suffix) = last.parse::<u64>() else {
            return Ranged::Whole;
        };
        if suffix == 0 {
            return Ranged::Unsatisfiable;
        }
        (length.saturating_sub(suffix), length)
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ranged::Whole;
        };
        let end = match last {
            "" => length,
            last => match last.parse::<u64>() {
                Ok(last) if last >= start => last.saturating_add(1).min(length),
                _ => return Ranged::Whole,
            },
        };
        (start, end)
    };
    if start >= length || start >= end {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part {
        start,
        len: end - start,
    }
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
    if head.status != StatusCode::OK {
        return Response::from_parts(head, body);
    }
    match ranged(request, &head.headers, length) {
        Ranged::Whole => Response::from_parts(head, body),
        Ranged::Part { start, len } => {
            head.status = StatusCode::PARTIAL_CONTENT;
            let range = format!("bytes {start}-{}/{length}", start + len - 1);
            if let Ok(range) = HeaderValue::try_from(range) {
                head.headers.insert(header::CONTENT_RANGE, range);
            }
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            Response::from_parts(head, body.part(start, len))
        }
        Ranged::Unsatisfiable => {
            head.status = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(range) = HeaderValue::try_from(format!("bytes */{length}")) {
                head.headers.insert(header::CONTENT_RANGE, range);
            }
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            Response::from_parts(head, StreamingBody::empty())
        }
    }
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
        assert_eq!(ranged(&range("bytes=0-1,5-6"), &stored, 100), Ranged::Whole);
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
