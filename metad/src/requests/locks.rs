//! Byte-range locks (`fcntl`, OFD and `flock`), held cluster-wide in metad's lock table
//! (`crate::locks`), which records them in the database as they change.

use super::{Caller, Family, Leasing};
use crate::server::{MetadServer, Outcome};
use crate::store::View;
use shardfs_meta_api::proto::{LockRequest, MetaError, MetaReply};

impl Family for LockRequest {
    /// Locks are advisory and anyone who can open a file may lock it, as on Linux: the
    /// kernel checked the open.
    fn permitted(&self, _: &dyn View) -> Result<(), MetaError> {
        match self {
            LockRequest::TestLock { .. }
            | LockRequest::SetLock { .. }
            | LockRequest::Unlock { .. } => Ok(()),
        }
    }

    /// Locks are never cached by a mount: every lock request comes to metad.
    fn leasing(&self) -> Leasing<'_> {
        match self {
            LockRequest::TestLock { .. }
            | LockRequest::SetLock { .. }
            | LockRequest::Unlock { .. } => Leasing::Uncovered,
        }
    }

    fn answer(self, server: &MetadServer, caller: Caller) -> Outcome {
        let (locks, holder) = (&server.locks, caller.holder);
        Outcome::Answered(match self {
            LockRequest::TestLock { ino, owner, start, end, kind } => {
                Ok(MetaReply::Lock(locks.test(ino, holder, owner, start, end, kind)))
            }
            LockRequest::SetLock { ino, owner, lock, wait } => {
                // F_SETLKW waits, holding nothing, for the table to change, then tries again.
                let version = locks.version();
                match locks.set(ino, holder, owner, lock) {
                    Err(MetaError::WouldBlock) if wait => {
                        let again = LockRequest::SetLock { ino, owner, lock, wait };
                        return Outcome::WaitLock(again.into(), version);
                    }
                    result => result.map(|()| MetaReply::Done),
                }
            }
            LockRequest::Unlock { ino, owner, start, end } => {
                locks.unlock(ino, holder, owner, start, end);
                Ok(MetaReply::Done)
            }
        })
    }
}
