//! The metadata store: every namespace and catalogue operation, each one SQLite transaction.
//!
//! This is the only module that speaks SQL. Every change is a [`Mutation`] applied by the
//! one writer connection (`mutation.rs`); reads run on read-only connections beside it
//! (`readers.rs`). Callers on async tasks run store operations off the async threads.

mod batch;
mod catalogue;
mod classes;
mod fsck;
mod group_commit;
mod holdings;
mod layout;
mod mutation;
mod namespace;
mod open_files;
mod readers;
mod registry;
mod replica;
mod replies;
mod reserve;
mod schema;
mod view;
mod xattr;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};
use shardfs_chunk_api::Encoding;
use shardfs_meta_api::file_flags::FileFlags;

use shardfs_meta_api::proto::{
    Attr, FileKind, GENERATION, Ino, MetaError, ROOT_INO, Timestamp, VolumeInfo,
};

pub use batch::Batched;
pub use classes::Transition;
pub use group_commit::{Change, Proposer, UNNUMBERED};
pub use holdings::{Holdings, LockRow};
pub use mutation::{Applied, Effects, MUTATION_FORMAT, Mutation, NewInode, Outcome};
pub use open_files::{Holder, LINGER};
pub use registry::ChunkdRecord;
pub use replies::{RequestId, numbered};
pub use schema::SCHEMA_VERSION;
use shardfs_rpc::sync::Lock as _;
pub use view::View;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("metadata database has schema v{found}; this build supports up to v{supported}")]
    TooNew { found: i64, supported: i64 },
    #[error("metadata database is inconsistent: {0}")]
    Inconsistent(String),
    #[error("cannot reclaim files unlinked while open: {0}")]
    Reclaim(MetaError),
}

/// A database result as metad answers it: a full disk as `MetadataFull`, any other
/// failure as `Store`.
pub trait Sql<T> {
    fn sql(self) -> Result<T, MetaError>;
}

impl<T> Sql<T> for rusqlite::Result<T> {
    fn sql(self) -> Result<T, MetaError> {
        self.map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => MetaError::MetadataFull,
            _ => MetaError::Store(e.to_string()),
        })
    }
}

/// Settings given at start-up; `None` keeps what the volume has (or the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeOverrides {
    pub hot: Option<Encoding>,
    pub cold: Option<Encoding>,
    pub chunk_size: Option<u64>,
}

/// Volume settings fixed or updated at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeSettings {
    /// The class new data is written in.
    pub hot: Encoding,
    /// The class data is moved to once it has not been written for the lifecycle age.
    pub cold: Encoding,
    pub chunk_size: u64,
}

pub struct Store {
    /// The database file.
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Set by every write transaction, cleared by `sync`.
    unsynced: AtomicBool,
    /// The volume's settings; on a replica, as the log last set them.
    volume: Mutex<VolumeSettings>,
    open_files: open_files::OpenFiles,
    /// Room on the database's disk kept for changes that free space.
    reserve: reserve::Reserve,
    /// Inodes deleted since [`Store::take_deleted`] was last called.
    deleted: Mutex<Vec<Ino>>,
    /// Changes waiting for the writer (`group_commit.rs`).
    queue: group_commit::Queue,
    /// Read-only connections, for reads beside the writer.
    readers: readers::Readers,
    /// Set once on a replica of a group: where its batches of changes go.
    proposer: std::sync::OnceLock<Arc<dyn Proposer>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`. `overrides` replace the stored
    /// encoding or chunk size for data written from now on; a new volume takes them, or the
    /// defaults.
    pub fn open(
        path: &Path,
        overrides: VolumeOverrides,
        defaults: VolumeSettings,
    ) -> Result<Store, StoreError> {
        let mut conn = connect(path)?;
        schema::migrate(&mut conn)?;
        let volume = init_volume(&mut conn, overrides, defaults)?;
        let store = Store::over(path, conn, volume);
        store.take_up().map_err(StoreError::Reclaim)?;
        Ok(store)
    }

    /// Opens (creating if needed) a replica's database at `path`, changing nothing in it
    /// but its schema: what a replica's database holds comes from the log alone. Until the
    /// log sets the volume's settings, they are `defaults`.
    pub fn open_replica(path: &Path, defaults: VolumeSettings) -> Result<Store, StoreError> {
        let mut conn = connect(path)?;
        schema::migrate(&mut conn)?;
        let volume = stored_volume(&conn)?.unwrap_or(defaults);
        Ok(Store::over(path, conn, volume))
    }

    fn over(path: &Path, conn: Connection, volume: VolumeSettings) -> Store {
        let store = Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            unsynced: AtomicBool::new(false),
            volume: Mutex::new(volume),
            open_files: Default::default(),
            reserve: reserve::Reserve::new(path.parent().unwrap_or(Path::new("."))),
            deleted: Mutex::default(),
            queue: Default::default(),
            readers: readers::Readers::new(path),
            proposer: std::sync::OnceLock::new(),
        };
        store.replenish_reserve();
        store
    }

    /// Takes up what the database says of files held open, as a restarted metad or a new
    /// leader must: the files the sessions it records had open stay open, as those
    /// sessions may resume; the nameless files none of them holds are deleted.
    pub fn take_up(&self) -> Result<(), MetaError> {
        self.open_files.clear();
        self.take_deleted();
        for (ino, holder, opens) in self.saved_opens()? {
            self.open_files.restore(ino, holder, opens);
        }
        let reclaimed = self.reclaim_orphans()?;
        if reclaimed > 0 {
            tracing::info!(reclaimed, "reclaimed files unlinked while open before the restart");
        }
        Ok(())
    }

    /// Whether the volume has its settings and root directory (a replica's, once the log
    /// gave them).
    pub fn is_set_up(&self) -> Result<bool, MetaError> {
        self.read(|tx| {
            stored_volume(tx).map(|v| v.is_some()).map_err(|e| MetaError::Store(e.to_string()))
        })
    }

    /// Makes this store a replica's: from now on its changes go to `proposer` (the
    /// replicated log), and its database changes only as the log's entries are applied.
    pub fn replicate_through(&self, proposer: Arc<dyn Proposer>) {
        if self.proposer.set(proposer).is_err() {
            tracing::warn!("the store already replicates through a log");
        }
    }

    pub fn volume(&self) -> VolumeInfo {
        let volume = self.settings();
        let (hot, cold, chunk_size) = (volume.hot, volume.cold, volume.chunk_size);
        VolumeInfo { hot, cold, chunk_size, root: ROOT_INO }
    }

    pub fn settings(&self) -> VolumeSettings {
        *self.volume.locked()
    }

    /// Gives up the room reserved for changes that free space (see `reserve.rs`), for one
    /// that met a full disk; false if it was given up already.
    fn give_up_reserve(&self) -> bool {
        let released = self.reserve.release();
        if released {
            tracing::warn!(
                "metad's disk is full: gave up the room reserved for changes that free space"
            );
        }
        released
    }

    /// Notes what a committed change did to this replica: it awaits a sync, and it may
    /// have set the volume's settings.
    fn committed(&self, effects: &mutation::Effects) {
        self.unsynced.store(true, Ordering::Release);
        if let Some(volume) = effects.volume {
            *self.volume.locked() = volume;
        }
    }

    /// Notes the inodes a change this server made deleted (for [`Store::take_deleted`]).
    fn note_deleted(&self, effects: &mutation::Effects) {
        if !effects.deleted.is_empty() {
            self.deleted.locked().extend(&effects.deleted);
        }
    }

    /// The inodes deleted since the last call: leases on them are of no more use.
    pub fn take_deleted(&self) -> Vec<Ino> {
        std::mem::take(&mut *self.deleted.locked())
    }

    /// Makes the reserve of room for changes that free space again, if it was used and
    /// the disk has room for it now.
    pub fn replenish_reserve(&self) {
        match self.reserve.replenish() {
            Ok(true) => tracing::info!("room reserved for changes that free space"),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot reserve room for changes that free space: {e}"),
        }
    }

    /// Makes every committed transaction durable against power loss: a checkpoint, which
    /// fsyncs the WAL first. Cheap when nothing was written since the last one.
    pub fn sync(&self) -> Result<(), MetaError> {
        // Under the connection lock: a sync that finds nothing to do is then sure no other
        // sync is still on its way to making an earlier commit durable.
        let conn = self.conn.locked();
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let synced = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if synced.is_err() {
            self.unsynced.store(true, Ordering::Release);
        }
        synced.sql()
    }

    /// Makes sure that what this store says is the volume's current state, durable: on a
    /// replica, that it still leads and has applied everything the group committed (whose
    /// log a majority has on disk); alone, a [`sync`](Self::sync). What a leader-only worker
    /// must know before it acts on an absence, as GC before it deletes a shard: a deposed
    /// leader's store may lack what its successor committed.
    pub fn confirm_current(&self) -> Result<(), MetaError> {
        match self.proposer.get() {
            Some(proposer) => proposer.confirm_lead(),
            None => self.sync(),
        }
    }

    /// Holds the writer, as a long change would.
    #[cfg(test)]
    pub(crate) fn hold_writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.locked()
    }

    /// Runs `f` in one read transaction (a consistent snapshot of every change committed
    /// before it), waiting for no change. On the writer's connection when no change holds
    /// it: its page cache stays warm across changes, while a read-only connection's is
    /// dropped whenever another connection has written since its last read, so under a
    /// stream of changes every read there starts cold (five times the page reads of a
    /// small-file workload, `docs/performance.md`). On a read-only connection beside the
    /// writer otherwise.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, MetaError>) -> Result<T, MetaError> {
        let mut conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return self.readers.read(f),
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred).sql()?;
        f(&tx)
    }

    /// Runs `f`, a read that may take long (it scans a table), in one read transaction on a
    /// read-only connection, so that it holds up no change.
    fn scan<T>(&self, f: impl FnOnce(&Connection) -> Result<T, MetaError>) -> Result<T, MetaError> {
        self.readers.read(f)
    }
}

/// The database at `path`, as every store opens it.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // WAL with synchronous=NORMAL: a commit is in the WAL (in the page cache) when it
    // returns, so it survives a crash of metad at once, and power loss once the WAL is
    // synced by `sync`: at a client's fsync, before garbage collection deletes anything,
    // and within SYNC_INTERVAL by the daemon (see docs/SEMANTICS.md, "Durability"). A
    // replica's changes are durable in its log first (`crate::replication::log_store`).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Savepoints (each change of a batch or a group commit has one) keep the pages they
    // change in a sub-journal, a temporary file by default: one write(2) per page. It is
    // only ever read to roll a savepoint back within its transaction, never after a crash,
    // so memory does as well.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The query planner's stability guarantee: a cached statement keeps its plan whatever
    // is bound to it. Without it SQLite prepares a statement again on every new binding
    // when its plan could depend on the value (a range on a column with a partial index):
    // the extents queries of every commit were compiled anew each time, a sixth of
    // metad's time applying batches of small files (docs/performance.md).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Prepared statements each connection keeps: more than the store has, so that none is
/// parsed again (rusqlite keeps 16; the store has about 100, and a change that missed the
/// cache spent a sixth of its time in SQLite's parser, measured in docs/performance.md).
pub(crate) const STATEMENT_CACHE: usize = 256;

/// Sets up the volume of a database opened alone (not a replica's): its settings as
/// stored, or `defaults` for a new one, each replaced by `overrides`.
fn init_volume(
    conn: &mut Connection,
    overrides: VolumeOverrides,
    defaults: VolumeSettings,
) -> Result<VolumeSettings, StoreError> {
    let tx = conn.transaction()?;
    let base = stored_volume(&tx)?.unwrap_or(defaults);
    let volume = overrides.over(base);
    put_volume(&tx, volume, Timestamp::now()).map_err(StoreError::Reclaim)?;
    tx.commit()?;
    Ok(volume)
}

impl VolumeOverrides {
    /// `base` with these overrides.
    pub fn over(self, base: VolumeSettings) -> VolumeSettings {
        VolumeSettings {
            hot: self.hot.unwrap_or(base.hot),
            cold: self.cold.unwrap_or(base.cold),
            chunk_size: self.chunk_size.unwrap_or(base.chunk_size),
        }
    }
}

/// The volume's settings, if it has them.
fn stored_volume(tx: &Connection) -> Result<Option<VolumeSettings>, StoreError> {
    let setting = |key: &str| -> Result<Option<String>, rusqlite::Error> {
        tx.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()
    };
    let Some(size) = setting("chunk_size")? else {
        return Ok(None);
    };
    let inconsistent = |s: &str| StoreError::Inconsistent(format!("setting {s:?}"));
    let parse = |s: &str| s.parse::<u8>().map_err(|_| inconsistent(s));
    let class = |s: String| s.parse::<Encoding>().map_err(|_| inconsistent(&s));
    // Volumes from before storage classes have `k` and `m`: rs(k,m), hot and cold.
    let (hot, cold) = match (setting("hot_class")?, setting("cold_class")?) {
        (Some(hot), Some(cold)) => (class(hot)?, class(cold)?),
        _ => match (setting("k")?, setting("m")?) {
            (Some(k), Some(m)) => {
                let rs = Encoding::rs(parse(&k)?, parse(&m)?).map_err(|_| inconsistent(&k))?;
                (rs, rs)
            }
            _ => return Ok(None),
        },
    };
    let chunk_size = size.parse().map_err(|_| inconsistent(&size))?;
    Ok(Some(VolumeSettings { hot, cold, chunk_size }))
}

/// Sets the volume's settings to `volume`, and makes its root directory (at `now`) if it
/// has none.
fn put_volume(tx: &Connection, volume: VolumeSettings, now: Timestamp) -> Result<(), MetaError> {
    tx.execute("DELETE FROM settings WHERE key IN ('k', 'm')", []).sql()?;
    for (key, value) in [
        ("hot_class", volume.hot.to_string()),
        ("cold_class", volume.cold.to_string()),
        ("chunk_size", volume.chunk_size.to_string()),
    ] {
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .sql()?;
    }
    let has_root: bool = tx
        .query_row("SELECT EXISTS (SELECT 1 FROM inodes WHERE ino = ?1)", [ROOT_INO], |r| r.get(0))
        .sql()?;
    if !has_root {
        tx.execute(
            "INSERT INTO inodes (ino, generation, kind, perm, uid, gid, size, allocated, nlink,
                 atime_sec, atime_nsec, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, rdev, parent)
             VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0, 2, ?5, ?6, ?5, ?6, ?5, ?6, 0, ?1)",
            params![ROOT_INO, GENERATION, kind_code(FileKind::Dir), 0o755, now.sec, now.nsec],
        )
        .sql()?;
    }
    Ok(())
}

fn kind_code(kind: FileKind) -> i64 {
    match kind {
        FileKind::File => 1,
        FileKind::Dir => 2,
        FileKind::Symlink => 3,
        FileKind::Fifo => 4,
        FileKind::Socket => 5,
        FileKind::CharDevice => 6,
        FileKind::BlockDevice => 7,
    }
}

fn kind_from_code(code: i64) -> rusqlite::Result<FileKind> {
    Ok(match code {
        1 => FileKind::File,
        2 => FileKind::Dir,
        3 => FileKind::Symlink,
        4 => FileKind::Fifo,
        5 => FileKind::Socket,
        6 => FileKind::CharDevice,
        7 => FileKind::BlockDevice,
        other => {
            return Err(rusqlite::Error::IntegralValueOutOfRange(2, other));
        }
    })
}

/// Columns of `inodes` read by [`attr_from_row`], in order.
const ATTR_COLUMNS: &str = "ino, generation, kind, perm, uid, gid, size, allocated, nlink,
    atime_sec, atime_nsec, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, rdev, flags, projid,
    extsize";

fn attr_from_row(row: &Row<'_>) -> rusqlite::Result<Attr> {
    attr_at(row, 0)
}

/// Reads the [`ATTR_COLUMNS`] of a row, starting at column `at`.
fn attr_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Attr> {
    let time = |sec: usize| -> rusqlite::Result<Timestamp> {
        Ok(Timestamp { sec: row.get(at + sec)?, nsec: row.get(at + sec + 1)? })
    };
    Ok(Attr {
        ino: row.get(at)?,
        generation: row.get(at + 1)?,
        kind: kind_from_code(row.get(at + 2)?)?,
        perm: row.get(at + 3)?,
        uid: row.get(at + 4)?,
        gid: row.get(at + 5)?,
        size: row.get(at + 6)?,
        allocated: row.get(at + 7)?,
        nlink: row.get(at + 8)?,
        atime: time(9)?,
        mtime: time(11)?,
        ctime: time(13)?,
        rdev: row.get(at + 15)?,
        flags: FileFlags {
            bits: row.get(at + 16)?,
            projid: row.get(at + 17)?,
            extsize: row.get(at + 18)?,
        },
    })
}

fn get_attr(tx: &Connection, ino: Ino) -> Result<Attr, MetaError> {
    tx.prepare_cached(&format!("SELECT {ATTR_COLUMNS} FROM inodes WHERE ino = ?1"))
        .sql()?
        .query_row([ino], attr_from_row)
        .optional()
        .sql()?
        .ok_or(MetaError::NotFound)
}

fn set_ctime(tx: &Connection, ino: Ino, now: Timestamp) -> Result<(), MetaError> {
    tx.prepare_cached("UPDATE inodes SET ctime_sec = ?2, ctime_nsec = ?3 WHERE ino = ?1")
        .sql()?
        .execute(params![ino, now.sec, now.nsec])
        .sql()?;
    Ok(())
}

#[cfg(test)]
mod tests;
