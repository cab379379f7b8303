//! The filesystem core: every operation as an async function over metad and the chunkds,
//! testable without a mount (see `tests.rs`). `fuse.rs` only adapts it to the kernel.
//!
//! One concern per module, each adding to `impl Fs`:
//! - [`open_files`]: open files and their handles, open and release.
//! - [`names`]: lookups, attributes, creating, linking, renaming and removing names, listings.
//! - [`read_path`]: reads through the cached layout, read-ahead, atime, SEEK_DATA/HOLE.
//! - [`accesses`]: atime updates, shown at once and sent to metad in batches.
//! - [`write_path`]: buffering writes, committing them (flush, fsync, close), fallocate and
//!   copy_file_range.
//! - [`settling`]: the leases answers grant, and settling their recalls.
//! - [`locks`]: fcntl, OFD and flock locks.
//! - [`xattrs`]: extended attributes.
//! - [`flags`]: file attribute flags (chattr).
//! - [`shutdown`]: shutting the mount down (`FS_IOC_SHUTDOWN`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardfs_chunk_api::client::ChunkClientPool;
use shardfs_meta_api::MetaClient;
use shardfs_meta_api::proto::{Ino, MetaError, StatFs, VolumeInfo};
use shardfs_rpc::ClientOptions;
use tracing::{debug, warn};

use crate::chunk_io::{ChunkIo, DEFAULT_CACHE_BYTES};
use crate::error::{FsError, FsResult};
use crate::journal::Journal;
use crate::leases::Leases;
use crate::metrics::{ClientMetrics, Gauges};
use crate::write_back::WriteBack;
pub use flags::OpenIntent;
use open_files::{Handle, OpenFile};
use settling::settle_recalls;
use shardfs_rpc::sync::Lock as _;
pub use shutdown::Flush;

mod accesses;
mod flags;
mod locks;
mod names;
mod open_files;
mod read_path;
mod settling;
mod shutdown;
mod trust;
mod write_path;
mod xattrs;

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
    /// Whether namespace changes under a directory's write lease are answered here and
    /// sent in batches (`journal.rs`; on unless the `nobatch` mount option).
    pub batch: bool,
    pub rpc: ClientOptions,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            chunk_cache_bytes: DEFAULT_CACHE_BYTES,
            dirty_flush_bytes: 16 * 1024 * 1024,
            atime: AtimePolicy::Relative,
            dir_atime: true,
            batch: true,
            rpc: ClientOptions::default(),
        }
    }
}

/// Longest an unmount waits for the commits closes left to the background.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest an unmount waits for metad to close the session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

pub struct Fs {
    meta: Arc<MetaClient>,
    io: Arc<ChunkIo>,
    volume: VolumeInfo,
    options: FsOptions,
    /// Open files and how many handles each has.
    files: Mutex<HashMap<Ino, (Arc<OpenFile>, usize)>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    /// The inodes this client ever asked for a lock on, with the lock owner that asked:
    /// only closes by those owners must release locks.
    locked: Mutex<HashSet<(Ino, u64)>>,
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
    /// Held while a batch of atime updates is sent (see `accesses.rs`).
    sending_accesses: tokio::sync::Mutex<()>,
    /// Namespace changes answered here, on their way to metad (with `FsOptions::batch`).
    journal: Option<Arc<Journal>>,
    metrics: Arc<ClientMetrics>,
    /// Set once the mount is shut down (`shutdown.rs`).
    shut: AtomicBool,
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
        let journal = options.batch.then(|| Journal::start(meta.clone(), leases.clone()));
        let fs = Arc::new_cyclic(|me| Fs {
            journal,
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
            sending_accesses: tokio::sync::Mutex::new(()),
            leases,
            metrics,
            shut: AtomicBool::new(false),
        });
        tokio::spawn(settle_recalls(Arc::downgrade(&fs), recalls));
        tokio::spawn(accesses::send_accesses_in_time(Arc::downgrade(&fs)));
        tokio::spawn(trust::keep_leases_trusted(Arc::downgrade(&fs)));
        tokio::spawn(trust::reclaim_after_takeovers(Arc::downgrade(&fs)));
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
        // A mount shut down has flushed what it was asked to, and closed its session.
        if self.is_shut_down() {
            return;
        }
        // close(2) leaves a file's last writes to the release that follows it, which the
        // kernel sends in the background; an unmount drops releases still queued. What
        // such files buffered is committed here.
        // Failures are logged: an unmount cannot report them.
        let _ = self.commit_open_files("unmounting", true).await;
        let unfinished = self.write_back.drain(DRAIN_TIMEOUT).await;
        if let Err(e) = self.flush_journal().await {
            warn!("unmounting: changes answered here not all made at metad: {e}");
        }
        self.send_accesses(None).await;
        if unfinished > 0 {
            warn!(unfinished, "unmounting with closed files whose last writes are not committed");
        }
        match tokio::time::timeout(CLOSE_TIMEOUT, self.meta.close_session()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("cannot close the metad session (it will expire): {e}"),
            Err(_) => warn!("metad did not answer the session close in {CLOSE_TIMEOUT:?}"),
        }
    }

    /// Commits what every open file buffered; `when` says in the log when a commit failed.
    /// (A commit already under way for a file finds nothing left to do, or the other way
    /// round.) Without `wait`, a file another operation is busy with is left to it. Every
    /// file is tried; the first failure is returned.
    async fn commit_open_files(&self, when: &str, wait: bool) -> FsResult<()> {
        let open: Vec<Arc<OpenFile>> =
            self.files.locked().values().map(|(f, _)| f.clone()).collect();
        let mut committed = Ok(());
        for file in open {
            let mut data = match file.data.try_lock() {
                Ok(data) => data,
                Err(_) if wait => file.data.lock().await,
                Err(_) => continue,
            };
            match self.flush_locked(&file, &mut data, true).await {
                // Unlinked meanwhile: nothing can read what it buffered.
                Ok(()) | Err(FsError::Meta(MetaError::NotFound)) => {}
                Err(e) => {
                    warn!(
                        ino = file.ino,
                        "{when}: writes an open file buffered not committed: {e}"
                    );
                    if committed.is_ok() {
                        committed = Err(e);
                    }
                }
            }
        }
        committed
    }

    /// Waits until the namespace changes answered here so far are answered by metad,
    /// leaving a refusal to be reported by the next `fsync`.
    async fn flush_journal_sent(&self) -> FsResult<()> {
        match &self.journal {
            Some(journal) => Ok(journal.sent().await?),
            None => Ok(()),
        }
    }

    /// Waits until the namespace changes answered here so far are made at metad; reports
    /// one metad refused since the last report.
    pub(super) async fn flush_journal(&self) -> FsResult<()> {
        match &self.journal {
            Some(journal) => journal.flush().await,
            None => Ok(()),
        }
    }

    /// The leases this mount holds, which decide what the kernel may cache.
    pub fn leases(&self) -> Arc<Leases> {
        self.leases.clone()
    }

    pub fn volume(&self) -> &VolumeInfo {
        &self.volume
    }

    /// Capacity as users see it: raw chunkd space scaled by the overhead of the class data
    /// comes to rest in (the cold class).
    pub async fn stat_fs(&self) -> FsResult<StatFs> {
        Ok(self.meta.stat_fs().await?.usable(self.volume.cold))
    }
}
