//! The filesystem core: every operation as an async function over metad and the chunkds,
//! testable without a mount. `fuse.rs` only adapts it to the kernel.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardfs_chunkd::client::ChunkClientPool;
use shardfs_metad::proto::{
    Attr, Cred, DirEntry, FileKind, HeldLock, Ino, Layout, LockKind, MetaError, RenameMode,
    SetAttr, SpaceOp, StatFs, Timestamp, VolumeInfo, XattrMode,
};
use shardfs_metad::{MetaClient, MetaClientError};
use shardfs_rpc::ClientOptions;
use tracing::{debug, warn};

use crate::chunk_io::{ChunkIo, DEFAULT_CACHE_BYTES};
use crate::dirty::DirtyRanges;
use crate::error::{FsError, FsResult};
use crate::seek;
use crate::setid;

/// Client tuning.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Bytes of verified chunks kept in memory.
    pub chunk_cache_bytes: usize,
    /// Buffered bytes per open file that trigger a flush of its completed chunks.
    pub dirty_flush_bytes: usize,
    /// How long the kernel may cache attributes and entries.
    pub attr_ttl: Duration,
    /// When reads update atime (`relatime`, `noatime`, `strictatime`).
    pub atime: AtimePolicy,
    /// Whether listing a directory updates its atime (off with `nodiratime`).
    pub dir_atime: bool,
    pub rpc: ClientOptions,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            chunk_cache_bytes: DEFAULT_CACHE_BYTES,
            dirty_flush_bytes: 16 * 1024 * 1024,
            attr_ttl: Duration::from_secs(1),
            atime: AtimePolicy::Relative,
            dir_atime: true,
            rpc: ClientOptions::default(),
        }
    }
}

/// Longest a lock request that met a conflict waits for this client's pending closes to drop
/// their OFD locks.
const RELEASE_RACE_WAIT: Duration = Duration::from_millis(100);

/// Keeps the client's metad session alive while the client is idle, until it is dropped.
async fn heartbeats(meta: std::sync::Weak<MetaClient>) {
    loop {
        let interval = match meta.upgrade() {
            Some(meta) => meta.heartbeat_interval().unwrap_or(Duration::from_secs(1)),
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(meta) = meta.upgrade() else { return };
        if let Err(e) = meta.heartbeat().await {
            debug!("metad heartbeat failed: {e}");
        }
    }
}

/// When reads update atime. Updates happen at the first read of each open file (or
/// listing of a directory), not at every read(2) call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtimePolicy {
    Never,
    /// relatime: only when atime is not newer than mtime or ctime, or over a day old.
    Relative,
    Always,
}

/// State of a file while at least one handle has it open.
struct OpenFile {
    ino: Ino,
    data: tokio::sync::Mutex<FileData>,
}

#[derive(Default)]
struct FileData {
    /// Whether this open already reported a read (for atime).
    accessed: bool,
    /// Committed layout, fetched on demand and dropped after each commit.
    layout: Option<Arc<Layout>>,
    dirty: DirtyRanges,
    /// Time of the last buffered write.
    dirty_mtime: Option<Timestamp>,
}

struct Handle {
    file: Arc<OpenFile>,
    /// End of the previous read, to spot sequential reading.
    last_read_end: AtomicU64,
    /// Lock owners that set fcntl locks through this handle and have not closed it since.
    /// A process's owner is dropped at its close (flush); what remains at release are open
    /// file description (OFD) locks, which the last close releases.
    lock_owners: Mutex<HashSet<u64>>,
}

pub struct Fs {
    meta: Arc<MetaClient>,
    io: Arc<ChunkIo>,
    volume: VolumeInfo,
    options: FsOptions,
    /// Open files and how many handles each has.
    files: Mutex<HashMap<Ino, (Arc<OpenFile>, usize)>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    /// Inodes this client ever took a lock on: only their closes must release locks.
    locked: Mutex<HashSet<Ino>>,
    /// Signalled when a closing handle has dropped its OFD locks (see
    /// [`Fs::wait_for_release`]).
    released_locks: tokio::sync::Notify,
}

impl Fs {
    /// Connects to metad and reads the volume's settings; fails fast if metad is unreachable.
    pub async fn connect(metad: &str, options: FsOptions) -> FsResult<Fs> {
        let host = nix::unistd::gethostname()
            .map_or_else(|_| "unknown".to_string(), |name| name.to_string_lossy().into_owned());
        let client = format!("{host} pid {}", std::process::id());
        let meta = Arc::new(MetaClient::with_session(metad, options.rpc, client));
        let volume = meta.volume().await?;
        tokio::spawn(heartbeats(Arc::downgrade(&meta)));
        let pool = Arc::new(ChunkClientPool::new(options.rpc));
        let io = Arc::new(ChunkIo::new(pool, meta.clone(), options.chunk_cache_bytes));
        Ok(Fs {
            meta,
            io,
            volume,
            options,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            locked: Mutex::new(HashSet::new()),
            released_locks: tokio::sync::Notify::new(),
        })
    }

    pub fn attr_ttl(&self) -> Duration {
        self.options.attr_ttl
    }

    pub fn volume(&self) -> &VolumeInfo {
        &self.volume
    }

    fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("files lock").get(&ino).map(|(f, _)| f.clone())
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .expect("handles lock")
            .get(&fh)
            .cloned()
            .ok_or(FsError::Invalid("bad file handle"))
    }

    /// Shows buffered writes in an inode's attributes.
    async fn with_dirty(&self, mut attr: Attr) -> Attr {
        if let Some(file) = self.open_file(attr.ino) {
            let data = file.data.lock().await;
            if let Some(end) = data.dirty.end() {
                attr.size = attr.size.max(end);
            }
            if let Some(mtime) = data.dirty_mtime {
                attr.mtime = mtime;
                attr.ctime = mtime;
            }
        }
        attr
    }

    pub async fn lookup(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<Attr> {
        let attr = self.meta.lookup(parent, name, cred).await?;
        Ok(self.with_dirty(attr).await)
    }

    pub async fn get_attr(&self, ino: Ino) -> FsResult<Attr> {
        let attr = self.meta.get_attr(ino).await?;
        Ok(self.with_dirty(attr).await)
    }

    pub async fn set_attr(&self, ino: Ino, cred: Cred, changes: SetAttr) -> FsResult<Attr> {
        let Some(file) = self.open_file(ino) else {
            return Ok(self.meta.set_attr(ino, cred, changes).await?);
        };
        let mut data = file.data.lock().await;
        if let Some(size) = changes.size {
            // Buffered bytes past the new end vanish.
            data.dirty.truncate(size);
        }
        // Buffered writes land first: their commit must not undo a truncate, or replace
        // times set explicitly (cp -p writes, then sets mtime, then closes).
        self.flush_locked(&file, &mut data, true).await?;
        let attr = self.meta.set_attr(ino, cred, changes).await?;
        data.layout = None;
        Ok(attr)
    }

    pub async fn make_node(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        cred: Cred,
    ) -> FsResult<Attr> {
        Ok(self.meta.make_node(parent, name, mode, rdev, cred).await?)
    }

    pub async fn make_dir(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        cred: Cred,
    ) -> FsResult<Attr> {
        Ok(self.meta.make_dir(parent, name, mode & 0o7777, cred).await?)
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        cred: Cred,
    ) -> FsResult<Attr> {
        Ok(self.meta.symlink(parent, name, target, cred).await?)
    }

    pub async fn read_link(&self, ino: Ino) -> FsResult<Vec<u8>> {
        Ok(self.meta.read_link(ino).await?)
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        Ok(self.meta.unlink(parent, name, cred).await?)
    }

    pub async fn remove_dir(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        Ok(self.meta.remove_dir(parent, name, cred).await?)
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
        cred: &Cred,
    ) -> FsResult<()> {
        Ok(self.meta.rename(parent, name, new_parent, new_name, mode, cred).await?)
    }

    pub async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        cred: &Cred,
    ) -> FsResult<Attr> {
        let attr = self.meta.link(ino, new_parent, new_name, cred).await?;
        Ok(self.with_dirty(attr).await)
    }

    /// `(parent of the directory, entries after cookie `after`)`.
    pub async fn read_dir(
        &self,
        ino: Ino,
        after: u64,
        limit: u32,
        cred: &Cred,
    ) -> FsResult<(Ino, Vec<DirEntry>)> {
        let (parent, mut entries) = self.meta.read_dir(ino, after, limit, cred).await?;
        if after == 0
            && self.options.dir_atime
            && let Some(strict) = self.atime_update(None)
        {
            // In the background: the directory's attributes are not at hand to skip it.
            let meta = self.meta.clone();
            tokio::spawn(async move {
                if let Err(e) = meta.accessed(ino, strict).await {
                    debug!(ino, "atime update failed: {e}");
                }
            });
        }
        for entry in &mut entries {
            if entry.attr.kind == FileKind::File {
                entry.attr = self.with_dirty(entry.attr.clone()).await;
            }
        }
        Ok((parent, entries))
    }

    /// Opens a file handle on `ino`.
    pub async fn open(&self, ino: Ino) -> FsResult<u64> {
        let (file, first) = {
            let mut files = self.files.lock().expect("files lock");
            let entry = files
                .entry(ino)
                .or_insert_with(|| (Arc::new(OpenFile { ino, data: Default::default() }), 0));
            entry.1 += 1;
            (entry.0.clone(), entry.1 == 1)
        };
        if first {
            // metad keeps the file alive while this client has it open, even unlinked.
            if let Err(e) = self.meta.open_file(ino).await {
                self.drop_open(ino);
                return Err(e.into());
            }
        }
        // Each open sees what others committed since (close-to-open at least).
        {
            let mut data = file.data.lock().await;
            data.layout = None;
            data.accessed = false;
        }
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            file,
            last_read_end: AtomicU64::new(u64::MAX),
            lock_owners: Mutex::default(),
        });
        self.handles.lock().expect("handles lock").insert(fh, handle);
        Ok(fh)
    }

    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        cred: Cred,
    ) -> FsResult<(Attr, u64)> {
        let mode = (mode & 0o7777) | libc::S_IFREG;
        let attr = self.meta.make_node(parent, name, mode, 0, cred).await?;
        let fh = self.open(attr.ino).await?;
        Ok((attr, fh))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handle = self.handle(fh)?;
        let file = &handle.file;
        let mut data = file.data.lock().await;
        let layout = match &data.layout {
            Some(layout) => layout.clone(),
            None => {
                let layout = Arc::new(self.meta.layout(file.ino).await?);
                data.layout = Some(layout.clone());
                layout
            }
        };
        if !data.accessed {
            data.accessed = true;
            // Before the data is returned, so a stat right after the read sees it.
            if let Some(strict) = self.atime_update(Some(&layout.attr))
                && let Err(e) = self.meta.accessed(file.ino, strict).await
            {
                debug!(ino = file.ino, "atime update failed: {e}");
            }
        }
        let file_size = layout.attr.size.max(data.dirty.end().unwrap_or(0));
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(file_size - offset) as usize;
        let mut buf = vec![0u8; len];
        if data.dirty.overlaps(offset, offset + len as u64) {
            self.fill(&layout, offset, &mut buf).await?;
            data.dirty.overlay(offset, &mut buf);
        } else {
            // Without buffered bytes in the way, other readers need not wait for this one.
            drop(data);
            self.fill(&layout, offset, &mut buf).await?;
        }
        let previous_end = handle.last_read_end.swap(offset + len as u64, Ordering::Relaxed);
        if previous_end == offset {
            self.read_ahead(&layout, offset + len as u64);
        }
        Ok(buf)
    }

    /// Whether a read updates atime: `Some(strict)` to tell metad. With `attr` at hand the
    /// relatime rule is checked here, saving the round trip when nothing changes.
    fn atime_update(&self, attr: Option<&Attr>) -> Option<bool> {
        match self.options.atime {
            AtimePolicy::Never => None,
            AtimePolicy::Always => Some(true),
            AtimePolicy::Relative => {
                attr.is_none_or(|a| a.atime_due(Timestamp::now())).then_some(false)
            }
        }
    }

    /// Copies committed content of file bytes `[offset, offset + buf.len())` into `buf`;
    /// holes stay zero.
    async fn fill(&self, layout: &Layout, offset: u64, buf: &mut [u8]) -> FsResult<()> {
        let end = offset + buf.len() as u64;
        let first = layout.extents.partition_point(|e| e.end() <= offset);
        let extents = layout.extents[first..].iter().take_while(|e| e.offset < end);
        // Unwritten extents read as the zeros `buf` starts with.
        for extent in extents.filter(|e| !e.is_unwritten()) {
            let location = layout
                .chunks
                .binary_search_by_key(&extent.chunk, |c| c.chunk)
                .map(|i| &layout.chunks[i])
                .map_err(|_| FsError::MetaProtocol("layout lacks a chunk location".into()))?;
            let chunk = self.io.read(location).await?;
            let from = offset.max(extent.offset);
            let to = end.min(extent.end());
            let in_chunk = (extent.chunk_offset + (from - extent.offset)) as usize;
            let n = (to - from) as usize;
            let source =
                chunk.get(in_chunk..in_chunk + n).ok_or_else(|| FsError::ChunkUnreadable {
                    chunk: extent.chunk.to_hex(),
                    reason: "extent reaches past the chunk's end".into(),
                })?;
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(source);
        }
        Ok(())
    }

    /// Warms the cache, in the background, with the chunk after the one holding `offset`:
    /// the one a sequential reader needs next.
    fn read_ahead(&self, layout: &Layout, offset: u64) {
        let window = self.volume.chunk_size;
        let next = (offset / window + 1) * window;
        let index = layout.extents.partition_point(|e| e.end() <= next);
        let Some(extent) = layout.extents.get(index) else {
            return;
        };
        let Ok(i) = layout.chunks.binary_search_by_key(&extent.chunk, |c| c.chunk) else {
            return;
        };
        let location = layout.chunks[i].clone();
        let io = self.io.clone();
        tokio::spawn(async move {
            let _ = io.read(&location).await;
        });
    }

    pub async fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        let file = &handle.file;
        let mut data = file.data.lock().await;
        // Buffered bytes are bounded: past twice the flush threshold (earlier flushes failed)
        // a write must get everything committed first, or fail without buffering more.
        let limit = 2 * self.options.dirty_flush_bytes;
        if data.dirty.bytes() + bytes.len() > limit {
            self.flush_locked(file, &mut data, true).await?;
        }
        data.dirty.write(offset, bytes);
        data.dirty_mtime = Some(Timestamp::now());
        if data.dirty.bytes() >= self.options.dirty_flush_bytes {
            // Early write-back; a failure here leaves the bytes buffered for the next flush,
            // which reports it.
            let early = async {
                self.flush_locked(file, &mut data, false).await?;
                if data.dirty.bytes() >= self.options.dirty_flush_bytes {
                    self.flush_locked(file, &mut data, true).await?;
                }
                Ok::<_, FsError>(())
            };
            if let Err(e) = early.await {
                warn!(ino = file.ino, "write-back failed, data stays buffered: {e}");
            }
        }
        Ok(bytes.len() as u32)
    }

    /// Commits everything buffered for the file behind `fh` (close, fsync).
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let mut data = handle.file.data.lock().await;
        self.flush_locked(&handle.file, &mut data, true).await
    }

    /// Stores buffered pieces and commits them. With `everything` false, the last,
    /// unfinished chunk-sized window of each range stays buffered.
    async fn flush_locked(
        &self,
        file: &OpenFile,
        data: &mut FileData,
        everything: bool,
    ) -> FsResult<()> {
        let window = self.volume.chunk_size;
        let pieces = if everything {
            data.dirty.take_all(window)
        } else {
            data.dirty.take_completed(window)
        };
        if pieces.is_empty() {
            return Ok(());
        }
        let mtime = data.dirty_mtime.unwrap_or_else(Timestamp::now);
        let committed = async {
            let mut attempts = 0;
            loop {
                let (stored, extents) = self.io.store(&pieces).await?;
                match self.meta.commit_write(file.ino, stored, extents, mtime).await {
                    // Garbage collection removed a deduplicated chunk between prepare and
                    // commit: prepare again, which now stores it.
                    Err(MetaClientError::Meta(MetaError::ChunkGone(_))) if attempts < 3 => {
                        attempts += 1;
                    }
                    result => return result.map(drop).map_err(FsError::from),
                }
            }
        }
        .await;
        data.layout = None;
        match committed {
            Ok(()) => {
                if data.dirty.is_empty() {
                    data.dirty_mtime = None;
                }
                Ok(())
            }
            Err(e) => {
                // Nothing is lost: the bytes stay buffered for the next flush.
                data.dirty.restore(pieces);
                Err(e)
            }
        }
    }

    /// Closes a handle, committing what it buffered.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        // OFD locks go first, while the handle is still registered: lock requests that meet
        // them wait for this (see `wait_for_release`).
        let handle = self.handle(fh)?;
        let owners: Vec<u64> =
            handle.lock_owners.lock().expect("owners lock").iter().copied().collect();
        let mut unlocked = Ok(());
        for owner in &owners {
            if let Err(e) = self.meta.unlock(handle.file.ino, *owner, (0, u64::MAX)).await {
                unlocked = Err(e);
            }
        }
        self.handles.lock().expect("handles lock").remove(&fh);
        if !owners.is_empty() {
            self.released_locks.notify_waiters();
        }
        unlocked?;
        let result = self.flush_handle(&handle).await;
        if let Err(e) = &result {
            warn!(ino = handle.file.ino, "buffered writes lost at close: {e}");
        }
        if self.drop_open(handle.file.ino) {
            self.meta.release_file(handle.file.ino).await?;
        }
        result
    }

    /// Forgets one open of `ino`; returns whether it was this client's last.
    fn drop_open(&self, ino: Ino) -> bool {
        let mut files = self.files.lock().expect("files lock");
        let Some(entry) = files.get_mut(&ino) else {
            return false;
        };
        entry.1 -= 1;
        if entry.1 > 0 {
            return false;
        }
        files.remove(&ino);
        true
    }

    async fn flush_handle(&self, handle: &Handle) -> FsResult<()> {
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
        let attr = result?;
        let perm = setid::cleared(attr.perm, attr.gid, caller);
        if perm != attr.perm {
            let changes = SetAttr { mode: Some(u32::from(perm)), ..SetAttr::default() };
            self.meta.set_attr(attr.ino, Cred::ROOT, changes).await?;
        }
        Ok(perm != attr.perm)
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE.
    pub async fn seek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        // Linux answers a negative offset, like one past the end, with ENXIO.
        let offset = u64::try_from(offset).map_err(|_| FsError::NoSuchOffset)?;
        let handle = self.handle(fh)?;
        let mut data = handle.file.data.lock().await;
        self.flush_locked(&handle.file, &mut data, true).await?;
        let layout = self.meta.layout(handle.file.ino).await?;
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(FsError::Invalid("lseek whence")),
        };
        let found = seek::seek(&layout.extents, layout.attr.size, offset, data)?;
        Ok(found as i64)
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
        if let Some(data) = second.as_mut() {
            data.layout = None;
        }
        let (_, copied) = result?;
        Ok(copied as u32)
    }

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
    async fn wait_for_release(&self, ino: Ino, owner: u64, deadline: tokio::time::Instant) -> bool {
        let released = self.released_locks.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let others_hold = self.handles.lock().expect("handles lock").values().any(|h| {
            h.file.ino == ino
                && h.lock_owners.lock().expect("owners lock").iter().any(|o| *o != owner)
        });
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
        self.locked.lock().expect("locked lock").insert(ino);
        self.handle(fh)?.lock_owners.lock().expect("owners lock").insert(owner);
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
            handle.lock_owners.lock().expect("owners lock").remove(&owner);
        }
        self.release_locks(ino, owner).await
    }

    /// Drops `owner`'s locks on `ino` (a close by that process, or the last close of a
    /// flock'ed file). Free when this client never locked the file.
    pub async fn release_locks(&self, ino: Ino, owner: u64) -> FsResult<()> {
        if !self.locked.lock().expect("locked lock").contains(&ino) {
            return Ok(());
        }
        Ok(self.meta.unlock(ino, owner, (0, u64::MAX)).await?)
    }

    /// Capacity as users see it: raw chunkd space scaled by the encoding overhead.
    pub async fn stat_fs(&self) -> FsResult<StatFs> {
        let raw = self.meta.stat_fs().await?;
        let encoding = self.volume.encoding;
        let scale =
            |bytes: u64| (bytes as u128 * encoding.k as u128 / encoding.total() as u128) as u64;
        Ok(StatFs {
            capacity_bytes: scale(raw.capacity_bytes),
            free_bytes: scale(raw.free_bytes),
            inodes: raw.inodes,
        })
    }

    pub async fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        cred: &Cred,
    ) -> FsResult<()> {
        Ok(self.meta.set_xattr(ino, name, value, mode, cred).await?)
    }

    pub async fn get_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> FsResult<Vec<u8>> {
        Ok(self.meta.get_xattr(ino, name, cred).await?)
    }

    pub async fn list_xattr(&self, ino: Ino, cred: &Cred) -> FsResult<Vec<Vec<u8>>> {
        Ok(self.meta.list_xattr(ino, cred).await?)
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        Ok(self.meta.remove_xattr(ino, name, cred).await?)
    }
}
