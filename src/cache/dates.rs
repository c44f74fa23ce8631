//! HTTP-dates as a cache reads them (`Expires`, `Date`): the three forms of RFC 9110 §5.6.7
//! in any letter case (RFC 9111 §4.2), written back as an IMF-fixdate.

use http::HeaderMap;
use http::header::{self, HeaderValue};

/// The first `name` field of `headers` as an IMF-fixdate, if it is a valid HTTP-date.
pub(super) fn first_date(headers: &HeaderMap, name: header::HeaderName) -> Option<HeaderValue> {
    let value = headers.get(name)?.to_str().ok()?;
    let date = httpdate::parse_http_date(value)
        .or_else(|_| httpdate::parse_http_date(&in_date_case(value)))
        .ok()?;
    HeaderValue::try_from(httpdate::fmt_http_date(date)).ok()
}

/// An HTTP-date written in any letter case, in the case its grammar gives (`thu, 01 JAN
/// 2049 … gmt` is `Thu, 01 Jan 2049 … GMT`): dates are case-sensitive, but a cache matches
/// them case-insensitively (RFC 9111 §4.2).
fn in_date_case(value: &str) -> String {
    let mut written = String::with_capacity(value.len());
    let mut in_word = false;
    for c in value.chars() {
        if c.is_ascii_alphabetic() {
            written.push(if in_word {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            });
            in_word = true;
        } else {
            written.push(c);
            in_word = false;
        }
    }
    written.replace("Gmt", "GMT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_in_any_letter_case() {
        let first = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::EXPIRES, HeaderValue::from_str(v).unwrap());
            first_date(&headers, header::EXPIRES).map(|v| v.to_str().unwrap().to_owned())
        };
        let canonical = Some("Fri, 01 Jan 2049 00:00:00 GMT".to_owned());
        for written in [
            "Fri, 01 Jan 2049 00:00:00 GMT",
            "FRI, 01 JAN 2049 00:00:00 GMT",
            "fri, 01 jan 2049 00:00:00 gmt",
            "friday, 01-jan-49 00:00:00 gmt",
            "FRI JAN  1 00:00:00 2049",
        ] {
            assert_eq!(first(written), canonical, "{written}");
        }
        // Not a date in any case.
        assert_eq!(first("tomorrow"), None);
    }
}
