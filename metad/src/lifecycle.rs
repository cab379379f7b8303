//! The lifecycle worker, on the leader: moves chunks to the class their files come to rest
//! in (`Store::lifecycle_candidates`), such as new data written as `replicas(3)` to
//! `rs(4,2)` once it has not been written for the lifecycle age.
//!
//! One move: read the chunk from its current shards, verified against its id; encode it in
//! the new class; put the new shards, in the set of shard slots the old ones do not use, on
//! chunkds placed as for a new chunk; read each back (the chunkd checks its record) and
//! compare it with what was put; then switch the chunk's class and shards in one mutation,
//! which applies only if the chunk is still referenced and still in the old class. The old
//! shards leave the catalogue there and the orphan sweep deletes them after the GC grace,
//! so a reader that fetched the old layout just before can still read them meanwhile.
//!
//! Until the switch the new shards are protected from the orphan sweep by a write intent.
//! Everything else is in the catalogue: a move cut short by a crash or a failover leaves
//! new shards that the sweep deletes, and the chunk, still in its old class, is found again
//! by the next scan, on this metad or the next leader.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardfs_chunk_api::client::ChunkClientPool;
use shardfs_chunk_api::{ChunkId, ShardId, ShardPlace, codec};
use shardfs_rpc::sync::blocking;
use tracing::{debug, info, warn};

use crate::intents::Intents;
use crate::members::Members;
use crate::store::{Holder, Store, Transition};
use crate::{placement, repair};
use shardfs_meta_api::proto::Timestamp;

/// Chunks looked at per catalogue read.
const BATCH: u32 = 256;

/// The holder of the lifecycle's write intents: no client session has this id.
const LIFECYCLE: Holder = u64::MAX;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct LifecycleConfig {
    /// How long a file must have gone unwritten before its chunks move to the cold class.
    pub age: Duration,
    /// Bytes of chunks moved per second at most.
    pub rate: u64,
    /// Pause between scans of the catalogue.
    pub interval: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            age: Duration::from_secs(24 * 3600),
            rate: 32 << 20,
            interval: Duration::from_secs(60),
        }
    }
}

/// Progress, for status reporting.
#[derive(Debug, Default)]
pub struct LifecycleStats {
    pub chunks_moved: AtomicU64,
    pub bytes_moved: AtomicU64,
    pub chunks_failed: AtomicU64,
    /// Chunks found waiting to move by the last complete scan.
    pub backlog: AtomicU64,
}

/// Moves chunks until `shutdown` completes.
pub async fn run(
    pool: Arc<ChunkClientPool>,
    (store, members, intents): (Arc<Store>, Arc<Members>, Arc<Intents>),
    config: LifecycleConfig,
    stats: Arc<LifecycleStats>,
    shutdown: impl Future<Output = ()>,
) {
    let work = async {
        loop {
            let cutoff = Timestamp::now().sec - config.age.as_secs() as i64;
            let (mut after, mut found) = (None, 0);
            loop {
                let scan = {
                    let store = store.clone();
                    blocking(move || store.lifecycle_candidates(after, BATCH, cutoff)).await
                };
                let (moves, last) = match scan {
                    Ok(Ok(scanned)) => scanned,
                    Ok(Err(e)) => {
                        warn!("lifecycle scan failed: {e}");
                        break;
                    }
                    Err(e) => {
                        warn!("lifecycle scan task failed: {e}");
                        break;
                    }
                };
                found += moves.len() as u64;
                stats.backlog.fetch_max(found, Ordering::Relaxed);
                for transition in moves {
                    let len = transition.chunk.len;
                    match move_chunk(&pool, (&store, &members, &intents), &transition).await {
                        Ok(true) => {
                            stats.chunks_moved.fetch_add(1, Ordering::Relaxed);
                            stats.bytes_moved.fetch_add(len, Ordering::Relaxed);
                            debug!(chunk = %transition.chunk.chunk, to = %transition.to, "chunk moved");
                        }
                        Ok(false) => {}
                        Err(e) => {
                            stats.chunks_failed.fetch_add(1, Ordering::Relaxed);
                            warn!(chunk = %transition.chunk.chunk, to = %transition.to, "move failed: {e}");
                        }
                    }
                    let pace = Duration::from_secs_f64(len as f64 / config.rate.max(1) as f64);
                    tokio::time::sleep(pace).await;
                }
                after = last;
                if after.is_none() {
                    stats.backlog.store(found, Ordering::Relaxed);
                    break;
                }
            }
            if found > 0 {
                info!(chunks = found, "lifecycle pass done");
            }
            tokio::time::sleep(config.interval).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

/// Moves one chunk; false if it changed meanwhile and was left alone.
async fn move_chunk(
    pool: &ChunkClientPool,
    (store, members, intents): (&Arc<Store>, &Members, &Intents),
    Transition { chunk, to }: &Transition,
) -> Result<bool, String> {
    let (id, from, to) = (chunk.chunk, chunk.encoding, *to);
    let all: Vec<_> = chunk.shards.iter().collect();
    let (shards, tree) = repair::read_and_encode(pool, members, chunk, &all, to).await?;
    // The other set of slots than the old shards'.
    let base = match chunk.shards.iter().all(|s| usize::from(s.index) < codec::MAX_SHARDS) {
        true => codec::MAX_SHARDS as u8,
        false => 0,
    };
    let targets = placement::place_new(&id, to, to.total(), &members.usable(), members.full())
        .map_err(|e| e.to_string())?;
    intents.record(LIFECYCLE, [id], usize::MAX).map_err(|e| e.to_string())?;
    let moved =
        put_and_switch(pool, store, chunk.len, (id, from, to), (shards, &tree), targets, base)
            .await;
    intents.clear(LIFECYCLE, [id]);
    moved
}

/// Puts `shards` on `targets` (their indexes moved up by `base`), reads each back, and
/// switches the chunk's class.
async fn put_and_switch(
    pool: &ChunkClientPool,
    store: &Arc<Store>,
    len: u64,
    (id, from, to): (ChunkId, codec::Encoding, codec::Encoding),
    (shards, tree): (Vec<Vec<u8>>, &[u8]),
    targets: Vec<ShardPlace>,
    base: u8,
) -> Result<bool, String> {
    let mut placed = Vec::with_capacity(targets.len());
    for (shard, target) in shards.into_iter().zip(targets) {
        let index = base + target.index;
        let client = pool.get(&target.addr, &target.chunkd);
        let shard_id = ShardId { chunk: id, index };
        let sum = blake3::hash(&shard);
        client
            .put(shard_id, to, len, shard, tree)
            .await
            .map_err(|e| format!("put of shard {index} to {}: {e}", target.chunkd))?;
        match client.get(shard_id).await {
            Ok((class, got_len, bytes))
                if class == to && got_len == len && blake3::hash(&bytes) == sum => {}
            Ok(_) => {
                return Err(format!("shard {index} on {} reads back different", target.chunkd));
            }
            Err(e) => {
                return Err(format!("read-back of shard {index} from {}: {e}", target.chunkd));
            }
        }
        placed.push(ShardPlace { index, ..target });
    }
    let store = store.clone();
    blocking(move || store.switch_class(id, (from, to), &placed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
