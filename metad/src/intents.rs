//! Write intents: chunks a client has prepared but not yet committed. Garbage collection and
//! the orphan sweep never delete a chunk or shard with a live intent.
//!
//! The other way round, a chunk whose shards are being deleted is *claimed* by the collector
//! (under the same lock as the intents, so a chunk is either claimed or intended, never
//! both): a prepare of it waits until the deletes are done. Otherwise a write could find the
//! shards still there (a put of identical content writes nothing) just before they go, and
//! commit a reference to a deleted chunk.
//!
//! An intent belongs to the client session that prepared the write and ends with its
//! commit, with that session (the client died), or after [`INTENT_LIFETIME`]. Intents are
//! kept in memory: after a metad restart none exist, which is why the sweeps wait a full grace
//! period after start before deleting anything (see `gc.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use shardfs_chunkd::ChunkId;

use crate::store::Holder;

/// Longest a prepared write protects its chunks: longer than any write takes to commit.
pub const INTENT_LIFETIME: Duration = Duration::from_secs(3600);

/// Longest a prepare waits for the deletes of a chunk it writes.
const CLAIM_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Intents {
    state: Mutex<State>,
    /// Signalled when claims are given back.
    unclaimed: Condvar,
}

#[derive(Default)]
struct State {
    by_chunk: HashMap<ChunkId, HashMap<Holder, Instant>>,
    /// Chunks whose shards the collector is deleting.
    claimed: HashSet<ChunkId>,
}

impl State {
    fn is_live(&self, chunk: &ChunkId, now: Instant) -> bool {
        self.by_chunk.get(chunk).is_some_and(|holders| holders.values().any(|until| *until > now))
    }
}

impl Intents {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `holder`'s intents for `chunks`, then waits (at most `CLAIM_WAIT`) while
    /// the collector is deleting any of them. Must happen before the catalogue is read.
    pub fn record(&self, holder: Holder, chunks: impl IntoIterator<Item = ChunkId>) {
        let now = Instant::now();
        let mut state = self.lock();
        state.by_chunk.retain(|_, holders| {
            holders.retain(|_, until| *until > now);
            !holders.is_empty()
        });
        let chunks: Vec<ChunkId> = chunks.into_iter().collect();
        for chunk in &chunks {
            state.by_chunk.entry(*chunk).or_default().insert(holder, now + INTENT_LIFETIME);
        }
        let deadline = now + CLAIM_WAIT;
        while chunks.iter().any(|c| state.claimed.contains(c)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("a write waited {CLAIM_WAIT:?} for shard deletes; going ahead");
                break;
            }
            state = self.unclaimed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Claims `chunk` for deletion unless a write intends it; true if claimed.
    pub fn claim(&self, chunk: ChunkId) -> bool {
        let mut state = self.lock();
        if state.is_live(&chunk, Instant::now()) {
            return false;
        }
        state.claimed.insert(chunk);
        true
    }

    /// Gives back claims once their shards are deleted (or the deletion was abandoned).
    pub fn unclaim(&self, chunks: impl IntoIterator<Item = ChunkId>) {
        let mut state = self.lock();
        for chunk in chunks {
            state.claimed.remove(&chunk);
        }
        self.unclaimed.notify_all();
    }

    /// `holder` committed: refcounts protect these chunks from here on.
    pub fn clear(&self, holder: Holder, chunks: impl IntoIterator<Item = ChunkId>) {
        let by_chunk = &mut self.lock().by_chunk;
        for chunk in chunks {
            if let Some(holders) = by_chunk.get_mut(&chunk) {
                holders.remove(&holder);
                if holders.is_empty() {
                    by_chunk.remove(&chunk);
                }
            }
        }
    }

    /// The client behind `holder` is gone, and with it every write it had not committed.
    pub fn release_holder(&self, holder: Holder) {
        self.lock().by_chunk.retain(|_, holders| {
            holders.remove(&holder);
            !holders.is_empty()
        });
    }

    pub fn is_live(&self, chunk: &ChunkId) -> bool {
        self.lock().is_live(chunk, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_end_with_commit_or_their_client() {
        let intents = Intents::default();
        let (a, b): (Holder, Holder) = (1, 2);
        let (x, y) = (ChunkId::of(b"x"), ChunkId::of(b"y"));
        intents.record(a, [x, y]);
        intents.record(b, [x]);
        intents.clear(a, [x]);
        assert!(intents.is_live(&x), "b still writes x");
        intents.release_holder(b);
        assert!(!intents.is_live(&x));
        assert!(intents.is_live(&y));
        intents.release_holder(a);
        assert!(!intents.is_live(&y));
    }

    #[test]
    fn a_chunk_is_claimed_or_intended_never_both() {
        let intents = std::sync::Arc::new(Intents::default());
        let (x, y) = (ChunkId::of(b"x"), ChunkId::of(b"y"));
        intents.record(1, [x]);
        assert!(!intents.claim(x), "intended: not deleted");
        assert!(intents.claim(y));
        // A write of a claimed chunk waits until the claim is given back.
        let writer = {
            let intents = intents.clone();
            std::thread::spawn(move || {
                intents.record(2, [y]);
                Instant::now()
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let unclaimed = Instant::now();
        intents.unclaim([y]);
        assert!(writer.join().unwrap() >= unclaimed);
        assert!(!intents.claim(y), "intended now");
    }
}
