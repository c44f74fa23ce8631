//! Events through `tracing` with the default `tracing` feature; nothing without it. The
//! arguments are not evaluated when it is off, only type-checked.

#[cfg(feature = "tracing")]
macro_rules! debug_event { ($($t:tt)*) => { ::tracing::debug!($($t)*) } }
#[cfg(feature = "tracing")]
macro_rules! info_event { ($($t:tt)*) => { ::tracing::info!($($t)*) } }
#[cfg(feature = "tracing")]
macro_rules! warn_event { ($($t:tt)*) => { ::tracing::warn!($($t)*) } }
#[cfg(feature = "tracing")]
macro_rules! error_event { ($($t:tt)*) => { ::tracing::error!($($t)*) } }

// Without `tracing`, an event's fields and message are type-checked and count as used, in a
// branch that never runs: nothing is evaluated, and no value kept only to be logged goes
// unused.
#[cfg(not(feature = "tracing"))]
macro_rules! consume_event {
    () => {};
    ($name:ident = %$value:expr $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::log::consume_event!($($rest)*);)?
    };
    ($name:ident = ?$value:expr $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::log::consume_event!($($rest)*);)?
    };
    ($name:ident = $value:expr $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::log::consume_event!($($rest)*);)?
    };
    (%$name:ident $(, $($rest:tt)*)?) => {
        let _ = &$name;
        $($crate::log::consume_event!($($rest)*);)?
    };
    (?$name:ident $(, $($rest:tt)*)?) => {
        let _ = &$name;
        $($crate::log::consume_event!($($rest)*);)?
    };
    ($name:ident $(, $($rest:tt)*)?) => {
        let _ = &$name;
        $($crate::log::consume_event!($($rest)*);)?
    };
    ($message:literal $(, $argument:expr)* $(,)?) => {
        let _ = format_args!($message $(, $argument)*);
    };
}

#[cfg(not(feature = "tracing"))]
macro_rules! debug_event {
    ($($t:tt)*) => {{
        if false {
            $crate::log::consume_event!($($t)*);
        }
    }};
}
#[cfg(not(feature = "tracing"))]
macro_rules! info_event {
    ($($t:tt)*) => {{
        if false {
            $crate::log::consume_event!($($t)*);
        }
    }};
}
#[cfg(not(feature = "tracing"))]
macro_rules! warn_event {
    ($($t:tt)*) => {{
        if false {
            $crate::log::consume_event!($($t)*);
        }
    }};
}
#[cfg(not(feature = "tracing"))]
macro_rules! error_event {
    ($($t:tt)*) => {{
        if false {
            $crate::log::consume_event!($($t)*);
        }
    }};
}

#[cfg(not(feature = "tracing"))]
pub(crate) use consume_event;
pub(crate) use {debug_event, error_event, info_event, warn_event};
