//! An HTTP cache for the Tower ecosystem that stores responses on disk and streams them.
//!
//! [`HttpCacheStreamingLayer`] puts an RFC 9111 cache in front of any Tower service that
//! answers `http::Response`s: an axum `Router`, a hyper server's service, a hyper client.
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use http_body_util::BodyExt;
//! use http_cache_streaming::HttpCacheStreamingLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let dir = tempfile::tempdir()?;
//! // Opened at start-up: a directory the store cannot use is an error here, with its reason.
//! let layer = HttpCacheStreamingLayer::open(dir.path()).await?;
//! let mut service = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_request: http::Request<String>| async {
//!         let response = http::Response::builder()
//!             .header("cache-control", "max-age=60")
//!             .body(String::from("hello"))?;
//!         Ok::<_, http::Error>(response)
//!     });
//! for expected in ["fwd=uri-miss", "hit"] {
//!     let request = http::Request::get("https://example.com/").body(String::new())?;
//!     let response = service.ready().await?.call(request).await?;
//!     assert!(response.headers()["cache-status"].to_str()?.contains(expected));
//!     // A miss is stored as its body is read, and only once it is read to its end.
//!     assert_eq!(response.into_body().collect().await?.to_bytes(), "hello");
//! }
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! [`StreamingManager`] is the store underneath, usable on its own: responses go to disk as they stream, hashed on the way,
//! and come back as a [`StreamingBody`] that reads the file in large chunks. A 10 GB body costs
//! the same memory as a 1 KB one, identical bodies are stored once, and entries survive
//! restarts and crashes without a wrong byte ever being served.
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use http_cache_streaming::StreamingManager;
//! use http_body_util::{BodyExt, Full};
//!
//! let dir = tempfile::tempdir()?;
//! let manager = StreamingManager::new(dir.path().to_path_buf());
//! let request = http::Request::get("https://example.com/big").body(())?;
//! let response = http::Response::builder()
//!     .header("cache-control", "max-age=3600, public")
//!     .body(Full::new(bytes::Bytes::from(vec![b'X'; 1 << 20])))?;
//! let policy = http_cache_semantics::CachePolicy::new(&request, &response);
//! let url = url::Url::parse("https://example.com/big")?;
//!
//! // The body goes to disk, hashed on the way; what comes back streams from the stored file.
//! let stored = manager.put("GET:https://example.com/big".into(), response, policy, url).await?;
//! assert_eq!(stored.into_body().collect().await?.to_bytes().len(), 1 << 20);
//!
//! // Later, or after a restart: a hit streams from disk in large chunks.
//! let (cached, _policy) = manager.get("GET:https://example.com/big").await?.expect("stored");
//! assert_eq!(cached.headers()["cache-control"], "max-age=3600, public");
//! assert_eq!(cached.into_body().collect().await?.to_bytes(), vec![b'X'; 1 << 20]);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! [`StreamingManager::tee`] is the other way in: it answers at once and stores the body as
//! the caller reads it, committing the entry only if the body ends complete.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tracing` | yes | events (entries stored, damaged records removed, evictions, failures) through [`tracing`](https://docs.rs/tracing) |
//! | `axum` | yes | requests with axum's body are sent again when a revalidation's `304` selects nothing (see [`HttpCacheStreaming`]) |
//! | `metrics` | no | the cache's counters as [`metrics`](https://docs.rs/metrics) counters |
//! | `smol` | no | the store runs its file work on smol's thread pool, for services on the smol runtime |
//! | `object-store` | no | a shared tier in any [`object_store`](https://docs.rs/object_store) bucket (S3, GCS, Azure): `storage::ObjectStorage`, `ObjectStoreManager::new` |
//! | `http-cache` | no | [`StreamingManager`] implements http-cache's `StreamingCacheManager`, for http-cache-tower's streaming layer, http-cache-reqwest's `StreamingCache` and the rest of the http-cache family |
//! | `reqwest` | no | [`ReqwestCache`]: this crate's cache as a `reqwest-middleware` middleware, for reqwest clients |
//! | `proxy` | no | the `http-cache-proxy` binary: `cargo install http-cache-streaming --features proxy` |
//! | `s3` | no | `object-store` with object_store's S3 client (`object_store::aws`); builds a C library for its TLS, so kept apart |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, missing_debug_implementations)]

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod body;
mod cache;
mod cache_store;
mod collapse;
mod counter;
mod empty_body;
mod error;
mod eviction;
mod fields;
mod fleet;
mod format;
mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod head;
#[cfg(feature = "http-cache")]
mod http_cache_manager;
mod key;
mod layer;
mod log;
#[cfg(feature = "replay")]
#[doc(hidden)]
pub mod replay;
#[cfg(feature = "reqwest")]
mod reqwest_cache;
mod rt;
mod service;
pub mod storage;
mod store;
mod support;
#[cfg(test)]
mod testing;

pub use body::StreamingBody;
pub use cache::CacheMode;
pub use cache::is_valid_authority;
pub use cache::{
    CacheKey, CacheStats, EntryPage, HttpCacheOptions, HttpStreamingCache, NotStored,
    OriginRequests, StoredEntry, Ttl, strip_hop_by_hop,
};
pub use counter::Counter;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use eviction::Eviction;
pub use fleet::{FILL_PATH, FleetFills, PeerClient};
pub use format::tags::may_be_tag_field;
pub use future::ResponseFuture;
pub use layer::HttpCacheStreamingLayer;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest_cache::ReqwestCache;
pub use service::HttpCacheStreaming;
pub use storage::ObjectStoreManager;
pub use store::{StoreStats, StreamingManager, StreamingManagerBuilder};

/// The policy engine whose [`CachePolicy`](http_cache_semantics::CachePolicy) public
/// signatures take, re-exported so that its version always matches.
pub use http_cache_semantics;
/// The [`object_store`](https://docs.rs/object_store) crate the shared tier is built on,
/// re-exported so that its version always matches.
#[cfg(feature = "object-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store")))]
pub use object_store;
/// The URL type [`StreamingManager::put`] takes, re-exported so that its version always
/// matches.
pub use url;
