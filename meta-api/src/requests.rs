//! The requests to metad, one enum per family of operations. What each request may do,
//! which leases it recalls and grants, and how it is answered is metad's business, in
//! `metad/src/requests/<family>.rs`; here is only what travels on the wire.

use serde::{Deserialize, Serialize};
use shardfs_chunk_api::{ChunkId, ShardId};

use crate::file_flags::FlagChange;
use crate::proto::{
    Access, ChunkToWrite, Cred, Extent, HeldLock, InlineChunk, Ino, LockKind, MetaRequest,
    RenameMode, SetAttr, SpaceOp, StoredChunk, Timestamp, XattrMode,
};

// --- names

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum NameRequest {
    Lookup {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
    /// Creates a regular file, fifo, socket or device node; `mode` includes the type bits.
    MakeNode {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        rdev: u32,
        cred: Cred,
    },
    MakeDir {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        cred: Cred,
    },
    Symlink {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        cred: Cred,
    },
    ReadLink {
        ino: Ino,
    },
    Unlink {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
    RemoveDir {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
    Rename {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: Ino,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        mode: RenameMode,
        cred: Cred,
    },
    Link {
        ino: Ino,
        new_parent: Ino,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        cred: Cred,
    },
    /// Entries after `after` (0 = from the start), at most `limit`.
    ReadDir {
        ino: Ino,
        after: u64,
        limit: u32,
        cred: Cred,
    },
}

/// Whether a lookup of `name` reads an entry of its parent directory: not "." or "..",
/// which find an inode, or a directory's parent, by number (for file handles). Only a
/// lookup of an entry is covered by, and grants, a lease on the directory.
pub fn names_an_entry(name: &[u8]) -> bool {
    name != b"." && name != b".."
}

// --- attrs

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum AttrRequest {
    GetAttr {
        ino: Ino,
    },
    SetAttr {
        ino: Ino,
        cred: Cred,
        changes: SetAttr,
    },
    /// The file or directory was read: update its atime, under the relatime rule unless
    /// `strict` (the `strictatime` mount option). Answers the attributes.
    Accessed {
        ino: Ino,
        strict: bool,
    },
    /// Reads this mount answered at the times given, updating their files' atime as a batch
    /// (see `fs/src/core/accesses.rs`): each atime moves forward to its time, under the
    /// relatime rule unless `strict`; files gone since are skipped. Answers `Done`.
    AccessedAt {
        accesses: Vec<Access>,
        strict: bool,
    },
    /// chattr: changes the file's attribute flags, project id or extent size hint
    /// (`file_flags.rs` has the rules). Answers the attributes.
    SetFlags {
        ino: Ino,
        cred: Cred,
        change: FlagChange,
    },
}

// --- data

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum DataRequest {
    GetLayout {
        ino: Ino,
    },
    /// Asks which chunks must be stored and where (dedup and placement).
    PrepareWrite {
        /// The file being written: its class policy decides the class of new chunks.
        ino: Ino,
        chunks: Vec<ChunkToWrite>,
        /// chunkds the client could not reach: placement leaves them out.
        avoid: Vec<String>,
    },
    /// Records stored chunks, inline chunks with their content, and the extents that now
    /// use them, in one transaction.
    CommitWrite {
        ino: Ino,
        stored: Vec<StoredChunk>,
        inline: Vec<InlineChunk>,
        extents: Vec<Extent>,
        mtime: Timestamp,
    },
    Allocate {
        ino: Ino,
        offset: u64,
        len: u64,
        op: SpaceOp,
    },
    /// Makes `dst` bytes `[dst_offset, +len)` share the chunks of `src` bytes
    /// `[src_offset, +len)`.
    CloneRange {
        src: Ino,
        src_offset: u64,
        dst: Ino,
        dst_offset: u64,
        len: u64,
    },
    /// The content of a chunk kept inline.
    ReadInline {
        chunk: ChunkId,
    },
}

// --- xattrs

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum XattrRequest {
    SetXattr {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        mode: XattrMode,
        cred: Cred,
    },
    GetXattr {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
    ListXattr {
        ino: Ino,
        cred: Cred,
    },
    RemoveXattr {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
}

// --- locks

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum LockRequest {
    /// F_GETLK: the lock that would block this one, if any.
    TestLock { ino: Ino, owner: u64, start: u64, end: u64, kind: LockKind },
    /// F_SETLK (`wait` false: `WouldBlock` on conflict) or F_SETLKW.
    SetLock { ino: Ino, owner: u64, lock: HeldLock, wait: bool },
    /// F_UNLCK of `[start, end]`.
    Unlock { ino: Ino, owner: u64, start: u64, end: u64 },
}

// --- sessions

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum SessionRequest {
    /// Opens a client session for this connection, or resumes `resume` after a reconnect.
    OpenSession { host: String, resume: Option<u64> },
    /// Keeps this connection's session alive while the client is idle.
    Heartbeat,
    /// Ends this connection's session (a clean unmount): what it held is released now.
    CloseSession,
    /// The client opened file `ino`: while any client holds it open it outlives its last
    /// name. Sent once per client and inode, not per file descriptor.
    OpenFile { ino: Ino },
    /// The client closed its last handle on `ino`.
    ReleaseFile { ino: Ino },
    /// Takes an exclusive (write) lease on file `ino`, recalling every other session's
    /// lease on it: while it is held, the session may buffer writes. Answers the file's
    /// current attributes.
    WriteLease { ino: Ino },
    /// Gives back the lease on `ino` that the recall carrying `seq` asked for.
    ReleaseLease { ino: Ino, seq: u64 },
    /// Reserves `count` inode numbers (at most [`MAX_RESERVED_INOS`]) for this session to
    /// number the inodes it makes in its batches, with as many readdir cookies for their
    /// names; answers `Inos`. Numbers never used are skipped, as those of deleted inodes are.
    ReserveInos { count: u32 },
    /// After resuming its session on a metad that took over from another (a new leader,
    /// or a restart: [`MetaReply::Session`]'s `incarnation` changed), the mount has sent
    /// every change it made under the leases the old one granted: metad's grace period
    /// need not wait for it any more (docs/SEMANTICS.md, "Failover").
    ReclaimDone,
}

/// Most inode numbers one `ReserveInos` hands out.
pub const MAX_RESERVED_INOS: u32 = 65_536;

// --- batches

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum BatchRequest {
    /// Changes a mount answered itself under its write leases, in the order it answered
    /// them (at most [`MAX_BATCH`]): applied in that order in one transaction, stopping at
    /// the first that fails, whose error the answer (`Batched`) carries; those before it
    /// stay applied. Numbered like any request, so a retry applies it once. `leases_of`
    /// is the incarnation of the metad that granted the leases the first change was made
    /// under: one that is not this metad's is accepted only from a session reclaiming in
    /// its grace period, and refused (`LeasesLost`) after it.
    Batch { changes: Vec<Queued>, leases_of: u64 },
}

/// Most changes one `Batch` carries.
pub const MAX_BATCH: usize = 4096;

/// One change of a batch: the request the mount would have sent, with what it decided when
/// it answered the change itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// `MakeNode`, `MakeDir`, `Symlink`, `Link`, `Unlink`, `RemoveDir`, `Rename` (not a
    /// whiteout), `SetAttr`, `SetXattr`, `RemoveXattr`, or a `CommitWrite` (content inline, or
    /// chunks prepared and put before the change was queued).
    pub request: MetaRequest,
    /// The number of the inode a `MakeNode`, `MakeDir` or `Symlink` makes, from a block the
    /// session reserved; 0 for other changes.
    pub ino: Ino,
    /// The time the mount gave the change (its ctime, and mtime where it sets one).
    pub now: Timestamp,
}

// --- catalogue

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum CatalogueRequest {
    ChunkStatus {
        chunk: ChunkId,
    },
    CatalogueStats,
    /// Catalogued chunks after `after`, in id order, at most `limit` (without inline
    /// content).
    ListChunks {
        after: Option<ChunkId>,
        limit: u32,
    },
    /// A reader found a shard missing or corrupt.
    ReportBadShard {
        shard: ShardId,
        chunkd: String,
    },
    /// Starts a garbage-collection pass now; answers `Collecting`.
    Collect,
}

// --- members

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum MemberRequest {
    Chunkds,
    /// Drains chunkd `chunkd` (or, with `undo`, stops draining it): it takes no new shards,
    /// and repair moves the shards catalogued on it to other chunkds. Answers how many are
    /// still catalogued there.
    Drain {
        chunkd: String,
        undo: bool,
    },
    /// Removes chunkd `chunkd`, down and holding no shard in the catalogue, from the
    /// registry for good; answers `Done`.
    Forget {
        chunkd: String,
    },
}

// --- volume

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum VolumeRequest {
    Volume,
    StatFs,
    /// Makes every metadata change committed so far durable against power loss (fsync).
    Sync,
    /// Checks (and with `repair` fixes) the metadata invariants.
    Fsck {
        repair: bool,
    },
    /// Repair and garbage-collection counters.
    Workers,
}
