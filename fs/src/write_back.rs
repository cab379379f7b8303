//! Bookkeeping of the commits a close leaves to the background.
//!
//! The last close of a file written under its write lease returns before what it buffered is
//! stored and committed, like a close on a local filesystem returns before writeback. The
//! commit runs on a background task (`Fs::commit_closed` in `core.rs`), several at a time,
//! so the chunk puts of many small files overlap instead of queueing behind each close. The
//! lease keeps this invisible to other mounts: a read elsewhere recalls it, and the recall
//! commits first. What this module bounds and tracks:
//! - the bytes waiting in closed files, at most a budget; past it closes commit themselves,
//!   so a commit that keeps failing surfaces at `close` soon;
//! - the commits under way, so an unmount waits for them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// Background commits running at once.
const PARALLEL: usize = 16;

/// First wait before a failed background commit is tried again; doubles up to `MAX_RETRY`.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const MAX_RETRY: Duration = Duration::from_secs(30);

pub struct WriteBack {
    budget: usize,
    bytes: AtomicUsize,
    pending: AtomicUsize,
    /// Signalled when `pending` drops to zero, and when retries should stop waiting.
    changed: Notify,
    closing: AtomicBool,
    slots: Semaphore,
}

impl WriteBack {
    /// Closed files may hold `budget` buffered bytes in all.
    pub fn new(budget: usize) -> WriteBack {
        WriteBack {
            budget,
            bytes: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            changed: Notify::new(),
            closing: AtomicBool::new(false),
            slots: Semaphore::new(PARALLEL),
        }
    }

    /// Whether `bytes` more fit in the budget (without taking them).
    pub fn fits(&self, bytes: usize) -> bool {
        !self.closing.load(Ordering::Acquire)
            && self.bytes.load(Ordering::Acquire) + bytes <= self.budget
    }

    /// Takes `bytes` of the budget for one background commit, if they fit.
    pub fn reserve(&self, bytes: usize) -> bool {
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        let reserved = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + bytes <= self.budget).then_some(used + bytes)
        });
        if reserved.is_ok() {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
        reserved.is_ok()
    }

    /// A slot to commit in; at most `PARALLEL` are handed out at once.
    pub async fn slot(&self) -> SemaphorePermit<'_> {
        self.slots.acquire().await.expect("the semaphore is never closed")
    }

    /// Ends a background commit that reserved `bytes`.
    pub fn done(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.notify_waiters();
        }
    }

    /// Whether the mount is going away: a failed commit is then not tried again.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Waits `delay` before a retry, or less if the mount starts closing.
    pub async fn pause(&self, delay: Duration) {
        let woken = self.changed.notified();
        if !self.closing() {
            let _ = tokio::time::timeout(delay, woken).await;
        }
    }

    /// Stops new deferrals and retries, then waits for the commits under way, at most
    /// `limit`. Returns how many were still running.
    pub async fn drain(&self, limit: Duration) -> usize {
        self.closing.store(true, Ordering::Release);
        self.changed.notify_waiters();
        let all_done = async {
            loop {
                let woken = self.changed.notified();
                if self.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                woken.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_done).await;
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_bounds_and_drain_waits_for_the_last_commit() {
        let wb = std::sync::Arc::new(WriteBack::new(100));
        assert!(wb.reserve(60));
        assert!(!wb.fits(50));
        assert!(!wb.reserve(50), "over budget");
        assert!(wb.reserve(40));
        let finisher = {
            let wb = wb.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                wb.done(60);
                wb.done(40);
            })
        };
        assert_eq!(wb.drain(Duration::from_secs(5)).await, 0);
        finisher.await.unwrap();
        assert!(!wb.reserve(1), "no deferral once closing");
        assert_eq!(wb.drain(Duration::from_millis(10)).await, 0);
    }
}
