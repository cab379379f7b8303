//! The chunkd wire protocol (service `Chunkd`), carried in `shardfs_rpc` frames.
//!
//! Every request gets exactly one `ChunkdResponse`, which is `Result<ChunkdReply, ChunkdError>`.

use serde::{Deserialize, Serialize};

use crate::chunk_id::ShardId;
use crate::codec::Encoding;

/// What a chunkd frame carries: a request and the id of the chunkd it is meant for. Callers
/// reach a chunkd by the address metad registered for it, and another chunkd may have taken
/// that address since (a restart on a reused port, a replaced disk); a chunkd refuses calls
/// meant for another with `WrongChunkd`, so nobody takes its answer (or its shard list) for
/// the other's.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChunkdCall {
    pub chunkd: String,
    pub request: ChunkdRequest,
}

/// `strum::IntoStaticStr` names each request for metrics (`Put`, `Get`, …).
#[derive(Debug, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ChunkdRequest {
    /// Store one shard durably. `checksum` is BLAKE3 of `data`; a mismatch is rejected.
    /// Storing a shard that is already present (and verifies) succeeds without rewriting it;
    /// storing different content under a present shard id is `Invalid`. `data` must be
    /// exactly `encoding.shard_len(chunk_len)` bytes, as `codec::encode` produces.
    Put {
        shard: ShardId,
        encoding: Encoding,
        /// Length of the whole chunk the shard belongs to.
        chunk_len: u64,
        checksum: [u8; 32],
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// The chunk's hash tree (`hash_tree`) in a data shard of a chunk of more than one
        /// segment, empty otherwise; it must hash to the chunk id.
        #[serde(with = "serde_bytes")]
        tree: Vec<u8>,
    },
    /// Read one shard, verified against its stored checksum.
    Get { shard: ShardId },
    /// Remove one shard. Removing an absent shard is not an error.
    Delete { shard: ShardId },
    /// Shards held, in `ShardId` order, starting after `after`, at most `limit` (and at most
    /// `store::MAX_LIST_LIMIT`). A page may be shorter than asked; an empty one ends the list.
    List { after: Option<ShardId>, limit: u32 },
    /// Capacity and usage.
    Stat,
    /// Start a scrub pass now; answers `Scrubbing`.
    Scrub,
    /// Read bytes `[offset, offset + len)` of a data shard, unverified, and the chunk's hash
    /// tree if `with_tree`, for the reader to verify against the chunk id. Shards stored
    /// without a tree answer `Invalid`.
    GetRange { shard: ShardId, offset: u64, len: u32, with_tree: bool },
}

pub type ChunkdResponse = Result<ChunkdReply, ChunkdError>;

#[derive(Debug, Serialize, Deserialize)]
pub enum ChunkdReply {
    Stored,
    Shard {
        encoding: Encoding,
        chunk_len: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Deleted {
        existed: bool,
    },
    Listed {
        shards: Vec<ShardId>,
    },
    Stat(ChunkdStat),
    /// A pass that began after the `Scrub` has ended once `ChunkdStat.scrub_passes` reaches
    /// `done_after`.
    Scrubbing {
        done_after: u64,
    },
    /// The answer to `GetRange`; `tree` is empty unless asked for.
    Range {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "serde_bytes")]
        tree: Vec<u8>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkdStat {
    /// Bytes of the filesystem holding the data directory.
    pub capacity_bytes: u64,
    /// Bytes still free on that filesystem.
    pub free_bytes: u64,
    /// Bytes of live shard records (header, payload, tree) this chunkd holds.
    pub used_bytes: u64,
    pub shard_count: u64,
    /// Shards moved to quarantine since start.
    pub quarantined: u64,
    /// Scrub passes completed since start, and what the last one verified and found corrupt.
    pub scrub_passes: u64,
    pub last_scrub_shards: u64,
    pub last_scrub_corrupt: u64,
    /// The id of the filesystem holding the data directory (statvfs `f_fsid`): chunkds on
    /// one host that share a filesystem count its space once.
    pub filesystem: u64,
    pub volumes: VolumeStat,
}

/// A chunkd's volume files and their compaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStat {
    /// Volume files, and the bytes of records they hold, live or dead.
    pub count: u64,
    pub bytes: u64,
    /// Bytes of dead records (deleted, moved or damaged), reclaimed by compaction.
    pub dead_bytes: u64,
    /// Since the chunkd started: volumes compacted, and the bytes that freed.
    pub compacted: u64,
    pub reclaimed_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChunkdError {
    #[error("shard {0} not found")]
    NotFound(String),
    #[error("shard {0} failed verification and was quarantined")]
    Corrupt(String),
    #[error("shard {0} content does not match its declared checksum")]
    ChecksumMismatch(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("chunkd disk full: {0}")]
    NoSpace(String),
    #[error("chunkd i/o error: {0}")]
    Io(String),
    #[error("call meant for chunkd {expected} reached chunkd {actual}")]
    WrongChunkd { expected: String, actual: String },
}
