//! Group commit: changes that arrive while the writer is busy are applied together, in one
//! transaction, by whichever of their callers takes the writer next (as LevelDB's writers
//! do). No thread of its own: a change that finds the writer idle is applied at once by its
//! own caller.
//!
//! A change is a [`Mutation`], or one whose new inode number is decided as its batch is made
//! (one past the highest used, which counts the batch's earlier creates).
//!
//! A replicated store hands each batch to its [`Proposer`] instead: the batch becomes one
//! entry of the replicated log, and the caller gets the outcomes its application came to.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use rusqlite::Connection;

use super::mutation::{Mutation, Outcome};
use super::replies::RequestId;
use super::{Store, namespace};
use shardfs_meta_api::proto::{Ino, MetaError};
use shardfs_rpc::sync::Lock as _;

/// Most changes one transaction takes; more wait for the next.
const MAX_BATCH: usize = 512;

/// A change waiting for the writer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub mutation: Mutation,
    /// Whether the mutation makes an inode (a create, or a rename's whiteout) given as
    /// number [`UNNUMBERED`], to be numbered when its batch is made.
    pub numbered: bool,
    /// The mount's request it is part of, if the mount numbered it: however often that
    /// request is retried, the change is applied once (`replies.rs`).
    pub request: Option<RequestId>,
}

/// The number of an inode not numbered yet (no inode has it).
pub const UNNUMBERED: Ino = 0;

impl Change {
    /// `mutation`, as it is.
    pub fn apply(mutation: Mutation) -> Change {
        Change { mutation, numbered: false, request: None }
    }

    /// `mutation`, with its new inode numbered as its batch is made.
    pub fn numbered(mutation: Mutation) -> Change {
        Change { mutation, numbered: true, request: None }
    }

    /// The mutation this change is, with what is decided as its batch is made (`tx` holds
    /// the batch's earlier changes).
    pub fn decide(&self, tx: &Connection) -> Result<Cow<'_, Mutation>, MetaError> {
        if !self.numbered {
            return Ok(Cow::Borrowed(&self.mutation));
        }
        let mut mutation = self.mutation.clone();
        match &mut mutation {
            Mutation::Create { ino, .. } | Mutation::Rename { whiteout: Some((ino, _)), .. } => {
                *ino = namespace::next_ino(tx)?;
            }
            _ => {}
        }
        Ok(Cow::Owned(mutation))
    }

    pub fn frees_space(&self) -> bool {
        self.mutation.frees_space()
    }
}

/// Where a replicated store's batches go instead of its writer: the replicated log, whose
/// entries every replica applies (`crate::replication`). Answers one outcome per change.
pub trait Proposer: Send + Sync {
    fn propose(&self, changes: Vec<Change>) -> Vec<Outcome>;
    /// Confirms that this replica still leads and has applied everything the group
    /// committed, so what its store says now is the volume's current state.
    fn confirm_lead(&self) -> Result<(), MetaError>;
}

/// Changes waiting for the writer, and the outcomes of those applied.
#[derive(Default)]
pub struct Queue {
    state: Mutex<Waiting>,
    applied: Condvar,
    /// Transactions committed for changes, and the changes they carried.
    batches: AtomicU64,
    changes: AtomicU64,
}

#[derive(Default)]
struct Waiting {
    changes: Vec<(u64, Change)>,
    next_ticket: u64,
    /// Whether a caller is applying a batch.
    leading: bool,
    outcomes: HashMap<u64, Outcome>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.locked()
    }
}

/// Gives up the lead however the batch ended, so that a failed one does not stop all.
struct Lead<'a>(&'a Queue);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.lock().leading = false;
        self.0.applied.notify_all();
    }
}

impl Store {
    /// How many batches of changes were committed, and how many changes they held.
    pub fn commits(&self) -> (u64, u64) {
        let queue = &self.queue;
        (queue.batches.load(Ordering::Relaxed), queue.changes.load(Ordering::Relaxed))
    }

    /// Applies `change` in a transaction with whatever other changes wait with it.
    pub(super) fn submit(&self, mut change: Change) -> Outcome {
        // Only a replica's clients retry a request elsewhere: a lone metad records nothing,
        // but for batches, which a mount sends again after a timeout (their changes would
        // fail the second time: they number new inodes).
        if self.proposer.get().is_some() || matches!(change.mutation, Mutation::Batch { .. }) {
            change.request = super::replies::next_part();
        }
        let queue = &self.queue;
        let mut waiting = queue.lock();
        let ticket = waiting.next_ticket;
        waiting.next_ticket += 1;
        waiting.changes.push((ticket, change));
        loop {
            if let Some(outcome) = waiting.outcomes.remove(&ticket) {
                return outcome;
            }
            if waiting.leading {
                waiting = queue.applied.wait(waiting).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            waiting.leading = true;
            let take = waiting.changes.len().min(MAX_BATCH);
            let (tickets, batch): (Vec<u64>, Vec<Change>) = waiting.changes.drain(..take).unzip();
            drop(waiting);
            let lead = Lead(queue);
            queue.batches.fetch_add(1, Ordering::Relaxed);
            queue.changes.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let outcomes = match self.proposer.get() {
                Some(proposer) => proposer.propose(batch),
                None => self.with_writer(|writer| writer.commit(&batch)),
            };
            for (_, effects) in outcomes.iter().flatten() {
                self.note_deleted(effects);
            }
            let mut mine = None;
            waiting = queue.lock();
            for (done, outcome) in tickets.into_iter().zip(outcomes) {
                match done == ticket {
                    true => mine = Some(outcome),
                    false => drop(waiting.outcomes.insert(done, outcome)),
                }
            }
            drop(waiting);
            drop(lead);
            if let Some(outcome) = mine {
                return outcome;
            }
            waiting = queue.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shardfs_rpc::sync::Lock as _;

    use crate::store::tests::open;
    use shardfs_meta_api::proto::{Cred, ROOT_INO};

    #[test]
    fn changes_that_wait_for_the_writer_are_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (batches, changes) = store.commits();
        // A long change holds the writer while 50 creates arrive.
        let busy = store.conn.locked();
        std::thread::scope(|scope| {
            let creates: Vec<_> = (0..50)
                .map(|i| {
                    let store = &store;
                    scope.spawn(move || {
                        let name = format!("f{i}");
                        let mode = libc::S_IFREG | 0o644;
                        store.make_node(ROOT_INO, name.as_bytes(), mode, 0, Cred::ROOT).unwrap()
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            // One of them leads, waiting for the writer with what it took; the rest queue.
            while store.queue.lock().changes.len() < 49 {
                assert!(Instant::now() < deadline, "the creates never queued");
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(busy);
            let mut inos: Vec<u64> =
                creates.into_iter().map(|c| c.join().unwrap().attr.ino).collect();
            inos.sort();
            inos.dedup();
            assert_eq!(inos.len(), 50, "each create its own inode");
        });
        let (batches, changes) = (store.commits().0 - batches, store.commits().1 - changes);
        assert_eq!(changes, 50);
        assert!(batches <= 3, "50 creates took {batches} transactions");
        assert_eq!(store.read_dir(ROOT_INO, 0, 100).unwrap().1.len(), 50);
    }
}
