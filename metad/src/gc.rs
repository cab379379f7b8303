//! Garbage collection: deletes chunks no file references any more, and orphan shards (put but
//! never committed, old copies left by repair, deletes that failed), each only after a grace
//! period.
//!
//! Safety rules, each because peers lost data without them:
//! - a chunk leaves the catalogue in the same transaction that re-checks its refcount and
//!   intent, so a concurrent write either sees it gone (and stores it again) or keeps it;
//! - a shard is an orphan only if the catalogue, asked about that very shard, does not place
//!   it there; any error while listing or asking ends the sweep without deleting;
//! - an orphan is deleted only when a sweep finds it again at least a grace period after it
//!   was first seen, so nothing is deleted in the first grace period after a metad restart
//!   (or after a replica takes the lead), and only after the catalogue was confirmed
//!   current right before (`Store::confirm_current`: on a replica, that it still leads).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shardfs_chunk_api::client::ChunkClientPool;
use shardfs_chunk_api::{ChunkId, ShardId};
use tracing::{info, warn};

use crate::intents::Intents;
use crate::members::Members;
use crate::store::Store;
use shardfs_rpc::sync::Lock as _;
use shardfs_rpc::sync::blocking;

/// Shards listed per page during the orphan sweep.
const PAGE: u32 = 1000;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct GcConfig {
    /// How long an unreferenced chunk or an orphan shard is kept before deletion.
    pub grace: Duration,
    /// Pause between sweeps.
    pub interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig { grace: Duration::from_secs(3600), interval: Duration::from_secs(60) }
    }
}

#[derive(Debug, Default)]
pub struct GcStats {
    pub chunks_deleted: AtomicU64,
    pub orphans_deleted: AtomicU64,
    pub sweeps_aborted: AtomicU64,
    /// Passes, and requests for one now (`shardfs gc`).
    pub passes: shardfs_rpc::passes::Passes,
}

/// Collects garbage until `shutdown` completes.
pub async fn run(
    pool: Arc<ChunkClientPool>,
    store: Arc<Store>,
    members: Arc<Members>,
    intents: Arc<Intents>,
    config: GcConfig,
    stats: Arc<GcStats>,
    shutdown: impl Future<Output = ()>,
) {
    // Orphans by where they were seen, with when they were first seen.
    let mut suspects: HashMap<(String, ShardId), Instant> = HashMap::new();
    let work = async {
        loop {
            let one_pass = async {
                match collect_chunks(&store, &members, &intents, &pool, config.grace).await {
                    Ok(deleted) => {
                        stats.chunks_deleted.fetch_add(deleted, Ordering::Relaxed);
                    }
                    Err(e) => warn!("chunk collection failed: {e}"),
                }
                for (chunkd, addr) in members.up() {
                    let grace = config.grace;
                    match sweep(&store, &intents, &pool, &chunkd, &addr, &mut suspects, grace).await
                    {
                        Ok(deleted) => {
                            stats.orphans_deleted.fetch_add(deleted, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.sweeps_aborted.fetch_add(1, Ordering::Relaxed);
                            warn!(%chunkd, "orphan sweep aborted, nothing deleted: {e}");
                        }
                    }
                }
            };
            stats.passes.run(one_pass).await;
            stats.passes.pause(config.interval).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

/// Removes unreferenced chunks older than `grace` from the catalogue, then deletes their
/// shards (a failed delete leaves an orphan for the sweep).
async fn collect_chunks(
    store: &Arc<Store>,
    members: &Members,
    intents: &Arc<Intents>,
    pool: &ChunkClientPool,
    grace: Duration,
) -> Result<u64, String> {
    let removed = {
        let (store, intents) = (store.clone(), intents.clone());
        // Each chunk removed is claimed first, so no write can use it until its shards are
        // gone (see `intents.rs`). Durable before any shard goes: power loss must not bring
        // back a reference to it.
        blocking(move || {
            let claimed = std::sync::Mutex::new(Vec::new());
            let removed = store.remove_unreferenced_chunks(grace, &|chunk| {
                let won = intents.claim(*chunk);
                if won {
                    claimed.locked().push(*chunk);
                }
                !won
            });
            let removed = removed.and_then(|removed| store.sync().map(|()| removed));
            // Claims with no shard to delete end now: chunks referenced again before the
            // removal came to them, chunks kept inline, or all of them if it failed.
            let deleting: HashSet<ChunkId> = match &removed {
                Ok(removed) => removed.iter().map(|(shard, _)| shard.chunk).collect(),
                Err(_) => HashSet::new(),
            };
            let claimed = claimed.into_inner().unwrap_or_else(|e| e.into_inner());
            intents.unclaim(claimed.into_iter().filter(|chunk| !deleting.contains(chunk)));
            removed
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    for (shard, chunkd) in &removed {
        let Some(addr) = members.address_if_up(chunkd) else { continue };
        if let Err(e) = pool.get(&addr, chunkd).delete(*shard).await {
            warn!(%shard, %chunkd, "shard delete failed, left for the orphan sweep: {e}");
        }
    }
    let chunks = removed.iter().map(|(s, _)| s.chunk).collect::<HashSet<_>>();
    intents.unclaim(chunks.iter().copied());
    if !chunks.is_empty() {
        info!(chunks = chunks.len(), shards = removed.len(), "unreferenced chunks deleted");
    }
    Ok(chunks.len() as u64)
}

/// One sweep of one chunkd: suspects what the catalogue does not place there, deletes
/// suspects seen for longer than `grace`.
async fn sweep(
    store: &Arc<Store>,
    intents: &Intents,
    pool: &ChunkClientPool,
    chunkd: &str,
    addr: &str,
    suspects: &mut HashMap<(String, ShardId), Instant>,
    grace: Duration,
) -> Result<u64, String> {
    let client = pool.get(addr, chunkd);
    // A second of margin: catalogue times have one-second resolution.
    let listed_at = shardfs_meta_api::proto::Timestamp::now().sec - 1;
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = client.list(after, PAGE).await.map_err(|e| format!("listing: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some(*last);
        listed.extend(page);
    }
    let placed = {
        let (store, chunkd, listed) = (store.clone(), chunkd.to_string(), listed.clone());
        blocking(move || store.placed_on(&chunkd, &listed))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("catalogue: {e}"))?
    };
    let now = Instant::now();
    let mut deleted = 0;
    let present: HashSet<ShardId> = listed.iter().copied().collect();
    // The other direction: shards the catalogue places here that the chunkd does not have
    // (lost with a disk, deleted by hand) are marked unhealthy, for repair to rebuild.
    let missing = {
        let (store, chunkd, present) = (store.clone(), chunkd.to_string(), present.clone());
        blocking(move || store.mark_missing(&chunkd, &present, listed_at))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("catalogue: {e}"))?
    };
    if missing > 0 {
        warn!(chunkd, missing, "shards missing from their chunkd marked for repair");
    }
    suspects.retain(|(where_, shard), _| where_ != chunkd || present.contains(shard));
    for (shard, is_placed) in listed.into_iter().zip(placed) {
        let key = (chunkd.to_string(), shard);
        if is_placed || intents.is_live(&shard.chunk) {
            suspects.remove(&key);
            continue;
        }
        let first_seen = *suspects.entry(key.clone()).or_insert(now);
        if now.duration_since(first_seen) < grace {
            continue;
        }
        // Ask once more, right before deleting, of a catalogue confirmed current and
        // durable first: what it says then holds after power loss too, and on a replica it
        // is not the word of a deposed leader. Until a quorum's leader lease from the
        // confirmation runs out (0.9 s) no other replica can be elected and commit a use of
        // the shard; the delete goes out at once.
        let still_orphan = {
            let (store, chunkd) = (store.clone(), chunkd.to_string());
            blocking(move || {
                store.confirm_current()?;
                store.placed_on(&chunkd, &[shard])
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("catalogue: {e}"))?
                == [false]
        };
        // Claimed while it goes, so no write finds it just before (see `intents.rs`).
        if still_orphan && intents.claim(shard.chunk) {
            let gone = client.delete(shard).await;
            intents.unclaim([shard.chunk]);
            gone.map_err(|e| format!("delete of {shard}: {e}"))?;
            suspects.remove(&key);
            deleted += 1;
        }
    }
    if deleted > 0 {
        info!(chunkd, deleted, "orphan shards deleted");
    }
    Ok(deleted)
}
