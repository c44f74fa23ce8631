//! The store's runtime seam: blocking file work and detached tasks run on Tokio when called
//! from within a Tokio runtime, and, with the `smol` feature, on smol's thread pool and
//! global executor otherwise. Everything else the store uses (channels, `OnceCell`,
//! semaphores) works on any runtime.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, ErrorKind};

/// Blocking work running on a thread pool.
pub(crate) enum Blocking<T> {
    Tokio(tokio::task::JoinHandle<T>),
    #[cfg(feature = "smol")]
    Smol(blocking::Task<T>),
}

impl<T> Future for Blocking<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Blocking::Tokio(handle) => Pin::new(handle)
                .poll(cx)
                .map_err(|e| Error::new(ErrorKind::Io).with_source(e)),
            #[cfg(feature = "smol")]
            Blocking::Smol(task) => Pin::new(task).poll(cx).map(Ok),
        }
    }
}

impl<T> Blocking<T> {
    /// Gives up on the work: its result is not wanted.
    pub(crate) fn abort(self) {
        match self {
            Blocking::Tokio(handle) => handle.abort(),
            #[cfg(feature = "smol")]
            Blocking::Smol(task) => drop(task),
        }
    }
}

#[cfg(not(feature = "smol"))]
fn no_runtime() -> Error {
    Error::new(ErrorKind::Io)
        .with_subject("no Tokio runtime to run file work on (the `smol` feature adds smol)")
}

/// Whether work can be spawned from here.
pub(crate) fn available() -> bool {
    tokio::runtime::Handle::try_current().is_ok() || cfg!(feature = "smol")
}

/// Runs `work` on a thread pool for blocking work.
pub(crate) fn spawn_blocking<T, F>(work: F) -> Result<Blocking<T>, Error>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        return Ok(Blocking::Tokio(handle.spawn_blocking(work)));
    }
    #[cfg(feature = "smol")]
    {
        Ok(Blocking::Smol(blocking::unblock(work)))
    }
    #[cfg(not(feature = "smol"))]
    {
        drop(work);
        Err(no_runtime())
    }
}

/// Runs `task` to its end on its own; `false` when there is no runtime to run it on.
pub(crate) fn spawn<F>(task: F) -> bool
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(task);
        return true;
    }
    #[cfg(feature = "smol")]
    {
        smol::spawn(task).detach();
        true
    }
    #[cfg(not(feature = "smol"))]
    {
        drop(task);
        false
    }
}
