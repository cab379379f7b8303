//! Byte-range locks (fcntl, and flock emulated as whole-file fcntl locks, as NFS does), held
//! in metad so they hold across every mount of the namespace.
//!
//! A lock belongs to an owner: a client session plus the owner id the kernel gave (the
//! process's file table for fcntl locks, the open file for flock). Locks live in memory and
//! every change is recorded in the database (`store/holdings.rs`), so they outlive a metad
//! restart: a mount's session resumes with its locks. A session that ends (a tool's
//! connection closes, a mount's session expires) loses its locks.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::store::{Holder, LockRow, Store};
use shardfs_meta_api::proto::{HeldLock, Ino, LockKind, MetaError};
use shardfs_rpc::sync::Lock as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Owner {
    holder: Holder,
    id: u64,
}

#[derive(Clone, Copy, Debug)]
struct Lock {
    owner: Owner,
    held: HeldLock,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.held.start <= end && start <= self.held.end
    }
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<Ino, Vec<Lock>>,
    /// Counts the changes that may let a waiting request through (see
    /// [`LockTable::changed_since`]).
    version: u64,
    /// The number the next record takes: records are made in this order.
    next_record: u64,
}

#[derive(Default)]
pub struct LockTable {
    table: Mutex<Table>,
    /// Woken when locks are let go. Requests that wait for a lock (F_SETLKW) wait here, as
    /// tasks, not threads: a thousand of them cost a thousand small futures.
    released: tokio::sync::Notify,
    /// Where each change is recorded; `None` in tests of the table alone.
    store: Option<std::sync::Arc<Store>>,
    /// The number of the record whose turn it is (see [`Table::next_record`]): records are
    /// made in the order of the changes, with neither the table nor this locked meanwhile.
    recording: Mutex<u64>,
    /// Signalled when a record is made, for the next in turn.
    recorded: Condvar,
}

/// A record's turn, passed on to the next when it ends (however it ends).
struct Turn<'a>(&'a LockTable);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.recording.locked() += 1;
        self.0.recorded.notify_all();
    }
}

impl LockTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.locked()
    }

    /// A table recording every change in `store`, holding `locks` (the previous run's).
    pub fn recorded(store: std::sync::Arc<Store>, locks: Vec<LockRow>) -> LockTable {
        let mut table = Table::default();
        for row in locks {
            let owner = Owner { holder: row.holder, id: row.owner };
            table.by_ino.entry(row.ino).or_default().push(Lock { owner, held: row.held });
        }
        LockTable {
            table: Mutex::new(table),
            released: Default::default(),
            store: Some(store),
            recording: Mutex::default(),
            recorded: Condvar::new(),
        }
    }

    /// Records the locks now held on `ino`, letting the table go: records are made in the
    /// order of the changes, but with nothing locked while one waits its turn or is made (on
    /// a replica a record waits for the group's log, whose tasks take the table to answer
    /// lock waiters: the table held meanwhile stalled the log, and every lock request with
    /// it). A failure (metad's disk full) is logged: the lock holds meanwhile, but would not
    /// outlive a restart.
    fn record(&self, mut table: MutexGuard<'_, Table>, ino: Ino) {
        let Some(store) = &self.store else { return };
        let rows: Vec<LockRow> = table
            .by_ino
            .get(&ino)
            .into_iter()
            .flatten()
            .map(|l| LockRow { ino, holder: l.owner.holder, owner: l.owner.id, held: l.held })
            .collect();
        let number = table.next_record;
        table.next_record += 1;
        drop(table);
        let mut recording = self.recording.locked();
        while *recording != number {
            recording = self.recorded.wait(recording).unwrap_or_else(PoisonError::into_inner);
        }
        drop(recording);
        let _turn = Turn(self);
        if let Err(e) = store.save_locks(ino, &rows) {
            tracing::warn!(ino, "cannot record locks: {e}");
        }
    }

    /// F_GETLK: a lock of another owner that would block this one, if any.
    pub fn test(
        &self,
        ino: Ino,
        holder: Holder,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> Option<HeldLock> {
        conflict(&self.lock(), ino, Owner { holder, id: owner }, start, end, kind)
    }

    /// F_SETLK: takes the lock, replacing this owner's locks in the range, unless another
    /// owner's lock is in the way (`WouldBlock`). F_SETLKW tries again each time
    /// [`LockTable::changed_since`] the [`LockTable::version`] it read before trying.
    pub fn set(
        &self,
        ino: Ino,
        holder: Holder,
        owner: u64,
        held: HeldLock,
    ) -> Result<(), MetaError> {
        if held.start > held.end {
            return Err(MetaError::Invalid("lock range ends before it starts".into()));
        }
        let owner = Owner { holder, id: owner };
        let mut table = self.lock();
        if conflict(&table, ino, owner, held.start, held.end, held.kind).is_some() {
            return Err(MetaError::WouldBlock);
        }
        remove_range(&mut table, ino, owner, held.start, held.end);
        table.by_ino.entry(ino).or_default().push(Lock { owner, held });
        self.record(table, ino);
        Ok(())
    }

    /// How many times locks were let go so far.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Returns once locks were let go after [`LockTable::version`] said `version`.
    pub async fn changed_since(&self, version: u64) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.version() != version {
                return;
            }
            released.await;
        }
    }

    /// F_UNLCK of `[start, end]` by one owner.
    pub fn unlock(&self, ino: Ino, holder: Holder, owner: u64, start: u64, end: u64) {
        let mut table = self.lock();
        if remove_range(&mut table, ino, Owner { holder, id: owner }, start, end) {
            // A waiting request that takes the lock at once records after this.
            table.version += 1;
            self.record(table, ino);
            self.released.notify_waiters();
        }
    }

    /// Drops every lock of one owner on `ino` (its process closed the file).
    pub fn release_owner(&self, ino: Ino, holder: Holder, owner: u64) {
        self.unlock(ino, holder, owner, 0, u64::MAX);
    }

    /// Drops every lock of a session that ended (its records go with the session, see
    /// `Store::end_session`).
    pub fn release_holder(&self, holder: Holder) {
        let mut table = self.lock();
        table.by_ino.retain(|_, locks| {
            locks.retain(|l| l.owner.holder != holder);
            !locks.is_empty()
        });
        table.version += 1;
        drop(table);
        self.released.notify_waiters();
    }
}

fn conflict(
    table: &Table,
    ino: Ino,
    owner: Owner,
    start: u64,
    end: u64,
    kind: LockKind,
) -> Option<HeldLock> {
    table.by_ino.get(&ino)?.iter().find_map(|l| {
        let blocks = l.owner != owner
            && l.overlaps(start, end)
            && (kind == LockKind::Write || l.held.kind == LockKind::Write);
        blocks.then_some(l.held)
    })
}

/// Removes `[start, end]` from one owner's locks on `ino`, splitting locks that straddle it.
/// Returns whether any lock changed.
fn remove_range(table: &mut Table, ino: Ino, owner: Owner, start: u64, end: u64) -> bool {
    let Some(locks) = table.by_ino.get_mut(&ino) else { return false };
    let mut kept = Vec::with_capacity(locks.len());
    let mut changed = false;
    for lock in locks.drain(..) {
        if lock.owner != owner || !lock.overlaps(start, end) {
            kept.push(lock);
            continue;
        }
        changed = true;
        if lock.held.start < start {
            kept.push(Lock { held: HeldLock { end: start - 1, ..lock.held }, ..lock });
        }
        if lock.held.end > end {
            kept.push(Lock { held: HeldLock { start: end + 1, ..lock.held }, ..lock });
        }
    }
    if kept.is_empty() {
        table.by_ino.remove(&ino);
    } else {
        *locks = kept;
    }
    changed
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn held(start: u64, end: u64, kind: LockKind) -> HeldLock {
        HeldLock { start, end, kind, pid: 1 }
    }

    #[test]
    fn conflicts_splits_and_owners() {
        let locks = LockTable::default();
        let (a, b): (Holder, Holder) = (1, 2);
        locks.set(1, a, 7, held(0, 99, LockKind::Read)).unwrap();
        // Readers share; a writer is refused, and told who is in the way.
        locks.set(1, b, 9, held(50, 60, LockKind::Read)).unwrap();
        assert_eq!(locks.set(1, b, 9, held(0, 10, LockKind::Write)), Err(MetaError::WouldBlock));
        assert_eq!(locks.test(1, b, 9, 0, 10, LockKind::Write), Some(held(0, 99, LockKind::Read)));
        // The same owner in another connection is another owner.
        assert!(locks.test(1, b, 7, 0, 10, LockKind::Write).is_some());
        // Unlocking the middle splits the lock.
        locks.unlock(1, a, 7, 10, 89);
        assert!(locks.test(1, b, 9, 10, 49, LockKind::Write).is_none());
        assert!(locks.test(1, b, 9, 95, 95, LockKind::Write).is_some());
        // An owner upgrades its own lock without conflicting with itself.
        locks.set(1, a, 7, held(0, 5, LockKind::Write)).unwrap();
        locks.release_owner(1, a, 7);
        assert!(locks.test(1, b, 9, 0, u64::MAX, LockKind::Read).is_none());
        locks.release_holder(b);
        assert!(locks.test(1, a, 7, 0, u64::MAX, LockKind::Write).is_none());
    }

    #[tokio::test]
    async fn waiters_wake_when_locks_are_let_go() {
        let locks = Arc::new(LockTable::default());
        let (a, b): (Holder, Holder) = (1, 2);
        locks.set(1, a, 1, held(0, u64::MAX, LockKind::Write)).unwrap();
        let version = locks.version();
        assert_eq!(locks.set(1, b, 2, held(0, 0, LockKind::Write)), Err(MetaError::WouldBlock));
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move { locks.changed_since(version).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        locks.release_owner(1, a, 1);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        locks.set(1, b, 2, held(0, 0, LockKind::Write)).unwrap();
        // A change before the wait began is not missed.
        let version = locks.version();
        locks.release_holder(b);
        tokio::time::timeout(Duration::from_secs(5), locks.changed_since(version)).await.unwrap();
    }
}
