//! Copies of request and response heads for what the cache keeps or shares.
//!
//! `http`'s `Parts` are `Clone`, but a clone carries the extensions: values that one request
//! (or the service that made a response) attached, such as a client's per-request
//! [`CacheMode`](crate::CacheMode), connection details or an authenticated user. A head the
//! cache keeps for later requests or hands to requests that follow a fill must not carry
//! them, so these copy the method, URI, version, status and headers and leave the
//! extensions behind.

use http::{request, response};

/// The request head `parts` without its extensions.
pub(crate) fn request_head(parts: &request::Parts) -> request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// A response head of `status`, `version` and a copy of `headers`, without extensions.
pub(crate) fn response_head(
    status: http::StatusCode,
    version: http::Version,
    headers: &http::HeaderMap,
) -> response::Parts {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers.clone();
    response.into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct User(&'static str);

    #[test]
    fn a_copy_keeps_the_head_and_drops_the_extensions() {
        let (mut parts, ()) = http::Request::put("http://a/b?c")
            .header("x-one", "1")
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts();
        parts.extensions.insert(User("alice"));
        let copy = request_head(&parts);
        assert_eq!(
            (&copy.method, &copy.uri, copy.version, &copy.headers),
            (&parts.method, &parts.uri, parts.version, &parts.headers)
        );
        assert!(copy.extensions.get::<User>().is_none());

        let (mut parts, ()) = http::Response::builder()
            .status(206)
            .header("x-two", "2")
            .body(())
            .unwrap()
            .into_parts();
        parts.extensions.insert(User("bob"));
        let copy = response_head(parts.status, parts.version, &parts.headers);
        assert_eq!(
            (copy.status, copy.version, &copy.headers),
            (parts.status, parts.version, &parts.headers)
        );
        assert!(copy.extensions.get::<User>().is_none());
    }
}
