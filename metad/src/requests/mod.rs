//! Every request metad answers, one module per family of operations. Each family declares,
//! for each of its operations, the request as it travels, the rule that decides whether its
//! caller may make it, the leases it needs recalled and those its answer grants, and what it
//! does (the store call, and so the [`Mutation`](crate::store::Mutation), it makes). Every
//! one of these is an exhaustive match over the family's operations: a new operation does
//! not build until it has said what each is.
//!
//! The lease machinery that uses what a family declares (recall first, grant after, all
//! under the lease table's lock) is the server's, once for every family.

pub mod attrs;
pub mod batch;
pub mod catalogue;
pub mod data;
mod flags;
pub mod locks;
pub mod members;
pub mod names;
pub mod sessions;
pub mod volume;
pub mod xattrs;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use crate::leases::Need;
use crate::server::{MetadServer, Outcome};
use crate::store::{Holder, View};
use shardfs_meta_api::proto::{Ino, MetaError, MetaRequest, SetTime};

/// Who made a request: its session, and the connection it came on.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub holder: Holder,
    pub peer: SocketAddr,
}

/// What a family declares about each of its operations.
pub trait Family: Clone + Into<MetaRequest> {
    /// Fails unless the caller may make this request, and no caller could mean values it
    /// carries that are invalid: both are refused before anything reads or stores them.
    fn permitted(&self, view: &dyn View) -> Result<(), MetaError>;
    /// What the request needs from the leases of other sessions, and what its answer grants.
    fn leasing(&self) -> Leasing<'_>;
    /// Runs the request. Called once it is permitted and, for a request that leasing covers,
    /// under the lease table's lock with no other session's lease in its way.
    fn answer(self, server: &MetadServer, caller: Caller) -> Outcome;
}

/// How a request stands to the leases mounts hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Leasing<'a> {
    /// It neither reads nor changes what leases cover.
    Uncovered,
    /// It reads or changes what leases cover: what must give way before it runs, and what
    /// its answer grants the asking mount.
    Covered { needs: Vec<(Target<'a>, Need)>, grant: Grant },
}

/// An inode a request needs leases on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target<'a> {
    Inode(Ino),
    /// The inode `name` names in directory `parent`, if any: found as the request is
    /// checked for conflicts.
    Entry(Ino, &'a [u8]),
}

/// The leases a request's answer grants the asking mount (mounts rely on exactly these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Nothing,
    /// A read lease on each inode the answer describes (not on a new name's directory:
    /// the mount holds its lease already, or keeps no attributes under one).
    Read,
    /// A regular file's or a directory's creation: its write lease, as nobody else knows it
    /// yet and its creator is about to write it, or make names in it (which, under the
    /// lease, it may answer itself and send in batches); a read lease on anything else made.
    Created,
    /// Read leases on what the request found only as it ran (a lookup's child, a
    /// listing's entries) and on directory `dir`, whose entries it read: unless another
    /// mount buffers writes to them, in which case those are recalled and it runs again.
    Found {
        dir: Option<Ino>,
    },
    /// The write lease on file `ino`.
    Write {
        ino: Ino,
    },
    /// A batch: the write lease on each inode its applied changes made (nobody else knows
    /// them yet, and its mount goes on changing them).
    Batched,
}

/// Refuses times no caller could mean (nanoseconds of a second or more), so that nothing
/// invalid is ever stored.
fn valid_times(times: &[Option<SetTime>]) -> Result<(), MetaError> {
    let invalid = |t: &Option<SetTime>| matches!(t, Some(SetTime::At(t)) if !t.is_valid());
    match times.iter().any(invalid) {
        true => Err(MetaError::Invalid("a time's nanoseconds must be below one second".into())),
        false => Ok(()),
    }
}
