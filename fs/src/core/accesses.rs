//! Atime updates made here at once and sent to metad afterwards, in batches, as `lazytime`
//! keeps them in memory on a local disk.
//!
//! A read that moves a file's atime (relatime, or every read with strictatime) is noted in
//! the lease table, and from then on the kernel is shown that atime; metad gets it in a
//! batch ([`AttrRequest::AccessedAt`](shardfs_meta_api::proto::AttrRequest)), one change
//! for the whole batch, which on a replicated metad is one log entry instead of one per
//! read. A batch goes within [`SEND_WITHIN`], at once when [`SEND_AT`] updates wait, and
//! before anything that must find the atime at metad: the recall of the file's lease
//! (another mount's change to it), an explicit atime change here, `fsync` of the file or of
//! a directory, and unmount. Another mount that only reads the file's attributes meanwhile
//! may see the older atime for that long (docs/SEMANTICS.md).

use std::sync::Weak;
use std::time::Duration;

use shardfs_meta_api::proto::{Attr, Ino, Timestamp};
use tracing::debug;

use super::{AtimePolicy, Fs};

/// Longest a read's atime update waits before it is sent.
const SEND_WITHIN: Duration = Duration::from_secs(1);

/// Atime updates waiting that make a batch go at once.
const SEND_AT: usize = 512;

impl Fs {
    /// A read of `ino`, whose attributes this mount knows as `attr`: moves its atime if the
    /// mount's atime policy says so, here at once and at metad later; answers whether it
    /// did. The kernel itself stops trusting the atime it caches after a read or a listing
    /// it sent here (`fuse_invalidate_atime`), so its next stat asks for it; the caller of a
    /// read that did not reach here must drop the kernel's attributes itself. (Dropping them
    /// all after every read made the kernel ask for them again at each read's end, to check
    /// the size: one more round trip per file read.)
    pub(super) fn note_read(&self, ino: Ino, attr: &Attr) -> bool {
        if self.atime_update(Some(&self.leases.shown(attr))).is_none() {
            return false;
        }
        let waiting = self.leases.accessed(ino, Timestamp::now());
        // Once as the count reaches it, not at every read while a batch is on its way.
        if waiting == SEND_AT
            && let Some(me) = self.me.upgrade()
        {
            tokio::spawn(async move { me.send_accesses(None).await });
        }
        true
    }

    /// Sends the atime updates waiting (those of `only`, or all) and waits for metad's
    /// answer. Batches go one at a time, so one sent after another is applied after it.
    /// Best effort, as atime is: a batch metad cannot take is logged and dropped.
    pub(super) async fn send_accesses(&self, only: Option<Ino>) {
        let _turn = self.sending_accesses.lock().await;
        let batch = self.leases.accesses_to_send(only);
        if batch.is_empty() {
            return;
        }
        let strict = self.options.atime == AtimePolicy::Always;
        let recorded = match self.meta.accessed_at(batch.clone(), strict).await {
            Ok(_) => true,
            Err(e) => {
                debug!(updates = batch.len(), "atime updates not recorded: {e}");
                false
            }
        };
        self.leases.accesses_sent(&batch, recorded);
    }
}

/// Sends the atime updates that wait, within [`SEND_WITHIN`] of each, until the client is
/// dropped.
pub(super) async fn send_accesses_in_time(fs: Weak<Fs>) {
    loop {
        tokio::time::sleep(SEND_WITHIN).await;
        let Some(fs) = fs.upgrade() else { return };
        fs.send_accesses(None).await;
    }
}
