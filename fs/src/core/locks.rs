//! Byte-range locks (fcntl, OFD, and flock as whole-file locks), held in metad.

use std::time::Duration;

use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::proto::{HeldLock, Ino, LockKind, MetaError};

use super::Fs;
use crate::error::FsResult;
use shardfs_rpc::sync::Lock as _;

/// Longest a lock request that met a conflict waits for this client's pending closes to drop
/// their OFD locks.
const RELEASE_RACE_WAIT: Duration = Duration::from_millis(100);

impl Fs {
    /// F_GETLK: the lock that would block `kind` over `[start, end]`, if any.
    pub async fn test_lock(
        &self,
        ino: Ino,
        owner: u64,
        range: (u64, u64),
        kind: LockKind,
    ) -> FsResult<Option<HeldLock>> {
        let deadline = tokio::time::Instant::now() + RELEASE_RACE_WAIT;
        loop {
            let conflict = self.meta.test_lock(ino, owner, range, kind).await?;
            if conflict.is_none() || !self.wait_for_release(ino, owner, deadline).await {
                return Ok(conflict);
            }
        }
    }

    /// After a lock request on `ino` met a conflict: if another open file of this client
    /// holds OFD locks on `ino`, waits until some handle drops its locks or `deadline`, and
    /// says whether to ask again. The kernel sends RELEASE only after close(2) has returned,
    /// so without this a lock whose last descriptor was just closed could still look held.
    pub(super) async fn wait_for_release(
        &self,
        ino: Ino,
        owner: u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let released = self.released_locks.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let others_hold = self
            .handles
            .locked()
            .values()
            .any(|h| h.file.ino == ino && h.lock_owners.locked().iter().any(|o| *o != owner));
        others_hold && tokio::time::timeout_at(deadline, released).await.is_ok()
    }

    /// F_SETLK / F_SETLKW through handle `fh`; `None` unlocks the range.
    pub async fn set_lock(
        &self,
        fh: u64,
        ino: Ino,
        owner: u64,
        (start, end): (u64, u64),
        lock: Option<(LockKind, u32)>,
        wait: bool,
    ) -> FsResult<()> {
        let Some((kind, pid)) = lock else {
            return Ok(self.meta.unlock(ino, owner, (start, end)).await?);
        };
        self.locked.locked().insert((ino, owner));
        self.handle(fh)?.lock_owners.locked().insert(owner);
        let held = HeldLock { start, end, kind, pid };
        let deadline = tokio::time::Instant::now() + RELEASE_RACE_WAIT;
        loop {
            match self.meta.set_lock(ino, owner, held, wait).await {
                Err(MetaClientError::Meta(MetaError::WouldBlock))
                    if self.wait_for_release(ino, owner, deadline).await => {}
                result => return Ok(result?),
            }
        }
    }

    /// A close of handle `fh` by the process `owner` stands for: drops its fcntl locks on the
    /// file, as POSIX says.
    pub async fn closed_by(&self, fh: u64, ino: Ino, owner: u64) -> FsResult<()> {
        if let Ok(handle) = self.handle(fh) {
            handle.lock_owners.locked().remove(&owner);
        }
        self.release_locks(ino, owner).await
    }

    /// Drops `owner`'s locks on `ino` (a close by that process, or the last close of a
    /// flock'ed file). Free when `owner` never asked this client for a lock on the file:
    /// every close(2) of a locked file by any process (a child closing inherited
    /// descriptors as it execs, say) would otherwise wait for metad.
    pub async fn release_locks(&self, ino: Ino, owner: u64) -> FsResult<()> {
        if !self.locked.locked().contains(&(ino, owner)) {
            return Ok(());
        }
        Ok(self.meta.unlock(ino, owner, (0, u64::MAX)).await?)
    }
}
