//! Targeted cache-control fields (RFC 9213): a `CDN-Cache-Control` (or another field a
//! cache is told to obey) read as a structured dictionary, each member of the type its
//! directive takes, standing in for `Cache-Control` when it is valid.

use http::HeaderMap;
use http::header::{self, HeaderValue};

use super::cache_control::{is_tchar, split_list};

/// The response headers this cache decides freshness and storability by when one of the
/// `targeted` fields (RFC 9213) is present as a valid structured dictionary: the first such
/// stands in for `Cache-Control`, and `Expires` goes. `None` when there is none.
pub(crate) fn targeted(headers: &HeaderMap, targeted: &[header::HeaderName]) -> Option<HeaderMap> {
    let directives = targeted.iter().find_map(|name| {
        let lines: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<_>>()?;
        if lines.is_empty() {
            return None;
        }
        dictionary(&lines.join(","))
    })?;
    let mut view = headers.clone();
    view.remove(header::CACHE_CONTROL);
    view.remove(header::EXPIRES);
    if let Ok(value) = HeaderValue::try_from(directives.join(", ")) {
        view.insert(header::CACHE_CONTROL, value);
    }
    Some(view)
}

/// The members of a structured-field dictionary (RFC 8941 §3.2) as Cache-Control
/// directives (`key` or `key=value`, parameters dropped), or `None` when it is not one.
fn dictionary(field: &str) -> Option<Vec<String>> {
    let mut members: Vec<(String, Option<String>)> = Vec::new();
    for member in split_list(field) {
        let member = member.trim_matches([' ', '\t']);
        let (item, _parameters) = member.split_once(';').unwrap_or((member, ""));
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (item, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
        if !key_ok {
            return None;
        }
        let value = match value {
            None => None,
            Some(value) if is_bare_item(value) => Some(value.to_owned()),
            Some(_) => return None,
        };
        if !of_its_type(key, value.as_deref()) {
            return None;
        }
        // A later member of the same key overrides an earlier one (RFC 8941 §4.2.2).
        members.retain(|(k, _)| k != key);
        members.push((key.to_owned(), value));
    }
    Some(
        members
            .into_iter()
            .filter(|(_, value)| value.as_deref() != Some("?0"))
            .map(|(key, value)| match value {
                Some(value) if value != "?1" => format!("{key}={value}"),
                _ => key,
            })
            .collect(),
    )
}

/// Whether a targeted field's member `key` has a value of the type RFC 9213 §2.1 gives its
/// directive: an Integer (non-negative, as a delta-seconds) for `max-age`, `s-maxage`,
/// `stale-while-revalidate` and `stale-if-error`; a Boolean for the directives that take
/// no argument. A member of the wrong type makes the whole field invalid. Directives this
/// cache does not know, and `no-cache` and `private` (which may name fields), take any.
fn of_its_type(key: &str, value: Option<&str>) -> bool {
    const INTEGERS: [&str; 4] = [
        "max-age",
        "s-maxage",
        "stale-while-revalidate",
        "stale-if-error",
    ];
    const BOOLEANS: [&str; 7] = [
        "no-store",
        "must-revalidate",
        "proxy-revalidate",
        "public",
        "no-transform",
        "must-understand",
        "immutable",
    ];
    if INTEGERS.contains(&key) {
        value.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    } else if BOOLEANS.contains(&key) {
        matches!(value, None | Some("?0" | "?1"))
    } else {
        true
    }
}

/// An integer, decimal, string, token or boolean of a structured field (RFC 8941 §3.3).
fn is_bare_item(value: &str) -> bool {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'-' | b'0'..=b'9') => {
            let digits = value.strip_prefix('-').unwrap_or(value);
            let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
            !whole.is_empty()
                && whole.len() <= 15
                && !fraction.is_empty()
                && fraction.len() <= 3
                && whole
                    .bytes()
                    .chain(fraction.bytes())
                    .all(|b| b.is_ascii_digit())
        }
        Some(b'"') => value.len() >= 2 && value.ends_with('"'),
        Some(b'?') => value == "?0" || value == "?1",
        Some(b) if b.is_ascii_alphabetic() || *b == b'*' => {
            value.bytes().all(|b| is_tchar(b) || b == b':' || b == b'/')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fields::test_headers as headers;

    #[test]
    fn a_targeted_field_stands_in_when_it_is_a_valid_dictionary() {
        let cdn = [header::HeaderName::from_static("cdn-cache-control")];
        let view = |fields: &[(&str, &str)]| {
            targeted(&headers(fields), &cdn).map(|v| {
                let cc = v
                    .get(header::CACHE_CONTROL)
                    .map(|c| c.to_str().unwrap().to_owned());
                (cc, v.contains_key(header::EXPIRES))
            })
        };
        let both = [
            ("cache-control", "no-store"),
            ("expires", "Fri, 01 Jan 2049 00:00:00 GMT"),
        ];
        let with = |cdn: &'static str| {
            let mut fields = both.to_vec();
            fields.push(("cdn-cache-control", cdn));
            view(&fields)
        };
        assert_eq!(with("max-age=60"), Some((Some("max-age=60".into()), false)));
        assert_eq!(
            with("max-age=60, must-revalidate, private=?0, no-cache=?1;x=1"),
            Some((Some("max-age=60, must-revalidate, no-cache".into()), false))
        );
        assert_eq!(
            with("max-age=1, max-age=60"),
            Some((Some("max-age=60".into()), false))
        );
        for invalid in [
            "Max-Age=60",
            "max-age=60,",
            "max-age=1.2345",
            "max-age=@",
            "9lives",
            // Well-formed dictionaries with a member of the wrong type (RFC 9213 §2.1).
            "max-age=\"60\"",
            "max-age=60.5",
            "max-age=sixty",
            "max-age=?1",
            "max-age",
            "max-age=-60",
            "s-maxage=\"60\", public",
            "max-age=60, no-store=5",
            "max-age=60, must-revalidate=\"yes\"",
            "stale-if-error=1.5, max-age=60",
        ] {
            assert_eq!(with(invalid), None, "{invalid}");
        }
        assert_eq!(view(&both), None);
    }
}
