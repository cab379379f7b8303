//! The filesystem core: every operation as an async function over metad and the chunkds,
//! testable without a mount. `fuse.rs` only adapts it to the kernel.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardfs_chunk_api::client::ChunkClientPool;
use shardfs_meta_api::proto::{
    Attr, Cred, DirEntry, FileKind, HeldLock, INLINE_MAX, Ino, Layout, LockKind, MAX_NAME_LEN,
    Made, MetaError, RenameMode, SetAttr, SetTime, SpaceOp, StatFs, Timestamp, Unlinked,
    VolumeInfo, XattrMode, names_an_entry,
};
use shardfs_meta_api::{MetaClient, MetaClientError};
use shardfs_rpc::ClientOptions;
use tracing::{debug, warn};

use crate::chunk_io::{ChunkIo, DEFAULT_CACHE_BYTES, Written};
use crate::dirty::DirtyRanges;
use crate::error::{FsError, FsResult};
use crate::leases::{self, Leases, Recall};
use crate::metrics::{ClientMetrics, Gauges};
use crate::seek;
use crate::setid;
use crate::write_back::{self, WriteBack};
use shardfs_rpc::sync::Lock as _;
use shardfs_rpc::sync::blocking;

/// Client tuning.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Bytes of verified chunks kept in memory.
    pub chunk_cache_bytes: usize,
    /// Buffered bytes per open file that trigger a flush of its completed chunks.
    pub dirty_flush_bytes: usize,
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
            atime: AtimePolicy::Relative,
            dir_atime: true,
            rpc: ClientOptions::default(),
        }
    }
}

/// Chunks read ahead of a sequential reader at most: one after the first chunk read in a
/// row, one more per further chunk, up to this many.
const MAX_READ_AHEAD_CHUNKS: u64 = 4;

/// The extended attribute holding file capabilities, which the kernel reads before writes.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Longest a lock request that met a conflict waits for this client's pending closes to drop
/// their OFD locks.
const RELEASE_RACE_WAIT: Duration = Duration::from_millis(100);

/// Longest an unmount waits for the commits closes left to the background.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest an unmount waits for metad to close the session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Grants of a file's write lease a write may see recalled before it fails. metad holds a
/// new write lease for a moment before recalling it, so one attempt nearly always does.
const WRITE_LEASE_ATTEMPTS: usize = 1000;

/// Longest a recall waits for the kernel to drop what the mount cached before the lease is
/// released anyway: the kernel may be holding the inode for a request of this mount that
/// itself waits for the recall. The invalidation still completes after that.
const INVALIDATE_WAIT: Duration = Duration::from_millis(100);

/// Has metad move the atime of `ino` (see [`Fs::atime_update`]); keeps the attributes it
/// answers under the lease.
async fn update_atime(meta: &MetaClient, leases: &Leases, ino: Ino, strict: bool) -> FsResult<()> {
    let epoch = leases.epoch();
    match meta.accessed(ino, strict).await {
        Ok(attr) => {
            leases.update_attr(epoch, &attr);
            Ok(())
        }
        Err(e) => {
            leases.forget_attrs(Some(ino));
            Err(e.into())
        }
    }
}

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

/// Settles lease recalls as they arrive, each on its own task so a slow commit delays no
/// other, until the client is dropped.
/// Recalls that cannot be settled are tried again every half second: their warning is
/// logged once per interval.
static UNSETTLED_LOG: shardfs_rpc::throttle::Throttle =
    shardfs_rpc::throttle::Throttle::new(Duration::from_secs(10));

/// Recalls settled at once; more wait their turn, so a burst of recalls (metad shedding
/// thousands of leases) does not become thousands of tasks and blocking threads.
const MAX_SETTLING: usize = 64;

async fn settle_recalls(
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

/// When reads update atime. Updates happen at the first read of each open file (or
/// listing of a directory), not at every read(2) call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtimePolicy {
    Never,
    /// relatime: only when atime is not newer than mtime or ctime, or over a day old.
    Relative,
    Always,
}

/// A removal of a name under way (see [`Fs::removing`]); ends when dropped.
struct Removing<'a>(&'a AtomicUsize);

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// State of a file while at least one handle has it open.
struct OpenFile {
    ino: Ino,
    data: tokio::sync::Mutex<FileData>,
    /// Set when the read lease that covered the cached layout was recalled.
    stale: std::sync::atomic::AtomicBool,
    /// Whether metad knows this client has the file open (see [`Fs::open`]).
    registered: tokio::sync::Mutex<bool>,
    /// Background commits of what closes left buffered, under way (see
    /// [`Fs::commit_closed`]): the file stays in `files` until they are done, so a later
    /// open finds the bytes they have not committed yet.
    committing: AtomicUsize,
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
    /// The committed attributes, when known while this mount holds the file's write lease:
    /// O_APPEND writes go to their size (or past what is buffered beyond it), and clear the
    /// set-id bits of their mode themselves (see [`Fs::write`]).
    committed: Option<Attr>,
}

impl FileData {
    /// `attr` with what is buffered: the size it reaches and the time it was written.
    fn with_dirty(&self, mut attr: Attr) -> Attr {
        if let Some(end) = self.dirty.end() {
            attr.size = attr.size.max(end);
        }
        if let Some(mtime) = self.dirty_mtime {
            attr.mtime = mtime;
            attr.ctime = attr.ctime.max(mtime);
        }
        attr
    }
}

struct Handle {
    file: Arc<OpenFile>,
    /// End of the previous read, to spot sequential reading.
    last_read_end: AtomicU64,
    /// Bytes read sequentially through this handle since the last jump: the read-ahead
    /// grows with it.
    sequential: AtomicU64,
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
    leases: Arc<Leases>,
    /// Commits left by closes to the background (see `write_back.rs`).
    write_back: WriteBack,
    /// This client, for the background tasks it starts.
    me: std::sync::Weak<Fs>,
    /// Removals of names (unlink, rmdir, rename) under way here: see [`Fs::removing`].
    removals: AtomicUsize,
    metrics: Arc<ClientMetrics>,
}

impl Fs {
    /// Connects to metad and reads the volume's settings; fails fast if metad is unreachable.
    pub async fn connect(metad: &str, options: FsOptions) -> FsResult<Arc<Fs>> {
        let host = nix::unistd::gethostname()
            .map_or_else(|_| "unknown".to_string(), |name| name.to_string_lossy().into_owned());
        let client = format!("{host} pid {}", std::process::id());
        let (leases, recalls) = Leases::new();
        let leases = Arc::new(leases);
        let meta = Arc::new(MetaClient::with_session(metad, options.rpc, client, leases.clone()));
        let volume = meta.volume().await?;
        tokio::spawn(heartbeats(Arc::downgrade(&meta)));
        let pool = Arc::new(ChunkClientPool::new(options.rpc));
        let metrics = Arc::new(ClientMetrics::new());
        let io = ChunkIo::new(pool, meta.clone(), options.chunk_cache_bytes, metrics.clone());
        let io = Arc::new(io);
        let write_back = WriteBack::new(options.dirty_flush_bytes);
        let fs = Arc::new_cyclic(|me| Fs {
            write_back,
            me: me.clone(),
            meta,
            io,
            volume,
            options,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            locked: Mutex::new(HashSet::new()),
            released_locks: tokio::sync::Notify::new(),
            removals: AtomicUsize::new(0),
            leases,
            metrics,
        });
        tokio::spawn(settle_recalls(Arc::downgrade(&fs), recalls));
        Ok(fs)
    }

    /// What this mount counts: FUSE operations, bytes, cache hits.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.metrics
    }

    /// The metrics text, with leases, cache usage and open files as of now.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(Gauges {
            leases_held: self.leases.held_count(),
            cache_bytes: self.io.cache_bytes(),
            open_files: self.files.locked().len() as u64,
        })
    }

    /// Ends this mount's metad session, giving back its leases, locks and open files at
    /// once. Bounded: an unreachable metad lets the session expire instead.
    pub async fn close(&self) {
        // close(2) leaves a file's last writes to the release that follows it, which the
        // kernel sends in the background; an unmount drops releases still queued. What
        // such files buffered is committed here. (A commit already under way for a file
        // finds nothing left to do, or the other way round.)
        let open: Vec<Arc<OpenFile>> =
            self.files.locked().values().map(|(f, _)| f.clone()).collect();
        for file in open {
            let mut data = file.data.lock().await;
            match self.flush_locked(&file, &mut data, true).await {
                // Unlinked meanwhile: nothing can read what it buffered.
                Ok(()) | Err(FsError::Meta(MetaError::NotFound)) => {}
                Err(e) => {
                    warn!(ino = file.ino, "unmounting: last writes of an open file lost: {e}")
                }
            }
        }
        let unfinished = self.write_back.drain(DRAIN_TIMEOUT).await;
        if unfinished > 0 {
            warn!(unfinished, "unmounting with closed files whose last writes are not committed");
        }
        match tokio::time::timeout(CLOSE_TIMEOUT, self.meta.close_session()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("cannot close the metad session (it will expire): {e}"),
            Err(_) => warn!("metad did not answer the session close in {CLOSE_TIMEOUT:?}"),
        }
    }

    /// Runs a metad call whose answer grants this mount read leases on the inodes `leased`
    /// picks from it, and records them.
    async fn granting<T>(
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
    async fn settle(&self, ino: Ino) {
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
    async fn locked_with_write_lease<'a>(
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

    /// The leases this mount holds, which decide what the kernel may cache.
    pub fn leases(&self) -> Arc<Leases> {
        self.leases.clone()
    }

    pub fn volume(&self) -> &VolumeInfo {
        &self.volume
    }

    /// The file's state while it is open here or has a commit pending after its close.
    fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.locked().get(&ino).map(|(f, _)| f.clone())
    }

    /// The file's state while a handle has it open.
    fn file_in_use(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        let files = self.files.locked();
        files.get(&ino).filter(|(_, handles)| *handles > 0).map(|(f, _)| f.clone())
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles.locked().get(&fh).cloned().ok_or(FsError::Invalid("bad file handle"))
    }

    /// An answer's attributes, or for a file open here (whose buffer and commits the answer
    /// may not reflect) its attributes as [`Fs::get_attr`] gives them.
    async fn with_dirty(&self, attr: Attr) -> FsResult<Attr> {
        match self.open_file(attr.ino) {
            Some(_) => self.get_attr(attr.ino).await,
            None => Ok(attr),
        }
    }

    /// Runs a metad call that answers an inode's attributes, granting this mount a read
    /// lease on it (a write lease with `write`) and on `dir`; keeps the attributes while
    /// the lease lasts.
    async fn granting_attr(
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

    pub async fn lookup(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<Attr> {
        // A name no directory can hold is refused before the listing kept here is asked,
        // as metad would refuse it.
        if name.len() > MAX_NAME_LEN {
            return Err(MetaError::NameTooLong.into());
        }
        // The kernel looks up every name before creating it: in a directory this mount
        // made, that costs no round trip.
        if self.leases.known_absent(parent, name) {
            return Err(MetaError::NotFound.into());
        }
        let dir = names_an_entry(name).then_some(parent);
        let attr = self.granting_attr(self.meta.lookup(parent, name, cred), dir, false);
        self.with_dirty(attr.await?).await
    }

    /// Answered from the attributes kept under the inode's lease, if any. For a file open
    /// here, under its data lock: a commit under way changes both the buffer and the kept
    /// attributes, and must not be seen half done.
    pub async fn get_attr(&self, ino: Ino) -> FsResult<Attr> {
        let file = self.open_file(ino);
        let data = match &file {
            Some(file) => Some(file.data.lock().await),
            None => None,
        };
        let attr = match self.leases.cached_attr(ino) {
            Some(attr) => attr,
            None => self
                .granting_attr(self.meta.get_attr(ino), None, false)
                .await
                .map_err(FsError::stale_if_gone)?,
        };
        Ok(match data {
            Some(data) => data.with_dirty(attr),
            None => attr,
        })
    }

    pub async fn set_attr(&self, ino: Ino, cred: Cred, changes: SetAttr) -> FsResult<Attr> {
        let Some(file) = self.open_file(ino) else {
            let set = self.granting_attr(self.meta.set_attr(ino, cred, changes), None, false);
            return set.await.map_err(FsError::stale_if_gone);
        };
        let mut data = file.data.lock().await;
        if let Some(size) = changes.size {
            // Buffered bytes past the new end vanish.
            data.dirty.truncate(size);
        }
        let times_only = changes.size.is_none()
            && changes.mode.is_none()
            && changes.uid.is_none()
            && changes.gid.is_none();
        if times_only && !data.dirty.is_empty() {
            // Times only (the kernel writing back the times it keeps, or cp -p setting
            // mtime): buffered writes stay buffered, since committing them here would cut a
            // chunk wherever the writes had got to, and their commit takes this mtime, so it
            // does not replace it.
            match changes.mtime {
                Some(SetTime::At(mtime)) => data.dirty_mtime = Some(mtime),
                Some(SetTime::Now) => data.dirty_mtime = Some(Timestamp::now()),
                None => {}
            }
            let set = self.granting_attr(self.meta.set_attr(ino, cred, changes), None, false);
            let attr = set.await?;
            return Ok(data.with_dirty(attr));
        }
        // Buffered writes land first: their commit must not undo a truncate.
        self.flush_locked(&file, &mut data, true).await?;
        let attr = self.granting_attr(self.meta.set_attr(ino, cred, changes), None, false).await?;
        data.layout = None;
        data.committed = Some(attr.clone());
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
        // metad gives the creator of a regular file its write lease too.
        let is_file = matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG);
        let epoch = self.leases.epoch();
        let made = self.meta.make_node(parent, name, mode, rdev, cred);
        let attr = self.granting_made(made, parent, name, is_file).await;
        if let Ok(attr) = &attr {
            // A new file has no capability; its first write need not ask metad.
            self.leases.lacks_capability_since(epoch, attr.ino);
        }
        attr
    }

    /// The answer to a request adding `name` in `parent`: the lease and attributes of the
    /// named inode, as [`Fs::granting_attr`] keeps them, and the directory's attributes as
    /// the change left them, kept under the directory's lease (the kernel asks for them
    /// after every change in it); the name joins the directory's listing, if known. A new
    /// directory's listing is known: it is empty.
    async fn granting_made(
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
                self.leases.listing_changed(parent, name, true);
                if made.attr.kind == FileKind::Dir {
                    self.leases.listed_empty(epoch, made.attr.ino);
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

    pub async fn make_dir(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        cred: Cred,
    ) -> FsResult<Attr> {
        let made = self.meta.make_dir(parent, name, mode & 0o7777, cred);
        self.granting_made(made, parent, name, false).await
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        cred: Cred,
    ) -> FsResult<Attr> {
        let made = self.meta.symlink(parent, name, target, cred);
        self.granting_made(made, parent, name, false).await
    }

    pub async fn read_link(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let target = self.meta.read_link(ino).await;
        target.map_err(|e| FsError::stale_if_gone(e.into()))
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        let _removing = self.removing().await?;
        let epoch = self.leases.epoch();
        match self.meta.unlink(parent, name, cred).await {
            Ok(Unlinked { parent: dir, ino, target }) => {
                let attrs = Vec::from_iter([Some(&dir), target.as_ref()].into_iter().flatten());
                self.leases.update_attrs(epoch, &attrs);
                self.leases.listing_changed(parent, name, false);
                if target.is_none_or(|attr| attr.nlink == 0) {
                    self.leases.name_removed(ino);
                }
                Ok(())
            }
            Err(e) => {
                // It may have happened all the same, to an inode this mount cannot name.
                self.leases.forget_attrs(None);
                self.leases.forget_listing(parent);
                Err(e.into())
            }
        }
    }

    pub async fn remove_dir(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        let _removing = self.removing().await?;
        let removed = self.meta.remove_dir(parent, name, cred).await;
        self.leases.forget_attrs(None);
        match removed {
            Ok(()) => self.leases.listing_changed(parent, name, false),
            Err(_) => self.leases.forget_listing(parent),
        }
        Ok(removed?)
    }

    /// Before this mount removes a name: registers the opens it kept to itself under leases,
    /// since the inode may be losing its last name and metad recalls no lease from the mount
    /// making the change. Opens that start while the removal is under way register
    /// themselves (see [`Fs::open`]). Held until the removal is done.
    async fn removing(&self) -> FsResult<Removing<'_>> {
        // Counted before the open files are listed: an open either is listed or sees the
        // count (both sides use sequentially consistent order).
        self.removals.fetch_add(1, Ordering::SeqCst);
        let removing = Removing(&self.removals);
        self.register_opens().await?;
        Ok(removing)
    }

    /// Registers every open file of the mount with metad. The list includes other
    /// processes' files, so a file in it may have been closed and removed meanwhile: that is
    /// no reason to fail.
    async fn register_opens(&self) -> FsResult<()> {
        let open: Vec<Arc<OpenFile>> = (self.files.locked().values())
            .filter(|(_, handles)| *handles > 0)
            .map(|(f, _)| f.clone())
            .collect();
        for file in open {
            match self.register_open(&file).await {
                // Gone from metad already: nothing left to keep alive.
                Err(FsError::Meta(MetaError::NotFound)) => {}
                result => result?,
            }
        }
        Ok(())
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
        let _removing = self.removing().await?;
        let renamed = self.meta.rename(parent, name, new_parent, new_name, mode, cred).await;
        self.leases.forget_attrs(None);
        // Exchanges, replacements and whiteouts: simpler to learn the names again.
        self.leases.forget_listing(parent);
        self.leases.forget_listing(new_parent);
        if let Some(replaced) = renamed? {
            self.leases.name_removed(replaced);
        }
        Ok(())
    }

    pub async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        cred: &Cred,
    ) -> FsResult<Attr> {
        let linked = self.meta.link(ino, new_parent, new_name, cred);
        let linked = self.granting_made(linked, new_parent, new_name, false).await;
        self.with_dirty(linked?).await
    }

    /// `(parent of the directory, entries after cookie `after`)`.
    pub async fn read_dir(
        &self,
        ino: Ino,
        after: u64,
        limit: u32,
        cred: &Cred,
    ) -> FsResult<(Ino, Vec<DirEntry>)> {
        let listed = self.meta.read_dir(ino, after, limit, cred);
        let (parent, mut entries) = self
            .granting(listed, |(_, entries): &(Ino, Vec<DirEntry>)| {
                std::iter::once(ino).chain(entries.iter().map(|e| e.attr.ino)).collect()
            })
            .await?;
        if after == 0
            && self.options.dir_atime
            && let Some(strict) = self.atime_update(None)
        {
            // In the background: the directory's attributes are not at hand to skip it.
            let (meta, leases) = (self.meta.clone(), self.leases.clone());
            tokio::spawn(async move {
                if let Err(e) = update_atime(&meta, &leases, ino, strict).await {
                    debug!(ino, "atime update failed: {e}");
                }
            });
        }
        for entry in &mut entries {
            if entry.attr.kind == FileKind::File {
                entry.attr = self.with_dirty(entry.attr.clone()).await?;
            }
        }
        Ok((parent, entries))
    }

    /// Opens `ino`; `reading` if the handle may read (for atime). An inode that is gone
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
            let attr = self.leases.cached_attr(ino);
            if let Some(strict) = self.atime_update(attr.as_ref()) {
                match update_atime(&self.meta, &self.leases, ino, strict).await {
                    Ok(()) => self.leases.forget_kernel_attrs(ino),
                    // Gone: the kernel looks the name up again.
                    Err(e @ FsError::Meta(MetaError::NotFound)) => return Err(e),
                    // Otherwise best effort, as at a first read: an open for reading does
                    // not fail for want of an atime update (on a full metad disk, say).
                    Err(e) => debug!(ino, "atime update failed: {e}"),
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

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handle = self.handle(fh)?;
        let file = &handle.file;
        let mut data = file.data.lock().await;
        // Without a lease (a file with no name left has none) no recall says when another
        // mount changed it: each read asks for the layout again.
        if file.stale.swap(false, Ordering::Relaxed) || !self.leases.holds(file.ino) {
            data.layout = None;
        }
        let layout = match &data.layout {
            Some(layout) => layout.clone(),
            None => {
                let fetched = self.meta.layout(file.ino);
                let leased = |l: &Layout| {
                    Vec::from_iter((!leases::nameless_read_lease(&l.attr)).then_some(l.attr.ino))
                };
                let layout = Arc::new(self.granting(fetched, leased).await?);
                data.layout = Some(layout.clone());
                layout
            }
        };
        if !data.accessed {
            data.accessed = true;
            // Before the data is returned, so a stat right after the read sees it.
            if let Some(strict) = self.atime_update(Some(&layout.attr))
                && let Err(e) = update_atime(&self.meta, &self.leases, file.ino, strict).await
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
        // A reader starting at the beginning or going on from where it stopped gets whole
        // chunks (and read-ahead); one jumping about gets just the parts it asks for.
        let sequential = match handle.last_read_end.load(Ordering::Relaxed) {
            u64::MAX => offset == 0,
            end => end == offset,
        };
        if data.dirty.overlaps(offset, offset + len as u64) {
            self.fill(&layout, offset, &mut buf, sequential).await?;
            data.dirty.overlay(offset, &mut buf);
        } else {
            // Without buffered bytes in the way, other readers need not wait for this one.
            drop(data);
            self.fill(&layout, offset, &mut buf, sequential).await?;
        }
        let previous_end = handle.last_read_end.swap(offset + len as u64, Ordering::Relaxed);
        if previous_end == offset {
            let run = handle.sequential.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
            let depth = (run / self.volume.chunk_size + 1).min(MAX_READ_AHEAD_CHUNKS);
            self.read_ahead(&layout, offset + len as u64, depth);
        } else {
            handle.sequential.store(0, Ordering::Relaxed);
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
    /// holes stay zero. `whole` reads (and caches) whole chunks: see `ChunkIo::read_into`.
    async fn fill(
        &self,
        layout: &Layout,
        offset: u64,
        buf: &mut [u8],
        whole: bool,
    ) -> FsResult<()> {
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
            let from = offset.max(extent.offset);
            let to = end.min(extent.end());
            let in_chunk = (extent.chunk_offset + (from - extent.offset)) as usize;
            let dest = &mut buf[(from - offset) as usize..(to - offset) as usize];
            self.io.read_into(location, in_chunk, dest, whole).await?;
        }
        Ok(())
    }

    /// Warms the cache, in the background, with the `depth` chunks after the one holding
    /// `offset`: those a sequential reader needs next.
    fn read_ahead(&self, layout: &Layout, offset: u64, depth: u64) {
        let window = self.volume.chunk_size;
        for ahead in 1..=depth {
            let next = (offset / window + ahead) * window;
            let index = layout.extents.partition_point(|e| e.end() <= next);
            let Some(extent) = layout.extents.get(index) else {
                return;
            };
            if let Ok(i) = layout.chunks.binary_search_by_key(&extent.chunk, |c| c.chunk) {
                self.io.prefetch(&layout.chunks[i]);
            }
        }
    }

    /// Writes `bytes` at `offset`; returns how many were written and whether the file's
    /// mode changed.
    ///
    /// `append` (`Some(writer)` for an O_APPEND handle) writes at the end of the file as this
    /// mount knows it under the write lease: the kernel's idea of the end may predate another
    /// mount's appends. Such handles bypass the page cache, where the kernel would also have
    /// cleared set-id bits for an unprivileged writer, so that is done here.
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
                let end = committed.size.max(data.dirty.end().unwrap_or(0));
                data.committed = Some(committed);
                end
            }
        };
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
        Ok((bytes.len() as u32, mode_changed))
    }

    /// close(2): commits everything buffered for the file behind `fh`, unless the release
    /// that follows may leave that to the background (see [`Fs::defers_commit`]).
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if self.defers_commit(&handle.file).await.is_some() {
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
    async fn defers_commit(&self, file: &OpenFile) -> Option<usize> {
        let bytes = file.data.lock().await.dirty.bytes();
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
    async fn commit_closed(self: Arc<Self>, file: Arc<OpenFile>, bytes: usize) {
        let slot = self.write_back.slot().await;
        let mut delay = write_back::FIRST_RETRY;
        loop {
            let mut data = file.data.lock().await;
            match self.flush_locked(&file, &mut data, true).await {
                Ok(()) => break,
                Err(FsError::Meta(MetaError::NotFound)) => {
                    // Unlinked here since: nothing can read what it buffered.
                    data.dirty.take_all(self.volume.chunk_size);
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
            let forget = data.dirty.is_empty()
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

    /// fsync(2): commits what is buffered for the file behind `fh`, then has metad make its
    /// metadata, and every change before it, durable.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush_handle(&*self.handle(fh)?).await?;
        self.sync().await
    }

    /// Makes every metadata change this mount made so far durable (fsync of a directory).
    pub async fn sync(&self) -> FsResult<()> {
        Ok(self.meta.sync().await?)
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
        let epoch = self.leases.epoch();
        let committed = async {
            let mut attempts = 0;
            loop {
                let Written { stored, inline, extents } = self.io.store(&pieces).await?;
                match self.meta.commit_write(file.ino, stored, inline, extents, mtime).await {
                    // Garbage collection removed a deduplicated chunk between prepare and
                    // commit: prepare again, which now stores it.
                    Err(MetaClientError::Meta(MetaError::ChunkGone(_))) if attempts < 3 => {
                        attempts += 1;
                    }
                    result => return result.map_err(FsError::from),
                }
            }
        }
        .await;
        data.layout = None;
        match committed {
            Ok(attr) => {
                self.leases.update_attr(epoch, &attr);
                data.committed = Some(attr.clone());
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
        if let Some(bytes) = self.defers_commit(&handle.file).await
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
    async fn register_open(&self, file: &OpenFile) -> FsResult<()> {
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
        self.locked.locked().insert(ino);
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
    /// flock'ed file). Free when this client never locked the file.
    pub async fn release_locks(&self, ino: Ino, owner: u64) -> FsResult<()> {
        if !self.locked.locked().contains(&ino) {
            return Ok(());
        }
        Ok(self.meta.unlock(ino, owner, (0, u64::MAX)).await?)
    }

    /// Capacity as users see it: raw chunkd space scaled by the encoding overhead.
    pub async fn stat_fs(&self) -> FsResult<StatFs> {
        Ok(self.meta.stat_fs().await?.usable(self.volume.encoding))
    }

    pub async fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        cred: &Cred,
    ) -> FsResult<()> {
        let set = self.meta.set_xattr(ino, name, value, mode, cred).await;
        // The change time, and for an ACL the mode.
        self.leases.forget_attrs(Some(ino));
        Ok(set?)
    }

    pub async fn get_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> FsResult<Vec<u8>> {
        let capability = name == CAPABILITY_XATTR;
        if capability && self.leases.lacks_capability(ino) {
            return Err(MetaError::NoData.into());
        }
        let epoch = self.leases.epoch();
        let value = self.meta.get_xattr(ino, name, cred).await;
        if capability && matches!(value, Err(MetaClientError::Meta(MetaError::NoData))) {
            self.leases.lacks_capability_since(epoch, ino);
        }
        Ok(value?)
    }

    pub async fn list_xattr(&self, ino: Ino, cred: &Cred) -> FsResult<Vec<Vec<u8>>> {
        Ok(self.meta.list_xattr(ino, cred).await?)
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        let removed = self.meta.remove_xattr(ino, name, cred).await;
        self.leases.forget_attrs(Some(ino));
        Ok(removed?)
    }
}
