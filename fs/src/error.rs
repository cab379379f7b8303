//! The client's error type, and the one place where errors become errno values.

use fuser::Errno;
use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::proto::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("metad: {0}")]
    MetaTransport(shardfs_rpc::Error),
    #[error("metad protocol error: {0}")]
    MetaProtocol(String),
    /// A chunk could not be read back intact from enough shards.
    #[error("chunk {chunk} unreadable: {reason}")]
    ChunkUnreadable { chunk: String, reason: String },
    /// A chunkd's disk is full, so shards could not be stored at the promised redundancy.
    #[error("chunk {chunk} not stored, a chunkd is full: {reason}")]
    NoSpace { chunk: String, reason: String },
    /// Shards could not be stored at the promised redundancy.
    #[error("chunk {chunk} not stored: {reason}")]
    ChunkNotStored { chunk: String, reason: String },
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not supported")]
    Unsupported,
    #[error("result does not fit the caller's buffer")]
    Range,
    /// lseek: no data (or hole) at or after the offset.
    #[error("no such offset")]
    NoSuchOffset,
    /// The inode a request named by number is gone: the kernel's cached name for it is out
    /// of date, and a path lookup answered this (ESTALE) looks the name up again.
    #[error("stale file handle")]
    Stale,
    /// metad refused a change this mount had answered itself (`journal.rs`): it and the
    /// changes made after it are lost.
    #[error("changes made on this mount were refused by metad: {0}")]
    Refused(MetaError),
    /// Writes a flush had to make durable were not, in the time it allows.
    #[error("not flushed: {0}")]
    Unflushed(String),
    /// The mount was shut down (`FS_IOC_SHUTDOWN`): it answers nothing any more.
    #[error("the mount was shut down")]
    ShutDown,
}

impl FsError {
    /// `e`, or `Stale` if it says the inode a request named by number does not exist.
    pub fn stale_if_gone(e: FsError) -> FsError {
        match e {
            FsError::Meta(MetaError::NotFound) => FsError::Stale,
            e => e,
        }
    }
}

impl From<MetaClientError> for FsError {
    fn from(e: MetaClientError) -> FsError {
        match e {
            MetaClientError::Meta(e) => FsError::Meta(e),
            MetaClientError::Rpc(e) => FsError::MetaTransport(e),
            MetaClientError::UnexpectedReply(op) => FsError::MetaProtocol(op.to_string()),
            MetaClientError::ShutDown => FsError::ShutDown,
        }
    }
}

impl From<&FsError> for Errno {
    fn from(e: &FsError) -> Errno {
        match e {
            FsError::Meta(e) => match e {
                MetaError::NotFound => Errno::ENOENT,
                MetaError::Exists => Errno::EEXIST,
                MetaError::NotEmpty => Errno::ENOTEMPTY,
                MetaError::NotDir => Errno::ENOTDIR,
                MetaError::IsDir => Errno::EISDIR,
                MetaError::NameTooLong => Errno::ENAMETOOLONG,
                MetaError::Invalid(_) => Errno::EINVAL,
                MetaError::NotPermitted => Errno::EPERM,
                MetaError::NoData => Errno::NO_XATTR,
                MetaError::TooBig => Errno::E2BIG,
                MetaError::TooManyLinks => Errno::EMLINK,
                MetaError::NoSpace(_) | MetaError::MetadataFull => Errno::ENOSPC,
                MetaError::FileTooBig => Errno::EFBIG,
                MetaError::WouldBlock => Errno::EAGAIN,
                MetaError::AccessDenied => Errno::EACCES,
                MetaError::TooManyOpenFiles(_) => Errno::ENFILE,
                MetaError::Unsupported(_) => Errno::EOPNOTSUPP,
                MetaError::ChunkGone(_)
                | MetaError::Store(_)
                | MetaError::SessionExpired
                | MetaError::LeasesLost
                | MetaError::Unavailable(_)
                | MetaError::NotLeader(_) => Errno::EIO,
            },
            FsError::MetaTransport(_)
            | FsError::MetaProtocol(_)
            | FsError::ChunkUnreadable { .. }
            | FsError::ChunkNotStored { .. }
            | FsError::Unflushed(_)
            | FsError::ShutDown => Errno::EIO,
            FsError::NoSpace { .. } => Errno::ENOSPC,
            FsError::Invalid(_) => Errno::EINVAL,
            FsError::Unsupported => Errno::EOPNOTSUPP,
            FsError::Range => Errno::ERANGE,
            FsError::NoSuchOffset => Errno::ENXIO,
            FsError::Stale => Errno::ESTALE,
            // As a local filesystem reports a failed delayed allocation.
            FsError::Refused(MetaError::NoSpace(_) | MetaError::MetadataFull) => Errno::ENOSPC,
            FsError::Refused(_) => Errno::EIO,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
