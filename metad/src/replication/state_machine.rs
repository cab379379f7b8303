//! The state machine: metad's database, to which each replica applies the log's entries in
//! order, noting in the same transaction which entry it applied last (and the group's
//! membership), so the database and that note never disagree, whatever a crash interrupts.
//!
//! A snapshot is an image of the whole database (SQLite's backup API, as of one moment),
//! kept in the snapshot directory as `<id>.db` with its description in `<id>.meta`; only
//! the newest is kept. Installing one replaces the database in one transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use shardfs_rpc::sync::blocking;

use super::snapshot_file::SnapshotFile;
use super::{Answers, Group, Replica, ReplicaId, StorageError, decode, encode};
use crate::store::Store;

/// `replication` rows: the log id of the last entry applied, and the membership as of it.
const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";

type Membership = StoredMembership<ReplicaId, Replica>;
type Meta = SnapshotMeta<ReplicaId, Replica>;

/// One replica's database, as the state machine of its group.
pub struct StateMachine {
    store: Arc<Store>,
    snapshots: Snapshots,
}

/// The directory holding a replica's snapshots.
#[derive(Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

impl StateMachine {
    /// The state machine of `store`, keeping snapshots in `dir` (created if missing; files
    /// a crash left half written are removed).
    pub fn new(store: Arc<Store>, dir: &Path) -> Result<StateMachine, StorageError> {
        let snapshots = Snapshots { dir: dir.to_path_buf() };
        snapshots.clean().map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(StateMachine { store, snapshots })
    }
}

fn read_error(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}

fn write_error(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snapshot_error(meta: Option<&Meta>, e: impl std::fmt::Display) -> StorageError {
    let signature = meta.map(Meta::signature);
    StorageIOError::write_snapshot(signature, AnyError::error(e.to_string())).into()
}

impl RaftStateMachine<Group> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<ReplicaId>>, Membership), StorageError> {
        let store = self.store.clone();
        blocking(move || {
            let applied = store.replication_value(APPLIED).map_err(read_error)?;
            let membership = store.replication_value(MEMBERSHIP).map_err(read_error)?;
            let applied = applied.map(|bytes| decode(&bytes)).transpose().map_err(read_error)?;
            let membership =
                membership.map(|bytes| decode(&bytes)).transpose().map_err(read_error)?;
            Ok((applied, membership.unwrap_or_default()))
        })
        .await
        .map_err(read_error)?
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answers>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<Group>> + Send,
        I::IntoIter: Send,
    {
        let mut answers = Vec::new();
        for entry in entries {
            let mut record = vec![(APPLIED, encode(&entry.log_id))];
            let changes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(proposal) => proposal.changes,
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id), membership);
                    record.push((MEMBERSHIP, encode(&stored)));
                    Vec::new()
                }
            };
            let store = self.store.clone();
            let outcomes = blocking(move || store.apply_entry(&changes, &record))
                .await
                .map_err(write_error)?
                .map_err(write_error)?;
            answers.push(Answers(outcomes));
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { store: self.store.clone(), snapshots: self.snapshots.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let path = self.snapshots.dir.join(format!("receiving-{}.partial", unique()));
        let file = SnapshotFile::create(&path).await.map_err(|e| snapshot_error(None, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let failed = |e: String| snapshot_error(Some(meta), e);
        // The image is copied from the start of what was received (or given) into the
        // snapshot's own file, made durable, and then installed.
        let image = self.snapshots.image(&meta.snapshot_id);
        let partial = image.with_extension("db.partial");
        let mut copy = SnapshotFile::create(&partial).await.map_err(|e| failed(e.to_string()))?;
        tokio::io::AsyncSeekExt::rewind(&mut *snapshot).await.map_err(|e| failed(e.to_string()))?;
        tokio::io::copy(&mut *snapshot, &mut copy).await.map_err(|e| failed(e.to_string()))?;
        copy.sync().await.map_err(|e| failed(e.to_string()))?;
        drop(copy);
        if snapshot.path().starts_with(&self.snapshots.dir) && snapshot.path() != image {
            let _ = std::fs::remove_file(snapshot.path());
        }
        let (store, snapshots, meta) = (self.store.clone(), self.snapshots.clone(), meta.clone());
        blocking(move || {
            durable_rename(&partial, &image)?;
            snapshots.describe(&meta)?;
            store.install_image(&image).map_err(|e| e.to_string())?;
            snapshots.keep_only(&meta.snapshot_id)
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Group>>, StorageError> {
        let snapshots = self.snapshots.clone();
        let newest = blocking(move || snapshots.newest())
            .await
            .map_err(|e| snapshot_error(None, e))?
            .map_err(|e| snapshot_error(None, e))?;
        let Some(meta) = newest else { return Ok(None) };
        let file = SnapshotFile::open(&self.snapshots.image(&meta.snapshot_id))
            .await
            .map_err(|e| snapshot_error(Some(&meta), e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

/// Builds snapshots of one replica's database.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    snapshots: Snapshots,
}

impl RaftSnapshotBuilder<Group> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Group>, StorageError> {
        let (store, snapshots) = (self.store.clone(), self.snapshots.clone());
        let meta = blocking(move || -> Result<Meta, String> {
            let id = format!("snapshot-{}", unique());
            let image = snapshots.image(&id);
            store.image_to(&image).map_err(|e| format!("{e:#}"))?;
            // What the image holds is what its own rows say it applied.
            let (last_log_id, last_membership) = applied_in(&image)?;
            let meta = Meta { last_log_id, last_membership, snapshot_id: id };
            snapshots.describe(&meta)?;
            snapshots.keep_only(&meta.snapshot_id)?;
            Ok(meta)
        })
        .await
        .map_err(|e| snapshot_error(None, e))?
        .map_err(|e| snapshot_error(None, e))?;
        let file = SnapshotFile::open(&self.snapshots.image(&meta.snapshot_id))
            .await
            .map_err(|e| snapshot_error(Some(&meta), e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

/// The last entry applied and the membership, as recorded in the database image at `path`.
fn applied_in(path: &Path) -> Result<(Option<LogId<ReplicaId>>, Membership), String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let row = |key: &str| -> Result<Option<Vec<u8>>, String> {
        conn.query_row("SELECT value FROM replication WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| e.to_string())
    };
    let applied = row(APPLIED)?.map(|bytes| decode(&bytes)).transpose()?;
    let membership = row(MEMBERSHIP)?.map(|bytes| decode(&bytes)).transpose()?;
    Ok((applied, membership.unwrap_or_default()))
}

impl Snapshots {
    fn image(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.db"))
    }

    fn description(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.meta"))
    }

    /// Creates the directory; removes what a crash left half written.
    fn clean(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "partial") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Writes the description of a snapshot whose image is in place: from then on it is
    /// the snapshot [`Snapshots::newest`] may give.
    fn describe(&self, meta: &Meta) -> Result<(), String> {
        let path = self.description(&meta.snapshot_id);
        let partial = path.with_extension("meta.partial");
        std::fs::write(&partial, encode(meta)).map_err(|e| e.to_string())?;
        std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
        durable_rename(&partial, &path)
    }

    /// The described snapshot that applied the most, if any.
    fn newest(&self) -> Result<Option<Meta>, String> {
        let mut newest: Option<Meta> = None;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_none_or(|e| e != "meta") {
                continue;
            }
            let meta: Meta = decode(&std::fs::read(&path).map_err(|e| e.to_string())?)?;
            if newest.as_ref().is_none_or(|n| meta.last_log_id > n.last_log_id) {
                newest = Some(meta);
            }
        }
        Ok(newest)
    }

    /// Removes every snapshot but `id`.
    fn keep_only(&self, id: &str) -> Result<(), String> {
        let keep = [self.image(id), self.description(id)];
        for entry in std::fs::read_dir(&self.dir).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let done = path.extension().is_some_and(|e| e == "db" || e == "meta");
            if done && !keep.contains(&path) {
                std::fs::remove_file(&path).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Renames `from` to `to` and syncs the directory, so the new name survives power loss.
fn durable_rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to).map_err(|e| e.to_string())?;
    crate::backup::sync_parent(to).map_err(|e| format!("{e:#}"))
}

/// A name part no other snapshot of this replica has: the time in nanoseconds.
fn unique() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}
