//! The writer pool: the threads that write and hash the bodies being stored, shared by every
//! store of the process.

use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind};

/// The threads that write and hash the bodies being stored, shared by every store of the
/// process. However many bodies are in flight (a thousand slow clients), they hold no thread
/// while they wait for bytes: each batch of bytes that arrived is one short job here. Reads
/// of hits run on the runtime's blocking pool and never queue behind these.
pub(crate) struct Pool {
    state: Mutex<PoolState>,
}

/// The writer pool's two queues of jobs and its idle threads.
#[derive(Default)]
struct PoolState {
    /// Writes and commits: clients, or the requests after them, wait for these.
    jobs: std::collections::VecDeque<Job>,
    /// Hashing, which only the commit waits for: taken when no write waits, so that the
    /// writes of a new body never queue behind the hashing of earlier ones.
    hashing: std::collections::VecDeque<Job>,
    /// Threads waiting for a job, the one that went idle last on top.
    idle: Vec<std::thread::Thread>,
}

/// Which queue of the pool a job joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Write,
    Hash,
}

impl PoolState {
    fn queue(&mut self, lane: Lane) -> &mut std::collections::VecDeque<Job> {
        match lane {
            Lane::Write => &mut self.jobs,
            Lane::Hash => &mut self.hashing,
        }
    }

    fn next(&mut self) -> Option<Job> {
        self.jobs.pop_front().or_else(|| self.hashing.pop_front())
    }
}

/// A piece of work for the writer pool.
type Job = Box<dyn FnOnce() + Send>;

/// Threads of the pool: one per core (at least two, for a write and a hash beside it). More
/// lose to fewer here: a body's jobs then wander between threads and cores, and the 1 GiB
/// miss of `benches/compare` reached its client 5 % slower with four threads on two cores.
fn pool_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
}

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` and wakes the thread that went idle last: a body's jobs, each started
    /// when the one before ended, keep to one thread and its core instead of going round.
    pub(crate) fn submit(&self, lane: Lane, job: Job) {
        let mut state = self.state();
        state.queue(lane).push_back(job);
        let wake = state.idle.pop();
        drop(state);
        if let Some(thread) = wake {
            thread.unpark();
        }
    }

    /// Queues the sequel of the job running on this thread, which takes it next unless other
    /// jobs wait: then it wakes another thread for them, as [`submit`](Self::submit) does.
    pub(crate) fn requeue(&self, lane: Lane, job: Job) {
        let mut state = self.state();
        state.queue(lane).push_back(job);
        let wake = if state.jobs.len() + state.hashing.len() > 1 {
            state.idle.pop()
        } else {
            None
        };
        drop(state);
        if let Some(thread) = wake {
            thread.unpark();
        }
    }

    /// A thread of the pool: takes jobs until the process ends.
    fn serve(&self) {
        let me = std::thread::current();
        loop {
            let mut state = self.state();
            let Some(job) = state.next() else {
                if !state.idle.iter().any(|t| t.id() == me.id()) {
                    state.idle.push(me.clone());
                }
                drop(state);
                std::thread::park();
                continue;
            };
            drop(state);
            // A job that panics fails its caller (its result is dropped unsent), not the
            // thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}

pub(crate) fn pool() -> Option<&'static Pool> {
    static POOL: std::sync::OnceLock<Option<&'static Pool>> = std::sync::OnceLock::new();
    *POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            state: Mutex::default(),
        }));
        let started = (0..pool_threads())
            .filter(|n| {
                std::thread::Builder::new()
                    .name(format!("http-cache-streaming-writer-{n}"))
                    .spawn(move || pool.serve())
                    .is_ok()
            })
            .count();
        (started > 0).then_some(pool)
    })
}

/// Runs `work` on the writers' pool and waits for it without holding a thread.
pub(crate) async fn on_pool<T, F>(work: F) -> Result<T, Error>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let failed = || Error::new(ErrorKind::Io).with_subject("a job of the store's writer threads");
    let (done, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(work());
    });
    pool().ok_or_else(failed)?.submit(Lane::Write, job);
    result.await.map_err(|_| failed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_write_queued_after_hashing_runs_before_it() {
        let pool = pool().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Every thread of the pool busy with a hashing job until released, and more queued.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let (started, running) = std::sync::mpsc::channel();
        for _ in 0..pool_threads() {
            let (wait, started) = (Arc::clone(&wait), started.clone());
            pool.submit(
                Lane::Hash,
                Box::new(move || {
                    started.send(()).unwrap();
                    let _ = wait.lock().unwrap().recv();
                }),
            );
        }
        for _ in 0..pool_threads() {
            running.recv().unwrap();
        }
        for n in 0..5 {
            let order = Arc::clone(&order);
            pool.submit(
                Lane::Hash,
                Box::new(move || order.lock().unwrap().push(format!("hash {n}"))),
            );
        }
        let (written, done) = std::sync::mpsc::channel();
        let write_order = Arc::clone(&order);
        pool.submit(
            Lane::Write,
            Box::new(move || {
                write_order.lock().unwrap().push("write".to_string());
                written.send(()).unwrap();
            }),
        );
        // One thread comes free: it takes the write, queued last.
        release.send(()).unwrap();
        done.recv().unwrap();
        drop(release);
        assert_eq!(
            order.lock().unwrap().first().map(String::as_str),
            Some("write")
        );
    }

    #[test]
    fn the_pool_runs_jobs_and_survives_a_panicking_one() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let panicked = on_pool(|| -> u8 { panic!("a job that panics") }).await;
            assert!(panicked.is_err());
            let jobs: Vec<_> = (0..64u64).map(|n| on_pool(move || n * 2)).collect();
            for (n, job) in jobs.into_iter().enumerate() {
                assert_eq!(job.await.unwrap(), n as u64 * 2);
            }
        });
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |t| t.count());
        assert!(threads < 64, "{threads} threads for 64 jobs");
    }
}
