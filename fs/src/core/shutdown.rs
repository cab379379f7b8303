//! Shutting a mount down (`FS_IOC_SHUTDOWN`, xfstests' `godown`): it flushes what the
//! caller asks for, ends its metad session (so other mounts get its leases, locks and open
//! files back at once), and from then on answers every request EIO until it is unmounted.
//! What a remount shows is exactly what had reached metad: the test of the durability
//! contract that crash-consistency tests make.

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::{CLOSE_TIMEOUT, DRAIN_TIMEOUT, Fs};
use crate::error::{FsError, FsResult};

/// How much a shutdown flushes first, by the ioctl's flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// `FS_SHUTDOWN_FLAGS_DEFAULT` (0): everything, as `syncfs` would: open files' buffered
    /// writes, commits after close, the namespace changes answered here, atime updates.
    Everything,
    /// `FS_SHUTDOWN_FLAGS_LOGFLUSH` (1): the "log", the namespace changes answered here and
    /// commits already queued with them; writes still buffered are lost.
    Log,
    /// `FS_SHUTDOWN_FLAGS_NOLOGFLUSH` (2): nothing; what had not reached metad is lost.
    Nothing,
}

impl Flush {
    /// The flush an ioctl flag asks for; `None` for an unknown flag.
    pub fn from_flag(flag: u32) -> Option<Flush> {
        match flag {
            0 => Some(Flush::Everything),
            1 => Some(Flush::Log),
            2 => Some(Flush::Nothing),
            _ => None,
        }
    }
}

impl Fs {
    /// Whether the mount was shut down: every request is answered EIO.
    pub fn is_shut_down(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    /// Shuts the mount down after flushing what `flush` says (see the module). A second
    /// shutdown does nothing. Fails only if the flush `Everything` asks for failed (an open
    /// file's writes not stored, say), with that failure's error; the mount is shut down all
    /// the same.
    pub async fn shut_down(&self, flush: Flush) -> FsResult<()> {
        if self.shut.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        info!(?flush, "shutting the mount down");
        let flushed = match flush {
            Flush::Everything => {
                let committed = self.commit_open_files("shutting down", true).await;
                let unfinished = self.write_back.drain(DRAIN_TIMEOUT).await;
                self.send_accesses(None).await;
                let synced = async {
                    self.flush_journal().await?;
                    Ok::<_, FsError>(self.meta.sync().await?)
                };
                match (committed, synced.await, unfinished) {
                    (Err(e), _, _) | (Ok(()), Err(e), _) => Err(e),
                    (Ok(()), Ok(()), 0) => Ok(()),
                    (Ok(()), Ok(()), n) => Err(FsError::Unflushed(format!(
                        "{n} closed files' last writes not committed in time"
                    ))),
                }
            }
            Flush::Log => {
                let sent = self.flush_journal().await;
                let synced = async { Ok::<_, FsError>(self.meta.sync().await?) };
                match sent {
                    Ok(()) => synced.await,
                    Err(e) => Err(e),
                }
            }
            Flush::Nothing => Ok(()),
        };
        if let Err(e) = &flushed {
            warn!("shutting down: not everything asked for was flushed: {e}");
        }
        // What is still queued goes unsent; what the mount and the kernel cache goes.
        if let Some(journal) = &self.journal {
            let dropped = journal.discard();
            if dropped > 0 {
                info!(dropped, "shutting down: namespace changes answered here dropped");
            }
        }
        match tokio::time::timeout(CLOSE_TIMEOUT, self.meta.close_session()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!("shutting down: cannot close the metad session (it will expire): {e}")
            }
            Err(_) => warn!("shutting down: metad did not answer the session close"),
        }
        self.meta.shut_down();
        self.leases.reset(|| ());
        // Log flushed or not, the mount is down; only what `Everything` promised is an error.
        match flush {
            Flush::Everything => flushed,
            Flush::Log | Flush::Nothing => Ok(()),
        }
    }
}
