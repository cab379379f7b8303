//! shardfs chunk daemon: stores erasure-coded shards of BLAKE3-addressed chunks.
//!
//! This crate also owns chunk identity and the codec, which clients use to cut chunks into
//! shards, and the typed client for the chunkd protocol.

pub mod chunk_id;
pub mod codec;
pub mod membership;
pub mod proto;

pub use chunk_id::{ChunkId, ShardId};
pub use codec::Encoding;
