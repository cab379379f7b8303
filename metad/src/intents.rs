//! Write intents: chunks a client has prepared but not yet committed. Garbage collection and
//! the orphan sweep never delete a chunk or shard with a live intent.
//!
//! An intent belongs to the client session that prepared the write and ends with its
//! commit, with that session (the client died), or after [`INTENT_LIFETIME`]. Intents are
//! kept in memory: after a metad restart none exist, which is why the sweeps wait a full grace
//! period after start before deleting anything (see `gc.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardfs_chunkd::ChunkId;

use crate::store::Holder;

/// Longest a prepared write protects its chunks: longer than any write takes to commit.
pub const INTENT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct Intents {
    by_chunk: Mutex<HashMap<ChunkId, HashMap<Holder, Instant>>>,
}

impl Intents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, HashMap<Holder, Instant>>> {
        self.by_chunk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `holder`'s intents for `chunks`. Must happen before the catalogue is read.
    pub fn record(&self, holder: Holder, chunks: impl IntoIterator<Item = ChunkId>) {
        let now = Instant::now();
        let mut by_chunk = self.lock();
        by_chunk.retain(|_, holders| {
            holders.retain(|_, until| *until > now);
            !holders.is_empty()
        });
        for chunk in chunks {
            by_chunk.entry(chunk).or_default().insert(holder, now + INTENT_LIFETIME);
        }
    }

    /// `holder` committed: refcounts protect these chunks from here on.
    pub fn clear(&self, holder: Holder, chunks: impl IntoIterator<Item = ChunkId>) {
        let mut by_chunk = self.lock();
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
        self.lock().retain(|_, holders| {
            holders.remove(&holder);
            !holders.is_empty()
        });
    }

    pub fn is_live(&self, chunk: &ChunkId) -> bool {
        let now = Instant::now();
        self.lock().get(chunk).is_some_and(|holders| holders.values().any(|until| *until > now))
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
}
