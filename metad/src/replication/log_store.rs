//! The replicated log and the vote, in their own SQLite database (`raft-log.db`) beside the
//! state machine's, in WAL mode, one transaction per append however many entries it
//! carries. A commit writes the WAL without syncing it (`synchronous=NORMAL`; SQLite still
//! syncs around its checkpoints); the WAL file is then synced by a thread of its own
//! ([`Flusher`]), and an append is reported flushed only after that. So openraft sends new
//! entries to the followers while the leader's own copy is being synced, and appends that
//! come together share one `fdatasync`. The WAL is written in order, so a sync makes every
//! earlier commit durable too. A vote, and a cut of the log, are synced before they return.
//!
//! An entry is stored as a format byte and its postcard encoding (`super::encode`), keyed
//! by its index.

use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rusqlite::{Connection, OptionalExtension, params};
use serde::de::DeserializeOwned;
use shardfs_rpc::sync::{Lock as _, blocking};

use super::{Group, ReplicaId, StorageError, encode};

type Entry = openraft::Entry<Group>;

/// The log of one replica. Clones share one connection: openraft reads the log from its
/// replication tasks while it appends.
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
    wal: Arc<Wal>,
    flusher: std::sync::mpsc::Sender<LogFlushed<Group>>,
}

/// The log database's WAL file, synced on its own.
struct Wal {
    path: PathBuf,
    /// Opened at the first sync: SQLite creates the file with the first commit.
    file: Mutex<Option<File>>,
}

impl Wal {
    /// Makes every commit so far durable.
    fn sync(&self) -> std::io::Result<()> {
        let mut file = self.file.locked();
        if file.is_none() {
            *file = Some(File::open(&self.path)?);
        }
        file.as_ref().map_or(Ok(()), File::sync_data)
    }
}

/// Syncs the WAL for the appends handed to it, as many at a time as are waiting, and
/// reports each flushed (or failed) in the order they were appended.
fn flusher(wal: Arc<Wal>, appended: std::sync::mpsc::Receiver<LogFlushed<Group>>) {
    while let Ok(first) = appended.recv() {
        let waiting: Vec<_> = std::iter::once(first).chain(appended.try_iter()).collect();
        let synced = wal.sync();
        for callback in waiting {
            let result =
                synced.as_ref().map(drop).map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
            callback.log_io_completed(result);
        }
    }
}

impl LogStore {
    /// Opens (creating if needed) the log database at `path`.
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS log (
                     idx   INTEGER PRIMARY KEY,
                     entry BLOB NOT NULL
                 ) STRICT;
                 CREATE TABLE IF NOT EXISTS state (
                     key   TEXT PRIMARY KEY,
                     value BLOB NOT NULL
                 ) STRICT;",
            )?;
            Ok(conn)
        };
        let conn = open().map_err(|e| StorageIOError::read_logs(&e))?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = Arc::new(Wal { path: wal_path.into(), file: Mutex::new(None) });
        let (flusher, appended) = std::sync::mpsc::channel();
        let syncing = wal.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || self::flusher(syncing, appended))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(LogStore { conn: Arc::new(Mutex::new(conn)), wal, flusher })
    }

    /// Makes every commit so far durable, before returning.
    async fn sync(&self) -> Result<(), StorageError> {
        let wal = self.wal.clone();
        let synced = blocking(move || wal.sync()).await;
        let synced = synced.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r);
        synced.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// Runs `work` on the connection, in the calling task. The exception to the rule that
    /// blocking work goes to the blocking pool (`shardfs_rpc::sync`): the log's statements
    /// write to the page cache only (the sync is the flusher's), tens of microseconds each,
    /// and openraft's core waits for them anyway; handing each to the pool and back cost
    /// more than the statement (docs/performance.md, "A group of three metad replicas").
    async fn with_conn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        work(&mut self.conn.locked())
    }

    /// Saves `vote` if given, and appends `entries`, in one transaction (not synced yet:
    /// see [`sync`](Self::sync)).
    pub async fn write(
        &self,
        vote: Option<Vote<ReplicaId>>,
        entries: Vec<Entry>,
    ) -> Result<(), StorageError> {
        let vote = vote.map(|vote| encode(&vote));
        let entries: Vec<(i64, Vec<u8>)> =
            entries.iter().map(|e| (sql_index(e.log_id.index), encode(e))).collect();
        self.with_conn(move |conn| {
            let write = |e: rusqlite::Error| StorageError::from(StorageIOError::write_logs(&e));
            let tx = conn.transaction().map_err(write)?;
            if let Some(vote) = vote {
                tx.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('vote', ?1)", [vote])
                    .map_err(|e| StorageIOError::write_vote(&e))?;
            }
            {
                let mut insert = tx
                    .prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")
                    .map_err(write)?;
                for (index, entry) in &entries {
                    insert.execute(params![index, entry]).map_err(write)?;
                }
            }
            tx.commit().map_err(write)
        })
        .await
    }

    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StorageError> {
        self.with_conn(move |conn| {
            let value: Option<Vec<u8>> = conn
                .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(|e| StorageIOError::read_logs(&e))?;
            value.map(|bytes| decode(&bytes)).transpose()
        })
        .await
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    super::decode(bytes).map_err(|e| StorageIOError::read_logs(AnyError::error(e)).into())
}

/// The first and last index `range` covers.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let first = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_sub(1),
        Bound::Unbounded => u64::MAX,
    };
    (first, last)
}

/// An index as SQLite stores it (at most `i64::MAX`, past any real log).
fn sql_index(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

impl RaftLogReader<Group> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (first, last) = bounds(&range);
        if first > last {
            return Ok(Vec::new());
        }
        self.with_conn(move |conn| {
            let read = |e: rusqlite::Error| StorageError::from(StorageIOError::read_logs(&e));
            let mut select = conn
                .prepare_cached("SELECT entry FROM log WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx")
                .map_err(read)?;
            let rows = select
                .query_map(params![sql_index(first), sql_index(last)], |r| r.get::<_, Vec<u8>>(0))
                .map_err(read)?;
            rows.map(|row| decode(&row.map_err(read)?)).collect()
        })
        .await
    }
}

impl RaftLogStorage<Group> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Group>, StorageError> {
        let last_purged_log_id: Option<LogId<ReplicaId>> = self.get("purged").await?;
        let last = self
            .with_conn(|conn| {
                let entry: Option<Vec<u8>> = conn
                    .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0))
                    .optional()
                    .map_err(|e| StorageIOError::read_logs(&e))?;
                entry.map(|bytes| decode::<Entry>(&bytes)).transpose()
            })
            .await?;
        let last_log_id = last.map(|entry| entry.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> Result<(), StorageError> {
        self.write(Some(*vote), Vec::new()).await?;
        self.sync().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<ReplicaId>>, StorageError> {
        self.get("vote").await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Group>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = self.write(None, entries.into_iter().collect()).await;
        match &written {
            Ok(()) => {
                if let Err(std::sync::mpsc::SendError(callback)) = self.flusher.send(callback) {
                    let stopped = std::io::Error::other("the log's sync thread stopped");
                    callback.log_io_completed(Err(stopped));
                }
            }
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StorageError> {
        let from = sql_index(log_id.index);
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM log WHERE idx >= ?1", [from])
                .map_err(|e| StorageIOError::write_logs(&e))?;
            Ok(())
        })
        .await?;
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StorageError> {
        let (upto, value) = (sql_index(log_id.index), encode(&log_id));
        self.with_conn(move |conn| {
            let write = |e: rusqlite::Error| StorageError::from(StorageIOError::write_logs(&e));
            let tx = conn.transaction().map_err(write)?;
            tx.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('purged', ?1)", [value])
                .map_err(write)?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", [upto]).map_err(write)?;
            tx.commit().map_err(write)
        })
        .await
    }
}
