//! The metad client protocol (service `Metad`), carried in `shardfs_rpc` frames.
//!
//! Every `MetaRequest` gets one `MetaResponse = Result<MetaReply, MetaError>`. Requests that
//! act for a user carry the caller's credentials (`Cred`).

use crate::file_flags::FileFlags;
use serde::{Deserialize, Serialize};
use shardfs_chunk_api::proto::VolumeStat;
use shardfs_chunk_api::{ChunkId, Encoding};

pub use shardfs_chunk_api::ShardPlace;
use shardfs_chunk_api::fetch::ChunkShape;

pub use crate::fsck::{FsckReport, Problem};
pub use crate::requests::{
    AttrRequest, BatchRequest, CatalogueRequest, DataRequest, LockRequest, MAX_BATCH,
    MAX_RESERVED_INOS, MemberRequest, NameRequest, Queued, SessionRequest, VolumeRequest,
    XattrRequest, names_an_entry,
};

/// Inode number. The root directory is always [`ROOT_INO`].
pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// Longest name of a directory entry, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Longest symlink target, in bytes.
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Longest extended attribute value, in bytes (Linux's own limit).
pub const MAX_XATTR_VALUE_LEN: usize = 64 * 1024;
/// Longest extended attribute name, in bytes.
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// Largest chunk kept inline in metad's database instead of erasure-coded on chunkds (see
/// `docs/architecture.md`, "Small chunks inline").
pub const INLINE_MAX: u64 = 64 * 1024;
/// Inline content a layout carries at most; the rest is read with `ReadInline`.
pub const LAYOUT_INLINE_BUDGET: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
}

/// A held lock, as F_GETLK reports it. `end` is inclusive (`u64::MAX`: to end of file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The kind encoded in the `S_IFMT` bits of a mode, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(FileKind::File),
            libc::S_IFDIR => Some(FileKind::Dir),
            libc::S_IFLNK => Some(FileKind::Symlink),
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDevice),
            libc::S_IFBLK => Some(FileKind::BlockDevice),
            _ => None,
        }
    }
}

/// A read of file (or directory) `ino` at time `at`, for its atime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub ino: Ino,
    pub at: Timestamp,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp { sec: now.as_secs() as i64, nsec: now.subsec_nanos() }
    }

    /// Whether this is a time at all: nanoseconds below one second (as `utimensat` requires).
    pub fn is_valid(&self) -> bool {
        self.nsec < 1_000_000_000
    }
}

/// What a request that adds a name answers: the named inode's attributes and its
/// directory's, both as the change left them, so that the mount making the change need not
/// ask for the directory's again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub attr: Attr,
    pub parent: Attr,
    /// Whether the directory has a default ACL (which what is made in it inherits, in place
    /// of the umask): a mount that makes inodes there itself must know.
    pub default_acl: bool,
    /// The readdir cookie of the new name: listings resume after it.
    pub cookie: u64,
}

/// What an unlink answers: the directory's attributes as the change left them, the unlinked
/// inode, and its attributes unless it went with its last name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlinked {
    pub parent: Attr,
    pub ino: Ino,
    pub target: Option<Attr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: Ino,
    pub generation: u64,
    pub kind: FileKind,
    /// Permission bits including suid, sgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes of file content actually stored (extents), for `st_blocks`.
    pub allocated: u64,
    pub nlink: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u32,
    /// Attribute flags (`chattr`), project id and extent size hint.
    pub flags: FileFlags,
}

/// The generation every inode has (inode numbers are never reused, so one is enough).
pub const GENERATION: u64 = 1;

/// How often relatime refreshes an atime that is already newer than mtime and ctime.
const RELATIME_INTERVAL_SECS: i64 = 24 * 3600;

impl Attr {
    /// The attributes after `changes` made at `now`, apart from a size change (truncation
    /// is a layout change) and the access ACL a mode change rewrites: the mode's bits; a new
    /// owner or group, which on anything but a directory clears set-user-id, and
    /// set-group-id when it means "setgid" (group-executable), as Linux does for every
    /// caller; the times; and the change time, `now`.
    pub fn with_set(&self, changes: &SetAttr, now: Timestamp) -> Attr {
        let mut perm = u32::from(self.perm);
        if let Some(mode) = changes.mode {
            perm = mode & 0o7777;
        }
        let owner_changes = changes.uid.is_some_and(|u| u != self.uid)
            || changes.gid.is_some_and(|g| g != self.gid);
        if owner_changes && self.kind != FileKind::Dir {
            perm &= !libc::S_ISUID;
            if perm & libc::S_IXGRP != 0 {
                perm &= !libc::S_ISGID;
            }
        }
        let time = |set: &Option<SetTime>, old: Timestamp| match set {
            None => old,
            Some(SetTime::Now) => now,
            Some(SetTime::At(at)) => *at,
        };
        Attr {
            perm: perm as u16,
            uid: changes.uid.unwrap_or(self.uid),
            gid: changes.gid.unwrap_or(self.gid),
            atime: time(&changes.atime, self.atime),
            mtime: time(&changes.mtime, self.mtime),
            ctime: now,
            ..self.clone()
        }
    }

    /// Whether a read at `now` updates atime under the relatime rule: atime not newer than
    /// mtime or ctime, or over a day old.
    pub fn atime_due(&self, now: Timestamp) -> bool {
        self.atime <= self.mtime
            || self.atime <= self.ctime
            || self.atime.sec < now.sec - RELATIME_INTERVAL_SECS
    }
}

/// Who is asking: the calling process's filesystem ids, as its client asserts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    /// The process's umask, for new inodes (ignored where a default ACL applies).
    pub umask: u32,
    /// Supplementary groups, for permission checks.
    pub groups: Vec<u32>,
}

impl Cred {
    /// The superuser: what the client and tools use for work not done for a user.
    pub const ROOT: Cred = Cred { uid: 0, gid: 0, umask: 0, groups: Vec::new() };

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// Attribute changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Position of this entry: pass it back as `after` to continue after it. Stays valid
    /// while the directory changes.
    pub cookie: u64,
    pub attr: Attr,
}

/// File bytes `[offset, offset + len)` are bytes `[chunk_offset, chunk_offset + len)` of
/// `chunk`. Bytes of a file covered by no extent are a hole and read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub chunk: ChunkId,
    pub chunk_offset: u64,
}

impl Extent {
    /// The chunk id of an unwritten extent: space fallocate(2) set aside, which counts in
    /// `st_blocks` and reads as zeros but holds no chunk (no content hashes to all zeros).
    pub const UNWRITTEN: ChunkId = ChunkId([0; 32]);

    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    pub fn is_unwritten(&self) -> bool {
        self.chunk == Extent::UNWRITTEN
    }
}

/// Where a chunk's content is: in the shards of its class on chunkds, or, for a chunk kept
/// inline in metad (class `Inline`, no shards), in `inline` or to be read with `ReadInline`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLocation {
    pub chunk: ChunkId,
    pub len: u64,
    pub encoding: Encoding,
    pub shards: Vec<ShardPlace>,
    #[serde(with = "serde_bytes")]
    pub inline: Option<Vec<u8>>,
}

impl ChunkLocation {
    /// Whether the chunk is kept in metad's database rather than on chunkds.
    pub fn is_inline(&self) -> bool {
        self.encoding.is_inline()
    }

    /// What a fetch of its shards needs to know of the chunk.
    pub fn shape(&self) -> ChunkShape {
        ChunkShape { chunk: self.chunk, len: self.len, encoding: self.encoding }
    }
}

/// A file's committed content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub attr: Attr,
    /// Sorted by offset, never overlapping.
    pub extents: Vec<Extent>,
    /// One entry per distinct chunk the extents use.
    pub chunks: Vec<ChunkLocation>,
}

/// A chunk a client is about to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkToWrite {
    pub chunk: ChunkId,
    pub len: u64,
}

/// metad's answer for one chunk to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkPlan {
    /// Already stored with full redundancy, where the location says: reference it, put
    /// nothing (dedup).
    Stored(ChunkLocation),
    /// Put shard `i` on `targets[i]`, then commit with these places.
    Place { encoding: Encoding, targets: Vec<ShardPlace> },
}

/// A chunk of at most [`INLINE_MAX`] bytes, committed with its content, which metad keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineChunk {
    pub chunk: ChunkId,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl InlineChunk {
    /// Where the chunk is, as a layout names it: in metad's database, content included.
    pub fn location(&self) -> ChunkLocation {
        let (len, encoding) = (self.data.len() as u64, Encoding::Inline);
        ChunkLocation {
            chunk: self.chunk,
            len,
            encoding,
            shards: Vec::new(),
            inline: Some(self.data.clone()),
        }
    }
}

/// A chunk whose shards the client has stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    pub chunk: ChunkId,
    pub len: u64,
    pub encoding: Encoding,
    pub shards: Vec<ShardPlace>,
}

impl StoredChunk {
    /// Where the chunk is, as a layout names it: on the chunkds its shards were put on.
    pub fn location(&self) -> ChunkLocation {
        ChunkLocation {
            chunk: self.chunk,
            len: self.len,
            encoding: self.encoding,
            shards: self.shards.clone(),
            inline: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// The class new data is written in.
    pub hot: Encoding,
    /// The class data is moved to once it has not been written for the lifecycle age.
    pub cold: Encoding,
    pub chunk_size: u64,
    pub root: Ino,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    /// Raw bytes of the live chunkds' disks.
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub inodes: u64,
}

impl StatFs {
    /// Capacity as users see it: raw chunkd space scaled by `encoding`'s overhead (`k` of
    /// every `k + m` bytes hold data, one of every `n` replicas).
    pub fn usable(&self, encoding: Encoding) -> StatFs {
        let scale = |bytes: u64| {
            (bytes as u128 * encoding.needed() as u128 / encoding.total().max(1) as u128) as u64
        };
        StatFs {
            capacity_bytes: scale(self.capacity_bytes),
            free_bytes: scale(self.free_bytes),
            inodes: self.inodes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkdStatus {
    pub id: String,
    pub addr: String,
    pub zone: Option<String>,
    pub up: bool,
    /// Up, but silent for more than half the down-after time: new shards avoid it.
    pub suspect: bool,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub shard_count: u64,
    /// Being drained: takes no new shards, its shards are moved off.
    pub draining: bool,
    /// From its last heartbeat: scrub passes done since it started, corrupt shards the last
    /// one found, and shards quarantined since it started.
    pub scrub_passes: u64,
    pub last_scrub_corrupt: u64,
    pub quarantined: u64,
    /// Up, but with too little free space to take new shards.
    pub full: bool,
    /// Whether it reported since this metad started: if not, its figures are the last ones
    /// recorded before, and may be stale.
    pub reported: bool,
    /// The filesystem its data directory is on, as its host names it (see `ChunkdStat`).
    pub filesystem: u64,
    /// Its volume files and their compaction, from its last heartbeat.
    pub volumes: VolumeStat,
}

/// Counters of metad's background workers since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub shards_rebuilt: u64,
    pub chunks_failed_repair: u64,
    /// Chunks found needing repair at the last scan (at most one batch).
    pub repair_backlog: u64,
    pub chunks_collected: u64,
    pub orphans_deleted: u64,
    /// Chunks the lifecycle moved to another class since start, their bytes, moves that
    /// failed (tried again), and chunks its last complete scan found waiting.
    pub chunks_moved: u64,
    pub bytes_moved: u64,
    pub chunks_failed_move: u64,
    pub lifecycle_backlog: u64,
    pub sweeps_aborted: u64,
    /// Leases mounts hold now, granted and recalled since start, and revoked (not released
    /// within a session timeout of their recall).
    pub leases_held: u64,
    pub leases_granted: u64,
    pub leases_recalled: u64,
    pub leases_revoked: u64,
    /// Garbage-collection passes completed since start.
    pub gc_passes: u64,
    /// Client sessions (mounts) open now.
    pub sessions: u64,
    /// Requests from mounts (client sessions) since start, heartbeats and lease releases
    /// excepted: the round trips their caches did not save.
    pub mount_requests: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    pub index: u8,
    pub chunkd: String,
    /// `false` once the shard was reported corrupt or missing.
    pub healthy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStatus {
    pub chunk: ChunkId,
    pub len: u64,
    pub encoding: Encoding,
    pub refcount: u64,
    pub shards: Vec<ShardStatus>,
}

/// What one storage class holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassUsage {
    /// As `replicas(3)`, `rs(4,2)`, `lrc(6,2,2)` or `inline`.
    pub class: String,
    pub chunks: u64,
    /// Bytes of the chunks themselves.
    pub bytes: u64,
    /// Bytes their shards take on chunkds (payloads only; inline chunks count once, in
    /// metad's database).
    pub raw_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueStats {
    pub chunks: u64,
    /// Sum of the lengths of all catalogued chunks (each stored once).
    pub chunk_bytes: u64,
    pub unhealthy_shards: u64,
    /// Chunks short of full redundancy: a shard unhealthy or on a chunkd that is down.
    pub degraded_chunks: u64,
    /// What each storage class holds.
    pub classes: Vec<ClassUsage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// Fail with `Exists` if present (XATTR_CREATE).
    Create,
    /// Fail with `NoData` if absent (XATTR_REPLACE).
    Replace,
}

/// What fallocate(2) asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpaceOp {
    /// Mode 0 or FALLOC_FL_KEEP_SIZE: make the range usable. shardfs reserves no space; only
    /// the size grows (unless `keep_size`).
    Allocate { keep_size: bool },
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE.
    PunchHole,
    /// FALLOC_FL_ZERO_RANGE, optionally with FALLOC_FL_KEEP_SIZE.
    ZeroRange { keep_size: bool },
}

/// Rename variants, as in renameat2(2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
    /// RENAME_WHITEOUT (overlayfs): also leaves a whiteout, a 0/0 character device owned by
    /// the caller, under the old name, in the same transaction.
    Whiteout {
        no_replace: bool,
    },
}

/// Declares [`MetaRequest`], one variant per family of requests, the conversion of each
/// family's requests into it, and its operation names.
macro_rules! families {
    ($($family:ident($request:ident)),* $(,)?) => {
        /// A request to metad, by family (`crate::requests`: one module per family declares
        /// its requests, who may make them, the leases they need and grant, and what they
        /// do).
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum MetaRequest {
            $($family($request),)*
        }

        $(impl From<$request> for MetaRequest {
            fn from(request: $request) -> MetaRequest {
                MetaRequest::$family(request)
            }
        })*

        impl MetaRequest {
            /// The operation's name, as metrics and logs show it (`Lookup`, `CommitWrite`, …).
            pub fn op(&self) -> &'static str {
                match self {
                    $(MetaRequest::$family(request) => request.into(),)*
                }
            }
        }
    };
}

families!(
    Names(NameRequest),
    Attrs(AttrRequest),
    Data(DataRequest),
    Xattrs(XattrRequest),
    Locks(LockRequest),
    Sessions(SessionRequest),
    Catalogue(CatalogueRequest),
    Members(MemberRequest),
    Volume(VolumeRequest),
    Batches(BatchRequest),
);

/// What metad pushes to a mount over its session's connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaPush {
    /// Give back the lease on `ino`: commit what is buffered, drop what is cached, then send
    /// `ReleaseLease` with this `seq`.
    Recall { ino: Ino, seq: u64 },
}

pub type MetaResponse = Result<MetaReply, MetaError>;

#[derive(Debug, Serialize, Deserialize)]
pub enum MetaReply {
    Volume(VolumeInfo),
    Attr(Attr),
    Done,
    Target(#[serde(with = "serde_bytes")] Vec<u8>),
    Entries {
        parent: Ino,
        entries: Vec<DirEntry>,
    },
    Layout(Layout),
    Plans(Vec<ChunkPlan>),
    Xattr(#[serde(with = "serde_bytes")] Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    StatFs(StatFs),
    Chunkds(Vec<ChunkdStatus>),
    ChunkStatus(Option<ChunkStatus>),
    CatalogueStats(CatalogueStats),
    Cloned {
        attr: Attr,
        len: u64,
    },
    Lock(Option<HeldLock>),
    Fsck(FsckReport),
    Chunks(Vec<ChunkLocation>),
    Workers(WorkerStatus),
    /// The session a connection acts for, and how long it may stay silent before it expires;
    /// `incarnation` names the metad answering (a new one with each leader's term and each
    /// restart), whose leases the session holds from now on.
    Session {
        id: u64,
        timeout_ms: u64,
        incarnation: u64,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Drained {
        remaining: u64,
    },
    /// A pass that began after the `Collect` has ended once `WorkerStatus.gc_passes`
    /// reaches `done_after`.
    Collecting {
        done_after: u64,
    },
    /// The answer to `MakeNode`, `MakeDir`, `Symlink` and `Link`.
    Made(Made),
    /// The answer to `Unlink`.
    Unlinked(Unlinked),
    /// The answer to `Rename`: the inode whose name it replaced, if any (not for exchanges).
    Renamed {
        replaced: Option<Ino>,
    },
    /// The answer to `ReserveInos`: numbers `first..first + count` are the session's, and
    /// the name a batch makes for inode `first + i` gets readdir cookie `first_cookie + i`.
    Inos {
        first: Ino,
        count: u32,
        first_cookie: u64,
    },
    /// The answer to `Batch`: how many of its changes were applied, from the first; the
    /// error of the one that failed, if any (no later one was tried); and the inodes the
    /// applied ones made.
    Batched {
        applied: u32,
        failed: Option<MetaError>,
        made: Vec<Ino>,
    },
}

/// Application errors. The FUSE client maps each to one errno.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("operation not permitted")]
    NotPermitted,
    #[error("no such attribute")]
    NoData,
    #[error("attribute value too large")]
    TooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("no space: {0}")]
    NoSpace(String),
    /// A chunk the client meant to reference is gone; it must prepare the write again.
    #[error("chunk {0} is no longer stored")]
    ChunkGone(String),
    #[error("metadata store error: {0}")]
    Store(String),
    #[error("file too large")]
    FileTooBig,
    #[error("permission denied")]
    AccessDenied,
    /// A lock is held by another owner (F_SETLK).
    #[error("resource temporarily unavailable")]
    WouldBlock,
    /// The client's session expired: what it held (locks, open files) was released.
    #[error("client session expired")]
    SessionExpired,
    /// The client's session holds as many open files as metad allows one session.
    #[error("too many open files: this client already holds {0}")]
    TooManyOpenFiles(u64),
    /// Too few chunkds are up to store data at the redundancy the volume requires.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This metad replica is not its group's leader; the leader's address, if it knows it.
    #[error("this metad replica is not the leader{}", .0.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader(Option<String>),
    /// metad's own disk is full: changes that need room are refused; deletions still work.
    #[error("metad's disk is full")]
    MetadataFull,
    /// Changes made under leases of a metad that another replaced (a failover or restart),
    /// sent after the new one's grace period for them ended: other mounts may have changed
    /// the same files since, so they are not applied.
    #[error("changes made under leases lost in a metad failover, sent after its grace period")]
    LeasesLost,
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// How long a metad that took over (a new leader, or a restart) waits for the mounts whose
/// sessions it took up to send what they changed under the old one's leases, before it
/// answers anyone else; it stops waiting as soon as each has (`ReclaimDone`). A mount that
/// cannot reach metad for this long stops serving from its write leases.
pub const RECLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A request as it travels to metad: a mount's requests carry their number in the session,
/// so that one retried on another replica after a failover is applied once and gets its
/// first answer (docs/SEMANTICS.md, "Failover").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: Option<Seq>,
    pub request: MetaRequest,
}

/// A request's number in its session, and the number below which the session has had
/// every answer (metad may forget those).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seq {
    pub n: u64,
    pub answered_below: u64,
}
