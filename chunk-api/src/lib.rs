//! What talks to a chunkd, shared by the client, metad, the tools and chunkd itself.
//!
//! - [`chunk_id`]: a chunk's identity, its BLAKE3 hash, and a shard's.
//! - [`codec`]: the Reed-Solomon code that cuts a chunk into `k + m` shards.
//! - [`hash_tree`]: the per-chunk tree that verifies a ranged read of a shard.
//! - [`proto`], [`client`]: the `Chunkd` wire protocol and its typed client.
//! - [`fetch`]: reading a chunk back from any `k` of its shards, verified.
//! - [`membership`]: a chunkd's registration and heartbeats with metad.

pub mod chunk_id;
pub mod client;
pub mod codec;
pub mod fetch;
pub mod hash_tree;
pub mod membership;
pub mod proto;

pub use chunk_id::{ChunkId, ShardId};
pub use codec::Encoding;
pub use fetch::ShardPlace;
