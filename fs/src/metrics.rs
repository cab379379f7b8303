//! The client's Prometheus metrics: FUSE operations by name with their latency, bytes read
//! and written through the mount, chunk cache hits and misses, ranged reads, leases held and files open.

use std::sync::Arc;

use shardfs_rpc::metrics::{Counter, OpMetrics, Registry, Snapshot, Value, counter};

pub struct ClientMetrics {
    registry: Registry,
    pub fuse_ops: OpMetrics,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub range_reads: Counter,
    snapshot: Arc<Snapshot>,
}

impl ClientMetrics {
    pub fn new() -> ClientMetrics {
        let mut registry = Registry::default();
        let fuse_ops =
            OpMetrics::register(&mut registry, "shardfs_client_fuse_ops", "FUSE operations");
        ClientMetrics {
            bytes_read: counter(&mut registry, "shardfs_client_bytes_read", "Bytes read"),
            bytes_written: counter(&mut registry, "shardfs_client_bytes_written", "Bytes written"),
            cache_hits: counter(
                &mut registry,
                "shardfs_client_cache_hits",
                "Chunk reads from cache",
            ),
            cache_misses: counter(
                &mut registry,
                "shardfs_client_cache_misses",
                "Chunk reads not cached",
            ),
            range_reads: counter(
                &mut registry,
                "shardfs_client_range_reads",
                "Reads served by a part of a data shard, verified through the chunk's hash tree",
            ),
            fuse_ops,
            snapshot: Snapshot::register(&mut registry),
            registry,
        }
    }

    /// The metrics text, with the gauges as of now.
    pub fn render(&self, now: Gauges) -> String {
        self.snapshot.set(vec![
            Value::gauge("shardfs_client_leases_held", "Leases this mount holds", now.leases_held),
            Value::gauge("shardfs_client_cache_bytes", "Bytes in the chunk cache", now.cache_bytes),
            Value::gauge("shardfs_client_open_files", "Files open on this mount", now.open_files),
        ]);
        shardfs_rpc::metrics::encode(&self.registry)
    }
}

/// What the client's gauges show.
pub struct Gauges {
    pub leases_held: u64,
    pub cache_bytes: u64,
    pub open_files: u64,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics::new()
    }
}
