//! What `shardfs fsck` is told: the metadata invariants found broken, and how many fixed.

use serde::{Deserialize, Serialize};

use crate::proto::Ino;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Problem {
    /// A directory entry names an inode that does not exist.
    DanglingEntry { parent: Ino, name: String, ino: Ino },
    /// An entry's parent is missing or not a directory.
    OrphanedEntry { parent: Ino, name: String },
    /// The stored link count differs from the one the entries imply.
    WrongLinkCount { ino: Ino, stored: u32, actual: u32 },
    /// An inode nobody names (and nobody has open).
    UnreachableInode { ino: Ino },
    /// A chunk's stored refcount differs from the number of extents using it.
    WrongRefcount { chunk: String, stored: u64, actual: u64 },
    /// An extent points at a chunk the catalogue does not have.
    MissingChunk { ino: Ino, offset: u64, chunk: String },
    /// An extent ends past its file's size.
    ExtentPastEof { ino: Ino, offset: u64, end: u64, size: u64 },
    /// A shard is placed on a chunkd that is not registered.
    UnknownChunkd { chunk: String, index: u8, chunkd: String },
    /// A chunk has the wrong number of shard rows for its encoding.
    WrongShardCount { chunk: String, shards: u64, expected: u64 },
    /// An inline chunk's content is missing or does not match its length and BLAKE3 id.
    BadInlineChunk { chunk: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::DanglingEntry { parent, name, ino } => {
                write!(f, "entry {name:?} in directory {parent} names missing inode {ino}")
            }
            Problem::OrphanedEntry { parent, name } => {
                write!(f, "entry {name:?} lies in {parent}, which is not a directory")
            }
            Problem::WrongLinkCount { ino, stored, actual } => {
                write!(f, "inode {ino} has link count {stored}, its entries imply {actual}")
            }
            Problem::UnreachableInode { ino } => write!(f, "inode {ino} has no name"),
            Problem::WrongRefcount { chunk, stored, actual } => {
                write!(f, "chunk {chunk} has refcount {stored}, {actual} extents use it")
            }
            Problem::MissingChunk { ino, offset, chunk } => {
                write!(f, "inode {ino} at offset {offset} uses uncatalogued chunk {chunk}")
            }
            Problem::ExtentPastEof { ino, offset, end, size } => {
                write!(f, "inode {ino} has an extent {offset}..{end} past its size {size}")
            }
            Problem::UnknownChunkd { chunk, index, chunkd } => {
                write!(f, "shard {index} of chunk {chunk} is on unregistered chunkd {chunkd}")
            }
            Problem::WrongShardCount { chunk, shards, expected } => {
                write!(f, "chunk {chunk} has {shards} shards, its encoding needs {expected}")
            }
            Problem::BadInlineChunk { chunk } => {
                write!(f, "inline chunk {chunk}: content missing or not matching its id")
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    pub inodes: u64,
    pub entries: u64,
    pub chunks: u64,
    pub problems: Vec<Problem>,
    /// How many of `problems` were fixed (only with `repair`).
    pub repaired: u64,
}
