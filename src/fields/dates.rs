//! HTTP-dates as a cache reads them (`Expires`, `Date`): the three forms of RFC 9110 §5.6.7
//! in any letter case (RFC 9111 §4.2), the day's name read past when it disagrees with the
//! date (it only repeats what the date says), written back as an IMF-fixdate.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::{self, HeaderValue};

/// The first `name` field of `headers` as an IMF-fixdate, if it is an HTTP-date.
pub(crate) fn first_date(headers: &HeaderMap, name: header::HeaderName) -> Option<HeaderValue> {
    let date = parse(headers.get(name)?.to_str().ok()?)?;
    HeaderValue::try_from(httpdate::fmt_http_date(date)).ok()
}

/// An HTTP-date in any of its three forms, read as robustly as RFC 9110 §5.6.7 encourages:
/// in any letter case, and with a day name that is not the date's (`Thu Aug  8 … 2050`, a
/// Monday) read as the date, as nginx and Apache read it. Anything else is no date.
pub(crate) fn parse(value: &str) -> Option<SystemTime> {
    if let Ok(date) = httpdate::parse_http_date(value) {
        return Some(date);
    }
    let cased = in_date_case(value);
    if let Ok(date) = httpdate::parse_http_date(&cased) {
        return Some(date);
    }
    // Only a day's name that is not the date's can be wrong now: each day's is tried in its
    // place, and the date decides.
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let name_len = cased.find(|c: char| !c.is_ascii_alphabetic())?;
    let (name, rest) = cased.split_at(name_len);
    if !DAYS.iter().any(|day| name == *day || name == &day[..3]) {
        return None;
    }
    DAYS.iter().find_map(|day| {
        let name = if name_len == 3 { &day[..3] } else { day };
        httpdate::parse_http_date(&format!("{name}{rest}")).ok()
    })
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
            // The day's name disagreeing with the date: the date decides.
            "Mon, 01 Jan 2049 00:00:00 GMT",
            "Sun Jan  1 00:00:00 2049",
            "monday, 01-Jan-49 00:00:00 GMT",
        ] {
            assert_eq!(first(written), canonical, "{written}");
        }
        // Not a date in any case.
        assert_eq!(first("tomorrow"), None);
        assert_eq!(first("Xyz, 01 Jan 2049 00:00:00 GMT"), None);
        assert_eq!(first("Fri, 32 Jan 2049 00:00:00 GMT"), None);
        assert_eq!(first(""), None);
    }
}
