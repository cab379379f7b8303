//! Leases: what each client session may cache, and recalls that take it back.
//!
//! A read lease on an inode lets its holder cache the inode's attributes, its layout and
//! data, and for a directory its entries. A write lease is exclusive and also lets the
//! holder buffer writes. Every answer metad gives a mount about an inode grants a read
//! lease on it (see [`crate::server`] for which requests grant what); a request that would
//! change what a lease covers first recalls the leases other sessions hold: metad pushes a
//! recall over the holder's connection and waits until the holder releases the lease (after
//! flushing what it buffered and dropping what it cached), or until the lease expires, one
//! session timeout after the recall. Requests check for conflicting leases and grant under
//! the table's lock, and run their store operation outside it. A change marks the inodes it
//! changes first ([`Leases::begin_change`]): no other change to them begins, and no read of
//! them is granted a lease, until it ends, so no lease is granted on a state that a change
//! is replacing. A read is granted leases only if nothing it read was being changed or
//! changed while it ran (`read_begins`, `read_ended`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardfs_rpc::Pusher;
use tracing::{debug, warn};

use crate::store::Holder;
use shardfs_meta_api::proto::{Ino, MetaPush};
use shardfs_rpc::sync::Lock as _;

/// What a request needs from the leases other sessions hold on an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// To read current state: no other session may buffer writes (hold a write lease).
    Read,
    /// To change it: no other session may hold any lease.
    Write,
}

/// A lease another session holds that stands in a request's way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub holder: Holder,
    pub ino: Ino,
    /// What the request needs: with [`Need::Read`] only a write lease is in its way, and
    /// a read lease granted again after the release is not.
    pub need: Need,
}

#[derive(Debug)]
struct Held {
    /// The latest grant; a release for an older one does not end the lease.
    seq: u64,
    write: bool,
    /// When the latest grant was made.
    granted: Instant,
    /// When metad asked for it back.
    recalled: Option<Instant>,
}

/// How long a write lease is left alone after its grant before a recall is sent: the holder
/// gets to use it (buffer at least the write it asked for) before giving it up, so two
/// mounts writing one file take turns instead of recalling each other's grants forever.
const WRITE_LEASE_MIN_HOLD: Duration = Duration::from_millis(5);

#[derive(Default)]
pub struct Table {
    inodes: HashMap<Ino, HashMap<Holder, Held>>,
    by_holder: HashMap<Holder, HashSet<Ino>>,
    next_seq: u64,
    /// Inodes requests are recalling leases on, with how many: new write leases on them
    /// wait, so a busy writer cannot starve a reader.
    recalling: HashMap<Ino, usize>,
    /// Of those, the inodes changes are recalling every lease on, with how many: lookups
    /// and listings in them wait, so a mount that keeps listing a directory (each listing
    /// granting it the lease again) cannot starve a change to it.
    recalling_for_change: HashMap<Ino, usize>,
    /// When each session past its lease limit last had leases picked for recall.
    shed_at: HashMap<Holder, Instant>,
    /// Inodes changes are being made to outside the lock, with how many: one request's
    /// change at a time per inode, but a close or reclaim may overlap one.
    changing: HashMap<Ino, usize>,
    /// Inodes new changes wait on, so a read that kept meeting changes gets through.
    barred: HashMap<Ino, usize>,
    /// Changes made to what leases cover so far.
    changes: u64,
    /// Reads being answered outside the lock, by the count of changes they began after.
    reading: BTreeMap<u64, usize>,
    /// The inodes each change since the oldest of those reads changed, with its count.
    changed: VecDeque<(u64, Ino)>,
}

/// How often a session past its lease limit is looked over for leases to recall: the look
/// is linear in what it holds, so it is not repeated on every grant.
const SHED_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct LeaseCounters {
    pub granted: AtomicU64,
    pub recalled: AtomicU64,
    /// Leases that expired unreleased after a recall.
    pub revoked: AtomicU64,
}

#[derive(Default)]
pub struct Leases {
    table: Mutex<Table>,
    released: tokio::sync::Notify,
    pushers: Mutex<HashMap<SocketAddr, Pusher>>,
    pub counters: LeaseCounters,
}

impl Table {
    /// Leases of sessions other than `holder` on `ino` that conflict with `need`.
    pub fn conflicts(&self, holder: Holder, ino: Ino, need: Need, into: &mut Vec<Conflict>) {
        let Some(holders) = self.inodes.get(&ino) else { return };
        for (&other, held) in holders {
            if other != holder && (need == Need::Write || held.write) {
                into.push(Conflict { holder: other, ino, need });
            }
        }
    }

    /// Every session's lease on `ino`, as conflicts for a change that needs them all gone.
    pub fn holders_of(&self, ino: Ino) -> Vec<Conflict> {
        let holders = self.inodes.get(&ino).into_iter().flat_map(|h| h.keys());
        holders.map(|&holder| Conflict { holder, ino, need: Need::Write }).collect()
    }

    /// Grants `holder` a lease on `ino`: a write lease if `write`, else a read lease (a
    /// write lease it holds stays one). Returns whether this renewed a lease under recall,
    /// whose recall must then be sent again (see [`Leases::wake`]).
    pub fn grant(
        &mut self,
        holder: Holder,
        ino: Ino,
        write: bool,
        counters: &LeaseCounters,
    ) -> bool {
        self.next_seq += 1;
        let seq = self.next_seq;
        let now = Instant::now();
        let held = self.inodes.entry(ino).or_default().entry(holder).or_insert(Held {
            seq,
            write,
            granted: now,
            recalled: None,
        });
        held.seq = seq;
        held.granted = now;
        held.write |= write;
        // The pending recall names an older grant, whose release will not end this one:
        // the waiting request recalls it again.
        let renewed = held.recalled.take().is_some();
        self.by_holder.entry(holder).or_default().insert(ino);
        counters.granted.fetch_add(1, Ordering::Relaxed);
        renewed
    }

    /// Ends `holder`'s lease on `ino`.
    pub fn remove(&mut self, holder: Holder, ino: Ino) {
        if let Some(holders) = self.inodes.get_mut(&ino) {
            holders.remove(&holder);
            if holders.is_empty() {
                self.inodes.remove(&ino);
            }
        }
        if let Some(inos) = self.by_holder.get_mut(&holder) {
            inos.remove(&ino);
            if inos.is_empty() {
                self.by_holder.remove(&holder);
            }
        }
    }

    /// Whether a request is recalling leases on `ino`.
    pub fn is_recalling(&self, ino: Ino) -> bool {
        self.recalling.contains_key(&ino)
    }

    /// Whether a change is recalling every lease on `ino`.
    pub fn is_recalling_for_change(&self, ino: Ino) -> bool {
        self.recalling_for_change.contains_key(&ino)
    }

    /// The oldest leases of `holder` to recall when it holds more than `limit` not already
    /// under recall: enough to bring it an eighth below the limit, so a session at its
    /// limit gives back leases in batches.
    pub fn beyond_limit(&mut self, holder: Holder, limit: usize, now: Instant) -> Vec<Conflict> {
        let Some(inos) = self.by_holder.get(&holder) else { return Vec::new() };
        if inos.len() <= limit
            || self.shed_at.get(&holder).is_some_and(|&at| now.duration_since(at) < SHED_EVERY)
        {
            return Vec::new();
        }
        self.shed_at.insert(holder, now);
        let mut candidates: Vec<(Instant, Ino)> = inos
            .iter()
            .filter_map(|ino| {
                let held = self.inodes.get(ino)?.get(&holder)?;
                held.recalled.is_none().then_some((held.granted, *ino))
            })
            .collect();
        if candidates.len() <= limit {
            return Vec::new();
        }
        let shed = candidates.len() - (limit - limit / 8);
        candidates.select_nth_unstable(shed - 1);
        candidates.truncate(shed);
        let shed = |(_, ino)| Conflict { holder, ino, need: Need::Write };
        candidates.into_iter().map(shed).collect()
    }

    /// Whether a change to `inos` may begin now: none of them is being changed or barred.
    pub fn may_change(&self, inos: &[Ino]) -> bool {
        inos.iter().all(|ino| !self.changing.contains_key(ino) && !self.barred.contains_key(ino))
    }

    /// Whether any of `inos` is being changed.
    pub fn is_changing(&self, inos: &[Ino]) -> bool {
        inos.iter().any(|ino| self.changing.contains_key(ino))
    }

    /// Bars new changes to `inos` until [`Table::unbar`].
    pub fn bar(&mut self, inos: &[Ino]) {
        for &ino in inos {
            *self.barred.entry(ino).or_default() += 1;
        }
    }

    pub fn unbar(&mut self, inos: &[Ino]) {
        for ino in inos {
            if let Some(count) = self.barred.get_mut(ino) {
                *count -= 1;
                if *count == 0 {
                    self.barred.remove(ino);
                }
            }
        }
    }

    /// A read to be answered outside the lock begins; returns what to end it with.
    pub fn read_begins(&mut self) -> u64 {
        *self.reading.entry(self.changes).or_default() += 1;
        self.changes
    }

    /// The read that began at `began` was answered: returns whether any of `inos` changed
    /// since, so what it read of them may be out of date already.
    pub fn read_ended(&mut self, began: u64, inos: &[Ino]) -> bool {
        let since = self.changed.iter().rev().take_while(|&&(change, _)| change > began);
        let stale = since.into_iter().any(|(_, ino)| inos.contains(ino));
        if let Some(count) = self.reading.get_mut(&began) {
            *count -= 1;
            if *count == 0 {
                self.reading.remove(&began);
            }
        }
        // Only reads still being answered look at what changed after they began.
        match self.reading.keys().next() {
            Some(&oldest) => {
                while self.changed.front().is_some_and(|&(change, _)| change <= oldest) {
                    self.changed.pop_front();
                }
            }
            None => self.changed.clear(),
        }
        stale
    }

    /// A change to `inos` was made: reads being answered meanwhile must not be granted
    /// leases on them.
    fn changed(&mut self, inos: impl IntoIterator<Item = Ino>) {
        self.changes += 1;
        if !self.reading.is_empty() {
            let change = self.changes;
            self.changed.extend(inos.into_iter().map(|ino| (change, ino)));
        }
    }

    /// Leases held, for status.
    pub fn count(&self) -> u64 {
        self.by_holder.values().map(|inos| inos.len() as u64).sum()
    }
}

impl Leases {
    /// The lease table, locked. Held across store work only where leases decide it: names
    /// resolved to the inodes whose leases a change needs, a close that may delete a file.
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.locked()
    }

    fn pushers(&self) -> MutexGuard<'_, HashMap<SocketAddr, Pusher>> {
        self.pushers.locked()
    }

    /// Begins a change to `inos` (which [`Table::may_change`], for a request's change), made
    /// outside the lock; it ends when the returned marks do. No lock is held while a change
    /// is made: on a replica it waits for the group's log, and a lock held meanwhile would
    /// stall every thread that takes it, the async ones the log needs among them.
    pub fn begin_change<'a>(&'a self, table: &mut Table, mut inos: Vec<Ino>) -> Changing<'a> {
        inos.sort_unstable();
        inos.dedup();
        for &ino in &inos {
            *table.changing.entry(ino).or_default() += 1;
        }
        Changing { leases: self, inos }
    }

    /// Waits until `ready` holds of the table: checked at once, then after every release of
    /// a lease, end of a change or lifted bar.
    pub async fn wait_until(&self, ready: impl Fn(&Table) -> bool) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if ready(&self.lock()) {
                return;
            }
            released.await;
        }
    }

    /// Wakes requests waiting for recalls, after a lease under recall was renewed.
    pub fn wake(&self) {
        self.released.notify_waiters();
    }

    pub fn connected(&self, peer: SocketAddr, pusher: Pusher) {
        self.pushers().insert(peer, pusher);
    }

    pub fn disconnected(&self, peer: SocketAddr) {
        self.pushers().remove(&peer);
    }

    /// The holder gave back its lease on `ino` as of grant `seq`.
    pub fn release(&self, holder: Holder, ino: Ino, seq: u64) {
        let mut table = self.lock();
        if table.inodes.get(&ino).and_then(|h| h.get(&holder)).is_some_and(|held| held.seq <= seq) {
            table.remove(holder, ino);
            drop(table);
            self.released.notify_waiters();
        }
    }

    /// Drops every lease of `holder` (its session ended, or it reconnected and dropped its
    /// caches).
    pub fn release_holder(&self, holder: Holder) {
        let mut table = self.lock();
        table.shed_at.remove(&holder);
        if let Some(inos) = table.by_holder.remove(&holder) {
            for ino in inos {
                if let Some(holders) = table.inodes.get_mut(&ino) {
                    holders.remove(&holder);
                    if holders.is_empty() {
                        table.inodes.remove(&ino);
                    }
                }
            }
            drop(table);
            self.released.notify_waiters();
        }
    }

    /// Drops every lease on `ino`, which was deleted: nobody can use them any more.
    pub fn forget_inode(&self, ino: Ino) {
        let mut table = self.lock();
        let Some(holders) = table.inodes.remove(&ino) else { return };
        for holder in holders.keys() {
            if let Some(inos) = table.by_holder.get_mut(holder) {
                inos.remove(&ino);
                if inos.is_empty() {
                    table.by_holder.remove(holder);
                }
            }
        }
        drop(table);
        self.released.notify_waiters();
    }

    /// Drops the read leases of `holder`, whose connection is gone.
    pub fn release_reads(&self, holder: Holder) {
        let mut table = self.lock();
        let is_read = |table: &Table, ino: &Ino| {
            table.inodes.get(ino).and_then(|h| h.get(&holder)).is_some_and(|held| !held.write)
        };
        let held = table.by_holder.get(&holder).into_iter().flatten();
        let reads: Vec<Ino> = held.filter(|ino| is_read(&table, ino)).copied().collect();
        if reads.is_empty() {
            return;
        }
        for ino in reads {
            table.remove(holder, ino);
        }
        drop(table);
        self.released.notify_waiters();
    }

    /// Recalls the `conflicts` and waits until each is released or has expired: `expiry`
    /// after its recall. `peer_of` finds the connection a session currently uses.
    pub async fn recall(
        &self,
        conflicts: &[Conflict],
        expiry: Duration,
        peer_of: impl Fn(Holder) -> Option<SocketAddr>,
    ) {
        {
            let mut table = self.lock();
            for conflict in conflicts {
                *table.recalling.entry(conflict.ino).or_default() += 1;
                if conflict.need == Need::Write {
                    *table.recalling_for_change.entry(conflict.ino).or_default() += 1;
                }
            }
        }
        self.wait_released(conflicts, expiry, peer_of).await;
        let mut table = self.lock();
        for conflict in conflicts {
            uncount(&mut table.recalling, conflict.ino);
            if conflict.need == Need::Write {
                uncount(&mut table.recalling_for_change, conflict.ino);
            }
        }
        drop(table);
        self.released.notify_waiters();
    }

    /// Waits until no request recalls leases on `ino`.
    pub async fn wait_recalls(&self, ino: Ino) {
        self.wait_until(|table| !table.is_recalling(ino)).await
    }

    async fn wait_released(
        &self,
        conflicts: &[Conflict],
        expiry: Duration,
        peer_of: impl Fn(Holder) -> Option<SocketAddr>,
    ) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let mut to_push = Vec::new();
            let wait = {
                let mut table = self.lock();
                let now = Instant::now();
                let mut wait: Option<Duration> = None;
                for conflict in conflicts {
                    let Some(held) = table
                        .inodes
                        .get_mut(&conflict.ino)
                        .and_then(|h| h.get_mut(&conflict.holder))
                    else {
                        continue;
                    };
                    if conflict.need == Need::Read && !held.write {
                        // Released, and a read lease granted since: no longer in the way.
                        continue;
                    }
                    let hold = WRITE_LEASE_MIN_HOLD.saturating_sub(now - held.granted);
                    if held.recalled.is_none() && held.write && !hold.is_zero() {
                        wait = Some(wait.map_or(hold, |w| w.min(hold)));
                        continue;
                    }
                    // Recalled once per grant: a lease granted again since is recalled again.
                    let recalled = *held.recalled.get_or_insert_with(|| {
                        to_push.push((*conflict, held.seq));
                        now
                    });
                    let left = expiry.saturating_sub(now - recalled);
                    if left.is_zero() {
                        warn!(
                            holder = conflict.holder,
                            ino = conflict.ino,
                            "lease not released within {expiry:?} of its recall; revoking it"
                        );
                        table.remove(conflict.holder, conflict.ino);
                        self.counters.revoked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        wait = Some(wait.map_or(left, |w| w.min(left)));
                    }
                }
                wait
            };
            for (conflict, seq) in to_push {
                self.counters.recalled.fetch_add(1, Ordering::Relaxed);
                let pusher =
                    peer_of(conflict.holder).and_then(|peer| self.pushers().get(&peer).cloned());
                let sent = pusher.is_some_and(|p| {
                    p.push(shardfs_rpc::encode(&MetaPush::Recall { ino: conflict.ino, seq }))
                });
                debug!(holder = conflict.holder, ino = conflict.ino, sent, "lease recalled");
            }
            let Some(wait) = wait else { return };
            let _ = tokio::time::timeout(wait, released).await;
        }
    }
}

/// A change being made outside the table's lock to some inodes: no other change to them
/// begins, and reads of them are not granted leases, until it ends.
pub struct Changing<'a> {
    leases: &'a Leases,
    inos: Vec<Ino>,
}

impl<'a> Changing<'a> {
    /// Ends the change: returns the table, locked, with the change recorded as made.
    pub fn end(mut self) -> MutexGuard<'a, Table> {
        let mut table = self.leases.lock();
        end_change(&mut table, std::mem::take(&mut self.inos));
        self.leases.released.notify_waiters();
        table
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        if !self.inos.is_empty() {
            end_change(&mut self.leases.lock(), std::mem::take(&mut self.inos));
            self.leases.released.notify_waiters();
        }
    }
}

fn end_change(table: &mut Table, inos: Vec<Ino>) {
    for ino in &inos {
        if let Some(count) = table.changing.get_mut(ino) {
            *count -= 1;
            if *count == 0 {
                table.changing.remove(ino);
            }
        }
    }
    table.changed(inos);
}

/// Bars new changes to inodes for as long as it lives (a read that kept meeting changes).
pub struct Bar<'a> {
    leases: &'a Leases,
    inos: Vec<Ino>,
}

impl<'a> Bar<'a> {
    pub fn new(leases: &'a Leases) -> Bar<'a> {
        Bar { leases, inos: Vec::new() }
    }

    /// Bars `inos` too.
    pub fn add(&mut self, inos: &[Ino]) {
        let new: Vec<Ino> = inos.iter().filter(|ino| !self.inos.contains(ino)).copied().collect();
        self.leases.lock().bar(&new);
        self.inos.extend(new);
    }
}

impl Drop for Bar<'_> {
    fn drop(&mut self) {
        if !self.inos.is_empty() {
            self.leases.lock().unbar(&self.inos);
            self.leases.released.notify_waiters();
        }
    }
}

/// Takes one from `ino`'s count in `counts`, dropping it at zero.
fn uncount(counts: &mut HashMap<Ino, usize>, ino: Ino) {
    if let Some(count) = counts.get_mut(&ino) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_stale_if_what_it_read_changed_while_it_ran() {
        let mut table = Table::default();
        table.changed([1]);
        // A change before a read began does not make it stale.
        let first = table.read_begins();
        table.changed([2, 3]);
        let second = table.read_begins();
        table.changed([4]);
        assert!(!table.read_ended(second, &[2, 3, 5]), "changed before the second began");
        assert!(table.read_ended(first, &[5, 3]), "3 changed while the first ran");
        // Nothing is kept once no read is running.
        assert!(table.reading.is_empty() && table.changed.is_empty());
        table.changed([6]);
        assert!(table.changed.is_empty(), "no read to tell");
        // What changed is kept for the oldest read running, and dropped after it.
        let (a, b) = (table.read_begins(), table.read_begins());
        table.changed([7]);
        assert!(table.read_ended(a, &[7]));
        assert_eq!(table.changed.len(), 1, "b still runs");
        assert!(table.read_ended(b, &[7]));
        assert!(table.changed.is_empty());
    }

    #[tokio::test]
    async fn recalls_wait_for_release_or_expiry_and_ignore_stale_releases() {
        let leases = Leases::default();
        let (a, b) = (1, 2);
        {
            let mut table = leases.lock();
            assert!(!table.grant(a, 10, false, &leases.counters));
            assert!(!table.grant(b, 10, false, &leases.counters));
            assert!(!table.grant(b, 11, true, &leases.counters));
            let mut found = Vec::new();
            table.conflicts(a, 10, Need::Read, &mut found);
            assert!(found.is_empty(), "readers do not conflict with a read");
            table.conflicts(a, 10, Need::Write, &mut found);
            assert_eq!(found, vec![Conflict { holder: b, ino: 10, need: Need::Write }]);
            table.conflicts(a, 11, Need::Read, &mut found);
            assert_eq!(found.len(), 2, "a writer conflicts with a read");
        }
        // A release naming an older grant leaves the lease in place.
        leases.release(b, 10, 0);
        assert_eq!(leases.lock().count(), 3);
        // A recall nobody answers ends at expiry.
        let conflict = [Conflict { holder: b, ino: 11, need: Need::Read }];
        let started = Instant::now();
        leases.recall(&conflict, Duration::from_millis(50), |_| None).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(leases.counters.revoked.load(Ordering::Relaxed), 1);
        // A recall the holder answers ends at the release.
        let conflict = [Conflict { holder: b, ino: 10, need: Need::Write }];
        let recall = leases.recall(&conflict, Duration::from_secs(60), |_| None);
        let release = async {
            tokio::task::yield_now().await;
            leases.release(b, 10, u64::MAX);
        };
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(recall, release) })
            .await
            .expect("the release ends the recall");
        assert_eq!(leases.lock().count(), 1);
    }

    /// A read's recall of a write lease ends when the write lease goes, even if its holder
    /// takes a read lease again at once (a mount that keeps listing the directory); a
    /// change's recall counts as one while it lasts, and lookups and listings wait for it.
    #[tokio::test]
    async fn a_read_lease_taken_again_ends_a_read_s_recall_but_not_a_change_s() {
        let leases = Leases::default();
        let (a, b) = (1, 2);
        assert!(!leases.lock().grant(b, 10, true, &leases.counters));
        table_conflicts(&leases, a, Need::Read);
        let conflict = [Conflict { holder: b, ino: 10, need: Need::Read }];
        let recall = leases.recall(&conflict, Duration::from_secs(60), |_| None);
        let release_and_read_again = async {
            tokio::task::yield_now().await;
            leases.release(b, 10, u64::MAX);
            leases.lock().grant(b, 10, false, &leases.counters);
            leases.wake();
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(recall, release_and_read_again)
        })
        .await
        .expect("the write lease's release ends a read's recall");
        let conflict = [Conflict { holder: b, ino: 10, need: Need::Write }];
        let recall = leases.recall(&conflict, Duration::from_millis(100), |_| None);
        let during = async {
            tokio::task::yield_now().await;
            leases.lock().is_recalling_for_change(10)
        };
        let ((), during) = tokio::join!(recall, during);
        assert!(during, "a change's recall is known while it lasts");
        assert!(!leases.lock().is_recalling_for_change(10), "and forgotten after");
    }

    fn table_conflicts(leases: &Leases, holder: Holder, need: Need) {
        let mut found = Vec::new();
        leases.lock().conflicts(holder, 10, need, &mut found);
        assert_eq!(found.len(), 1, "the write lease is in the way");
    }

    #[tokio::test]
    async fn a_session_past_its_limit_gives_back_its_oldest_leases() {
        let leases = Leases::default();
        let a = 1;
        let now = Instant::now();
        let shed = {
            let mut table = leases.lock();
            shed_oldest(&mut table, &leases.counters, now)
        };
        let shed: Vec<Conflict> =
            shed.into_iter().map(|ino| Conflict { holder: a, ino, need: Need::Write }).collect();
        leases.recall(&shed, Duration::from_millis(10), |_| None).await;
        assert_eq!(leases.lock().count(), 14 + 20);
    }

    /// Grants 20 leases to each of two sessions, one more to the first, and checks which
    /// `beyond_limit` picks; returns them.
    fn shed_oldest(table: &mut Table, counters: &LeaseCounters, now: Instant) -> Vec<Ino> {
        let (a, b) = (1, 2);
        for ino in 0..20 {
            table.grant(a, ino, false, counters);
            table.grant(b, ino, false, counters);
            // Grant times are what orders them: make them distinct.
            table.inodes.get_mut(&ino).unwrap().get_mut(&a).unwrap().granted =
                now + Duration::from_millis(ino);
        }
        assert!(table.beyond_limit(a, 20, now).is_empty(), "at the limit is allowed");
        table.grant(a, 20, false, counters);
        table.inodes.get_mut(&20).unwrap().get_mut(&a).unwrap().granted = now + SHED_EVERY;
        let mut shed: Vec<Ino> =
            table.beyond_limit(a, 16, now).into_iter().map(|c| c.ino).collect();
        shed.sort();
        // 21 held, limit 16: down to 14 (an eighth below), the 7 oldest.
        assert_eq!(shed, (0..7).collect::<Vec<_>>());
        // Not looked at again at once, and b is not held to a's count.
        assert!(table.beyond_limit(a, 16, now).is_empty());
        assert!(table.beyond_limit(b, 20, now).is_empty());
        shed
    }
}
