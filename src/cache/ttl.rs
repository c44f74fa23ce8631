//! [`Ttl`]: how long a route's responses stay fresh, decided in code, and how the decision is
//! kept with the stored response (a field of the cache's own, read in place of the origin's
//! freshness wherever the cache judges the entry).

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{request, response};

use super::HttpStreamingCache;
use crate::fields::cache_control::{self, CacheControl};

/// The field a stored response keeps its [`Ttl`]'s outcome in: cache-control directives
/// (`max-age`, `stale-while-revalidate`, `stale-if-error`) that this cache reads in place of
/// the origin's freshness. Never taken from an origin, never sent to a client.
pub(super) const TTL_FIELD: HeaderName = HeaderName::from_static("x-http-cache-streaming-ttl");

/// How long the cache keeps a response fresh, decided by the application rather than by
/// the response's headers: a default for responses that give no freshness, a fixed
/// lifetime, a floor and a cap, a grace period during which a stale copy is served while it
/// is revalidated (or when the origin fails), or not storing at all.
///
/// A `Ttl` governs freshness only: it never makes storable what the storing rules refuse
/// (`no-store`, `private` or `Set-Cookie` in a shared cache, an error status), and never
/// lifts `no-cache` or `must-revalidate`. The lifetime counts from when the origin made the
/// response (its `Age` included), as `max-age` does. The caps that
/// [`HttpCacheOptions::max_ttl`](crate::HttpCacheOptions::max_ttl) sets still apply.
///
/// Set one for every response with [`HttpCacheOptions::default_ttl`] and
/// [`min_ttl`](crate::HttpCacheOptions::min_ttl), per route with
/// [`HttpCacheOptions::ttl_fn`], or from a handler by putting a `Ttl` in its response's
/// extensions (a request's extensions work too, for a client):
///
/// ```
/// use std::time::Duration;
/// use axum::{Extension, Router, routing::get};
/// use http_cache_streaming::Ttl;
///
/// // The handler sends no Cache-Control: the route gives its responses a minute, and
/// // serves a stale copy for up to ten more while it fetches a new one.
/// async fn prices() -> (Extension<Ttl>, &'static str) {
///     let ttl = Ttl::origin().or(Duration::from_secs(60)).grace(Duration::from_secs(600));
///     (Extension(ttl), "[1, 2, 3]")
/// }
/// let app: Router = Router::new().route("/prices", get(prices));
/// ```
///
/// [`HttpCacheOptions::default_ttl`]: crate::HttpCacheOptions::default_ttl
/// [`HttpCacheOptions::ttl_fn`]: crate::HttpCacheOptions::ttl_fn
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ttl {
    fixed: Option<Duration>,
    default: Option<Duration>,
    min: Option<Duration>,
    max: Option<Duration>,
    grace: Option<Duration>,
    no_store: bool,
}

impl Ttl {
    /// Freshness as the response's headers give it (explicit or heuristic), within the
    /// bounds added with the other methods.
    pub fn origin() -> Self {
        Ttl::default()
    }

    /// Fresh for `lifetime`, whatever the response's `Cache-Control` and `Expires` say
    /// (but for `no-store`, `no-cache`, `private` and `must-revalidate`, which still hold).
    pub fn fixed(lifetime: Duration) -> Self {
        Ttl {
            fixed: Some(lifetime),
            ..Ttl::default()
        }
    }

    /// Not stored at all: the response passes through, its `Cache-Status` saying
    /// `detail=ttl`.
    pub fn no_store() -> Self {
        Ttl {
            no_store: true,
            ..Ttl::default()
        }
    }

    /// Fresh for `lifetime` when the response gives no explicit freshness (no `max-age`,
    /// no `s-maxage` in a shared cache, no `Expires`): in place of the heuristic freshness
    /// of RFC 9111 §4.2.2, and of none at all.
    pub fn or(mut self, lifetime: Duration) -> Self {
        self.default = Some(lifetime);
        self
    }

    /// Fresh for at least `lifetime`.
    pub fn at_least(mut self, lifetime: Duration) -> Self {
        self.min = Some(lifetime);
        self
    }

    /// Fresh for at most `lifetime`.
    pub fn at_most(mut self, lifetime: Duration) -> Self {
        self.max = Some(lifetime);
        self
    }

    /// Once stale, served for up to `grace` more while it is revalidated in the
    /// background, or in place of an origin that fails (as `stale-while-revalidate` and
    /// `stale-if-error` of that many seconds would).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The outcome a node of the fleet kept in its own field (`max-age` and the stale
    /// windows), as the `Ttl` that gives it again: what a peer's fill carries to the node
    /// that stores it, whose own rule would not know a handler's.
    pub(super) fn from_field(headers: &http::HeaderMap) -> Option<Ttl> {
        let field = headers.get(TTL_FIELD)?;
        let mut own = http::HeaderMap::new();
        own.insert(http::header::CACHE_CONTROL, field.clone());
        let own = CacheControl::of(&own);
        let seconds = |name: &str| own.seconds(name).map(Duration::from_secs);
        let mut ttl = Ttl::fixed(seconds("max-age")?);
        if let Some(grace) = seconds("stale-while-revalidate").max(seconds("stale-if-error")) {
            ttl = ttl.grace(grace);
        }
        Some(ttl)
    }

    /// The directives of this rule's outcome for a response whose own freshness is
    /// `origin` (`explicit`: given by the origin, not heuristic), as the cache's own field
    /// writes them; `None` when the origin's freshness stands as it is.
    pub(super) fn outcome(&self, explicit: bool, origin: Duration) -> Option<String> {
        let mut lifetime = match (self.fixed, explicit, self.default) {
            (Some(fixed), _, _) => fixed,
            (None, false, Some(default)) => default,
            _ => origin,
        };
        if let Some(min) = self.min {
            lifetime = lifetime.max(min);
        }
        if let Some(max) = self.max {
            lifetime = lifetime.min(max);
        }
        if lifetime == origin && self.grace.is_none() {
            return None;
        }
        let mut directives = vec![format!("max-age={}", lifetime.as_secs())];
        if let Some(grace) = self.grace {
            let grace = grace.as_secs();
            directives.push(format!("stale-while-revalidate={grace}"));
            directives.push(format!("stale-if-error={grace}"));
        }
        Some(directives.join(", "))
    }

    /// Whether the response may be stored.
    pub(super) fn stores(&self) -> bool {
        !self.no_store
    }

    /// This rule, with `base`'s settings where it sets none.
    pub(super) fn over(self, base: Ttl) -> Ttl {
        Ttl {
            fixed: self.fixed.or(base.fixed),
            default: self.default.or(base.default),
            min: self.min.or(base.min),
            max: self.max.or(base.max),
            grace: self.grace.or(base.grace),
            no_store: self.no_store || base.no_store,
        }
    }
}

impl HttpStreamingCache {
    /// The rule for a response (`head`) to `request`: the layer's [`ttl_fn`], else a `Ttl`
    /// in the response's extensions, else the request's (`request_ttl`, from its
    /// extensions); the options' defaults filling what it leaves unset.
    ///
    /// [`ttl_fn`]: crate::HttpCacheOptions::ttl_fn
    pub(super) fn ttl_rule(
        &self,
        request: &request::Parts,
        head: &response::Parts,
        request_ttl: Option<Ttl>,
    ) -> Ttl {
        let own = match &self.options.ttl_fn {
            Some(rule) => rule(request, head),
            None => head
                .extensions
                .get::<Ttl>()
                .copied()
                .or(request_ttl)
                .unwrap_or_default(),
        };
        own.over(self.options.ttl)
    }
}

/// The headers a cache decides freshness and storability by: `headers` with the first of
/// its `targeted` fields (RFC 9213) present and valid in place of `Cache-Control` and
/// `Expires`, and with the cache's own freshness field (a [`Ttl`]'s outcome) in
/// place of the freshness either gives.
pub(super) fn decided<'h>(
    headers: &'h HeaderMap,
    targeted: &[http::header::HeaderName],
    shared: bool,
) -> std::borrow::Cow<'h, HeaderMap> {
    use std::borrow::Cow;
    let decided = match crate::fields::targeted::targeted(headers, targeted) {
        Some(view) => Cow::Owned(view),
        None => Cow::Borrowed(headers),
    };
    match headers.get(TTL_FIELD) {
        Some(own) => Cow::Owned(overlaid(&decided, own, shared)),
        None => decided,
    }
}

/// `decided` (the headers a cache decides by) with the directives of `own` (the cache's own
/// freshness field) in place of the freshness the origin gave: `max-age`, `s-maxage` and
/// `Expires` go (an `s-maxage` leaving its `proxy-revalidate` behind, in a shared cache),
/// and so do the stale windows `own` sets. The other directives are kept as written.
pub(super) fn overlaid(decided: &HeaderMap, own: &HeaderValue, shared: bool) -> HeaderMap {
    let own_text = own.to_str().unwrap_or_default();
    let sets: Vec<String> = cache_control::split_list(own_text)
        .into_iter()
        .filter_map(cache_control::directive)
        .map(|d| d.name)
        .collect();
    let mut kept: Vec<&str> = Vec::new();
    // A `Pragma: no-cache` counts only where there is no `Cache-Control` (RFC 9111 §5.4):
    // the one written here would hide it.
    if !decided.contains_key(http::header::CACHE_CONTROL)
        && cache_control::has_pragma_no_cache(decided)
    {
        kept.push("no-cache");
    }
    for (element, d) in cache_control::each_directive(decided) {
        match d.name.as_str() {
            "s-maxage" if shared => kept.push("proxy-revalidate"),
            "max-age" | "s-maxage" => {}
            name if sets.iter().any(|set| set == name) => {}
            _ => kept.push(element.trim_matches([' ', '\t'])),
        }
    }
    kept.push(own_text);
    let mut view = decided.clone();
    view.remove(http::header::EXPIRES);
    view.remove(http::header::CACHE_CONTROL);
    if let Ok(value) = HeaderValue::try_from(kept.join(", ")) {
        view.insert(http::header::CACHE_CONTROL, value);
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(fields: &[(&str, &str)], own: &str, shared: bool) -> Option<String> {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_str(value).unwrap());
        }
        let view = overlaid(&headers, &HeaderValue::from_str(own).unwrap(), shared);
        assert!(!view.contains_key(http::header::EXPIRES));
        view.get(http::header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_own_freshness_replaces_the_origins_and_keeps_what_forbids_reuse() {
        let cc = |value| {
            [
                ("cache-control", value),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ]
        };
        assert_eq!(
            overlay(&cc("max-age=5, must-revalidate"), "max-age=60", true).as_deref(),
            Some("must-revalidate, max-age=60")
        );
        // s-maxage leaves its proxy-revalidate behind in a shared cache only.
        assert_eq!(
            overlay(&cc("s-maxage=5, public"), "max-age=60", true).as_deref(),
            Some("proxy-revalidate, public, max-age=60")
        );
        assert_eq!(
            overlay(&cc("s-maxage=5, public"), "max-age=60", false).as_deref(),
            Some("public, max-age=60")
        );
        // A qualified no-cache keeps its quoted list, commas and all; a stale window the
        // field sets replaces the origin's.
        assert_eq!(
            overlay(
                &cc("no-cache=\"set-cookie, x-a\", stale-if-error=5"),
                "max-age=60, stale-if-error=30",
                true
            )
            .as_deref(),
            Some("no-cache=\"set-cookie, x-a\", max-age=60, stale-if-error=30")
        );
        // A Pragma: no-cache that counted (no Cache-Control) still does.
        assert_eq!(
            overlay(&[("pragma", "no-cache")], "max-age=60", true).as_deref(),
            Some("no-cache, max-age=60")
        );
    }

    #[test]
    fn a_peers_field_gives_the_same_outcome_again() {
        let rule = Ttl::fixed(Duration::from_secs(60)).grace(Duration::from_secs(30));
        let mut headers = HeaderMap::new();
        let field = "max-age=60, stale-while-revalidate=30, stale-if-error=30";
        headers.insert(TTL_FIELD, HeaderValue::from_static(field));
        assert_eq!(Ttl::from_field(&headers), Some(rule));
        headers.insert(TTL_FIELD, HeaderValue::from_static("max-age=5"));
        assert_eq!(
            Ttl::from_field(&headers),
            Some(Ttl::fixed(Duration::from_secs(5)))
        );
        headers.insert(TTL_FIELD, HeaderValue::from_static("stale-if-error=5"));
        assert_eq!(Ttl::from_field(&headers), None);
        assert_eq!(Ttl::from_field(&HeaderMap::new()), None);
    }
}
