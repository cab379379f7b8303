//! shardfs chunk daemon: stores erasure-coded shards of BLAKE3-addressed chunks. What
//! clients share with it (chunk identity, the codec, the protocol) is `shardfs-chunk-api`.
//!
//! - [`shard`]: the versioned on-disk shard file format.
//! - [`store`]: `ShardStore`, the verified, durable one-file-per-shard store.
//! - [`server`]: the handler of the `Chunkd` protocol.
//! - [`heartbeat`]: registration and heartbeats with metad.
//! - [`scrub`]: the background re-reading of every shard.
//! - [`daemon`]: a whole chunkd, for the binary and for in-process clusters.

pub mod daemon;
pub mod heartbeat;
pub mod metrics;
pub mod scrub;
pub mod server;
pub mod shard;
pub mod store;
