//! Open files and their handles: what an open registers with metad, and what the last
//! release commits and forgets.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use shardfs_meta_api::proto::{Attr, Cred, Ino, Layout, MetaError, Timestamp};
use tracing::{debug, warn};

use super::Fs;
use super::read_path::update_atime;
use crate::chunk_io::Written;
use crate::dirty::{DirtyRanges, Piece};
use crate::error::{FsError, FsResult};
use shardfs_rpc::sync::Lock as _;

/// State of a file while at least one handle has it open.
pub(super) struct OpenFile {
    pub(super) ino: Ino,
    pub(super) data: tokio::sync::Mutex<FileData>,
    /// Set when the read lease that covered the cached layout was recalled.
    pub(super) stale: std::sync::atomic::AtomicBool,
    /// Whether metad knows this client has the file open (see [`Fs::open`]).
    pub(super) registered: tokio::sync::Mutex<bool>,
    /// Background commits of what closes left buffered, under way (see
    /// [`Fs::commit_closed`]): the file stays in `files` until they are done, so a later
    /// open finds the bytes they have not committed yet.
    pub(super) committing: AtomicUsize,
}

#[derive(Default)]
pub(super) struct FileData {
    /// Whether this open already reported a read (for atime).
    pub(super) accessed: bool,
    /// Committed layout, fetched on demand and dropped after each commit.
    pub(super) layout: Option<Arc<Layout>>,
    pub(super) dirty: DirtyRanges,
    /// Buffered writes taken for early write-back, being stored in the background, oldest
    /// first; committed in that order (see [`Fs::write`]).
    pub(super) storing: VecDeque<Storing>,
    /// Time of the last buffered write.
    pub(super) dirty_mtime: Option<Timestamp>,
    /// The committed attributes, when known while this mount holds the file's write lease:
    /// O_APPEND writes go to their size (or past what is buffered beyond it), and clear the
    /// set-id bits of their mode themselves (see [`Fs::write`]).
    pub(super) committed: Option<Attr>,
}

/// Pieces of a file being stored by a background task, to be committed once it is done.
pub(super) struct Storing {
    pub(super) pieces: Vec<Piece>,
    pub(super) task: tokio::task::JoinHandle<FsResult<Written>>,
}

impl FileData {
    /// End of the last byte buffered or being stored.
    pub(super) fn end(&self) -> Option<u64> {
        let storing = self.storing.iter().flat_map(|s| &s.pieces).map(Piece::end).max();
        self.dirty.end().max(storing)
    }

    /// Bytes buffered or being stored.
    pub(super) fn buffered_bytes(&self) -> usize {
        self.dirty.bytes() + self.storing_bytes()
    }

    /// Bytes being stored.
    pub(super) fn storing_bytes(&self) -> usize {
        self.storing.iter().flat_map(|s| &s.pieces).map(|p| p.data.len()).sum()
    }

    /// Whether anything written is not committed yet.
    pub(super) fn has_buffered(&self) -> bool {
        !self.dirty.is_empty() || !self.storing.is_empty()
    }

    /// Whether a byte buffered or being stored lies in `[start, end)`.
    pub(super) fn overlaps(&self, start: u64, end: u64) -> bool {
        let storing = self.storing.iter().flat_map(|s| &s.pieces);
        self.dirty.overlaps(start, end)
            || storing.into_iter().any(|p| p.offset < end && p.end() > start)
    }

    /// Copies the bytes buffered or being stored over `buf`, which holds file bytes
    /// `[offset, offset + len)`: the oldest first, so the newest win.
    pub(super) fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for piece in self.storing.iter().flat_map(|s| &s.pieces) {
            let (from, to) = (offset.max(piece.offset), end.min(piece.end()));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                    &piece.data[(from - piece.offset) as usize..(to - piece.offset) as usize],
                );
            }
        }
        self.dirty.overlay(offset, buf);
    }

    /// Drops everything written and not committed (the file is gone).
    pub(super) fn discard(&mut self, window: u64) {
        self.dirty.take_all(window);
        for storing in self.storing.drain(..) {
            storing.task.abort();
        }
    }

    /// `attr` with what is buffered: the size it reaches and the time it was written.
    pub(super) fn with_dirty(&self, mut attr: Attr) -> Attr {
        if let Some(end) = self.end() {
            attr.size = attr.size.max(end);
        }
        if let Some(mtime) = self.dirty_mtime {
            attr.mtime = mtime;
            attr.ctime = attr.ctime.max(mtime);
        }
        attr
    }
}

pub(super) struct Handle {
    pub(super) file: Arc<OpenFile>,
    /// End of the previous read, to spot sequential reading.
    pub(super) last_read_end: AtomicU64,
    /// Bytes read sequentially through this handle since the last jump: the read-ahead
    /// grows with it.
    pub(super) sequential: AtomicU64,
    /// Lock owners that set fcntl locks through this handle and have not closed it since.
    /// A process's owner is dropped at its close (flush); what remains at release are open
    /// file description (OFD) locks, which the last close releases.
    pub(super) lock_owners: Mutex<HashSet<u64>>,
}

impl Fs {
    /// The file's state while it is open here or has a commit pending after its close.
    pub(super) fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.locked().get(&ino).map(|(f, _)| f.clone())
    }

    /// The file's state while a handle has it open.
    pub(super) fn file_in_use(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        let files = self.files.locked();
        files.get(&ino).filter(|(_, handles)| *handles > 0).map(|(f, _)| f.clone())
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles.locked().get(&fh).cloned().ok_or(FsError::Invalid("bad file handle"))
    }

    /// Opens `ino`; `reading` if the handle is for reading only (which, when the kernel keeps
    /// the pages, counts as a read for atime). An inode that is gone
    /// (the kernel opened what a cached name pointed to before a rename or unlink took it)
    /// is `Stale`, on which the kernel looks the name up again.
    pub async fn open(&self, ino: Ino, reading: bool) -> FsResult<u64> {
        let (file, first) = {
            let mut files = self.files.locked();
            let entry = files.entry(ino).or_insert_with(|| {
                let file = OpenFile {
                    ino,
                    data: Default::default(),
                    stale: Default::default(),
                    registered: Default::default(),
                    committing: Default::default(),
                };
                (Arc::new(file), 0)
            });
            entry.1 += 1;
            (entry.0.clone(), entry.1 == 1)
        };
        if let Err(e) = self.start_open(&file, first, reading).await {
            // Undone whole: a half-made open would be registered again before every
            // removal for as long as the mount lives.
            if let Err(e) = self.forget_open(ino).await {
                warn!(ino, "cannot tell metad a failed open was dropped: {e}");
            }
            return Err(FsError::stale_if_gone(e));
        }
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            file,
            last_read_end: AtomicU64::new(u64::MAX),
            sequential: AtomicU64::new(0),
            lock_owners: Mutex::default(),
        });
        self.handles.locked().insert(fh, handle);
        Ok(fh)
    }

    /// What an open does once `file` counts it (`first` if no other handle has it open).
    async fn start_open(&self, file: &OpenFile, first: bool, reading: bool) -> FsResult<()> {
        let ino = file.ino;
        // metad keeps the file alive while this client has it open, even unlinked. Under a
        // lease it need not hear of the open yet: a change to the file elsewhere, its unlink
        // included, recalls the lease first, and settling the recall registers the open; a
        // removal made here registers it before it is sent, or (if it started first) this
        // open sees it under way. (The file is in `files` before either is checked, so the
        // recall or the removal finds it.)
        let removal_under_way = self.removals.load(Ordering::SeqCst) > 0;
        if first && (removal_under_way || !self.leases.holds(ino)) {
            self.register_open(file).await?;
        }
        let mut data = file.data.lock().await;
        // Without a lease, each open sees what others committed since.
        if !self.leases.holds(ino) {
            data.layout = None;
        }
        data.accessed = false;
        // Reads from pages the kernel keeps never reach this client: the atime update
        // their first read would make is made now.
        if reading && self.leases.pages_valid(ino) {
            match self.leases.cached_attr(ino) {
                // Those reads will not make the kernel drop its cached atime either.
                Some(attr) => {
                    if self.note_read(ino, &attr) {
                        self.leases.forget_kernel_attrs(ino);
                    }
                }
                None => {
                    if let Some(strict) = self.atime_update(None) {
                        match update_atime(&self.meta, &self.leases, ino, strict).await {
                            Ok(()) => self.leases.forget_kernel_attrs(ino),
                            // Gone: the kernel looks the name up again.
                            Err(e @ FsError::Meta(MetaError::NotFound)) => return Err(e),
                            // Otherwise best effort, as at a first read: an open for
                            // reading does not fail for want of an atime update (on a full
                            // metad disk, say).
                            Err(e) => debug!(ino, "atime update failed: {e}"),
                        }
                    }
                }
            }
            data.accessed = true;
        }
        Ok(())
    }

    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        cred: Cred,
    ) -> FsResult<(Attr, u64)> {
        let mode = (mode & 0o7777) | libc::S_IFREG;
        let attr = self.make_node(parent, name, mode, 0, cred).await?;
        let fh = self.open(attr.ino, false).await?;
        if self.leases.holds_write(attr.ino) {
            self.handle(fh)?.file.data.lock().await.committed = Some(attr.clone());
        }
        Ok((attr, fh))
    }

    /// Closes a handle, committing what it buffered.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        // OFD locks go first, while the handle is still registered: lock requests that meet
        // them wait for this (see `wait_for_release`).
        let handle = self.handle(fh)?;
        let owners: Vec<u64> = handle.lock_owners.locked().iter().copied().collect();
        let mut unlocked = Ok(());
        for owner in &owners {
            if let Err(e) = self.meta.unlock(handle.file.ino, *owner, (0, u64::MAX)).await {
                unlocked = Err(e);
            }
        }
        self.handles.locked().remove(&fh);
        if !owners.is_empty() {
            self.released_locks.notify_waiters();
        }
        unlocked?;
        let deferred = self.defers_commit(&handle.file).await;
        if deferred.is_some() {
            match self.commit_here(&handle.file).await {
                Ok(true) => return self.forget_open(handle.file.ino).await,
                Ok(false) => {}
                Err(e) => debug!(ino = handle.file.ino, "commit not queued, sent instead: {e}"),
            }
        }
        if let Some(bytes) = deferred
            && let Some(me) = self.me.upgrade()
            && self.write_back.reserve(bytes)
        {
            // The entry stays, with no handle, until the commit is done.
            if let Some(entry) = self.files.locked().get_mut(&handle.file.ino) {
                entry.1 -= 1;
                entry.0.committing.fetch_add(1, Ordering::SeqCst);
            }
            tokio::spawn(me.commit_closed(handle.file.clone(), bytes));
            return Ok(());
        }
        let result = self.flush_handle(&handle).await;
        if let Err(e) = &result {
            warn!(ino = handle.file.ino, "buffered writes lost at close: {e}");
        }
        self.forget_open(handle.file.ino).await?;
        result
    }

    /// Forgets one open of `ino`, telling metad if that was this client's last and metad
    /// knew of it.
    async fn forget_open(&self, ino: Ino) -> FsResult<()> {
        if let Some(file) = self.drop_open(ino)
            && *file.registered.lock().await
        {
            self.meta.release_file(ino).await?;
        }
        Ok(())
    }

    /// Tells metad this client has `file` open, unless it knows already or the file was
    /// closed since it was picked: its last release found it unregistered and tells metad of
    /// no close, so an open registered now would keep the inode until the session ends.
    pub(super) async fn register_open(&self, file: &OpenFile) -> FsResult<()> {
        let mut registered = file.registered.lock().await;
        let still_open = self.file_in_use(file.ino).is_some_and(|f| std::ptr::eq(&*f, file));
        if !*registered && still_open {
            self.meta.open_file(file.ino).await?;
            *registered = true;
        }
        Ok(())
    }

    /// Forgets one open of `ino`; returns the file if that was this client's last open and
    /// no commit after an earlier close still needs it kept (that commit forgets it).
    fn drop_open(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        let mut files = self.files.locked();
        let entry = files.get_mut(&ino)?;
        entry.1 -= 1;
        if entry.1 > 0 || entry.0.committing.load(Ordering::SeqCst) > 0 {
            return None;
        }
        files.remove(&ino).map(|(file, _)| file)
    }
}
