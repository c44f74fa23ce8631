//! Tests only: `tests/` runs http-cache-streaming's store under the http-cache family's
//! layers.
