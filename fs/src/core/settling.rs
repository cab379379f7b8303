//! Leases: recording what metad's answers grant, and settling a recall (commit what the
//! lease covered, drop the cached state and the kernel's caches, give the lease back).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::proto::{Attr, FileKind, Ino, Made};
use tracing::{debug, warn};

use super::Fs;
use super::open_files::{FileData, OpenFile};
use crate::error::{FsError, FsResult};
use crate::leases::Recall;
use shardfs_rpc::sync::blocking;

/// Grants of a file's write lease a write may see recalled before it fails. metad holds a
/// new write lease for a moment before recalling it, so one attempt nearly always does.
const WRITE_LEASE_ATTEMPTS: usize = 1000;

/// Longest a recall waits for the kernel to drop what the mount cached before the lease is
/// released anyway: the kernel may be holding the inode for a request of this mount that
/// itself waits for the recall. The invalidation still completes after that.
const INVALIDATE_WAIT: Duration = Duration::from_millis(100);

/// Settles lease recalls as they arrive, each on its own task so a slow commit delays no
/// other, until the client is dropped.
/// Recalls that cannot be settled are tried again every half second: their warning is
/// logged once per interval.
static UNSETTLED_LOG: shardfs_rpc::throttle::Throttle =
    shardfs_rpc::throttle::Throttle::new(Duration::from_secs(10));

/// Recalls settled at once; more wait their turn, so a burst of recalls (metad shedding
/// thousands of leases) does not become thousands of tasks and blocking threads.
const MAX_SETTLING: usize = 64;

pub(super) async fn settle_recalls(
    fs: std::sync::Weak<Fs>,
    mut recalls: tokio::sync::mpsc::UnboundedReceiver<Ino>,
) {
    let settling = Arc::new(tokio::sync::Semaphore::new(MAX_SETTLING));
    while let Some(ino) = recalls.recv().await {
        let turn = settling.clone().acquire_owned().await.expect("semaphore never closed");
        let Some(fs) = fs.upgrade() else { return };
        tokio::spawn(async move {
            fs.settle(ino).await;
            drop(turn);
        });
    }
}

impl Fs {
    /// Runs a metad call whose answer grants this mount read leases on the inodes `leased`
    /// picks from it, and records them.
    pub(super) async fn granting<T>(
        &self,
        call: impl Future<Output = Result<T, MetaClientError>>,
        leased: impl FnOnce(&T) -> Vec<Ino>,
    ) -> FsResult<T> {
        let epoch = self.leases.epoch();
        let value = call.await?;
        self.leases.granted(epoch, &leased(&value), false);
        Ok(value)
    }

    /// Settles the recall of the lease on `ino`: commits what is buffered under a write
    /// lease, drops the cached layout and the kernel's caches, and releases the lease.
    pub(super) async fn settle(&self, ino: Ino) {
        // A mount shut down commits and releases nothing: its session is closed, and what
        // it buffered is lost. The kernel's caches still go.
        if self.is_shut_down() {
            if let Some(recall) = self.leases.take_recall(ino) {
                let leases = self.leases.clone();
                let invalidated = blocking(move || leases.invalidate(ino, &recall));
                let _ = tokio::time::timeout(INVALIDATE_WAIT, invalidated).await;
            }
            return;
        }
        // What this mount changed under the lease reaches metad before it is given back:
        // until it has, the lease is kept (metad revokes it if this session expires).
        if let Some(journal) = &self.journal
            && let Err(e) = journal.sent_for(ino).await
        {
            if let Some(held_back) = UNSETTLED_LOG.admit() {
                warn!(ino, held_back, "recalled lease kept: changes made here not sent yet: {e}");
            }
            self.leases.recall_again(ino, Recall::default());
            return;
        }
        let recall = match self.open_file(ino) {
            // Only a write lease covers buffered writes. A read lease is settled without
            // the file's data, which a write may hold while it waits for a write lease that
            // waits for this very recall.
            Some(file) if self.leases.write_recall_pending(ino) => {
                let mut data = file.data.lock().await;
                let Some(recall) = self.leases.take_recall(ino) else { return };
                if let Err(e) = self.flush_locked(&file, &mut data, true).await {
                    // Giving the lease back would show the other mount the file as it was
                    // before writes a close here already reported done: the lease is kept,
                    // and the recall tried again, until the commit is made (or metad
                    // revokes the lease when this session expires).
                    if let Some(held_back) = UNSETTLED_LOG.admit() {
                        warn!(
                            ino,
                            held_back,
                            "recalled lease kept: buffered writes cannot be committed: {e}"
                        );
                    }
                    self.leases.recall_again(ino, recall);
                    return;
                }
                data.layout = None;
                recall
            }
            open => {
                let Some(recall) = self.leases.take_recall(ino) else { return };
                if let Some(file) = open {
                    file.stale.store(true, Ordering::Relaxed);
                }
                recall
            }
        };
        let recall = Arc::new(recall);
        let invalidated = {
            let (leases, recall) = (self.leases.clone(), recall.clone());
            blocking(move || leases.invalidate(ino, &recall))
        };
        if tokio::time::timeout(INVALIDATE_WAIT, invalidated).await.is_err() {
            debug!(ino, "kernel still busy with the inode; releasing its lease meanwhile");
        }
        // The change that recalled the lease comes after the reads made under it.
        self.send_accesses(Some(ino)).await;
        self.give_back(ino, &recall).await;
    }

    /// Releases a recalled lease, first telling metad of an open the lease let this client
    /// keep to itself.
    async fn give_back(&self, ino: Ino, recall: &Recall) {
        if let Some(file) = self.file_in_use(ino)
            && let Err(e) = self.register_open(&file).await
        {
            warn!(ino, "cannot register an open file with metad: {e}");
        }
        if let Some(seq) = recall.seq
            && let Err(e) = self.meta.release_lease(ino, seq).await
        {
            debug!(ino, "lease release failed (metad lets it expire): {e}");
        }
    }

    /// The file's data, locked, with this mount holding its write lease: a write buffers
    /// and picks the end of file only under it. The lease is asked for without the data
    /// locked, so recalls (which settle under that lock) go on meanwhile; a grant recalled
    /// before it was recorded is asked for again.
    pub(super) async fn locked_with_write_lease<'a>(
        &self,
        file: &'a OpenFile,
    ) -> FsResult<tokio::sync::MutexGuard<'a, FileData>> {
        for _ in 0..WRITE_LEASE_ATTEMPTS {
            let data = file.data.lock().await;
            if self.leases.holds_write(file.ino) {
                return Ok(data);
            }
            drop(data);
            let epoch = self.leases.epoch();
            let attr = self.meta.write_lease(file.ino).await?;
            let mut data = file.data.lock().await;
            // Recorded under the data lock: the recall of this grant settles after the
            // write that uses it.
            self.leases.granted_attr(epoch, &attr, true);
            if self.leases.holds_write(file.ino) {
                data.committed = Some(attr.clone());
                data.layout = None;
                return Ok(data);
            }
        }
        warn!(ino = file.ino, "no write lease after {WRITE_LEASE_ATTEMPTS} grants; giving up");
        Err(FsError::Invalid("the file's write lease keeps being recalled"))
    }

    /// Runs a metad call that answers an inode's attributes, granting this mount a read
    /// lease on it (a write lease with `write`) and on `dir`; keeps the attributes while
    /// the lease lasts.
    pub(super) async fn granting_attr(
        &self,
        call: impl Future<Output = Result<Attr, MetaClientError>>,
        dir: Option<Ino>,
        write: bool,
    ) -> FsResult<Attr> {
        let epoch = self.leases.epoch();
        let attr = call.await?;
        self.leases.granted(epoch, &Vec::from_iter(dir), false);
        self.leases.granted_attr(epoch, &attr, write);
        Ok(attr)
    }

    /// The answer to a request adding `name` in `parent`: the lease and attributes of the
    /// named inode, as [`Fs::granting_attr`] keeps them, and the directory's attributes as
    /// the change left them, kept under the directory's lease (the kernel asks for them
    /// after every change in it); the name joins the directory's listing, if known. A new
    /// directory's listing is known: it is empty.
    pub(super) async fn granting_made(
        &self,
        call: impl Future<Output = Result<Made, MetaClientError>>,
        parent: Ino,
        name: &[u8],
        write: bool,
    ) -> FsResult<Attr> {
        let epoch = self.leases.epoch();
        match call.await {
            Ok(made) => {
                self.leases.granted_attr(epoch, &made.attr, write);
                self.leases.update_attrs(epoch, &[&made.parent]);
                self.leases.listing_added(parent, name, made.attr.ino, made.cookie);
                if made.attr.kind == FileKind::Dir {
                    // It inherited its parent's default ACL, if any.
                    self.leases.listed_empty(epoch, made.attr.ino, parent, !made.default_acl);
                }
                Ok(made.attr)
            }
            Err(e) => {
                // It may have happened all the same.
                self.leases.forget_attrs(Some(parent));
                self.leases.forget_listing(parent);
                Err(e.into())
            }
        }
    }
}
