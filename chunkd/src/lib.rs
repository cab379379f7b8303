//! shardfs chunk daemon: stores erasure-coded shards of BLAKE3-addressed chunks.
//!
//! This crate also owns chunk identity and the codec, which clients use to cut chunks into
//! shards, and the typed client for the chunkd protocol.
//!
//! - [`shard`]: the versioned on-disk shard file format.
//! - [`store`]: `ShardStore`, the verified, durable one-file-per-shard store.
//! - [`proto`], [`server`], [`client`]: the `Chunkd` wire protocol, its handler, its client.
//! - [`membership`], [`heartbeat`]: registration and heartbeats with metad.
//! - [`daemon`]: a whole chunkd, for the binary and for in-process clusters.

pub mod chunk_id;
pub mod client;
pub mod codec;
pub mod daemon;
pub mod hash_tree;
pub mod heartbeat;
pub mod membership;
pub mod metrics;
pub mod proto;
pub mod scrub;
pub mod server;
pub mod shard;
pub mod store;

pub use chunk_id::{ChunkId, ShardId};
pub use codec::Encoding;
