//! chunkd's Prometheus metrics: requests by operation, shard bytes in and out, and the
//! store's disk usage and compaction read at each scrape.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardfs_rpc::metrics::{Counter, OpMetrics, Registry, Snapshot, Value, counter};

use crate::store::ShardStore;

pub struct ChunkdMetrics {
    registry: Registry,
    pub requests: OpMetrics,
    /// Shard bytes received by puts and sent by gets.
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    snapshot: Arc<Snapshot>,
}

impl ChunkdMetrics {
    pub fn new() -> ChunkdMetrics {
        let mut registry = Registry::default();
        let requests =
            OpMetrics::register(&mut registry, "shardfs_chunkd_requests", "Shard requests");
        let bytes_in = counter(&mut registry, "shardfs_chunkd_bytes_in", "Shard bytes received");
        let bytes_out = counter(&mut registry, "shardfs_chunkd_bytes_out", "Shard bytes sent");
        let snapshot = Snapshot::register(&mut registry);
        ChunkdMetrics { registry, requests, bytes_in, bytes_out, snapshot }
    }

    /// The metrics text, with `store`'s usage as of now.
    pub async fn render(&self, store: &Arc<ShardStore>) -> String {
        let values = match store.stat().await {
            Ok(s) => vec![
                Value::gauge(
                    "shardfs_chunkd_capacity_bytes",
                    "Size of the data disk",
                    s.capacity_bytes,
                ),
                Value::gauge(
                    "shardfs_chunkd_free_bytes",
                    "Free space on the data disk",
                    s.free_bytes,
                ),
                Value::gauge(
                    "shardfs_chunkd_used_bytes",
                    "Bytes of shard files held",
                    s.used_bytes,
                ),
                Value::gauge("shardfs_chunkd_shards", "Shards held", s.shard_count),
                Value::counter(
                    "shardfs_chunkd_quarantined",
                    "Shards quarantined as corrupt",
                    s.quarantined,
                ),
                Value::gauge("shardfs_chunkd_volumes", "Volume files", s.volumes.count),
                Value::gauge(
                    "shardfs_chunkd_volume_bytes",
                    "Bytes of records in volume files, live or dead",
                    s.volumes.bytes,
                ),
                Value::gauge(
                    "shardfs_chunkd_dead_bytes",
                    "Bytes of dead records, to be reclaimed by compaction",
                    s.volumes.dead_bytes,
                ),
                Value::counter(
                    "shardfs_chunkd_compacted_volumes",
                    "Volumes compacted",
                    s.volumes.compacted,
                ),
                Value::counter(
                    "shardfs_chunkd_compaction_moved_bytes",
                    "Bytes of live records compaction moved",
                    store.compaction_progress().bytes_moved.load(Ordering::Relaxed),
                ),
                Value::counter(
                    "shardfs_chunkd_compaction_reclaimed_bytes",
                    "Bytes compaction freed",
                    s.volumes.reclaimed_bytes,
                ),
            ],
            Err(_) => Vec::new(),
        };
        self.snapshot.set(values);
        shardfs_rpc::metrics::encode(&self.registry)
    }
}

impl Default for ChunkdMetrics {
    fn default() -> Self {
        ChunkdMetrics::new()
    }
}
