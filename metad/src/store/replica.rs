//! What a replica of a consensus group needs of the store (`crate::replication`): applying
//! a log entry's changes together with the note of which entry it was, reading that note,
//! and the database as an image (a snapshot) taken or installed whole.

use std::path::Path;

use rusqlite::{Connection, MAIN_DB, OptionalExtension, params};

use super::group_commit::Change;
use super::mutation::Outcome;
use super::{Sql as _, Store};
use shardfs_meta_api::proto::MetaError;
use shardfs_rpc::sync::Lock as _;

/// Sets row `key` of the `replication` table, in transaction `tx`.
pub(super) fn set(tx: &Connection, key: &str, value: &[u8]) -> Result<(), MetaError> {
    tx.prepare_cached("INSERT OR REPLACE INTO replication (key, value) VALUES (?1, ?2)")
        .sql()?
        .execute(params![key, value])
        .sql()?;
    Ok(())
}

impl Store {
    /// Applies a log entry's `changes`, each in a savepoint of its own, and sets `record` in
    /// the same transaction; fails as a whole only for what fails on this replica's disk.
    pub fn apply_entry(
        &self,
        changes: &[Change],
        record: &[(&str, Vec<u8>)],
    ) -> Result<Vec<Outcome>, MetaError> {
        self.with_writer(|writer| writer.commit_recorded(changes, record))
    }

    /// Row `key` of the `replication` table, if set.
    pub fn replication_value(&self, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        self.read(|tx| {
            tx.query_row("SELECT value FROM replication WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .sql()
        })
    }

    /// Writes the database, as of one moment, to the new file `to`, checked and synced.
    pub fn image_to(&self, to: &Path) -> anyhow::Result<()> {
        crate::backup::backup_file(&self.path, to, |_| {})?;
        Ok(())
    }

    /// Replaces the whole database with the image at `from`, in one transaction: a reader
    /// sees it as it was before or as the image has it, never a mix.
    pub fn install_image(&self, from: &Path) -> Result<(), MetaError> {
        let mut conn = self.conn.locked();
        conn.restore(MAIN_DB, from, None::<fn(rusqlite::backup::Progress)>).sql()?;
        self.unsynced.store(true, std::sync::atomic::Ordering::Release);
        // The image's volume settings are this replica's now.
        let stored = super::stored_volume(&conn).map_err(|e| MetaError::Store(e.to_string()))?;
        if let Some(volume) = stored {
            *self.volume.locked() = volume;
        }
        Ok(())
    }
}
