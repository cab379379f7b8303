//! Byte-range locks (fcntl, and flock emulated as whole-file fcntl locks, as NFS does), held
//! in metad so they hold across every mount of the namespace.
//!
//! A lock belongs to an owner: a client connection plus the owner id the kernel gave (the
//! process's file table for fcntl locks, the open file for flock). Locks live in memory: a
//! client that disconnects loses its locks, and so does everyone when metad restarts.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::proto::{Ino, MetaError};
use crate::store::Holder;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
}

/// A held lock, as F_GETLK reports it. `end` is inclusive (`u64::MAX`: to end of file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

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
    /// Requests waiting for a lock, per connection.
    waiting: HashMap<Holder, usize>,
    /// Connections that ended while some of their requests were waiting: those give up.
    /// An entry goes when its last waiter does, so an address reused by a later connection
    /// is not mistaken for the departed one.
    departed: HashSet<Holder>,
}

#[derive(Default)]
pub struct LockTable {
    table: Mutex<Table>,
    changed: Condvar,
}

impl LockTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// F_SETLK / F_SETLKW: takes the lock, replacing this owner's locks in the range. With
    /// `wait`, blocks until no other owner's lock is in the way; without, fails with
    /// `WouldBlock`.
    pub fn set(
        &self,
        ino: Ino,
        holder: Holder,
        owner: u64,
        held: HeldLock,
        wait: bool,
    ) -> Result<(), MetaError> {
        if held.start > held.end {
            return Err(MetaError::Invalid("lock range ends before it starts".into()));
        }
        let owner = Owner { holder, id: owner };
        let mut table = self.lock();
        if conflict(&table, ino, owner, held.start, held.end, held.kind).is_some() {
            if !wait {
                return Err(MetaError::WouldBlock);
            }
            *table.waiting.entry(holder).or_default() += 1;
            let mut departed = false;
            while conflict(&table, ino, owner, held.start, held.end, held.kind).is_some() {
                table = self.changed.wait(table).unwrap_or_else(|poisoned| poisoned.into_inner());
                departed = table.departed.contains(&holder);
                if departed {
                    break;
                }
            }
            let waiting = table.waiting.get_mut(&holder).expect("counted above");
            *waiting -= 1;
            if *waiting == 0 {
                table.waiting.remove(&holder);
                table.departed.remove(&holder);
            }
            if departed {
                return Err(MetaError::Invalid("client disconnected while waiting".into()));
            }
        }
        remove_range(&mut table, ino, owner, held.start, held.end);
        table.by_ino.entry(ino).or_default().push(Lock { owner, held });
        Ok(())
    }

    /// F_UNLCK of `[start, end]` by one owner.
    pub fn unlock(&self, ino: Ino, holder: Holder, owner: u64, start: u64, end: u64) {
        remove_range(&mut self.lock(), ino, Owner { holder, id: owner }, start, end);
        self.changed.notify_all();
    }

    /// Drops every lock of one owner on `ino` (its process closed the file).
    pub fn release_owner(&self, ino: Ino, holder: Holder, owner: u64) {
        self.unlock(ino, holder, owner, 0, u64::MAX);
    }

    /// Drops every lock of a connection that ended, and wakes its waiters to give up.
    pub fn release_holder(&self, holder: Holder) {
        let mut table = self.lock();
        table.by_ino.retain(|_, locks| {
            locks.retain(|l| l.owner.holder != holder);
            !locks.is_empty()
        });
        if table.waiting.contains_key(&holder) {
            table.departed.insert(holder);
        }
        self.changed.notify_all();
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
fn remove_range(table: &mut Table, ino: Ino, owner: Owner, start: u64, end: u64) {
    let Some(locks) = table.by_ino.get_mut(&ino) else { return };
    let mut kept = Vec::with_capacity(locks.len());
    for lock in locks.drain(..) {
        if lock.owner != owner || !lock.overlaps(start, end) {
            kept.push(lock);
            continue;
        }
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
        locks.set(1, a, 7, held(0, 99, LockKind::Read), false).unwrap();
        // Readers share; a writer is refused, and told who is in the way.
        locks.set(1, b, 9, held(50, 60, LockKind::Read), false).unwrap();
        assert_eq!(
            locks.set(1, b, 9, held(0, 10, LockKind::Write), false),
            Err(MetaError::WouldBlock)
        );
        assert_eq!(locks.test(1, b, 9, 0, 10, LockKind::Write), Some(held(0, 99, LockKind::Read)));
        // The same owner in another connection is another owner.
        assert!(locks.test(1, b, 7, 0, 10, LockKind::Write).is_some());
        // Unlocking the middle splits the lock.
        locks.unlock(1, a, 7, 10, 89);
        assert!(locks.test(1, b, 9, 10, 49, LockKind::Write).is_none());
        assert!(locks.test(1, b, 9, 95, 95, LockKind::Write).is_some());
        // An owner upgrades its own lock without conflicting with itself.
        locks.set(1, a, 7, held(0, 5, LockKind::Write), false).unwrap();
        locks.release_owner(1, a, 7);
        assert!(locks.test(1, b, 9, 0, u64::MAX, LockKind::Read).is_none());
        locks.release_holder(b);
        assert!(locks.test(1, a, 7, 0, u64::MAX, LockKind::Write).is_none());
    }

    #[test]
    fn waiters_wake_on_unlock_and_give_up_on_disconnect() {
        let locks = Arc::new(LockTable::default());
        let (a, b): (Holder, Holder) = (1, 2);
        locks.set(1, a, 1, held(0, u64::MAX, LockKind::Write), false).unwrap();
        let waiter = {
            let locks = locks.clone();
            std::thread::spawn(move || locks.set(1, b, 2, held(0, 0, LockKind::Write), true))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        locks.release_owner(1, a, 1);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        let gone = {
            let locks = locks.clone();
            std::thread::spawn(move || locks.set(1, a, 3, held(0, 0, LockKind::Read), true))
        };
        std::thread::sleep(Duration::from_millis(50));
        locks.release_holder(a);
        assert!(gone.join().unwrap().is_err());
    }
}
