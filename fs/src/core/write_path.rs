//! The write path: writes buffered under the file's write lease, cut into chunks and
//! committed (early write-back, close, fsync, a recall), and the range operations
//! (fallocate, copy_file_range) that commit the buffer first.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::proto::{
    Cred, DataRequest, INLINE_MAX, Ino, Layout, MetaError, Queued, SetAttr, SpaceOp, Timestamp,
};
use tracing::{debug, warn};

use super::Fs;
use super::open_files::{FileData, Handle, OpenFile, Storing};
use crate::chunk_io::Written;
use crate::dirty::Piece;
use crate::error::{FsError, FsResult};
use crate::setid;
use crate::write_back::{self};
use shardfs_rpc::sync::Lock as _;

impl Fs {
    /// Writes `bytes` at `offset`; returns how many were written and whether the file's
    /// mode changed.
    ///
    /// `append` (`Some(writer)` for an O_APPEND handle) writes at the end of the file as this
    /// mount knows it under the write lease: the kernel's idea of the end may predate another
    /// mount's appends. Such handles bypass the page cache, where the kernel would also have
    /// dropped the file's capabilities and cleared set-id bits for an unprivileged writer, so
    /// that is done here.
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        bytes: &[u8],
        append: Option<&Cred>,
    ) -> FsResult<(u32, bool)> {
        let handle = self.handle(fh)?;
        let file = &handle.file;
        let mut data = self.locked_with_write_lease(file).await?;
        let mut mode_changed = false;
        let offset = match append {
            None => offset,
            Some(writer) => {
                self.drop_capability(file.ino, writer).await?;
                let committed = match data.committed.take() {
                    Some(attr) => attr,
                    None => self.meta.get_attr(file.ino).await?,
                };
                let committed = match setid::cleared(committed.perm, committed.gid, writer) {
                    perm if perm == committed.perm => committed,
                    perm => {
                        mode_changed = true;
                        let changes = SetAttr { mode: Some(u32::from(perm)), ..SetAttr::default() };
                        let epoch = self.leases.epoch();
                        let attr = self.meta.set_attr(file.ino, Cred::ROOT, changes).await?;
                        self.leases.update_attr(epoch, &attr);
                        attr
                    }
                };
                // O_APPEND handles bypass the page cache.
                self.leases.pages_changed(file.ino);
                let end = committed.size.max(data.end().unwrap_or(0));
                data.committed = Some(committed);
                end
            }
        };
        // The file's flags as this mount knows them under its write lease (metad checks
        // again at the commit): nothing written to an immutable file, nothing but appends
        // to an append-only one, and every write synchronous on a `sync` one.
        let (flags, size) = match &data.committed {
            Some(attr) => (attr.flags, attr.size),
            None => self
                .leases
                .cached_attr(file.ino)
                .map_or_else(Default::default, |a| (a.flags, a.size)),
        };
        let below_end = || offset < size.max(data.end().unwrap_or(0));
        if flags.immutable() || (flags.append_only() && below_end()) {
            return Err(MetaError::NotPermitted.into());
        }
        // Buffered bytes are bounded: past twice the flush threshold (earlier flushes failed)
        // a write must get everything committed first, or fail without buffering more.
        let limit = 2 * self.options.dirty_flush_bytes;
        if data.dirty.bytes() + bytes.len() > limit {
            self.write_back_down_to(file, &mut data, limit.saturating_sub(bytes.len())).await?;
        }
        data.dirty.write(offset, bytes);
        data.dirty_mtime = Some(Timestamp::now());
        if flags.sync() {
            self.flush_locked(file, &mut data, true).await?;
            self.meta.sync().await?;
            return Ok((bytes.len() as u32, mode_changed));
        }
        // Early write-back: whole chunks are stored in the background while later writes
        // are buffered, and committed in order as they are done; at most the flush threshold
        // is being stored at once. Random writes, which finish no chunk, are committed here
        // and now. A failure leaves the bytes buffered for the next flush, which reports it.
        let flush_bytes = self.options.dirty_flush_bytes;
        if data.dirty.bytes() >= flush_bytes {
            self.store_ahead(file.ino, &mut data);
        }
        let early = async {
            if data.dirty.bytes() >= flush_bytes {
                self.write_back_down_to(file, &mut data, flush_bytes).await?;
            }
            self.commit_stored(file, &mut data, flush_bytes).await
        };
        if let Err(e) = early.await {
            warn!(ino = file.ino, "write-back failed, data stays buffered: {e}");
        }
        Ok((bytes.len() as u32, mode_changed))
    }

    /// Takes the whole chunks buffered and starts storing them in the background.
    fn store_ahead(&self, ino: Ino, data: &mut FileData) {
        let pieces = data.dirty.take_completed(self.volume.chunk_size);
        if pieces.is_empty() {
            return;
        }
        let (io, taken) = (self.io.clone(), pieces.clone());
        let task = tokio::spawn(async move { io.store(ino, &taken).await });
        data.storing.push_back(Storing { pieces, task });
    }

    /// Commits what background stores finished, oldest first, and waits for them while more
    /// than `most` bytes are being stored (with `most` 0, until every one is committed).
    async fn commit_stored(
        &self,
        file: &OpenFile,
        data: &mut FileData,
        most: usize,
    ) -> FsResult<()> {
        while let Some(oldest) = data.storing.front() {
            if data.storing_bytes() <= most && !oldest.task.is_finished() {
                break;
            }
            let Storing { pieces, task } = data.storing.pop_front().expect("looked at above");
            let written = task
                .await
                .unwrap_or_else(|e| Err(FsError::MetaProtocol(format!("store task failed: {e}"))));
            self.commit_pieces(file, data, pieces, written).await?;
        }
        Ok(())
    }

    /// Commits buffered writes until fewer than `most` bytes stay buffered: the finished
    /// chunk-sized windows first, and the unfinished ones only if that is not enough (random
    /// writes), since committing a window before it is finished cuts its chunk in two. So
    /// sequential writes are cut where a single write of the file would be, even after an
    /// early write-back failed and the buffer grew to the limit (identical content is then
    /// still stored once, `tests/tests/suite/dedup.rs`).
    async fn write_back_down_to(
        &self,
        file: &OpenFile,
        data: &mut FileData,
        most: usize,
    ) -> FsResult<()> {
        self.flush_locked(file, data, false).await?;
        if data.dirty.bytes() >= most {
            self.flush_locked(file, data, true).await?;
        }
        Ok(())
    }

    /// close(2): commits everything buffered for the file behind `fh`, unless the release
    /// that follows may leave that to the background (see [`Fs::defers_commit`]). Under the
    /// write lease the commit is queued with the changes made here ([`Fs::commit_here`]):
    /// the close waits for the chunks to be stored, not for metad.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if self.defers_commit(&handle.file).await.is_some()
            || self.commit_here(&handle.file).await?
        {
            return Ok(());
        }
        self.flush_handle(&handle).await
    }

    /// Whether the last close of `file` may return before its buffered writes are committed,
    /// and how many bytes wait: only for bytes few enough to go inline to metad with the
    /// commit (data for chunkds is stored before the close returns, so a close cannot
    /// succeed with data that can never be stored), under the write lease (so no other mount
    /// can miss them), for a file metad does not track as open here (whose release must
    /// follow the commit), with a single handle left, and within the background budget.
    pub(super) async fn defers_commit(&self, file: &OpenFile) -> Option<usize> {
        let bytes = file.data.lock().await.buffered_bytes();
        let last = self.files.locked().get(&file.ino).map(|(_, n)| *n) == Some(1);
        let defer = bytes > 0
            && bytes as u64 <= INLINE_MAX
            && last
            && self.write_back.fits(bytes)
            && self.leases.holds_write(file.ino)
            && !*file.registered.lock().await;
        defer.then_some(bytes)
    }

    /// Commits what a closed file buffered, on a background task; tries again after
    /// failures until it succeeds, the file is gone, or the mount closes. Forgets the file
    /// after, unless it was opened again meanwhile.
    pub(super) async fn commit_closed(self: Arc<Self>, file: Arc<OpenFile>, bytes: usize) {
        let slot = self.write_back.slot().await;
        let mut delay = write_back::FIRST_RETRY;
        loop {
            let mut data = file.data.lock().await;
            match self.flush_locked(&file, &mut data, true).await {
                Ok(()) => break,
                Err(FsError::Meta(MetaError::NotFound)) => {
                    // Unlinked here since: nothing can read what it buffered.
                    data.discard(self.volume.chunk_size);
                    break;
                }
                Err(e) if self.write_back.closing() => {
                    warn!(ino = file.ino, "unmounting: last writes of a closed file lost: {e}");
                    break;
                }
                Err(e) => {
                    warn!(ino = file.ino, "commit after close failed, retrying in {delay:?}: {e}");
                }
            }
            drop(data);
            self.write_back.pause(delay).await;
            delay = (delay * 2).min(write_back::MAX_RETRY);
        }
        drop(slot);
        let forgotten = {
            let data = file.data.lock().await;
            let mut files = self.files.locked();
            let others = file.committing.fetch_sub(1, Ordering::SeqCst) - 1;
            let forget = !data.has_buffered()
                && others == 0
                && files
                    .get(&file.ino)
                    .is_some_and(|(kept, n)| *n == 0 && Arc::ptr_eq(kept, &file));
            if forget {
                files.remove(&file.ino);
            }
            forget
        };
        // Another removal registered the open between the close's check and its release.
        if forgotten
            && *file.registered.lock().await
            && let Err(e) = self.meta.release_file(file.ino).await
        {
            warn!(ino = file.ino, "cannot tell metad a file was closed: {e}");
        }
        self.write_back.done(bytes);
    }

    /// Commits what a closed file buffered by storing its chunks (a small file's content
    /// goes inline) and queuing the commit with the changes answered here (`journal.rs`),
    /// if it can: answers whether it did. Under the file's write lease only: another mount
    /// asking for the file recalls the lease, and the recall sends the queue first.
    pub(super) async fn commit_here(&self, file: &OpenFile) -> FsResult<bool> {
        let Some(journal) = &self.journal else { return Ok(false) };
        let mut data = file.data.lock().await;
        if !data.has_buffered() || !self.leases.holds_write(file.ino) {
            return Ok(false);
        }
        self.commit_stored(file, &mut data, 0).await?;
        if data.dirty.is_empty() {
            return Ok(false);
        }
        let pieces = data.dirty.take_all(self.volume.chunk_size);
        let written = match self.io.store(file.ino, &pieces).await {
            Ok(written) => written,
            Err(e) => {
                data.dirty.restore(pieces);
                return Err(e);
            }
        };
        let content = written.content();
        let Written { stored, inline, extents, .. } = written;
        let end = extents.iter().map(|e| e.end()).max().unwrap_or(0);
        let bytes = extents.iter().map(|e| e.len).sum();
        let mtime = data.dirty_mtime.unwrap_or_else(Timestamp::now);
        let ino = file.ino;
        let queued = self.leases.commit_here(ino, (end, bytes), mtime, content, |now| {
            let commit = DataRequest::CommitWrite { ino, stored, inline, extents, mtime };
            journal.push(Queued { request: commit.into(), ino: 0, now }, &[ino])
        });
        if !queued {
            data.dirty.restore(pieces);
            return Ok(false);
        }
        // The commit moves the change time, which the kernel may have cached from before.
        self.leases.forget_kernel_attrs(ino);
        data.layout = None;
        data.dirty_mtime = None;
        data.committed = None;
        Ok(true)
    }

    /// fsync(2): commits what is buffered for the file behind `fh`, then has metad make its
    /// metadata, and every change before it (those answered here included), durable.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        self.flush_handle(&handle).await?;
        self.send_accesses(Some(handle.file.ino)).await;
        self.flush_journal().await?;
        Ok(self.meta.sync().await?)
    }

    /// Makes every metadata change this mount made so far durable (fsync of a directory,
    /// syncfs).
    pub async fn sync(&self) -> FsResult<()> {
        self.send_accesses(None).await;
        self.flush_journal().await?;
        Ok(self.meta.sync().await?)
    }

    /// Stores buffered pieces and commits them, after what is being stored in the
    /// background. With `everything` false, the last, unfinished chunk-sized window of each
    /// range stays buffered.
    pub(super) async fn flush_locked(
        &self,
        file: &OpenFile,
        data: &mut FileData,
        everything: bool,
    ) -> FsResult<()> {
        self.commit_stored(file, data, 0).await?;
        let window = self.volume.chunk_size;
        let pieces = if everything {
            data.dirty.take_all(window)
        } else {
            data.dirty.take_completed(window)
        };
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else { return Ok(()) };
        debug!(
            ino = file.ino,
            everything,
            from = first.offset,
            end = last.end(),
            "committing buffered writes"
        );
        let written = self.io.store(file.ino, &pieces).await;
        self.commit_pieces(file, data, pieces, written).await
    }

    /// Commits `pieces`, which `written` stored (or failed to). On failure they go back to
    /// the buffer, under what was written since, and so does what is being stored after
    /// them, which must not be committed before them.
    async fn commit_pieces(
        &self,
        file: &OpenFile,
        data: &mut FileData,
        pieces: Vec<Piece>,
        written: FsResult<Written>,
    ) -> FsResult<()> {
        let mtime = data.dirty_mtime.unwrap_or_else(Timestamp::now);
        let epoch = self.leases.epoch();
        // A file with no content yet has just this as its content once it is committed.
        let was_empty =
            self.leases.cached_attr(file.ino).is_some_and(|a| a.size == 0 && a.allocated == 0);
        let committed = async {
            let mut written = written?;
            let mut attempts = 0;
            loop {
                let content = was_empty.then(|| written.content()).flatten();
                let Written { stored, inline, extents, .. } = written;
                match self.meta.commit_write(file.ino, stored, inline, extents, mtime).await {
                    // Garbage collection removed a deduplicated chunk between prepare and
                    // commit: prepare again, which now stores it.
                    Err(MetaClientError::Meta(MetaError::ChunkGone(_))) if attempts < 3 => {
                        attempts += 1;
                        written = self.io.store(file.ino, &pieces).await?;
                    }
                    result => return result.map(|attr| (attr, content)).map_err(FsError::from),
                }
            }
        }
        .await;
        data.layout = None;
        match committed {
            Ok((attr, content)) => {
                // Reading it back asks metad nothing while the lease lasts.
                if let Some((extents, chunks)) = content {
                    let layout = Arc::new(Layout { attr: attr.clone(), extents, chunks });
                    self.leases.keep_layout(epoch, &layout);
                }
                self.leases.update_attr(epoch, &attr);
                data.committed = Some(attr.clone());
                if !data.has_buffered() {
                    data.dirty_mtime = None;
                }
                Ok(())
            }
            Err(e) => {
                // Nothing is lost: the bytes go back to the buffer for the next flush, the
                // newest first, each under what is newer.
                for later in data.storing.drain(..).rev() {
                    later.task.abort();
                    data.dirty.restore(later.pieces);
                }
                data.dirty.restore(pieces);
                Err(e)
            }
        }
    }

    pub(super) async fn flush_handle(&self, handle: &Handle) -> FsResult<()> {
        let mut data = handle.file.data.lock().await;
        self.flush_locked(&handle.file, &mut data, true).await
    }

    /// fallocate(2): `mode` as the kernel passes it.
    /// fallocate(2) on behalf of `caller`, clearing set-id bits as a write would; returns
    /// whether it changed the file's mode.
    pub async fn allocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        caller: &Cred,
    ) -> FsResult<bool> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        let op = match mode {
            0 => SpaceOp::Allocate { keep_size: false },
            KEEP_SIZE => SpaceOp::Allocate { keep_size: true },
            m if m == libc::FALLOC_FL_PUNCH_HOLE | KEEP_SIZE => SpaceOp::PunchHole,
            libc::FALLOC_FL_ZERO_RANGE => SpaceOp::ZeroRange { keep_size: false },
            m if m == libc::FALLOC_FL_ZERO_RANGE | KEEP_SIZE => {
                SpaceOp::ZeroRange { keep_size: true }
            }
            // Collapse, insert and unshare ranges, and a hole punch that would change the size.
            _ => return Err(FsError::Unsupported),
        };
        // Nothing is reserved (content-addressed chunks are stored when written), but a
        // request for more than the volume has left is refused up front.
        if let SpaceOp::Allocate { .. } = op {
            let free = self.stat_fs().await?.free_bytes;
            if len > free {
                let why = format!("fallocate of {len} bytes, {free} bytes free");
                return Err(MetaError::NoSpace(why).into());
            }
        }
        let handle = self.handle(fh)?;
        let mut data = handle.file.data.lock().await;
        // Buffered bytes land first, so a punch or zero also covers them.
        self.flush_locked(&handle.file, &mut data, true).await?;
        let result = self.meta.allocate(handle.file.ino, offset, len, op).await;
        data.layout = None;
        data.committed = None;
        self.leases.forget_attrs(Some(handle.file.ino));
        self.leases.pages_changed(handle.file.ino);
        let attr = result?;
        let perm = setid::cleared(attr.perm, attr.gid, caller);
        if perm != attr.perm {
            let changes = SetAttr { mode: Some(u32::from(perm)), ..SetAttr::default() };
            self.meta.set_attr(attr.ino, Cred::ROOT, changes).await?;
            self.leases.forget_attrs(Some(attr.ino));
        }
        Ok(perm != attr.perm)
    }

    /// copy_file_range(2): the destination shares the source's chunks; no bytes move.
    pub async fn copy_range(
        &self,
        (fh_in, offset_in): (u64, u64),
        (fh_out, offset_out): (u64, u64),
        len: u64,
    ) -> FsResult<u32> {
        let (source, target) = (self.handle(fh_in)?, self.handle(fh_out)?);
        // Both files' buffered bytes land first, locking in inode order.
        let mut files = [&source.file, &target.file];
        files.sort_by_key(|f| f.ino);
        let mut first = files[0].data.lock().await;
        self.flush_locked(files[0], &mut first, true).await?;
        let mut second = if files[1].ino == files[0].ino {
            None
        } else {
            let mut data = files[1].data.lock().await;
            self.flush_locked(files[1], &mut data, true).await?;
            Some(data)
        };
        // The reply counts bytes in 32 bits; the kernel asks again for the rest.
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        let result = self
            .meta
            .clone_range(source.file.ino, offset_in, target.file.ino, offset_out, len)
            .await;
        first.layout = None;
        first.committed = None;
        self.leases.forget_attrs(Some(target.file.ino));
        self.leases.pages_changed(target.file.ino);
        if let Some(data) = second.as_mut() {
            data.layout = None;
            data.committed = None;
        }
        let (_, copied) = result?;
        Ok(copied as u32)
    }
}
