//! File attribute flags (`chattr`): reading and changing them, and what they refuse before
//! metad would (an open for writing). metad enforces them on every change whichever mount
//! sends it (`metad/src/requests/flags.rs`); a mount leaves every change to a flagged inode
//! to metad rather than answering it itself (`leases/here.rs`).

use shardfs_meta_api::file_flags::FlagChange;
use shardfs_meta_api::proto::{Attr, Cred, Ino, MetaError};

use super::Fs;
use crate::error::FsResult;

/// What an open asks of a file, from its flags.
#[derive(Clone, Copy, Debug)]
pub struct OpenIntent {
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
}

impl OpenIntent {
    pub fn of(flags: i32) -> OpenIntent {
        OpenIntent {
            write: flags & libc::O_ACCMODE != libc::O_RDONLY,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

impl Fs {
    /// Refuses (EPERM) an open its file's flags forbid: writing to an immutable file, and
    /// to an append-only one without O_APPEND or with O_TRUNC.
    pub async fn check_open(&self, ino: Ino, intent: OpenIntent) -> FsResult<()> {
        if !intent.write && !intent.truncate {
            return Ok(());
        }
        let flags = self.get_attr(ino).await?.flags;
        let append_refused = flags.append_only() && (!intent.append || intent.truncate);
        if flags.immutable() || append_refused {
            return Err(MetaError::NotPermitted.into());
        }
        Ok(())
    }

    /// chattr. What this mount buffered for the file is committed first: once the file is
    /// immutable, or append-only, metad would refuse it.
    pub async fn set_flags(&self, ino: Ino, cred: Cred, change: FlagChange) -> FsResult<Attr> {
        let file = self.open_file(ino);
        let mut data = match &file {
            Some(file) => Some(file.data.lock().await),
            None => None,
        };
        if let (Some(file), Some(data)) = (&file, data.as_mut()) {
            self.flush_locked(file, data, true).await?;
        }
        let epoch = self.leases.epoch();
        let attr = self.granting_attr(self.meta.set_flags(ino, cred, change), None, false).await?;
        // Kept only if nothing changed here meanwhile: the mount must not answer changes
        // from flags older than these.
        self.leases.update_attr(epoch, &attr);
        if let Some(data) = data.as_mut() {
            data.committed = Some(attr.clone());
        }
        // The change time moved.
        self.leases.forget_kernel_attrs(ino);
        Ok(attr)
    }
}
