//! Which files clients hold open, so a file unlinked while open lives on until its last
//! close, as POSIX requires.
//!
//! Kept in memory per client session: when a session ends, its opens end with it. After
//! a metad restart nothing counts as open, and [`Store::open`](super::Store::open) reclaims the
//! unlinked-but-open inodes the previous run left behind.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::proto::Ino;

/// Who holds a file open (or a lock, or a write intent): a client session
/// (`crate::sessions`).
pub type Holder = u64;

#[derive(Default)]
pub struct OpenFiles {
    by_ino: Mutex<HashMap<Ino, HashMap<Holder, u32>>>,
}

impl OpenFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, HashMap<Holder, u32>>> {
        self.by_ino.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn add(&self, ino: Ino, holder: Holder) {
        *self.lock().entry(ino).or_default().entry(holder).or_default() += 1;
    }

    /// Drops one open of `ino` by `holder`; returns whether anyone still has it open.
    pub fn remove(&self, ino: Ino, holder: Holder) -> bool {
        let mut by_ino = self.lock();
        let Some(holders) = by_ino.get_mut(&ino) else {
            return false;
        };
        if let Some(count) = holders.get_mut(&holder) {
            *count -= 1;
            if *count == 0 {
                holders.remove(&holder);
            }
        }
        if holders.is_empty() {
            by_ino.remove(&ino);
            return false;
        }
        true
    }

    /// Drops every open of `holder`; returns the inodes nobody has open any more.
    pub fn remove_holder(&self, holder: Holder) -> Vec<Ino> {
        let mut by_ino = self.lock();
        let mut closed = Vec::new();
        by_ino.retain(|ino, holders| {
            holders.remove(&holder);
            if holders.is_empty() {
                closed.push(*ino);
            }
            !holders.is_empty()
        });
        closed
    }

    pub fn is_open(&self, ino: Ino) -> bool {
        self.lock().contains_key(&ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_holder() {
        let open = OpenFiles::default();
        let (a, b): (Holder, Holder) = (1, 2);
        open.add(7, a);
        open.add(7, a);
        open.add(7, b);
        open.add(8, b);
        assert!(open.remove(7, a));
        assert!(open.remove(7, a));
        let mut closed = open.remove_holder(b);
        closed.sort();
        assert_eq!(closed, [7, 8]);
        assert!(!open.is_open(7) && !open.is_open(8));
        assert!(!open.remove(9, a));
    }
}
