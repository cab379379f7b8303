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
//! commit, with that session (the client died), or after [`INTENT_LIFETIME`]. A session
//! holds a bounded number (a prepare past it is refused), so a client that prepares and
//! never commits cannot grow metad's memory without end. Intents are
//! kept in memory: after a metad restart none exist, which is why the sweeps wait a full grace
//! period after start before deleting anything (see `gc.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use shardfs_chunk_api::ChunkId;

use crate::store::Holder;
use shardfs_meta_api::proto::MetaError;
use shardfs_rpc::sync::Lock as _;

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

/// How often intents past their lifetime are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    by_chunk: HashMap<ChunkId, HashMap<Holder, Instant>>,
    /// How many chunks each session intends.
    per_holder: HashMap<Holder, usize>,
    /// Chunks whose shards the collector is deleting.
    claimed: HashSet<ChunkId>,
    /// When intents past their lifetime were last swept out.
    swept: Option<Instant>,
}

impl State {
    fn is_live(&self, chunk: &ChunkId, now: Instant) -> bool {
        self.by_chunk.get(chunk).is_some_and(|holders| holders.values().any(|until| *until > now))
    }

    /// Drops the intents past their lifetime.
    fn sweep(&mut self, now: Instant) {
        let per_holder = &mut self.per_holder;
        self.by_chunk.retain(|_, holders| {
            holders.retain(|holder, until| {
                let live = *until > now;
                if !live {
                    forget_one(per_holder, *holder);
                }
                live
            });
            !holders.is_empty()
        });
        self.swept = Some(now);
    }

    fn remove(&mut self, chunk: &ChunkId, holder: Holder) {
        if let Some(holders) = self.by_chunk.get_mut(chunk) {
            if holders.remove(&holder).is_some() {
                forget_one(&mut self.per_holder, holder);
            }
            if holders.is_empty() {
                self.by_chunk.remove(chunk);
            }
        }
    }
}

/// `holder` intends one chunk fewer.
fn forget_one(per_holder: &mut HashMap<Holder, usize>, holder: Holder) {
    if let Some(count) = per_holder.get_mut(&holder) {
        *count -= 1;
        if *count == 0 {
            per_holder.remove(&holder);
        }
    }
}

impl Intents {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Records `holder`'s intents for `chunks`, then waits (at most `CLAIM_WAIT`) while
    /// the collector is deleting any of them. Must happen before the catalogue is read.
    /// Refused if `holder` would intend more than `limit` chunks.
    pub fn record(
        &self,
        holder: Holder,
        chunks: impl IntoIterator<Item = ChunkId>,
        limit: usize,
    ) -> Result<(), MetaError> {
        let now = Instant::now();
        let mut state = self.lock();
        let chunks: HashSet<ChunkId> = chunks.into_iter().collect();
        let intended = |state: &State| state.per_holder.get(&holder).copied().unwrap_or(0);
        let due = state.swept.is_none_or(|at| now >= at + SWEEP_INTERVAL);
        if due || intended(&state) + chunks.len() > limit {
            state.sweep(now);
        }
        let new = chunks
            .iter()
            .filter(|c| state.by_chunk.get(c).is_none_or(|h| !h.contains_key(&holder)))
            .count();
        if intended(&state) + new > limit {
            return Err(MetaError::Unavailable(format!(
                "this client already has {limit} chunks prepared and not committed (the limit)"
            )));
        }
        *state.per_holder.entry(holder).or_default() += new;
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
        Ok(())
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
        let mut state = self.lock();
        for chunk in chunks {
            state.remove(&chunk, holder);
        }
    }

    /// The client behind `holder` is gone, and with it every write it had not committed.
    pub fn release_holder(&self, holder: Holder) {
        let mut state = self.lock();
        state.per_holder.remove(&holder);
        state.by_chunk.retain(|_, holders| {
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
        intents.record(a, [x, y], 10).unwrap();
        intents.record(b, [x], 10).unwrap();
        intents.clear(a, [x]);
        assert!(intents.is_live(&x), "b still writes x");
        intents.release_holder(b);
        assert!(!intents.is_live(&x));
        assert!(intents.is_live(&y));
        intents.release_holder(a);
        assert!(!intents.is_live(&y));
    }

    #[test]
    fn a_session_intends_at_most_its_limit_until_it_commits() {
        let intents = Intents::default();
        let (a, b): (Holder, Holder) = (1, 2);
        let chunks: Vec<ChunkId> = (0..4u8).map(|i| ChunkId::of(&[i])).collect();
        intents.record(a, chunks[..3].iter().copied(), 3).unwrap();
        // Preparing the same chunks again takes no more room; one more chunk is refused.
        intents.record(a, chunks[..3].iter().copied(), 3).unwrap();
        let refused = intents.record(a, [chunks[3]], 3).unwrap_err();
        assert!(refused.to_string().contains("3 chunks prepared and not committed"), "{refused}");
        assert!(!intents.is_live(&chunks[3]));
        // Other sessions are not held to a's count; a commit makes room.
        intents.record(b, chunks.iter().copied(), 4).unwrap();
        intents.clear(a, [chunks[0]]);
        intents.record(a, [chunks[3]], 3).unwrap();
    }

    #[test]
    fn a_chunk_is_claimed_or_intended_never_both() {
        let intents = std::sync::Arc::new(Intents::default());
        let (x, y) = (ChunkId::of(b"x"), ChunkId::of(b"y"));
        intents.record(1, [x], 10).unwrap();
        assert!(!intents.claim(x), "intended: not deleted");
        assert!(intents.claim(y));
        // A write of a claimed chunk waits until the claim is given back.
        let writer = {
            let intents = intents.clone();
            std::thread::spawn(move || {
                intents.record(2, [y], 10).unwrap();
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
