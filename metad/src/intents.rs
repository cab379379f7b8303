//! Write intents: chunks a client has prepared but not yet committed. Garbage collection and
//! the orphan sweep never delete a chunk or shard with a live intent.
//!
//! Kept in memory. After a metad restart none exist, which is why the sweeps wait a full
//! grace period after start before deleting anything (see `gc.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardfs_chunkd::ChunkId;

/// How long a prepared write protects its chunks: longer than any write takes to commit.
pub const INTENT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct Intents {
    until: Mutex<HashMap<ChunkId, Instant>>,
}

impl Intents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Instant>> {
        self.until.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records intents for `chunks`. Must happen before the catalogue is read for them.
    pub fn record(&self, chunks: impl IntoIterator<Item = ChunkId>) {
        let now = Instant::now();
        let mut until = self.lock();
        until.retain(|_, expiry| *expiry > now);
        for chunk in chunks {
            until.insert(chunk, now + INTENT_LIFETIME);
        }
    }

    /// The write committed: its chunks are now protected by their refcounts.
    pub fn clear(&self, chunks: impl IntoIterator<Item = ChunkId>) {
        let mut until = self.lock();
        for chunk in chunks {
            until.remove(&chunk);
        }
    }

    pub fn is_live(&self, chunk: &ChunkId) -> bool {
        self.lock().get(chunk).is_some_and(|expiry| *expiry > Instant::now())
    }
}
