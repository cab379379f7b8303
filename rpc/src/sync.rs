//! The workspace's conventions for locks and blocking work, the only place that calls what
//! `clippy.toml` disallows elsewhere.
//!
//! - **A poisoned lock is taken anyway** ([`Lock`], [`ReadWrite`]). A panic while a lock was
//!   held is a bug, which the panic has already reported; the state such a lock guards is
//!   whole between the statements that change it, and refusing every later request that
//!   needs it would turn one failed request into a daemon or a mount that serves nothing.
//! - **Blocking work never runs on an async thread as it is.** SQLite, file I/O, hashing and
//!   erasure coding go to tokio's blocking pool with [`blocking`]. A request handler whose
//!   task does nothing else meanwhile may run it on its own thread with
//!   [`blocking_in_place`] instead (two thread wake-ups less per request, measured in
//!   `docs/performance.md`). One exception, measured there too: a metad replica's log
//!   database, whose statements only reach the page cache, runs them in openraft's tasks.
//! - **No lock is held while waiting for something slow.** A metad replica's change waits
//!   for the group's log, whose tasks run on the async threads; a lock held across it, which
//!   an async thread then blocks on, stalls the log itself (`docs/architecture.md`,
//!   Replication). Mark what is being changed, let the lock go, then change.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::runtime::{Handle, RuntimeFlavor};

/// [`Mutex::lock`], taking a poisoned lock anyway.
pub trait Lock<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    #[allow(clippy::disallowed_methods)]
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`], taking a poisoned lock anyway.
pub trait ReadWrite<T: ?Sized> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> ReadWrite<T> for RwLock<T> {
    #[allow(clippy::disallowed_methods)]
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    #[allow(clippy::disallowed_methods)]
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Blocking work that ended in a panic (or was cancelled with its runtime).
#[derive(Debug, thiserror::Error)]
#[error("a blocking task failed: {0}")]
pub struct BlockingFailed(String);

/// Runs blocking `work` on tokio's blocking pool.
#[allow(clippy::disallowed_methods)]
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlockingFailed> {
    tokio::task::spawn_blocking(work).await.map_err(|e| BlockingFailed(e.to_string()))
}

/// Runs blocking `work` on this task's own thread, the runtime moving its other tasks to
/// other threads meanwhile; on a single-threaded runtime, which cannot, on the blocking
/// pool. Only for a task that does nothing else while `work` runs (a request's handler):
/// other futures of the same task would stall.
#[allow(clippy::disallowed_methods)]
pub async fn blocking_in_place<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlockingFailed> {
    match Handle::current().runtime_flavor() {
        RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(work)),
        _ => blocking(work).await,
    }
}
