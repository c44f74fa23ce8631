//! `Cache-Control` parsed once per message into a [`CacheControl`] that every decision
//! reads: the one place directives are parsed (RFC 9111 §5.2). Names in any case, the first
//! of a repeated directive, commas inside quoted strings kept inside their directive; the
//! field-naming `no-cache` and `private` read over every occurrence ([`Qualified`]).

use http::HeaderMap;
use http::header::{self, HeaderName};

/// A directive of a `Cache-Control` field: its name in lower case, and its value, unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
    /// The value was malformed: `name = value`, or an unterminated quoted string.
    pub(crate) malformed: bool,
}

/// How a message's `Cache-Control` uses a directive that may name fields (`no-cache`,
/// `private`; RFC 9111 §5.2.2.4, §5.2.2.7), every occurrence counted (a later bare
/// `private` is not lost behind a qualified one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Qualified {
    #[default]
    Absent,
    /// The directive alone (or with a list that names no field): the whole response.
    Whole,
    /// `no-cache="Set-Cookie, X-Token"`: those fields only.
    Fields(Vec<HeaderName>),
}

/// A message's `Cache-Control`, parsed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    /// The first directive of each name, in order.
    directives: Vec<Directive>,
    no_cache: Qualified,
    private: Qualified,
}

impl CacheControl {
    /// The `Cache-Control` fields of `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut parsed = CacheControl::default();
        for (_, directive) in each_directive(headers) {
            let qualified = match directive.name.as_str() {
                "no-cache" => Some(&mut parsed.no_cache),
                "private" => Some(&mut parsed.private),
                _ => None,
            };
            if let Some(qualified) = qualified {
                let fields = field_names(directive.value.as_deref().unwrap_or_default());
                match (&mut *qualified, fields.is_empty()) {
                    (Qualified::Whole, _) => {}
                    (_, true) => *qualified = Qualified::Whole,
                    (Qualified::Absent, false) => *qualified = Qualified::Fields(fields),
                    (Qualified::Fields(all), false) => all.extend(fields),
                }
            }
            if parsed.directives.iter().all(|d| d.name != directive.name) {
                parsed.directives.push(directive);
            }
        }
        parsed
    }

    /// The first directive of each name, in order.
    pub(crate) fn directives(&self) -> &[Directive] {
        &self.directives
    }

    /// Whether it has the directive `name` (lower case).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.directives.iter().any(|d| d.name == name)
    }

    /// The value of the directive `name` (lower case): `Some(None)` for one without a value.
    pub(crate) fn value(&self, name: &str) -> Option<Option<&str>> {
        self.directives
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.value.as_deref())
    }

    /// The directive `name`'s value as a number of seconds, when it is one.
    pub(crate) fn seconds(&self, name: &str) -> Option<u64> {
        self.value(name)??.parse().ok()
    }

    /// How `no-cache` is used.
    pub(crate) fn no_cache(&self) -> &Qualified {
        &self.no_cache
    }

    /// How `private` is used.
    pub(crate) fn private(&self) -> &Qualified {
        &self.private
    }

    /// How the field-naming directive `name` (`no-cache` or `private`) is used.
    pub(crate) fn qualified(&self, name: &str) -> &Qualified {
        match name {
            "no-cache" => &self.no_cache,
            "private" => &self.private,
            _ => &Qualified::Absent,
        }
    }
}

/// Every directive of every `Cache-Control` field of `headers`, in order, repeated ones
/// too, each with the element it was written as.
pub(crate) fn each_directive(headers: &HeaderMap) -> impl Iterator<Item = (&str, Directive)> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_list)
        .filter_map(|element| Some((element, directive(element)?)))
}

/// The elements of a comma-separated list, commas inside quoted strings kept.
pub(crate) fn split_list(value: &str) -> Vec<&str> {
    let mut elements = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                elements.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(&value[start..]);
    elements
}

/// One element of a `Cache-Control` list as a directive; `None` when it names none.
pub(crate) fn directive(element: &str) -> Option<Directive> {
    let element = element.trim_matches([' ', '\t']);
    if element.is_empty() {
        return None;
    }
    let (name, value) = match element.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (element, None),
    };
    let name_is_token = !name.is_empty() && name.bytes().all(is_tchar);
    let trimmed = name.trim_matches([' ', '\t']);
    if trimmed.is_empty() || !trimmed.bytes().all(is_tchar) {
        return None;
    }
    let mut malformed = !name_is_token;
    let value = value.map(|value| {
        if value.starts_with([' ', '\t']) || value.is_empty() {
            malformed = true;
        }
        let value = value.trim_matches([' ', '\t']);
        match value.strip_prefix('"') {
            Some(rest) => match rest.strip_suffix('"') {
                Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
                None => {
                    malformed = true;
                    rest.to_owned()
                }
            },
            None => value.to_owned(),
        }
    });
    Some(Directive {
        name: trimmed.to_ascii_lowercase(),
        value,
        malformed,
    })
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Directives whose value is delta-seconds.
pub(crate) const DELTA_SECONDS: [&str; 6] = [
    "max-age",
    "s-maxage",
    "min-fresh",
    "max-stale",
    "stale-while-revalidate",
    "stale-if-error",
];

/// The field names of a qualified directive's list (`Set-Cookie, X-Token`), lower case;
/// elements that are no field name are passed over.
pub(crate) fn field_names(list: &str) -> Vec<HeaderName> {
    list.split(',')
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The greatest delta-seconds a recipient keeps (RFC 9111 §1.2.2).
pub(crate) const MAX_DELTA: u64 = 1 << 31;

/// A delta-seconds value: `1*DIGIT`, at most 2^31; `None` when it is not one.
pub(crate) fn delta_seconds(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA)))
}

/// Whether `headers` carry `Pragma: no-cache` (RFC 9111 §5.4; it counts only where no
/// `Cache-Control` is present, which the caller judges).
pub(crate) fn has_pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::CACHE_CONTROL, value.parse().unwrap());
        }
        CacheControl::of(&headers)
    }

    #[test]
    fn the_first_of_a_name_wins_in_any_case_and_quoted_commas_stay_inside() {
        let cc = of(&["Max-Age=1", r#"max-age=9, no-cache="a, b", S-MaxAge="60""#]);
        assert_eq!(cc.value("max-age"), Some(Some("1")));
        assert_eq!(cc.seconds("s-maxage"), Some(60));
        assert_eq!(cc.value("no-store"), None);
        assert!(cc.has("no-cache") && !cc.has("private"));
        let names: Vec<_> = cc.directives().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["max-age", "no-cache", "s-maxage"]);
        assert_eq!(of(&["max-age=1.5"]).seconds("max-age"), None);
    }

    #[test]
    fn field_naming_directives_count_every_occurrence() {
        let named = |v: &[&str]| of(v).private().clone();
        let fields = |names: &[&'static str]| {
            Qualified::Fields(names.iter().map(|n| HeaderName::from_static(n)).collect())
        };
        assert_eq!(named(&["max-age=5"]), Qualified::Absent);
        assert_eq!(named(&[r#"private="x-a""#]), fields(&["x-a"]));
        assert_eq!(
            named(&[r#"private="x-a", private="X-B""#]),
            fields(&["x-a", "x-b"])
        );
        assert_eq!(named(&[r#"private="x-a""#, "private"]), Qualified::Whole);
        assert_eq!(named(&["private", r#"private="x-a""#]), Qualified::Whole);
        assert_eq!(named(&[r#"private="""#]), Qualified::Whole);
        assert_eq!(
            of(&[r#"no-cache="set-cookie""#]).qualified("no-cache"),
            &fields(&["set-cookie"])
        );
    }
}
