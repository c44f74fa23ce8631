//! The crate's runtime seam: blocking file work and detached tasks run on Tokio when called
//! from within a Tokio runtime, and, with the `smol` feature, on smol's thread pool and
//! global executor otherwise. Everything else the crate uses (channels, `OnceCell`,
//! semaphores) works on any runtime. The writer pool ([`pool`]), the threads that write and
//! hash bodies being stored, is here too: it depends on nothing of the store.

pub(crate) mod pool;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, ErrorKind};

/// Locks state that is updated in single statements, which a panic elsewhere leaves usable:
/// the one lock helper of the crate.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs blocking file work on the runtime's blocking pool.
pub(crate) async fn blocking<T, F>(work: F) -> crate::error::Result<T>
where
    F: FnOnce() -> crate::error::Result<T> + Send + 'static,
    T: Send + 'static,
{
    spawn_blocking(work)?.await?
}

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

/// A future that is ready at `deadline`, on any runtime: one thread of the process (started
/// on first use) keeps the deadlines waited for and wakes their tasks.
pub(crate) fn sleep_until(deadline: std::time::Instant) -> Sleep {
    Sleep {
        deadline,
        registered: None,
    }
}

/// See [`sleep_until`].
#[derive(Debug)]
pub(crate) struct Sleep {
    deadline: std::time::Instant,
    /// The task the timers wake at the deadline, once registered.
    registered: Option<std::task::Waker>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::time::Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        match timers() {
            Some(timers) => timers.wake_at(self.deadline, cx.waker().clone()),
            // No thread for the timers: ready now, which callers treat as "waited enough".
            None => return Poll::Ready(()),
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Deadlines and the tasks to wake at them, the earliest first.
struct Timers {
    due: std::sync::Mutex<std::collections::BinaryHeap<Due>>,
    changed: std::sync::Condvar,
}

/// A timer's deadline and the task to wake at it.
struct Due {
    at: std::time::Instant,
    waker: std::task::Waker,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed, so that the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

impl Timers {
    fn wake_at(&self, at: std::time::Instant, waker: std::task::Waker) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = due.peek().is_none_or(|first| at < first.at);
        due.push(Due { at, waker });
        drop(due);
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = std::time::Instant::now();
            while due.peek().is_some_and(|first| first.at <= now) {
                if let Some(first) = due.pop() {
                    first.waker.wake();
                }
            }
            due = match due.peek().map(|first| first.at - now) {
                Some(wait) => {
                    let waited = self.changed.wait_timeout(due, wait);
                    waited.unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.changed.wait(due).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

fn timers() -> Option<&'static Timers> {
    static TIMERS: std::sync::OnceLock<Option<&'static Timers>> = std::sync::OnceLock::new();
    *TIMERS.get_or_init(|| {
        let timers: &'static Timers = Box::leak(Box::new(Timers {
            due: std::sync::Mutex::default(),
            changed: std::sync::Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("http-cache-streaming-timers".into())
            .spawn(move || timers.run())
            .ok()
            .map(|_| timers)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_ends_at_its_deadline_without_a_runtime_of_its_own() {
        let started = std::time::Instant::now();
        let sleeps = [300, 100, 200].map(|ms| {
            std::thread::spawn(move || {
                let deadline = started + std::time::Duration::from_millis(ms);
                block_on(sleep_until(deadline));
                std::time::Instant::now() >= deadline
            })
        });
        for sleep in sleeps {
            assert!(sleep.join().unwrap(), "woken before its deadline");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Polls `future` on this thread until it is ready, parking between wakes.
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            std::thread::park();
        }
    }
}
