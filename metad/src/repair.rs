//! The repair worker: rebuilds shards that are corrupt, missing, or on chunkds gone longer
//! than a grace period, from `k` verified shards, onto other chunkds. Chunks with the least
//! redundancy left go first; the pace is bounded. All state is in the catalogue, so a
//! restarted metad simply carries on.

use shardfs_rpc::sync::blocking;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardfs_chunk_api::client::ChunkClientPool;
use shardfs_chunk_api::fetch::{self, ChunkShape};
use shardfs_chunk_api::{Encoding, ShardId, ShardPlace, codec, hash_tree};
use tracing::{info, warn};

use crate::members::Members;
use crate::placement;
use crate::store::{ChunkdRecord, Store};
use shardfs_meta_api::proto::{ChunkStatus, MetaError, ShardStatus};

/// Chunks looked at per scan.
const BATCH: usize = 256;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RepairConfig {
    /// How long a chunkd may stay down before its shards are rebuilt elsewhere.
    pub grace: Duration,
    /// Pause between scans of the catalogue.
    pub interval: Duration,
    /// Chunks rebuilt per second at most.
    pub chunks_per_second: u32,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            grace: Duration::from_secs(600),
            interval: Duration::from_secs(10),
            chunks_per_second: 50,
        }
    }
}

/// Progress, for status reporting.
#[derive(Debug, Default)]
pub struct RepairStats {
    pub shards_rebuilt: AtomicU64,
    pub chunks_failed: AtomicU64,
    /// Chunks needing repair at the last scan.
    pub backlog: AtomicU64,
}

/// Repairs until `shutdown` completes.
pub async fn run(
    pool: Arc<ChunkClientPool>,
    store: Arc<Store>,
    members: Arc<Members>,
    config: RepairConfig,
    stats: Arc<RepairStats>,
    shutdown: impl Future<Output = ()>,
) {
    let pace = Duration::from_secs_f64(1.0 / f64::from(config.chunks_per_second.max(1)));
    let work = async {
        loop {
            // Shards on chunkds being drained are rebuilt elsewhere like lost ones.
            let mut lost = members.lost(config.grace);
            lost.extend(members.draining());
            let scan = {
                let (store, lost) = (store.clone(), lost.clone());
                blocking(move || store.repair_candidates(&lost, BATCH)).await
            };
            let candidates = match scan {
                Ok(Ok((backlog, candidates))) => {
                    stats.backlog.store(backlog as u64, Ordering::Relaxed);
                    candidates
                }
                Ok(Err(e)) => {
                    warn!("repair scan failed: {e}");
                    Vec::new()
                }
                Err(e) => {
                    warn!("repair scan task failed: {e}");
                    Vec::new()
                }
            };
            for chunk in candidates {
                match repair_chunk(&store, &members, &pool, &chunk, &lost).await {
                    Ok(0) => {}
                    Ok(rebuilt) => {
                        stats.shards_rebuilt.fetch_add(rebuilt, Ordering::Relaxed);
                        info!(chunk = %chunk.chunk, rebuilt, "chunk repaired");
                    }
                    Err(e) => {
                        stats.chunks_failed.fetch_add(1, Ordering::Relaxed);
                        warn!(chunk = %chunk.chunk, "repair failed: {e}");
                    }
                }
                tokio::time::sleep(pace).await;
            }
            tokio::time::sleep(config.interval).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

/// Reads `chunk` from its shards `from` (those of them on chunkds that are up), verified
/// against its id, and encodes it in class `to`: its shards by position, and its hash tree.
pub(crate) async fn read_and_encode(
    pool: &ChunkClientPool,
    members: &Members,
    chunk: &ChunkStatus,
    from: &[&ShardStatus],
    to: Encoding,
) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let places: Vec<ShardPlace> = (from.iter())
        .filter_map(|shard| {
            let addr = members.address_if_up(&shard.chunkd)?;
            Some(ShardPlace { index: shard.index, chunkd: shard.chunkd.clone(), addr })
        })
        .collect();
    let shape = ChunkShape { chunk: chunk.chunk, len: chunk.len, encoding: chunk.encoding };
    let content = fetch::fetch(pool, shape, &places).await.content?;
    blocking(move || {
        let (_, tree) = hash_tree::build(&content);
        (codec::encode(to, &content), tree)
    })
    .await
    .map_err(|e| e.to_string())
}

/// The `bad` shards of an lrc chunk, by position, rebuilt each from the rest of its local
/// group, and the chunk's hash tree (for the data shards' puts): `None` unless every bad
/// shard has its group otherwise among the `good` shards (one lost per group). The group's
/// shards are each verified by their chunkd against their record's checksum; the rebuilt
/// bytes cannot be checked against the chunk id without `k` shards, which is the point of
/// not reading them: reads verify the chunk id as always, and scrub its records.
async fn rebuild_locally(
    pool: &ChunkClientPool,
    members: &Members,
    chunk: &ChunkStatus,
    good: &[&ShardStatus],
    bad: &[&ShardStatus],
) -> Option<Result<(Vec<Option<Vec<u8>>>, Vec<u8>), String>> {
    let encoding = chunk.encoding;
    if !matches!(encoding, Encoding::Lrc { .. }) {
        return None;
    }
    let available: Vec<usize> = good.iter().map(|s| codec::position(s.index)).collect();
    let mut sources = Vec::new();
    for shard in bad {
        let group = encoding.repair_sources(codec::position(shard.index), &available);
        if group.len() >= encoding.needed() {
            return None;
        }
        sources.extend(group);
    }
    sources.sort_unstable();
    sources.dedup();
    Some(rebuild_from(pool, members, chunk, good, bad, &sources).await)
}

/// [`rebuild_locally`] once the `sources` (positions) are chosen.
async fn rebuild_from(
    pool: &ChunkClientPool,
    members: &Members,
    chunk: &ChunkStatus,
    good: &[&ShardStatus],
    bad: &[&ShardStatus],
    sources: &[usize],
) -> Result<(Vec<Option<Vec<u8>>>, Vec<u8>), String> {
    let (encoding, len) = (chunk.encoding, chunk.len);
    let shard_len = encoding.shard_len(len as usize);
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; encoding.total()];
    let mut tree = Vec::new();
    for shard in good.iter().filter(|s| sources.contains(&codec::position(s.index))) {
        let addr = members.address_if_up(&shard.chunkd).ok_or("a group member's chunkd is down")?;
        let client = pool.get(&addr, &shard.chunkd);
        let id = ShardId { chunk: chunk.chunk, index: shard.index };
        let (got, got_len, data) = client.get(id).await.map_err(|e| format!("get of {id}: {e}"))?;
        if (got, got_len, data.len()) != (encoding, len, shard_len) {
            return Err(format!("shard {id} has the wrong shape"));
        }
        // A data shard brings the chunk's tree, which rebuilt data shards are put with.
        let wants_tree = hash_tree::tree_len(len) > 0 && tree.is_empty();
        if wants_tree && encoding.holds_data(codec::position(shard.index)) {
            let (_, got_tree) =
                client.get_range(id, 0, 1, true).await.map_err(|e| format!("tree of {id}: {e}"))?;
            if hash_tree::root(&got_tree, len) != Some(chunk.chunk) {
                return Err(format!("the tree with {id} does not hash to the chunk id"));
            }
            tree = got_tree;
        }
        slots[codec::position(shard.index)] = Some(data);
    }
    let needs_tree = bad.iter().any(|s| encoding.holds_data(codec::position(s.index)));
    if needs_tree && hash_tree::tree_len(len) > 0 && tree.is_empty() {
        return Err("no data shard in the group to take the hash tree from".into());
    }
    let mut rebuilt: Vec<Option<Vec<u8>>> = vec![None; encoding.total()];
    for shard in bad {
        let position = codec::position(shard.index);
        let data = codec::rebuild(encoding, len as usize, &mut slots, position)
            .map_err(|e| e.to_string())?;
        rebuilt[position] = Some(data);
    }
    Ok((rebuilt, tree))
}

/// Rebuilds the bad shards of one chunk; returns how many were rebuilt.
async fn repair_chunk(
    store: &Arc<Store>,
    members: &Members,
    pool: &ChunkClientPool,
    chunk: &ChunkStatus,
    lost: &HashSet<String>,
) -> Result<u64, String> {
    let encoding = chunk.encoding;
    let usable = |s: &&ShardStatus| s.healthy && !lost.contains(&s.chunkd);
    let bad: Vec<_> = chunk.shards.iter().filter(|s| !usable(s)).collect();
    if bad.is_empty() {
        return Ok(0);
    }
    let good: Vec<&ShardStatus> = chunk.shards.iter().filter(usable).collect();
    let (mut shards, tree) = match rebuild_locally(pool, members, chunk, &good, &bad).await {
        Some(rebuilt) => rebuilt?,
        // Rebuild the chunk from k good shards, verified against its id.
        None => {
            let (shards, tree) = read_and_encode(pool, members, chunk, &good, encoding).await?;
            (shards.into_iter().map(Some).collect(), tree)
        }
    };
    // New homes: up, not full, and not already holding a good shard of this chunk.
    let holding: HashSet<&str> =
        chunk.shards.iter().filter(usable).map(|s| s.chunkd.as_str()).collect();
    let candidates: Vec<ChunkdRecord> =
        members.usable().into_iter().filter(|c| !holding.contains(c.id.as_str())).collect();
    let held_zones: Vec<Option<String>> = holding.iter().map(|id| members.zone_of(id)).collect();
    let held_zones: Vec<Option<&str>> = held_zones.iter().map(Option::as_deref).collect();
    let count = bad.len().min(candidates.len());
    let targets =
        placement::place(&chunk.chunk, count, &candidates, &held_zones).unwrap_or_default();
    let mut rebuilt = 0;
    for (shard, target) in bad.iter().zip(targets) {
        let id = ShardId { chunk: chunk.chunk, index: shard.index };
        let data = shards[codec::position(shard.index)].take().ok_or("shard not rebuilt")?;
        pool.get(&target.addr, &target.id)
            .put(id, encoding, chunk.len, data, &tree)
            .await
            .map_err(|e| format!("put of shard {} to {}: {e}", shard.index, target.id))?;
        let moved = {
            let (store, from, to) = (store.clone(), shard.chunkd.clone(), target.id.clone());
            let index = shard.index;
            let chunk = chunk.chunk;
            blocking(move || store.move_shard(chunk, index, &from, &to))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e: MetaError| e.to_string())?
        };
        rebuilt += u64::from(moved);
    }
    if count < bad.len() {
        return Err(format!(
            "{} shards rebuilt, no chunkd left for {}",
            rebuilt,
            bad.len() - count
        ));
    }
    Ok(rebuilt)
}
