//! Which files clients hold open, so a file unlinked while open lives on until its last
//! close, as POSIX requires.
//!
//! The database decides: each open and close is a change (`Mutation::Open`, `Close`) to its
//! `open_files` table, and the deletion of a nameless inode skips any with a row there, so
//! the two are ordered like any other changes and a mount's opens outlive a metad restart.
//! When a session ends, its opens end with it, and [`Store::open`](super::Store::open)
//! reclaims the unlinked inodes nobody holds open any more. The table here, in memory,
//! counts each session's opens for its limit and answers "is it open" without a query.
//!
//! A file that loses its last name while nobody has it open also lives on, for [`LINGER`]:
//! another mount may have looked the name up just before it went (a rename replacing it,
//! say) and be about to open what it found. On a local disk that open succeeds with the
//! old file, because the path walk already holds it; here it finds the inode still there.
//! So does a nameless file at its last close, or when the session that had it open ends,
//! while some session holds a lease on it (see [`Store::lingered`](super::Store::lingered)).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardfs_meta_api::proto::{Ino, MetaError};
use shardfs_rpc::sync::Lock as _;

/// Who holds a file open (or a lock, or a write intent): a client session
/// (`crate::sessions`).
pub type Holder = u64;

#[derive(Default)]
pub struct OpenFiles {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Opens of each inode by each holder.
    by_ino: HashMap<Ino, HashMap<Holder, u64>>,
    /// Opens each holder has, of all inodes.
    per_holder: HashMap<Holder, u64>,
    /// Nameless inodes kept until the instant given, for opens already on their way.
    lingering: HashMap<Ino, Instant>,
}

/// How long a file that lost its last name stays openable by opens already on their way:
/// far longer than a lookup and the open that follows it take.
pub const LINGER: Duration = Duration::from_secs(2);

impl OpenFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.locked()
    }

    /// Records one open of `ino` by `holder`, unless `holder` already has `limit` opens.
    pub fn add(&self, ino: Ino, holder: Holder, limit: u64) -> Result<(), MetaError> {
        let mut table = self.lock();
        let total = table.per_holder.entry(holder).or_default();
        if *total >= limit {
            return Err(MetaError::TooManyOpenFiles(limit));
        }
        *total += 1;
        *table.by_ino.entry(ino).or_default().entry(holder).or_default() += 1;
        Ok(())
    }

    /// Drops one open of `ino` by `holder`; returns whether anyone still has it open.
    pub fn remove(&self, ino: Ino, holder: Holder) -> bool {
        let table = &mut *self.lock();
        let Some(holders) = table.by_ino.get_mut(&ino) else {
            return false;
        };
        if let Some(count) = holders.get_mut(&holder) {
            *count -= 1;
            if *count == 0 {
                holders.remove(&holder);
            }
            if let Some(total) = table.per_holder.get_mut(&holder) {
                *total -= 1;
                if *total == 0 {
                    table.per_holder.remove(&holder);
                }
            }
        }
        if holders.is_empty() {
            table.by_ino.remove(&ino);
            return false;
        }
        true
    }

    /// Forgets every open and lingering file (before taking them up from the database).
    pub fn clear(&self) {
        *self.lock() = Table::default();
    }

    /// Puts back `opens` opens of `ino` by `holder`, as the previous run recorded them.
    pub fn restore(&self, ino: Ino, holder: Holder, opens: u64) {
        let table = &mut *self.lock();
        *table.per_holder.entry(holder).or_default() += opens;
        *table.by_ino.entry(ino).or_default().entry(holder).or_default() += opens;
    }

    /// Drops every open of `holder`; returns the inodes nobody has open any more.
    pub fn remove_holder(&self, holder: Holder) -> Vec<Ino> {
        let table = &mut *self.lock();
        table.per_holder.remove(&holder);
        let mut closed = Vec::new();
        table.by_ino.retain(|ino, holders| {
            holders.remove(&holder);
            if holders.is_empty() {
                closed.push(*ino);
            }
            !holders.is_empty()
        });
        closed
    }

    /// Whether `ino` is open, or lost its last name too recently to go.
    /// Whether some session holds `ino` open (lingering aside).
    pub fn held_open(&self, ino: Ino) -> bool {
        self.lock().by_ino.contains_key(&ino)
    }

    pub fn is_open(&self, ino: Ino) -> bool {
        let table = self.lock();
        table.by_ino.contains_key(&ino) || table.lingering.contains_key(&ino)
    }

    /// Keeps nameless `ino` until `LINGER` after `now`, or the earlier time it was already
    /// kept until: opens and closes meanwhile do not put its end off.
    pub fn linger(&self, ino: Ino, now: Instant) {
        self.lock().lingering.entry(ino).or_insert(now + LINGER);
    }

    /// Stops keeping the inodes whose time is up at `now`, and returns them.
    pub fn lingered(&self, now: Instant) -> Vec<Ino> {
        let mut done = Vec::new();
        self.lock().lingering.retain(|ino, until| {
            let keep = *until > now;
            if !keep {
                done.push(*ino);
            }
            keep
        });
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_holder() {
        let open = OpenFiles::default();
        let (a, b): (Holder, Holder) = (1, 2);
        open.add(7, a, 10).unwrap();
        open.add(7, a, 10).unwrap();
        open.add(7, b, 10).unwrap();
        open.add(8, b, 10).unwrap();
        assert!(open.remove(7, a));
        assert!(open.remove(7, a));
        let mut closed = open.remove_holder(b);
        closed.sort();
        assert_eq!(closed, [7, 8]);
        assert!(!open.is_open(7) && !open.is_open(8));
        assert!(!open.remove(9, a));
    }

    #[test]
    fn a_holder_at_its_limit_is_refused_until_it_closes() {
        let open = OpenFiles::default();
        let (a, b): (Holder, Holder) = (1, 2);
        open.add(7, a, 2).unwrap();
        open.add(8, a, 2).unwrap();
        assert_eq!(open.add(9, a, 2), Err(MetaError::TooManyOpenFiles(2)));
        assert!(!open.is_open(9));
        // Others are not held to a's count.
        open.add(9, b, 2).unwrap();
        assert!(!open.remove(8, a));
        open.add(8, a, 2).unwrap();
        open.remove_holder(a);
        open.add(7, a, 2).unwrap();
    }

    #[test]
    fn a_nameless_inode_lingers_for_a_while_then_goes_unless_open() {
        let open = OpenFiles::default();
        let now = Instant::now();
        open.linger(7, now);
        assert!(open.is_open(7));
        assert!(open.lingered(now).is_empty());
        open.add(7, 1, 10).unwrap();
        assert_eq!(open.lingered(now + LINGER), [7]);
        assert!(open.is_open(7), "still open by holder 1");
        assert!(!open.remove(7, 1));
        assert!(!open.is_open(7));
    }
}
