//! Which stored variant a request's language preference selects (RFC 9110 §12.5.4): a
//! request whose own `Accept-Language` selects no stored variant, but that prefers one
//! language above all others, is served a fresh variant in that language. The URL's variant
//! list records, for each variant in one language, the digest a request preferring that
//! language alone would have ([`LANGUAGES`]).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, request};

use super::HttpStreamingCache;
use super::directives::Verdict;
use super::mode::CacheMode;
use super::status::{Detail, Status};
use super::variants::{LANGUAGES, variants_generation};
use crate::body::StreamingBody;
use crate::key;

/// The longest `Accept-Language` (as compared) a variant list records for a variant.
const MAX_LANGUAGE_VALUE: usize = 256;

impl HttpStreamingCache {
    /// A fresh stored variant in the one language a request prefers above all others, for
    /// a request whose own `Accept-Language` selects no stored variant: the origin chose that
    /// language for another request, so it is the one it would choose for this one (RFC 9110
    /// §12.5.4). Verdict as the request it was stored for, which differs only there.
    pub(super) async fn in_preferred_language(
        &self,
        parts: &request::Parts,
        key: &str,
        mode: CacheMode,
    ) -> Option<Response<StreamingBody>> {
        let language = preferred_language(&parts.headers)?;
        let (list, _) = self.lookup(key).await?;
        let generation = variants_generation(list.headers())?;
        let names = key::vary_names(list.headers())?;
        let alias = language_digest(&names, &parts.headers, &language)?;
        // The newest variant in that language, when several are.
        let line = list
            .headers()
            .get_all(LANGUAGES)
            .iter()
            .rev()
            .find_map(|line| {
                let line = line.to_str().ok()?;
                let mut fields = line.splitn(3, ' ');
                (fields.next()? == alias).then(|| {
                    let digest = fields.next().unwrap_or_default().to_owned();
                    (
                        digest,
                        fields.next().map(|v| v.trim_start_matches('=').to_owned()),
                    )
                })
            });
        drop(list);
        let (digest, stored_for) = line?;
        let variant = key::variant_key_of(key, &generation, &digest);
        let (response, entry) = self.lookup(&variant).await?;
        if !self.admits(&entry, mode)
            || content_language(&entry.headers).as_deref() != Some(language.as_str())
        {
            return None;
        }
        let mut as_stored = parts.clone();
        match stored_for.and_then(|v| HeaderValue::from_str(&v).ok()) {
            Some(value) => as_stored.headers.insert(header::ACCEPT_LANGUAGE, value),
            None => as_stored.headers.remove(header::ACCEPT_LANGUAGE),
        };
        let now = self.now();
        let within_cap = self.within_cap(entry.status, &entry.policy, now);
        let stored = (entry.status, entry.version, &entry.headers);
        let fresh = matches!(
            self.judge_stored(&entry.policy, &as_stored, stored, now),
            Verdict::Fresh
        );
        (fresh && within_cap && mode != CacheMode::NoCache).then(|| {
            let status = Status::hit().detail(Detail::ContentLanguage);
            self.hit(parts, response, &entry.policy, now, status)
        })
    }
}

/// The variant list's line for a variant being stored under `digest` for a request with
/// `request` headers (see [`LANGUAGES`]), when it varies on `Accept-Language` and is in one
/// language.
pub(super) fn line(
    names: &[HeaderName],
    request: &HeaderMap,
    response: &HeaderMap,
    digest: &str,
) -> Option<String> {
    if !names.contains(&header::ACCEPT_LANGUAGE) {
        return None;
    }
    let language = content_language(response)?;
    let alias = language_digest(names, request, &language)?;
    let mut line = format!("{alias} {digest}");
    if let Some(value) = key::selecting_value(&header::ACCEPT_LANGUAGE, request) {
        // The list is read for every request of the URL: a client's long header makes no
        // line of it (its variant is stored, selected by its own values only).
        if value.len() > MAX_LANGUAGE_VALUE {
            return None;
        }
        line.push_str(" =");
        line.push_str(std::str::from_utf8(&value).ok()?);
    }
    Some(line)
}

/// The one language a request prefers above all others: the `Accept-Language` member with
/// the highest q-value (RFC 9110 §12.5.4), lower-cased, when no other has the same, it is
/// not `*`, and every member is well formed. `None` leaves the choice to the origin.
fn preferred_language(request: &HeaderMap) -> Option<String> {
    let mut best: Option<(u16, String)> = None;
    let mut tied = false;
    for value in request.get_all(header::ACCEPT_LANGUAGE) {
        for member in value.to_str().ok()?.split(',') {
            let mut params = member.split(';');
            let tag = params.next()?.trim().to_ascii_lowercase();
            if tag.is_empty() {
                continue;
            }
            if !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
            {
                return None;
            }
            let mut weight = 1000;
            for param in params {
                let (name, value) = param.trim().split_once('=')?;
                if name.trim().eq_ignore_ascii_case("q") {
                    weight = qvalue(value.trim())?;
                }
            }
            match &best {
                Some((top, _)) if weight < *top => {}
                Some((top, _)) if weight == *top => tied = true,
                _ => {
                    best = Some((weight, tag));
                    tied = false;
                }
            }
        }
    }
    let (weight, tag) = best?;
    (!tied && weight > 0 && tag != "*").then_some(tag)
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths.
fn qvalue(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The language a stored response is in, when it names one: a single `Content-Language`
/// tag, lower-cased.
fn content_language(response: &HeaderMap) -> Option<String> {
    let mut values = response.get_all(header::CONTENT_LANGUAGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let tag = value.to_str().ok()?.trim().to_ascii_lowercase();
    let well_formed =
        !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    well_formed.then_some(tag)
}

/// The digest of the values `request` has for `names`, `Accept-Language` taken as `language`
/// alone: what names a stored variant in `language` among the URL's variants.
fn language_digest(names: &[HeaderName], request: &HeaderMap, language: &str) -> Option<String> {
    let mut headers = HeaderMap::new();
    for name in names {
        for value in request.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let language = HeaderValue::from_str(language).ok()?;
    headers.insert(header::ACCEPT_LANGUAGE, language);
    Some(key::variant_digest(names, &headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_language_is_the_one_with_the_highest_qvalue_alone() {
        let preferred = |lines: &[&str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("accept-language", line.parse().unwrap());
            }
            preferred_language(&headers)
        };
        let de = Some("de".to_owned());
        assert_eq!(preferred(&["fr;q=0.5, de;q=1.0"]), de);
        assert_eq!(preferred(&["DE, fr;q=0.9"]), de);
        assert_eq!(preferred(&["fr;q=0.5", "de"]), de);
        assert_eq!(preferred(&["fr;q=0.5, de;Q=0.501"]), de);
        assert_eq!(preferred(&["de-CH"]), Some("de-ch".to_owned()));
        // Ties, nothing acceptable, a wildcard, or a member that is not well formed.
        for lines in [
            &["en, de"][..],
            &["en;q=0.5, de;q=0.500"],
            &["de;q=0"],
            &["*"],
            &["*, de;q=0.5"],
            &["de;q=2"],
            &["de;q=0.1234"],
            &["de;q=x"],
            &["d e"],
            &["de;q"],
            &[],
            &[""],
        ] {
            assert_eq!(preferred(lines), None, "{lines:?}");
        }
    }
}
