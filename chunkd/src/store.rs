//! The shard store: verified shards appended to volume files with group commit.
//!
//! ```text
//! DIR/chunkd.id                 stable identity of this chunkd (32 hex digits)
//! DIR/chunkd.lock               flock'd while a chunkd uses DIR
//! DIR/volumes/v<n>.dat|idx|del  shard records, their index, their deletions (`volume`)
//! DIR/shards/<aa>/<bb>/<id>.<i> one file per shard, from before volumes (`legacy`); moved
//!                               into volumes in the background, readable until then
//! DIR/tmp/                      temp files, renamed into place once durable
//! DIR/quarantine/               copies of records that failed verification
//! ```
//!
//! Every read re-verifies what it returns (the checksum of a whole record; ranged reads are
//! verified by the reader against the chunk's hash tree); a record that fails is copied to
//! `quarantine/` (kept for inspection, never deleted), dropped, and reported so metad can
//! rebuild the shard elsewhere. Writes and deletions go through one writer thread
//! (`commit`) that syncs each group of them once; reads run on tokio's blocking pool.

mod commit;
mod compact;
mod durable;
mod index;
mod legacy;
mod migrate;
mod record;
mod volume;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::mpsc::{self, Receiver, Sender, UnboundedSender};
use tokio::sync::{OwnedMutexGuard, oneshot};
use tracing::{info, warn};

use crate::shard::{self, ShardFormatError, ShardHeader};
use commit::{NewRecord, Op};
use index::{Location, Volumes};
use record::{ReadOutcome, Source};
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::codec::Encoding;
use shardfs_chunk_api::hash_tree;
use shardfs_chunk_api::proto::{ChunkdError, ChunkdStat, VolumeStat};

pub use commit::VolumeConfig;
pub use compact::{CompactionConfig, CompactionProgress};
pub use migrate::migrate;
use shardfs_rpc::sync::{Lock as _, ReadWrite as _};

const ID_FILE: &str = "chunkd.id";
const LOCK_FILE: &str = "chunkd.lock";
const TMP_DIR: &str = "tmp";
const QUARANTINE_DIR: &str = "quarantine";

/// Number of lock stripes for the shard files of a store from before volumes. Shards hash
/// onto them; 64 keeps collisions between unrelated concurrent requests rare.
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

/// Where a shard's record is on disk, as [`inventory`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAt {
    pub shard: ShardId,
    /// A volume's data file, or the shard's own file in a store from before volumes.
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// The shard files of a store from before volumes, while any are left.
struct Legacy {
    shards_dir: PathBuf,
    /// Cleared once every file has moved into volumes.
    present: AtomicBool,
    count: AtomicU64,
    bytes: AtomicU64,
    /// Serialise a file's moving into a volume with deletes and reads of that shard.
    stripes: Box<[Arc<tokio::sync::Mutex<()>>]>,
}

/// The shards of one data directory. Operations take `self: &Arc<Self>` because they hand
/// work to the blocking pool.
pub struct ShardStore {
    dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    id: String,
    volumes: Arc<Volumes>,
    /// To the writer thread; taken on drop so that it finishes.
    writer: Option<(UnboundedSender<Op>, JoinHandle<()>)>,
    legacy: Legacy,
    quarantined: AtomicU64,
    compaction: CompactionProgress,
    scrub: crate::scrub::ScrubProgress,
    corrupt_reports: Mutex<Option<Sender<ShardId>>>,
    /// Records found damaged at start-up, reported once someone subscribes.
    damaged_at_open: Mutex<Vec<ShardId>>,
    /// Held for the store's lifetime so that two chunkds never share a data directory (each
    /// would delete the other's temp files and miscount its shards).
    _lock: Flock<File>,
}

/// Where a shard was found.
enum Found {
    Volume(Location),
    /// A shard file from before volumes, with its lock stripe held.
    File {
        path: PathBuf,
        file: File,
        len: u64,
        _stripe: OwnedMutexGuard<()>,
    },
    Missing,
}

impl Found {
    fn source(&self) -> Option<Source<'_>> {
        match self {
            Found::Volume(location) => Some(Source {
                file: &location.volume.file,
                base: location.offset,
                len: location.len,
            }),
            Found::File { file, len, .. } => Some(Source { file, base: 0, len: *len }),
            Found::Missing => None,
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            Found::Volume(location) => location.volume.path.clone(),
            Found::File { path, .. } => path.clone(),
            Found::Missing => PathBuf::new(),
        }
    }
}

impl ShardStore {
    /// Opens (creating if needed) the store in `dir` with volumes of the default size.
    pub async fn open(dir: impl AsRef<Path>) -> Result<ShardStore, StoreError> {
        ShardStore::open_with(dir, VolumeConfig::default()).await
    }

    /// Opens (creating if needed) the store in `dir`: checks that it is writable, takes its
    /// lock, loads or creates the chunkd id, removes stale temp files, reads the volumes and
    /// counts the shard files left from before volumes.
    pub async fn open_with(
        dir: impl AsRef<Path>,
        config: VolumeConfig,
    ) -> Result<ShardStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let joined_dir = dir.clone();
        shardfs_rpc::sync::blocking(move || ShardStore::open_blocking(dir, config)).await.map_err(
            |e| StoreError::Io { action: "open", path: joined_dir, source: io::Error::other(e) },
        )?
    }

    fn open_blocking(dir: PathBuf, config: VolumeConfig) -> Result<ShardStore, StoreError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { action, path, source }
        };
        durable::create_dir_durable(&dir)
            .map_err(|source| StoreError::CreateDir { dir: dir.clone(), source })?;
        probe_writable(&dir)
            .map_err(|source| StoreError::NotWritable { dir: dir.clone(), source })?;
        let lock = lock_dir(&dir)?;

        let volumes_dir = dir.join(volume::VOLUMES_DIR);
        let tmp_dir = dir.join(TMP_DIR);
        let quarantine_dir = dir.join(QUARANTINE_DIR);
        for sub in [&volumes_dir, &tmp_dir, &quarantine_dir] {
            durable::create_dir_durable(sub).map_err(io_err("create", sub))?;
        }
        let stale = durable::clean_tmp(&tmp_dir).map_err(io_err("clean", &tmp_dir))?;
        if stale > 0 {
            info!(count = stale, "removed temp files left by an interrupted write");
        }
        let id = load_or_create_id(&dir, &tmp_dir)?;
        let (volumes, damaged) = Volumes::open(volumes_dir.clone(), tmp_dir.clone())
            .map_err(io_err("read volumes in", &volumes_dir))?;
        let volumes = Arc::new(volumes);
        let writer = commit::start(volumes.clone(), config)
            .map_err(io_err("start writing volumes in", &volumes_dir))?;
        let shards_dir = dir.join(legacy::SHARDS_DIR);
        let (file_count, file_bytes) =
            legacy::scan(&shards_dir).map_err(io_err("scan", &shards_dir))?;
        let (shard_count, used_bytes) = volumes.usage();
        info!(
            dir = %dir.display(),
            %id,
            shard_count = shard_count + file_count,
            used_bytes = used_bytes + file_bytes,
            shard_files = file_count,
            "shard store opened"
        );

        Ok(ShardStore {
            dir,
            tmp_dir,
            quarantine_dir,
            id,
            volumes,
            writer: Some(writer),
            legacy: Legacy {
                present: AtomicBool::new(shards_dir.exists()),
                shards_dir,
                count: AtomicU64::new(file_count),
                bytes: AtomicU64::new(file_bytes),
                stripes: (0..LOCK_STRIPES).map(|_| Arc::default()).collect(),
            },
            quarantined: AtomicU64::new(0),
            compaction: Default::default(),
            scrub: Default::default(),
            corrupt_reports: Mutex::new(None),
            damaged_at_open: Mutex::new(damaged.into_iter().map(|(shard, _)| shard).collect()),
            _lock: lock,
        })
    }

    /// This chunkd's stable identity, kept in `DIR/chunkd.id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts delivering the id of every shard that fails verification to the returned
    /// receiver (replacing any earlier one), beginning with those found damaged when the
    /// store opened. Until then such shards are only logged.
    pub fn subscribe_corrupt_reports(&self) -> Receiver<ShardId> {
        // Bounded like the reports the heartbeat task keeps unsent: past that, a report is
        // dropped (the shard stays quarantined; a read or repair finds it missing).
        let (tx, rx) = mpsc::channel(crate::heartbeat::MAX_PENDING_REPORTS);
        for shard in self.damaged_at_open.locked().drain(..) {
            let _ = tx.try_send(shard);
        }
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
                "shard {shard} has {} bytes, but shards of a {chunk_len}-byte chunk of class \
                 {encoding} have {}",
                data.len(),
                expected_len.map_or("no valid length".into(), |len| len.to_string()),
            )));
        }
        let record = blocking(move || {
            if *blake3::hash(&data).as_bytes() != checksum {
                return Err(ChunkdError::ChecksumMismatch(shard.to_string()));
            }
            let header = ShardHeader::new(shard, encoding, chunk_len, &data, &tree);
            let parts = vec![header.to_bytes().to_vec(), data, tree];
            Ok(NewRecord { header, parts })
        })
        .await?;
        if self.stored_intact(&record).await? {
            return Ok(());
        }
        self.submit(|reply| Op::Put { record, reply }).await
    }

    /// Whether the volumes already hold `record`, intact. A damaged copy is quarantined
    /// (not reported: the put replaces it).
    /// A record of an older format (version 1, without a tree) holding the same bytes counts
    /// as the shard stored, as it did in a store of shard files.
    async fn stored_intact(self: &Arc<Self>, record: &NewRecord) -> Result<bool, ChunkdError> {
        let (new, shard) = (&record.header, record.header.shard);
        let Some(location) = self.volumes.index.read_locked().get(&shard).cloned() else {
            return Ok(false);
        };
        let stored = &location.header;
        let same = stored.checksum == new.checksum;
        let older_format = stored.version < new.version
            && (stored.encoding, stored.chunk_len) == (new.encoding, new.chunk_len);
        if !same && !older_format {
            // The writer refuses it: same id, other content.
            return Ok(false);
        }
        let store = self.clone();
        let payload = blocking(move || {
            let found = Found::Volume(location);
            let source = found.source().expect("found in a volume");
            match record::read(source, shard).map_err(|e| io_error("read", &found.path(), e))? {
                ReadOutcome::Valid { payload, .. } => Ok(Some(payload)),
                ReadOutcome::Invalid(error) => {
                    match store.reject_invalid(shard, &found, error, false) {
                        ChunkdError::Corrupt(_) => Ok(None),
                        other => Err(other),
                    }
                }
            }
        })
        .await?;
        match payload {
            Some(payload) if same || payload == record.parts[1] => Ok(true),
            Some(_) => Err(ChunkdError::Invalid(format!(
                "shard {shard} is already stored with different content"
            ))),
            None => Ok(false),
        }
    }

    /// Hands `op` to the writer and waits for its answer, which comes once it is durable.
    async fn submit<T>(&self, op: impl FnOnce(commit::Reply<T>) -> Op) -> Result<T, ChunkdError> {
        self.send(op)?.await.map_err(|_| shutting_down())?
    }

    /// [`ShardStore::submit`] from the blocking pool.
    fn submit_blocking<T>(
        &self,
        op: impl FnOnce(commit::Reply<T>) -> Op,
    ) -> Result<T, ChunkdError> {
        self.send(op)?.blocking_recv().map_err(|_| shutting_down())?
    }

    /// Hands `op` to the writer; its answer comes on the returned receiver.
    fn send<T>(
        &self,
        op: impl FnOnce(commit::Reply<T>) -> Op,
    ) -> Result<oneshot::Receiver<Result<T, ChunkdError>>, ChunkdError> {
        let (reply, answer) = oneshot::channel();
        let (sender, _) = self.writer.as_ref().ok_or_else(shutting_down)?;
        sender.send(op(reply)).map_err(|_| shutting_down())?;
        Ok(answer)
    }

    /// Finds a shard: in the volumes, else (while there are any) among the shard files.
    async fn find(self: &Arc<Self>, shard: ShardId) -> Result<Found, ChunkdError> {
        if let Some(location) = self.volumes.index.read_locked().get(&shard) {
            return Ok(Found::Volume(location.clone()));
        }
        if !self.legacy.present.load(Ordering::Acquire) {
            return Ok(Found::Missing);
        }
        let guard = self.legacy.stripes[stripe_of(shard)].clone().lock_owned().await;
        // It may have moved into a volume while we waited.
        if let Some(location) = self.volumes.index.read_locked().get(&shard) {
            return Ok(Found::Volume(location.clone()));
        }
        let path = legacy::shard_path_in(&self.legacy.shards_dir, shard);
        blocking(move || match File::open(&path) {
            Ok(file) => {
                let len = file.metadata().map_err(|e| io_error("stat", &path, e))?.len();
                Ok(Found::File { path, file, len, _stripe: guard })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Missing),
            Err(e) => Err(io_error("open", &path, e)),
        })
        .await
    }

    /// Runs `work` on the blocking pool with the shard's record, if any.
    async fn with_record<T: Send + 'static>(
        self: &Arc<Self>,
        shard: ShardId,
        work: impl FnOnce(&ShardStore, Source, &Found) -> Result<T, ChunkdError> + Send + 'static,
    ) -> Result<T, ChunkdError> {
        let found = self.find(shard).await?;
        let store = self.clone();
        // On this task's own thread: the request's handler (or scrub's loop) waits for
        // nothing else, and the hop to the blocking pool and back costs two wake-ups.
        in_place(move || match found.source() {
            Some(source) => work(&store, source, &found),
            None => Err(ChunkdError::NotFound(shard.to_string())),
        })
        .await
    }

    /// Bytes `[offset, offset + len)` of a data shard's payload, and the chunk's hash tree if
    /// `with_tree`. The payload is not verified here (that needs the whole record): the
    /// caller checks the bytes against the tree, and the tree against the chunk id. Shards
    /// without a tree (format 1) are `Invalid`, so the caller reads the whole chunk instead.
    pub async fn get_range(
        self: &Arc<Self>,
        shard: ShardId,
        offset: u64,
        len: u32,
        with_tree: bool,
    ) -> Result<(Vec<u8>, Vec<u8>), ChunkdError> {
        self.with_record(shard, move |store, source, found| {
            let header = match found {
                // Verified when the record was written or read at start-up; the bytes read
                // are verified by the reader.
                Found::Volume(location) => location.header.clone(),
                _ => match record::open(source, shard)
                    .map_err(|e| io_error("read", &found.path(), e))?
                {
                    Ok(header) => header,
                    Err(error) => return Err(store.reject_invalid(shard, found, error, true)),
                },
            };
            if header.tree_len() == 0 {
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
            record::read_range(source, &header, offset, len, with_tree)
                .map_err(|e| io_error("read", &found.path(), e))
        })
        .await
    }

    /// Reads and verifies a shard. A shard that fails verification is quarantined, reported
    /// and answered with `Corrupt`.
    pub async fn get(self: &Arc<Self>, shard: ShardId) -> Result<StoredShard, ChunkdError> {
        self.with_record(shard, move |store, source, found| {
            match record::read(source, shard).map_err(|e| io_error("read", &found.path(), e))? {
                ReadOutcome::Valid { header, payload } => Ok(StoredShard {
                    encoding: header.encoding,
                    chunk_len: header.chunk_len,
                    data: payload,
                }),
                ReadOutcome::Invalid(error) => Err(store.reject_invalid(shard, found, error, true)),
            }
        })
        .await
    }

    /// Removes a shard; `Ok(false)` if it was not there.
    pub async fn delete(self: &Arc<Self>, shard: ShardId) -> Result<bool, ChunkdError> {
        let file_removed = if self.legacy.present.load(Ordering::Acquire) {
            let guard = self.legacy.stripes[stripe_of(shard)].clone().lock_owned().await;
            let store = self.clone();
            blocking(move || {
                let _guard = guard;
                store.remove_shard_file(shard)
            })
            .await?
        } else {
            false
        };
        let deleted = self.submit(|reply| Op::Delete { shard, reply }).await?;
        Ok(deleted || file_removed)
    }

    /// Removes a shard's file from before volumes, if it has one; the caller holds its
    /// stripe.
    fn remove_shard_file(&self, shard: ShardId) -> Result<bool, ChunkdError> {
        let path = legacy::shard_path_in(&self.legacy.shards_dir, shard);
        let file_len = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("stat", &path, e)),
        };
        fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
        sync_parent(&path)?;
        self.forget_file(file_len);
        Ok(true)
    }

    /// Up to `min(limit, MAX_LIST_LIMIT)` shards after `after`, in `ShardId` order. An empty
    /// answer marks the end.
    pub async fn list(
        self: &Arc<Self>,
        after: Option<ShardId>,
        limit: u32,
    ) -> Result<Vec<ShardId>, ChunkdError> {
        use std::ops::Bound;
        let limit = (limit as usize).min(MAX_LIST_LIMIT);
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut shards: Vec<ShardId> = self
            .volumes
            .index
            .read_locked()
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(&shard, _)| shard)
            .collect();
        if self.legacy.present.load(Ordering::Acquire) {
            let store = self.clone();
            let files = blocking(move || {
                legacy::list(&store.legacy.shards_dir, after, limit)
                    .map_err(|e| io_error("list", &store.legacy.shards_dir, e))
            })
            .await?;
            shards.extend(files);
            shards.sort_unstable();
            shards.dedup();
            shards.truncate(limit);
        }
        Ok(shards)
    }

    /// Capacity of the data directory's file system and this store's usage.
    pub async fn stat(self: &Arc<Self>) -> Result<ChunkdStat, ChunkdError> {
        let store = self.clone();
        blocking(move || {
            let fs_stat = nix::sys::statvfs::statvfs(&store.dir)
                .map_err(|e| io_error("statvfs", &store.dir, e.into()))?;
            let fragment = fs_stat.fragment_size() as u64;
            let (shard_count, used_bytes) = store.volumes.usage();
            let (count, bytes, dead_bytes) = store.volumes.files();
            let compaction = &store.compaction;
            let volumes = VolumeStat {
                count,
                bytes,
                dead_bytes,
                compacted: compaction.volumes.load(Ordering::Relaxed),
                reclaimed_bytes: compaction.bytes_reclaimed.load(Ordering::Relaxed),
            };
            Ok(ChunkdStat {
                capacity_bytes: (fs_stat.blocks() as u64).saturating_mul(fragment),
                free_bytes: (fs_stat.blocks_available() as u64).saturating_mul(fragment),
                used_bytes: used_bytes + store.legacy.bytes.load(Ordering::Relaxed),
                shard_count: shard_count + store.legacy.count.load(Ordering::Relaxed),
                quarantined: store.quarantined.load(Ordering::Relaxed),
                scrub_passes: store.scrub.passes.completed(),
                last_scrub_shards: store.scrub.last().shards,
                last_scrub_corrupt: store.scrub.last().corrupt,
                filesystem: fs_stat.filesystem_id() as u64,
                volumes,
            })
        })
        .await
    }

    /// What compaction has done since the store opened.
    pub fn compaction_progress(&self) -> &CompactionProgress {
        &self.compaction
    }

    /// Compacts volumes until `shutdown` completes (see [`compact`]).
    pub async fn compact(
        self: Arc<Self>,
        config: CompactionConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        compact::run(self, config, shutdown).await
    }

    /// Where background scrubbing is.
    pub fn scrub_progress(&self) -> &crate::scrub::ScrubProgress {
        &self.scrub
    }

    /// Deals with a record that failed verification and returns the error to answer with.
    /// A record of an unknown format version is left alone: a newer build wrote it.
    fn reject_invalid(
        &self,
        shard: ShardId,
        found: &Found,
        error: ShardFormatError,
        report: bool,
    ) -> ChunkdError {
        if let ShardFormatError::UnsupportedVersion(_) = error {
            return ChunkdError::Io(format!("shard {shard}: {error}"));
        }
        warn!(%shard, "shard failed verification ({error}); moving it to quarantine");
        match self.quarantine(shard, found) {
            Ok(()) => {
                self.quarantined.fetch_add(1, Ordering::Relaxed);
            }
            // Still corrupt, and still to be repaired: answer the same way.
            Err(e) => warn!(%shard, "cannot quarantine shard: {e}"),
        }
        if report {
            self.report_corrupt(shard);
        }
        ChunkdError::Corrupt(shard.to_string())
    }

    fn report_corrupt(&self, shard: ShardId) {
        let sender = self.corrupt_reports.locked();
        if let Some(sender) = sender.as_ref()
            && sender.try_send(shard).is_err()
        {
            warn!(%shard, "too many unsent corrupt-shard reports; dropping this one");
        }
    }

    /// Keeps a copy of a damaged record in `quarantine/` and drops it from the store.
    fn quarantine(&self, shard: ShardId, found: &Found) -> Result<(), ChunkdError> {
        let name = legacy::file_name(shard);
        let mut target = self.quarantine_dir.join(&name);
        if target.exists() {
            // The same shard went bad before; keep both copies.
            target = self.quarantine_dir.join(format!("{name}.{:016x}", rand::random::<u64>()));
        }
        match found {
            Found::File { path, len, .. } => {
                fs::rename(path, &target).map_err(|e| io_error("quarantine", path, e))?;
                durable::sync_dir(&self.quarantine_dir)
                    .map_err(|e| io_error("sync", &self.quarantine_dir, e))?;
                sync_parent(path)?;
                self.forget_file(*len);
            }
            Found::Volume(location) => {
                // The record is dropped even if keeping a copy fails: a damaged record must
                // not stay where reads and puts would take it for the shard.
                let copied = self.keep_copy(location, &target);
                let at = location.clone();
                self.submit_blocking(|reply| Op::Forget { shard, at, reply })?;
                copied?;
            }
            Found::Missing => {}
        }
        Ok(())
    }

    /// Reads the record `found` and verifies it: an intact one is copied into the volume
    /// being filled (compaction, migration; unless the shard changed since it was found) and
    /// `true` returned, a damaged one is quarantined and reported and `false` returned.
    fn move_into_volume(&self, shard: ShardId, found: &Found) -> Result<bool, ChunkdError> {
        let source = found.source().ok_or_else(|| ChunkdError::NotFound(shard.to_string()))?;
        let (bytes, verified) =
            record::read_raw(source, shard).map_err(|e| io_error("read", &found.path(), e))?;
        match verified {
            Ok(header) => {
                let record = NewRecord { header, parts: vec![bytes] };
                let from = match found {
                    Found::Volume(location) => Some(location.clone()),
                    _ => None,
                };
                self.submit_blocking(|reply| Op::Move { record, from, reply })?;
                Ok(true)
            }
            Err(error) => {
                self.reject_invalid(shard, found, error, true);
                Ok(false)
            }
        }
    }

    /// Writes a damaged record's bytes to `target` in `quarantine/`.
    fn keep_copy(&self, location: &Location, target: &Path) -> Result<(), ChunkdError> {
        let mut bytes = vec![0u8; location.len as usize];
        let path = &location.volume.path;
        location
            .volume
            .file
            .read_exact_at(&mut bytes, location.offset)
            .map_err(|e| io_error("read", path, e))?;
        durable::write_durable(&self.tmp_dir, target, &[&bytes])
            .map_err(|e| io_error("write", target, e))
    }

    /// Drops a removed shard file from the usage counters.
    fn forget_file(&self, file_len: u64) {
        saturating_sub(&self.legacy.count, 1);
        saturating_sub(&self.legacy.bytes, file_len);
    }
}

impl Drop for ShardStore {
    /// Lets the writer finish what it was given and index the volume it fills, before the
    /// directory lock is released.
    fn drop(&mut self) {
        if let Some((sender, handle)) = self.writer.take() {
            drop(sender);
            if handle.join().is_err() {
                warn!("the volume writer panicked");
            }
        }
    }
}

/// Every shard record in the store at `dir`, read from disk without opening the store (a
/// running chunkd may hold it) and without verifying the records: for tests and tools that
/// inspect or damage shards on disk.
pub fn inventory(dir: &Path) -> io::Result<Vec<StoredAt>> {
    let volumes_dir = dir.join(volume::VOLUMES_DIR);
    let mut found = std::collections::BTreeMap::new();
    for number in volume::numbers(&volumes_dir)? {
        let path = volume::data_path(&volumes_dir, number);
        let file = volume::VolumeFile { number, file: File::open(&path)?, path: path.clone() };
        for record in volume::scan(&volumes_dir, &file, false)?.records {
            let at = StoredAt {
                shard: record.header.shard,
                path: path.clone(),
                offset: record.offset,
                len: record.len,
            };
            found.insert(at.shard, at);
        }
    }
    let mut files = Vec::new();
    let shards_dir = dir.join(legacy::SHARDS_DIR);
    legacy::walk(&shards_dir, None, |shard, len| {
        files.push(StoredAt {
            shard,
            path: legacy::shard_path_in(&shards_dir, shard),
            offset: 0,
            len,
        });
        true
    })?;
    let mut all: Vec<StoredAt> = found.into_values().chain(files).collect();
    all.sort_by_key(|at| at.shard);
    Ok(all)
}

/// Checks the parts of a request that decide where and how a shard is stored.
fn validate_shard(shard: ShardId, encoding: Encoding) -> Result<Encoding, ChunkdError> {
    let encoding = encoding.validate().map_err(|e| ChunkdError::Invalid(e.to_string()))?;
    if !shard::valid_index(shard.index, encoding) {
        return Err(ChunkdError::Invalid(format!(
            "shard index {} is out of range for class {encoding}",
            shard.index
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

/// [`blocking`] on the calling task's thread (`shardfs_rpc::sync::blocking_in_place`), for
/// tasks that do nothing else meanwhile.
async fn in_place<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ChunkdError> + Send + 'static,
) -> Result<T, ChunkdError> {
    shardfs_rpc::sync::blocking_in_place(work).await.map_err(|e| ChunkdError::Io(e.to_string()))?
}

fn shutting_down() -> ChunkdError {
    ChunkdError::Io("chunkd is shutting down".into())
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
    let path = dir.join(LOCK_FILE);
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
    let path = dir.join(ID_FILE);
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
    let path = dir.join(ID_FILE);
    durable::write_durable(tmp_dir, &path, &[id.as_bytes(), b"\n"])
        .map_err(|source| StoreError::Io { action: "write", path, source })?;
    info!(%id, "created a new chunkd identity");
    Ok(id)
}

#[cfg(test)]
pub(crate) mod tests;
