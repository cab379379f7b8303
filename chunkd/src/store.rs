//! The shard store: one verified, durably written file per shard in a data directory.
//!
//! ```text
//! DIR/chunkd.id                         stable identity of this chunkd (32 hex digits)
//! DIR/chunkd.lock                       flock'd while a chunkd uses DIR
//! DIR/shards/<aa>/<bb>/<chunkhex>.<i>   one file per shard (format in `shard`);
//!                                       aa, bb = first two bytes of the chunk id in hex
//! DIR/tmp/                              temp files, renamed into shards/ once durable
//! DIR/quarantine/                       shard files that failed verification
//! ```
//!
//! Every read re-verifies the file's checksum; a file that fails is moved to `quarantine/`
//! (kept for inspection, never deleted) and reported so metad can rebuild the shard
//! elsewhere. Operations on one shard are serialised by lock stripes, so a put, get and
//! delete of the same shard never interleave; file I/O runs on tokio's blocking pool.

mod durable;
mod layout;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::mpsc::{self, Receiver, Sender};
use tracing::{info, warn};

use crate::shard::{self, HEADER_LEN, ShardFormatError, ShardHeader};
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::codec::Encoding;
use shardfs_chunk_api::hash_tree;
use shardfs_chunk_api::proto::{ChunkdError, ChunkdStat};

pub use layout::shard_file_path;
use shardfs_rpc::sync::Lock as _;

/// Number of lock stripes. Shards hash onto them; 64 keeps collisions between unrelated
/// concurrent requests rare at the concurrency one chunkd sees.
const LOCK_STRIPES: usize = 64;

/// Largest page `list` returns whatever the caller asks for, which bounds the response
/// frame (about 40 bytes per shard id).
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Errors opening a store. Errors of individual operations are `ChunkdError`s, since they
/// travel to clients as they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {}: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("data directory {} is not writable: {source}", dir.display())]
    NotWritable { dir: PathBuf, source: io::Error },
    #[error("data directory {} is in use by another shardfs-chunkd", dir.display())]
    InUse { dir: PathBuf },
    #[error(
        "{} does not hold a valid chunkd id (32 lowercase hex digits); restore it, or remove \
         it to give this chunkd a new identity",
        path.display()
    )]
    BadId { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

/// A shard read back from the store, verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredShard {
    pub encoding: Encoding,
    pub chunk_len: u64,
    pub data: Vec<u8>,
}

/// The shards of one data directory. Operations take `self: &Arc<Self>` because they hand
/// work to the blocking pool.
pub struct ShardStore {
    dir: PathBuf,
    shards_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    id: String,
    stripes: Box<[Arc<tokio::sync::Mutex<()>>]>,
    shard_count: AtomicU64,
    used_bytes: AtomicU64,
    quarantined: AtomicU64,
    scrub: crate::scrub::ScrubProgress,
    corrupt_reports: Mutex<Option<Sender<ShardId>>>,
    /// Fan-out directories whose creation is known to be durable.
    synced_dirs: Mutex<HashSet<PathBuf>>,
    /// Held for the store's lifetime so that two chunkds never share a data directory (each
    /// would delete the other's temp files and miscount its shards).
    _lock: Flock<File>,
}

/// What reading a shard file found.
enum ReadOutcome {
    Missing,
    Valid(StoredShard),
    Invalid { error: ShardFormatError, file_len: u64 },
}

/// A shard file opened, with its header and length checked.
enum OpenOutcome {
    Missing,
    Open(ShardHeader, File),
    Invalid { error: ShardFormatError, file_len: u64 },
}

impl ShardStore {
    /// Opens (creating if needed) the store in `dir`: checks that it is writable, takes its
    /// lock, loads or creates the chunkd id, removes stale temp files and counts shards.
    pub async fn open(dir: impl AsRef<Path>) -> Result<ShardStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let joined_dir = dir.clone();
        shardfs_rpc::sync::blocking(move || ShardStore::open_blocking(dir)).await.map_err(|e| {
            StoreError::Io { action: "open", path: joined_dir, source: io::Error::other(e) }
        })?
    }

    fn open_blocking(dir: PathBuf) -> Result<ShardStore, StoreError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { action, path, source }
        };
        durable::create_dir_durable(&dir)
            .map_err(|source| StoreError::CreateDir { dir: dir.clone(), source })?;
        probe_writable(&dir)
            .map_err(|source| StoreError::NotWritable { dir: dir.clone(), source })?;
        let lock = lock_dir(&dir)?;

        let shards_dir = dir.join(layout::SHARDS_DIR);
        let tmp_dir = dir.join(layout::TMP_DIR);
        let quarantine_dir = dir.join(layout::QUARANTINE_DIR);
        for sub in [&shards_dir, &tmp_dir, &quarantine_dir] {
            durable::create_dir_durable(sub).map_err(io_err("create", sub))?;
        }
        let stale = durable::clean_tmp(&tmp_dir).map_err(io_err("clean", &tmp_dir))?;
        if stale > 0 {
            info!(count = stale, "removed temp files left by an interrupted write");
        }
        let id = load_or_create_id(&dir, &tmp_dir)?;
        let (shard_count, used_bytes) =
            layout::scan(&shards_dir).map_err(io_err("scan", &shards_dir))?;
        info!(dir = %dir.display(), %id, shard_count, used_bytes, "shard store opened");

        Ok(ShardStore {
            dir,
            shards_dir,
            tmp_dir,
            quarantine_dir,
            id,
            stripes: (0..LOCK_STRIPES).map(|_| Arc::default()).collect(),
            shard_count: AtomicU64::new(shard_count),
            used_bytes: AtomicU64::new(used_bytes),
            quarantined: AtomicU64::new(0),
            scrub: Default::default(),
            corrupt_reports: Mutex::new(None),
            synced_dirs: Mutex::new(HashSet::new()),
            _lock: lock,
        })
    }

    /// Makes sure the fan-out directory `dir` (`shards/aa/bb`) exists and that its entry and
    /// its parent's are on disk before a shard in it is acknowledged. Another put may have
    /// just created it without having synced yet, so existence alone proves nothing: each
    /// directory is synced once per process lifetime, whoever created it.
    fn ensure_fan_out_dir(&self, dir: &Path) -> io::Result<()> {
        if self.synced_dirs.locked().contains(dir) {
            return Ok(());
        }
        durable::create_dir_durable(dir)?;
        let parent = dir.parent().unwrap_or(dir);
        durable::sync_dir(parent)?;
        durable::sync_dir(parent.parent().unwrap_or(parent))?;
        self.synced_dirs.locked().insert(dir.to_path_buf());
        Ok(())
    }

    /// This chunkd's stable identity, kept in `DIR/chunkd.id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts delivering the id of every shard that fails verification on read to the
    /// returned receiver (replacing any earlier one). Until then such shards are only logged.
    pub fn subscribe_corrupt_reports(&self) -> Receiver<ShardId> {
        // Bounded like the reports the heartbeat task keeps unsent: past that, a report is
        // dropped (the shard stays quarantined; a read or repair finds it missing).
        let (tx, rx) = mpsc::channel(crate::heartbeat::MAX_PENDING_REPORTS);
        *self.corrupt_reports.locked() = Some(tx);
        rx
    }

    /// Stores a shard durably. `checksum` is BLAKE3 of `data`; `tree` is the chunk's hash
    /// tree in a data shard of a chunk of several segments, else empty. A shard already
    /// stored with the same content is left untouched.
    pub async fn put(
        self: &Arc<Self>,
        shard: ShardId,
        encoding: Encoding,
        chunk_len: u64,
        checksum: [u8; 32],
        data: Vec<u8>,
        tree: Vec<u8>,
    ) -> Result<(), ChunkdError> {
        let encoding = validate_shard(shard, encoding)?;
        validate_tree(shard, encoding, chunk_len, &tree)?;
        let expected_len = shard::expected_payload_len(encoding, chunk_len);
        if expected_len != Some(data.len() as u64) {
            return Err(ChunkdError::Invalid(format!(
                "shard {shard} has {} bytes, but shards of a {chunk_len}-byte chunk with \
                 encoding {}+{} have {}",
                data.len(),
                encoding.k,
                encoding.m,
                expected_len.map_or("no valid length".into(), |len| len.to_string()),
            )));
        }
        self.with_shard_locked(shard, move |store| {
            if *blake3::hash(&data).as_bytes() != checksum {
                return Err(ChunkdError::ChecksumMismatch(shard.to_string()));
            }
            store.put_blocking(shard, encoding, chunk_len, &data, &tree)
        })
        .await
    }

    /// Bytes `[offset, offset + len)` of a data shard's payload, and the chunk's hash tree if
    /// `with_tree`. The payload is not verified here (that needs the whole file): the caller
    /// checks the bytes against the tree, and the tree against the chunk id. Shards without
    /// a tree (format 1) are `Invalid`, so the caller reads the whole chunk instead.
    pub async fn get_range(
        self: &Arc<Self>,
        shard: ShardId,
        offset: u64,
        len: u32,
        with_tree: bool,
    ) -> Result<(Vec<u8>, Vec<u8>), ChunkdError> {
        self.with_shard_locked(shard, move |store| {
            let path = store.shard_path(shard);
            let (header, file) = match store.open_shard(shard, &path)? {
                OpenOutcome::Missing => return Err(ChunkdError::NotFound(shard.to_string())),
                OpenOutcome::Invalid { error, file_len } => {
                    return Err(store.reject_invalid(shard, &path, error, file_len, true));
                }
                OpenOutcome::Open(header, file) => (header, file),
            };
            let tree_len = header.tree_len();
            if tree_len == 0 {
                return Err(ChunkdError::Invalid(format!(
                    "shard {shard} has no hash tree (format {}, or a chunk of one segment)",
                    header.version
                )));
            }
            let end = offset.checked_add(u64::from(len)).filter(|&end| end <= header.payload_len);
            if end.is_none() || len == 0 {
                return Err(ChunkdError::Invalid(format!(
                    "range of {len} bytes at {offset} is not within shard {shard}'s {} bytes",
                    header.payload_len
                )));
            }
            let read_at = |at: u64, len: u64| -> Result<Vec<u8>, ChunkdError> {
                let mut bytes = vec![0u8; len as usize];
                file.read_exact_at(&mut bytes, HEADER_LEN as u64 + at)
                    .map_err(|e| io_error("read", &path, e))?;
                Ok(bytes)
            };
            let data = read_at(offset, u64::from(len))?;
            let tree = if with_tree { read_at(header.payload_len, tree_len)? } else { Vec::new() };
            Ok((data, tree))
        })
        .await
    }

    /// Reads and verifies a shard. A shard that fails verification is quarantined, reported
    /// and answered with `Corrupt`.
    pub async fn get(self: &Arc<Self>, shard: ShardId) -> Result<StoredShard, ChunkdError> {
        self.with_shard_locked(shard, move |store| {
            let path = store.shard_path(shard);
            match store.read_shard(shard, &path)? {
                ReadOutcome::Missing => Err(ChunkdError::NotFound(shard.to_string())),
                ReadOutcome::Valid(stored) => Ok(stored),
                ReadOutcome::Invalid { error, file_len } => {
                    Err(store.reject_invalid(shard, &path, error, file_len, true))
                }
            }
        })
        .await
    }

    /// Removes a shard; `Ok(false)` if it was not there.
    pub async fn delete(self: &Arc<Self>, shard: ShardId) -> Result<bool, ChunkdError> {
        self.with_shard_locked(shard, move |store| {
            let path = store.shard_path(shard);
            let file_len = match fs::symlink_metadata(&path) {
                Ok(metadata) => metadata.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_error("stat", &path, e)),
            };
            fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
            sync_parent(&path)?;
            store.forget(file_len);
            Ok(true)
        })
        .await
    }

    /// Up to `min(limit, MAX_LIST_LIMIT)` shards after `after`, in `ShardId` order. An empty
    /// answer marks the end.
    pub async fn list(
        self: &Arc<Self>,
        after: Option<ShardId>,
        limit: u32,
    ) -> Result<Vec<ShardId>, ChunkdError> {
        let limit = (limit as usize).min(MAX_LIST_LIMIT);
        let store = self.clone();
        blocking(move || {
            layout::list(&store.shards_dir, after, limit)
                .map_err(|e| io_error("list", &store.shards_dir, e))
        })
        .await
    }

    /// Capacity of the data directory's file system and this store's usage.
    pub async fn stat(self: &Arc<Self>) -> Result<ChunkdStat, ChunkdError> {
        let store = self.clone();
        blocking(move || {
            let fs_stat = nix::sys::statvfs::statvfs(&store.dir)
                .map_err(|e| io_error("statvfs", &store.dir, e.into()))?;
            let fragment = fs_stat.fragment_size() as u64;
            Ok(ChunkdStat {
                capacity_bytes: (fs_stat.blocks() as u64).saturating_mul(fragment),
                free_bytes: (fs_stat.blocks_available() as u64).saturating_mul(fragment),
                used_bytes: store.used_bytes.load(Ordering::Relaxed),
                shard_count: store.shard_count.load(Ordering::Relaxed),
                quarantined: store.quarantined.load(Ordering::Relaxed),
                scrub_passes: store.scrub.passes.completed(),
                last_scrub_shards: store.scrub.last().shards,
                last_scrub_corrupt: store.scrub.last().corrupt,
                filesystem: fs_stat.filesystem_id() as u64,
            })
        })
        .await
    }

    /// Where background scrubbing is.
    pub fn scrub_progress(&self) -> &crate::scrub::ScrubProgress {
        &self.scrub
    }

    fn shard_path(&self, shard: ShardId) -> PathBuf {
        layout::shard_path_in(&self.shards_dir, shard)
    }

    /// Runs `work` on the blocking pool holding `shard`'s lock stripe. The guard moves into
    /// the blocking task, so the stripe stays held even if the caller stops waiting.
    async fn with_shard_locked<T: Send + 'static>(
        self: &Arc<Self>,
        shard: ShardId,
        work: impl FnOnce(&ShardStore) -> Result<T, ChunkdError> + Send + 'static,
    ) -> Result<T, ChunkdError> {
        let stripe = &self.stripes[stripe_of(shard)];
        let guard = stripe.clone().lock_owned().await;
        let store = self.clone();
        blocking(move || {
            let _guard = guard;
            work(&store)
        })
        .await
    }

    fn put_blocking(
        &self,
        shard: ShardId,
        encoding: Encoding,
        chunk_len: u64,
        data: &[u8],
        tree: &[u8],
    ) -> Result<(), ChunkdError> {
        let path = self.shard_path(shard);
        match self.read_shard(shard, &path)? {
            ReadOutcome::Missing => {}
            ReadOutcome::Valid(existing) => {
                if existing.encoding == encoding
                    && existing.chunk_len == chunk_len
                    && existing.data == data
                {
                    return Ok(());
                }
                // Same id, different bytes: a client disagrees about the chunk's encoding.
                // Overwriting could break the chunk for readers that rely on the stored one.
                return Err(ChunkdError::Invalid(format!(
                    "shard {shard} is already stored with encoding {}+{} and different content",
                    existing.encoding.k, existing.encoding.m
                )));
            }
            ReadOutcome::Invalid { error, file_len } => {
                // The new copy replaces a damaged one; keep the damaged one for inspection,
                // but no repair is needed, so metad is not told.
                let error = self.reject_invalid(shard, &path, error, file_len, false);
                if !matches!(error, ChunkdError::Corrupt(_)) {
                    return Err(error);
                }
                if path.exists() {
                    // Quarantine failed, so the rename below replaces the damaged file.
                    self.forget(file_len);
                }
            }
        }

        let header = ShardHeader::new(shard, encoding, chunk_len, data, tree).to_bytes();
        if let Some(dir) = path.parent() {
            self.ensure_fan_out_dir(dir).map_err(|e| io_error("create", dir, e))?;
        }
        durable::write_durable(&self.tmp_dir, &path, &[&header, data, tree])
            .map_err(|e| io_error("write", &path, e))?;
        self.shard_count.fetch_add(1, Ordering::Relaxed);
        let file_len = HEADER_LEN + data.len() + tree.len();
        self.used_bytes.fetch_add(file_len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Opens a shard file and checks its header and length, but not its checksum. Only I/O
    /// failures are errors; damage is an outcome.
    fn open_shard(&self, shard: ShardId, path: &Path) -> Result<OpenOutcome, ChunkdError> {
        let open = || -> io::Result<OpenOutcome> {
            let mut file = match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OpenOutcome::Missing),
                Err(e) => return Err(e),
            };
            let file_len = file.metadata()?.len();
            let invalid = |error| Ok(OpenOutcome::Invalid { error, file_len });
            let mut header_bytes = [0u8; HEADER_LEN];
            if file_len < HEADER_LEN as u64 {
                return invalid(ShardFormatError::TooShort { len: file_len as usize });
            }
            file.read_exact(&mut header_bytes)?;
            let header = match ShardHeader::parse(&header_bytes, shard) {
                Ok(header) => header,
                Err(error) => return invalid(error),
            };
            let actual = file_len - HEADER_LEN as u64;
            if actual != header.body_len() {
                return invalid(ShardFormatError::Truncated {
                    declared: header.body_len(),
                    actual,
                });
            }
            Ok(OpenOutcome::Open(header, file))
        };
        open().map_err(|e| io_error("read", path, e))
    }

    /// Reads a shard file, fully verified. Only I/O failures are errors; damage is an outcome.
    fn read_shard(&self, shard: ShardId, path: &Path) -> Result<ReadOutcome, ChunkdError> {
        let (header, mut file) = match self.open_shard(shard, path)? {
            OpenOutcome::Missing => return Ok(ReadOutcome::Missing),
            OpenOutcome::Invalid { error, file_len } => {
                return Ok(ReadOutcome::Invalid { error, file_len });
            }
            OpenOutcome::Open(header, file) => (header, file),
        };
        // The body's length is the file's (checked on open), so a damaged length field
        // cannot make us allocate more than the file holds.
        let mut body = vec![0u8; header.body_len() as usize];
        file.read_exact(&mut body).map_err(|e| io_error("read", path, e))?;
        match header.verify_body(&body) {
            Ok(()) => {
                body.truncate(header.payload_len as usize);
                Ok(ReadOutcome::Valid(StoredShard {
                    encoding: header.encoding,
                    chunk_len: header.chunk_len,
                    data: body,
                }))
            }
            Err(error) => {
                let file_len = HEADER_LEN as u64 + header.body_len();
                Ok(ReadOutcome::Invalid { error, file_len })
            }
        }
    }

    /// Deals with a shard file that failed verification and returns the error to answer
    /// with. A file of an unknown format version is left alone: a newer build wrote it.
    fn reject_invalid(
        &self,
        shard: ShardId,
        path: &Path,
        error: ShardFormatError,
        file_len: u64,
        report: bool,
    ) -> ChunkdError {
        if let ShardFormatError::UnsupportedVersion(_) = error {
            return ChunkdError::Io(format!("shard {shard}: {error}"));
        }
        warn!(%shard, "shard failed verification ({error}); moving it to quarantine");
        match self.quarantine(shard, path) {
            Ok(()) => {
                self.forget(file_len);
                self.quarantined.fetch_add(1, Ordering::Relaxed);
            }
            // Still corrupt, and still to be repaired: answer the same way.
            Err(e) => warn!(%shard, "cannot quarantine {}: {e}", path.display()),
        }
        if report {
            let sender = self.corrupt_reports.locked();
            if let Some(sender) = sender.as_ref()
                && sender.try_send(shard).is_err()
            {
                warn!(%shard, "too many unsent corrupt-shard reports; dropping this one");
            }
        }
        ChunkdError::Corrupt(shard.to_string())
    }

    fn quarantine(&self, shard: ShardId, path: &Path) -> io::Result<()> {
        let name = layout::file_name(shard);
        let mut target = self.quarantine_dir.join(&name);
        if target.exists() {
            // The same shard went bad before; keep both copies.
            target = self.quarantine_dir.join(format!("{name}.{:016x}", rand::random::<u64>()));
        }
        fs::rename(path, &target)?;
        durable::sync_dir(&self.quarantine_dir)?;
        match path.parent() {
            Some(dir) => durable::sync_dir(dir),
            None => Ok(()),
        }
    }

    /// Drops a removed shard file from the usage counters.
    fn forget(&self, file_len: u64) {
        saturating_sub(&self.shard_count, 1);
        saturating_sub(&self.used_bytes, file_len);
    }
}

/// Checks the parts of a request that decide where and how a shard is stored.
fn validate_shard(shard: ShardId, encoding: Encoding) -> Result<Encoding, ChunkdError> {
    let encoding = encoding.validate().map_err(|e| ChunkdError::Invalid(e.to_string()))?;
    if usize::from(shard.index) >= encoding.total() {
        return Err(ChunkdError::Invalid(format!(
            "shard index {} is out of range for encoding {}+{}",
            shard.index, encoding.k, encoding.m
        )));
    }
    Ok(encoding)
}

/// A put's tree must be the one a current-format file of that shard holds, and must hash to
/// the chunk id: a wrong tree would make every ranged read of the chunk fall back.
fn validate_tree(
    shard: ShardId,
    encoding: Encoding,
    chunk_len: u64,
    tree: &[u8],
) -> Result<(), ChunkdError> {
    let expected = shard::tree_len(shard::FORMAT_VERSION, shard.index, encoding, chunk_len);
    if tree.len() as u64 != expected {
        return Err(ChunkdError::Invalid(format!(
            "shard {shard} comes with {} bytes of hash tree, expected {expected}",
            tree.len()
        )));
    }
    if expected > 0 && hash_tree::root(tree, chunk_len) != Some(shard.chunk) {
        return Err(ChunkdError::Invalid(format!(
            "the hash tree sent with shard {shard} does not hash to its chunk id"
        )));
    }
    Ok(())
}

fn stripe_of(shard: ShardId) -> usize {
    // Chunk ids are uniformly random already; mixing in the index spreads a chunk's
    // shards over stripes too.
    (usize::from(shard.chunk.0[0]) + usize::from(shard.index)) % LOCK_STRIPES
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ChunkdError> + Send + 'static,
) -> Result<T, ChunkdError> {
    shardfs_rpc::sync::blocking(work).await.map_err(|e| ChunkdError::Io(e.to_string()))?
}

fn io_error(action: &str, path: &Path, e: io::Error) -> ChunkdError {
    let message = format!("cannot {action} {}: {e}", path.display());
    if durable::is_no_space(&e) { ChunkdError::NoSpace(message) } else { ChunkdError::Io(message) }
}

fn sync_parent(path: &Path) -> Result<(), ChunkdError> {
    match path.parent() {
        Some(dir) => durable::sync_dir(dir).map_err(|e| io_error("sync", dir, e)),
        None => Ok(()),
    }
}

fn saturating_sub(counter: &AtomicU64, amount: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |value| {
        Some(value.saturating_sub(amount))
    });
}

/// Creates, fsyncs and removes a file in `dir`, so a read-only or full disk is reported at
/// start-up rather than on the first put.
fn probe_writable(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    let probe = dir.join(format!(".write-probe.{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&probe)?;
        file.write_all(b"probe")?;
        file.sync_all()
    })();
    let removed = fs::remove_file(&probe);
    result?;
    removed
}

fn lock_dir(dir: &Path) -> Result<Flock<File>, StoreError> {
    let path = dir.join(layout::LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StoreError::Io { action: "open", path: path.clone(), source })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            StoreError::InUse { dir: dir.to_path_buf() }
        } else {
            StoreError::Io { action: "lock", path, source: errno.into() }
        }
    })
}

/// Length in hex digits of a chunkd id (16 random bytes).
const ID_HEX_LEN: usize = 32;

/// The id of the chunkd whose data directory is `dir`; `None` before its first start.
pub fn read_id(dir: &Path) -> Result<Option<String>, StoreError> {
    let path = dir.join(layout::ID_FILE);
    match fs::read_to_string(&path) {
        Ok(contents) => {
            let id = contents.trim_end_matches('\n');
            let valid = id.len() == ID_HEX_LEN
                && id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
            if valid { Ok(Some(id.to_owned())) } else { Err(StoreError::BadId { path }) }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io { action: "read", path, source }),
    }
}

fn load_or_create_id(dir: &Path, tmp_dir: &Path) -> Result<String, StoreError> {
    if let Some(id) = read_id(dir)? {
        return Ok(id);
    }
    let id = hex::encode(rand::random::<[u8; ID_HEX_LEN / 2]>());
    let path = dir.join(layout::ID_FILE);
    durable::write_durable(tmp_dir, &path, &[id.as_bytes(), b"\n"])
        .map_err(|source| StoreError::Io { action: "write", path, source })?;
    info!(%id, "created a new chunkd identity");
    Ok(id)
}

#[cfg(test)]
mod tests;
