//! Compaction: reclaiming the space of dead records. A sealed volume that is mostly dead has
//! its live records read, verified and appended to the volume being filled (through the
//! group commit, which marks each old copy dead in the same sync), and is then removed.
//!
//! A crash at any point loses nothing: until a group is durable the old copy is the live
//! one; after it the new one is, and the old copy is marked dead. A volume is removed data
//! file first, so its index and deletion log never outlive it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::commit::Op;
use super::{Found, ShardStore, blocking};
use shardfs_chunk_api::proto::ChunkdError;
use shardfs_rpc::sync::{Lock as _, ReadWrite as _};

/// When and how fast volumes are compacted.
#[derive(Clone, Copy, Debug)]
pub struct CompactionConfig {
    /// A sealed volume is compacted once at least this fraction of its bytes is dead.
    pub dead_fraction: f64,
    /// Bytes of live records moved per second at most, so compaction never starves clients.
    pub bytes_per_second: u64,
    /// How often to look for a volume worth compacting.
    pub check_interval: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            dead_fraction: 0.5,
            bytes_per_second: 32 << 20,
            check_interval: Duration::from_secs(60),
        }
    }
}

/// What compaction has done since the store opened.
#[derive(Debug, Default)]
pub struct CompactionProgress {
    pub volumes: AtomicU64,
    pub bytes_moved: AtomicU64,
    pub bytes_reclaimed: AtomicU64,
}

/// Compacts volumes until `shutdown` completes.
pub async fn run(
    store: Arc<ShardStore>,
    config: CompactionConfig,
    shutdown: impl Future<Output = ()>,
) {
    let work = async {
        loop {
            match candidate(&store, config.dead_fraction) {
                Some(number) => {
                    if let Err(e) = compact(&store, number, config.bytes_per_second).await {
                        warn!(volume = number, "compaction stopped: {e}");
                        tokio::time::sleep(config.check_interval).await;
                    }
                }
                None => tokio::time::sleep(config.check_interval).await,
            }
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

/// The sealed volume with the most dead bytes, if one is dead enough.
pub(super) fn candidate(store: &ShardStore, dead_fraction: f64) -> Option<u32> {
    let states = store.volumes.states.locked();
    let active = *states.keys().next_back()?;
    states
        .iter()
        .filter(|&(&number, state)| {
            number != active
                && state.dead_bytes() > 0
                && state.dead_bytes() as f64 >= dead_fraction * state.data_len as f64
        })
        .max_by_key(|(_, state)| state.dead_bytes())
        .map(|(&number, _)| number)
}

/// Moves volume `number`'s live records out, then removes it.
pub async fn compact(
    store: &Arc<ShardStore>,
    number: u32,
    bytes_per_second: u64,
) -> Result<(), ChunkdError> {
    let started = Instant::now();
    let live: Vec<_> = store
        .volumes
        .index
        .read_locked()
        .iter()
        .filter(|(_, location)| location.volume.number == number)
        .map(|(&shard, location)| (shard, location.clone()))
        .collect();
    let reclaimed = store.volumes.states.locked().get(&number).map_or(0, |s| s.data_len);
    info!(volume = number, records = live.len(), "compacting a volume");
    let mut moved = 0u64;
    for (shard, location) in live {
        moved += location.len;
        let store2 = store.clone();
        blocking(move || store2.move_into_volume(shard, &Found::Volume(location)).map(drop))
            .await?;
        let due = Duration::from_secs_f64(moved as f64 / bytes_per_second.max(1) as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    if store.submit(|reply| Op::Remove { number, reply }).await? {
        let progress = &store.compaction;
        progress.volumes.fetch_add(1, Ordering::Relaxed);
        progress.bytes_moved.fetch_add(moved, Ordering::Relaxed);
        progress.bytes_reclaimed.fetch_add(reclaimed.saturating_sub(moved), Ordering::Relaxed);
        info!(volume = number, moved, seconds = started.elapsed().as_secs(), "volume compacted");
    }
    Ok(())
}
