//! An empty request body made anew, for the request the cache sends a second time when a
//! revalidation's `304` selects nothing (RFC 9111 §4.3.4).
//!
//! The layer is generic over the request body and cannot require `Default` of it: hyper's
//! `Incoming` has none. The body types a request is commonly sent with are recognised by
//! type instead; with any other the request is not sent again and the client gets a `502`.

use std::any::Any;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt as _, Empty, Full};

use crate::error::BoxError;

/// An empty `B`, when `B` is one of the body types listed on
/// [`HttpCacheStreaming`](crate::HttpCacheStreaming).
pub(crate) fn empty<B: 'static>() -> Option<B> {
    None.or_else(|| cast::<B, _>(Empty::<Bytes>::new))
        .or_else(|| cast::<B, _>(Full::<Bytes>::default))
        .or_else(|| cast::<B, _>(String::new))
        .or_else(|| cast::<B, _>(Vec::<u8>::new))
        .or_else(|| cast::<B, _>(Bytes::new))
        .or_else(|| cast::<B, _>(|| ()))
        .or_else(|| cast::<B, _>(|| boxed::<BoxError>().0))
        .or_else(|| cast::<B, _>(|| boxed::<BoxError>().1))
        .or_else(|| cast::<B, _>(|| boxed::<std::io::Error>().0))
        .or_else(|| cast::<B, _>(|| boxed::<std::io::Error>().1))
        .or_else(|| cast::<B, _>(|| boxed::<Infallible>().0))
        .or_else(|| cast::<B, _>(|| boxed::<Infallible>().1))
        .or_else(axum_body::<B>)
        .or_else(reqwest_body::<B>)
}

/// An empty `reqwest::Body`, when `B` is one (what [`ReqwestCache`](crate::ReqwestCache)
/// sends).
#[cfg(feature = "reqwest")]
fn reqwest_body<B: 'static>() -> Option<B> {
    cast::<B, _>(|| reqwest::Body::from(Bytes::new()))
}

#[cfg(not(feature = "reqwest"))]
fn reqwest_body<B: 'static>() -> Option<B> {
    None
}

/// `make()` as a `B`, when it is one.
fn cast<B: 'static, T: 'static>(make: impl FnOnce() -> T) -> Option<B> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<B>() {
        return None;
    }
    let made: Box<dyn Any> = Box::new(make());
    made.downcast::<B>().ok().map(|b| *b)
}

fn boxed<E: 'static>() -> (BoxBody<Bytes, E>, UnsyncBoxBody<Bytes, E>) {
    let empty = || Empty::<Bytes>::new().map_err(|never| match never {});
    (empty().boxed(), empty().boxed_unsync())
}

#[cfg(feature = "axum")]
fn axum_body<B: 'static>() -> Option<B> {
    cast::<B, _>(axum_core::body::Body::empty)
}

#[cfg(not(feature = "axum"))]
fn axum_body<B: 'static>() -> Option<B> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_body_types_are_made_empty_and_others_are_not() {
        use http_body::Body as _;
        assert!(empty::<Empty<Bytes>>().is_some());
        assert!(empty::<Full<Bytes>>().is_some_and(|b| b.is_end_stream()));
        assert_eq!(empty::<String>().as_deref(), Some(""));
        assert!(empty::<BoxBody<Bytes, BoxError>>().is_some());
        assert!(empty::<UnsyncBoxBody<Bytes, Infallible>>().is_some());
        assert!(empty::<UnsyncBoxBody<Bytes, std::io::Error>>().is_some());
        #[cfg(feature = "axum")]
        assert!(empty::<axum_core::body::Body>().is_some_and(|b| b.is_end_stream()));
        assert!(empty::<Full<Vec<u8>>>().is_none());
        assert!(empty::<std::fs::File>().is_none());
    }
}
