//! The scrub worker: re-reads every shard in the background at a bounded rate. Reading
//! verifies the shard's checksum; a corrupt shard is quarantined and reported to metad by
//! the store itself, exactly as when a client reads it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::store::ShardStore;
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::proto::ChunkdError;
use shardfs_rpc::passes::Passes;
use shardfs_rpc::sync::Lock as _;

/// Shards listed per page of a pass.
const PAGE: u32 = 256;

/// How fast and how often a chunkd scrubs.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ScrubConfig {
    /// Bytes read per second at most, so scrubbing never starves client I/O.
    pub bytes_per_second: u64,
    /// Pause between the end of one pass and the start of the next.
    pub pass_interval: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            bytes_per_second: 16 * 1024 * 1024,
            pass_interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where scrubbing is, for `Stat` and `shardfs scrub`; held by the store.
#[derive(Debug, Default)]
pub struct ScrubProgress {
    pub passes: Passes,
    last: std::sync::Mutex<PassSummary>,
}

impl ScrubProgress {
    /// What the last completed pass found.
    pub fn last(&self) -> PassSummary {
        *self.last.locked()
    }
}

/// What one pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub shards: u64,
    pub bytes: u64,
    pub corrupt: u64,
}

/// Scrubs until `shutdown` completes: a pass over every shard, then a pause, forever.
pub async fn run(store: Arc<ShardStore>, config: ScrubConfig, shutdown: impl Future<Output = ()>) {
    let work = async {
        let progress = store.scrub_progress();
        loop {
            let started = Instant::now();
            let summary = progress.passes.run(async {
                let summary = pass(&store, config.bytes_per_second).await;
                *progress.last.locked() = summary;
                summary
            });
            let summary = summary.await;
            info!(
                shards = summary.shards,
                bytes = summary.bytes,
                corrupt = summary.corrupt,
                seconds = started.elapsed().as_secs(),
                "scrub pass done"
            );
            progress.passes.pause(config.pass_interval).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

/// One pass over every shard, reading at most `bytes_per_second`.
pub async fn pass(store: &Arc<ShardStore>, bytes_per_second: u64) -> PassSummary {
    let started = Instant::now();
    let mut summary = PassSummary::default();
    let mut after: Option<ShardId> = None;
    loop {
        let page = match store.list(after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                warn!("scrub cannot list shards, pass abandoned: {e}");
                return summary;
            }
        };
        let Some(last) = page.last() else { return summary };
        after = Some(*last);
        for shard in page {
            match store.get(shard).await {
                Ok(stored) => {
                    summary.shards += 1;
                    summary.bytes += stored.data.len() as u64;
                }
                Err(ChunkdError::Corrupt(_)) => summary.corrupt += 1,
                // Deleted since it was listed.
                Err(ChunkdError::NotFound(_)) => {}
                Err(e) => warn!(%shard, "scrub could not read shard: {e}"),
            }
            // Stay under the rate: sleep off any lead over it.
            let due =
                Duration::from_secs_f64(summary.bytes as f64 / bytes_per_second.max(1) as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::flip_byte;
    use shardfs_chunk_api::chunk_id::ChunkId;
    use shardfs_chunk_api::codec::{self, Encoding};

    #[tokio::test]
    async fn a_pass_finds_every_corrupt_shard_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
        let mut reports = store.subscribe_corrupt_reports();
        let encoding = Encoding::rs(2, 1).unwrap();
        let mut shards = Vec::new();
        for i in 0..5u8 {
            let chunk = vec![i; 1000];
            let id = ChunkId::of(&chunk);
            for (index, data) in codec::encode(encoding, &chunk).into_iter().enumerate() {
                let shard = ShardId { chunk: id, index: index as u8 };
                let checksum = *blake3::hash(&data).as_bytes();
                store.put(shard, encoding, 1000, checksum, data, Vec::new()).await.unwrap();
                shards.push(shard);
            }
        }
        // Flip one byte in two shards' records.
        for victim in [shards[1], shards[7]] {
            flip_byte(dir.path(), victim, 0);
        }
        let summary = pass(&store, u64::MAX).await;
        assert_eq!((summary.shards, summary.corrupt), (13, 2));
        let mut reported = vec![reports.recv().await.unwrap(), reports.recv().await.unwrap()];
        reported.sort();
        let mut expected = vec![shards[1], shards[7]];
        expected.sort();
        assert_eq!(reported, expected);
        // The next pass sees a clean store: the corrupt shards are in quarantine.
        assert_eq!(pass(&store, u64::MAX).await.corrupt, 0);
    }

    #[tokio::test]
    async fn the_rate_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
        let encoding = Encoding::rs(1, 1).unwrap();
        for i in 0..4u8 {
            let chunk = vec![i; 50_000];
            let (id, tree) = shardfs_chunk_api::hash_tree::build(&chunk);
            let shard = ShardId { chunk: id, index: 0 };
            let data = codec::encode(encoding, &chunk).remove(0);
            let checksum = *blake3::hash(&data).as_bytes();
            store.put(shard, encoding, 50_000, checksum, data, tree).await.unwrap();
        }
        let started = Instant::now();
        let summary = pass(&store, 400_000).await;
        assert_eq!(summary.bytes, 4 * 50_000);
        assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    }
}
