//! This cache's entry of the `Cache-Status` header (RFC 9211) as a value: what kind of answer
//! a response is and the parameters that go with it, formatted in one place.

use std::fmt;

/// Why a response the cache fetched from the origin was not stored: the `detail` of its
/// `Cache-Status` entry, and an extension of the response, so that code behind the layer
/// can tell.
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_cache_streaming::{HttpCacheStreamingLayer, NotStored};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// let dir = tempfile::tempdir()?;
/// let layer = HttpCacheStreamingLayer::open(dir.path()).await?;
/// let mut service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_request: http::Request<String>| async {
///         let response = http::Response::builder()
///             .header("cache-control", "private, max-age=60")
///             .body(String::from("your page"))?;
///         Ok::<_, http::Error>(response)
///     });
/// let request = http::Request::get("https://example.com/me").body(String::new())?;
/// let response = service.ready().await?.call(request).await?;
/// assert_eq!(response.extensions().get::<NotStored>(), Some(&NotStored::Private));
/// assert!(response.headers()["cache-status"].to_str()?.ends_with("detail=private"));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotStored {
    /// `method`: only `GET` responses are stored.
    Method,
    /// `partial-content`: a `206` that cannot be kept as a partial entry.
    PartialContent,
    /// `no-store`: the request or the response said `no-store`.
    NoStore,
    /// `private`: a `private` response, in a shared cache.
    Private,
    /// `authorization`: the request carried credentials and the response did not say it
    /// may be shared (`public`, `s-maxage`, `must-revalidate`), in a shared cache.
    Authorization,
    /// `status`: a status the cache does not understand, or one it may store only with
    /// explicit freshness, which the response did not give.
    Status,
    /// `set-cookie`: a response that sets a cookie, in a shared cache (see
    /// [`store_set_cookie`](crate::HttpCacheOptions::store_set_cookie)).
    SetCookie,
    /// `error-status`: a `400` or `5xx`, in a shared cache (see
    /// [`store_errors`](crate::HttpCacheOptions::store_errors)).
    ErrorStatus,
    /// `no-freshness`: neither freshness nor a validator, so it could never be reused (see
    /// [`default_ttl`](crate::HttpCacheOptions::default_ttl)).
    NoFreshness,
    /// `ttl`: the route's [`Ttl`](crate::Ttl) said not to store it.
    Ttl,
    /// `vary`: a `Vary` the cache cannot key (`*`, or a field name it cannot read).
    Vary,
    /// `variant-not-stored`: the URL holds as many variants as it may.
    TooManyVariants,
    /// `min-uses`: asked for fewer times than the store's
    /// [`min_uses`](crate::StreamingManagerBuilder::min_uses) yet.
    MinUses,
    /// `too-large`: its `Content-Length` is over the store's
    /// [`max_body_size`](crate::StreamingManagerBuilder::max_body_size).
    TooLarge,
    /// `store-busy`: as many bodies are being written as the store allows
    /// ([`max_writes_in_flight`](crate::StreamingManagerBuilder::max_writes_in_flight)).
    StoreBusy,
    /// `store-unavailable`: the store cannot be opened or written (its directory is
    /// refused, missing or full); counted in [`CacheStats::errors`](crate::CacheStats).
    StoreUnavailable,
    /// `invalid-url`: the request's URL cannot be kept with the entry.
    InvalidUrl,
}

impl NotStored {
    /// The `detail` token written in `Cache-Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::PartialContent => "partial-content",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::Status => "status",
            NotStored::SetCookie => "set-cookie",
            NotStored::ErrorStatus => "error-status",
            NotStored::NoFreshness => "no-freshness",
            NotStored::Ttl => "ttl",
            NotStored::Vary => "vary",
            NotStored::TooManyVariants => "variant-not-stored",
            NotStored::MinUses => "min-uses",
            NotStored::TooLarge => "too-large",
            NotStored::StoreBusy => "store-busy",
            NotStored::StoreUnavailable => "store-unavailable",
            NotStored::InvalidUrl => "invalid-url",
        }
    }
}

impl fmt::Display for NotStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What else a `Cache-Status` entry says of its response: the `detail` parameter. One
/// variant a reason, written in one place ([`Detail::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detail {
    /// Fetched, and not stored: why.
    NotStored(NotStored),
    /// `partial`: answered from (or kept in) a partial entry.
    Partial,
    /// `malformed-partial`: the origin's `206` disagrees with itself (a `502`).
    MalformedPartial,
    /// `partial-mismatch`: the origin's `206` is not the span asked for (a `502`).
    PartialMismatch,
    /// `content-language`: the stored variant in the language the request prefers.
    ContentLanguage,
    /// `stale-while-revalidate`: served stale while revalidated in the background.
    StaleWhileRevalidate,
    /// `stale-if-error`: served stale for a failing origin, as the response allowed.
    StaleIfError,
    /// `stale-on-error`: served stale for a failing origin, as the cache's option allows.
    StaleOnError,
    /// `only-if-cached`: the request would take only a stored response (a `504`).
    OnlyIfCached,
    /// `origin-unreachable`: the origin could not be reached and nothing may stand in (a
    /// `504`).
    OriginUnreachable,
    /// `revalidation-not-selected`: a `304` named another representation and the request
    /// could not be sent again (a `502`).
    RevalidationNotSelected,
    /// `peer`: streamed from the fleet node that fetched it.
    Peer,
}

impl Detail {
    /// The token written after `detail=`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Detail::NotStored(why) => why.as_str(),
            Detail::Partial => "partial",
            Detail::MalformedPartial => "malformed-partial",
            Detail::PartialMismatch => "partial-mismatch",
            Detail::ContentLanguage => "content-language",
            Detail::StaleWhileRevalidate => "stale-while-revalidate",
            Detail::StaleIfError => "stale-if-error",
            Detail::StaleOnError => "stale-on-error",
            Detail::OnlyIfCached => "only-if-cached",
            Detail::OriginUnreachable => "origin-unreachable",
            Detail::RevalidationNotSelected => "revalidation-not-selected",
            Detail::Peer => "peer",
        }
    }
}

/// Why a request went to the origin: the `fwd` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fwd {
    /// Nothing is stored for the URL.
    UriMiss,
    /// The URL has stored variants, none of them this request's.
    VaryMiss,
    /// Nothing usable is stored (an `only-if-cached` request that found nothing).
    Miss,
    /// The stored response is stale: the origin was asked to revalidate it.
    Stale,
    /// The request asked for the origin (`no-cache`, a method the cache does not serve).
    Request,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
        }
    }
}

/// Why a request goes to the origin, and whether its lookup found a stored response (what
/// `x-cache-lookup` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Forwarded {
    pub(super) fwd: Fwd,
    pub(super) found: bool,
}

/// A parameter after the first, written in the order it was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    FwdStatus(u16),
    Collapsed,
    Stored,
    Ttl(u64),
    Detail(Detail),
}

/// This cache's `Cache-Status` entry for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Status {
    /// `None`: a hit.
    fwd: Option<Fwd>,
    /// A stored response served while stale (`stale-while-revalidate`).
    stale: bool,
    params: Vec<Param>,
}

impl Status {
    /// A response served from the store.
    pub(super) fn hit() -> Self {
        Status {
            fwd: None,
            stale: false,
            params: Vec::new(),
        }
    }

    /// A stale response served from the store while it is revalidated in the background.
    pub(super) fn stale_while_revalidate() -> Self {
        Status {
            stale: true,
            ..Status::hit()
        }
        .detail(Detail::StaleWhileRevalidate)
    }

    /// A request that went to the origin, for `fwd`.
    pub(super) fn forward(fwd: Fwd) -> Self {
        Status {
            fwd: Some(fwd),
            stale: false,
            params: Vec::new(),
        }
    }

    /// The origin's status code.
    pub(super) fn fwd_status(self, status: http::StatusCode) -> Self {
        self.with(Param::FwdStatus(status.as_u16()))
    }

    /// Answered by following another request's fill of the same key.
    pub(super) fn collapsed(self) -> Self {
        self.with(Param::Collapsed)
    }

    /// The response was stored.
    pub(super) fn stored(self) -> Self {
        self.with(Param::Stored)
    }

    /// Seconds of freshness left.
    pub(super) fn ttl(self, seconds: u64) -> Self {
        self.with(Param::Ttl(seconds))
    }

    /// What else happened (`stale-if-error`, `only-if-cached`, `variant-not-stored`...).
    pub(super) fn detail(self, detail: Detail) -> Self {
        self.with(Param::Detail(detail))
    }

    fn with(mut self, param: Param) -> Self {
        self.params.push(param);
        self
    }

    /// A fresh response served from the store: what the hit counter counts.
    pub(super) fn is_fresh_hit(&self) -> bool {
        self.fwd.is_none() && !self.stale
    }

    /// Whether the request found a stored response (stale, revalidated), for `x-cache-lookup`.
    pub(super) fn forwarded_for_stale(&self) -> bool {
        self.fwd == Some(Fwd::Stale)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fwd {
            None => f.write_str("hit")?,
            Some(fwd) => write!(f, "fwd={}", fwd.as_str())?,
        }
        for param in &self.params {
            match param {
                Param::FwdStatus(status) => write!(f, "; fwd-status={status}")?,
                Param::Collapsed => f.write_str("; collapsed")?,
                Param::Stored => f.write_str("; stored")?,
                Param::Ttl(seconds) => write!(f, "; ttl={seconds}")?,
                Param::Detail(detail) => write!(f, "; detail={}", detail.as_str())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn each_kind_of_answer_is_written_as_before() {
        let cases = [
            (Status::hit().ttl(60), "hit; ttl=60"),
            (Status::hit().collapsed().ttl(5), "hit; collapsed; ttl=5"),
            (
                Status::stale_while_revalidate().ttl(0),
                "hit; detail=stale-while-revalidate; ttl=0",
            ),
            (
                Status::forward(Fwd::UriMiss)
                    .fwd_status(StatusCode::OK)
                    .stored()
                    .ttl(3600),
                "fwd=uri-miss; fwd-status=200; stored; ttl=3600",
            ),
            (
                Status::forward(Fwd::VaryMiss).collapsed().ttl(9),
                "fwd=vary-miss; collapsed; ttl=9",
            ),
            (
                Status::forward(Fwd::Stale)
                    .fwd_status(StatusCode::BAD_GATEWAY)
                    .detail(Detail::StaleIfError)
                    .ttl(0),
                "fwd=stale; fwd-status=502; detail=stale-if-error; ttl=0",
            ),
            (
                Status::forward(Fwd::Miss).detail(Detail::OnlyIfCached),
                "fwd=miss; detail=only-if-cached",
            ),
            (Status::forward(Fwd::Request), "fwd=request"),
        ];
        for (status, written) in cases {
            assert_eq!(status.to_string(), written);
        }
        assert!(Status::hit().collapsed().is_fresh_hit());
        assert!(!Status::stale_while_revalidate().is_fresh_hit());
        assert!(
            !Status::forward(Fwd::Stale)
                .detail(Detail::StaleIfError)
                .is_fresh_hit()
        );
    }
}
