//! The passes of a background worker that runs a pass, pauses and runs again (chunkd's
//! scrub, metad's garbage collection), and requests for a pass now (`shardfs scrub`, `gc`).

use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

/// A worker's passes: how many completed, whether one runs, and a wake-up for a pass now.
#[derive(Debug, Default)]
pub struct Passes {
    completed: AtomicU64,
    running: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Passes {
    /// Passes completed since start.
    pub fn completed(&self) -> u64 {
        self.completed.load(SeqCst)
    }

    /// Runs one pass of `work`, counted.
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> T {
        self.running.store(true, SeqCst);
        let outcome = work.await;
        // Counted before `running` clears, so a reader never misses a pass in progress.
        self.completed.fetch_add(1, SeqCst);
        self.running.store(false, SeqCst);
        outcome
    }

    /// The pause between passes: `interval`, or less if a pass is requested.
    pub async fn pause(&self, interval: Duration) {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = self.wake.notified() => {}
        }
    }

    /// Asks for a pass now; returns the count of completed passes at which one that began
    /// after this call has ended.
    pub fn request(&self) -> u64 {
        let (completed, running) = (self.completed(), self.running.load(SeqCst));
        // A worker mid-pass keeps the permit and runs once more right after.
        self.wake.notify_one();
        completed + 1 + u64::from(running)
    }
}
