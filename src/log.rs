//! Events through `tracing` with the default `tracing` feature; nothing without it. The
//! arguments are not evaluated when it is off.

#[cfg(feature = "tracing")]
macro_rules! debug_event { ($($t:tt)*) => { ::tracing::debug!($($t)*) } }
#[cfg(feature = "tracing")]
macro_rules! info_event { ($($t:tt)*) => { ::tracing::info!($($t)*) } }
#[cfg(feature = "tracing")]
macro_rules! warn_event { ($($t:tt)*) => { ::tracing::warn!($($t)*) } }
#[cfg(feature = "tracing")]
macro_rules! error_event { ($($t:tt)*) => { ::tracing::error!($($t)*) } }

#[cfg(not(feature = "tracing"))]
macro_rules! debug_event {
    ($($t:tt)*) => {{}};
}
#[cfg(not(feature = "tracing"))]
macro_rules! info_event {
    ($($t:tt)*) => {{}};
}
#[cfg(not(feature = "tracing"))]
macro_rules! warn_event {
    ($($t:tt)*) => {{}};
}
#[cfg(not(feature = "tracing"))]
macro_rules! error_event {
    ($($t:tt)*) => {{}};
}

pub(crate) use {debug_event, error_event, info_event, warn_event};
