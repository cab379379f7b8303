//! The chunkd registry: which chunk daemons exist, where they listen, how full they are.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::Store;
use super::mutation::Mutation;
use crate::store::Sql as _;
use shardfs_meta_api::proto::{MetaError, Timestamp};

/// What metad persists about one chunkd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkdRecord {
    pub id: String,
    pub addr: String,
    pub zone: Option<String>,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub shard_count: u64,
    /// Being drained (`Store::set_draining`); registrations leave it as it is.
    pub draining: bool,
}

impl Store {
    /// Adds a chunkd or updates its address, zone and usage. Its id never changes.
    pub fn register_chunkd(&self, record: &ChunkdRecord) -> Result<(), MetaError> {
        let now = Timestamp::now();
        self.apply(Mutation::RegisterChunkd { record: record.clone(), now }).map(drop)
    }

    pub fn chunkds(&self) -> Result<Vec<ChunkdRecord>, MetaError> {
        self.read(|tx| {
            tx.prepare_cached(
                "SELECT id, addr, zone, capacity_bytes, free_bytes, used_bytes, shard_count,
                         draining
                     FROM chunkds ORDER BY id",
            )
            .sql()?
            .query_map([], |r| {
                Ok(ChunkdRecord {
                    id: r.get(0)?,
                    addr: r.get(1)?,
                    zone: r.get(2)?,
                    capacity_bytes: r.get(3)?,
                    free_bytes: r.get(4)?,
                    used_bytes: r.get(5)?,
                    shard_count: r.get(6)?,
                    draining: r.get(7)?,
                })
            })
            .sql()?
            .collect::<Result<Vec<_>, _>>()
            .sql()
        })
    }

    /// Marks chunkd `id` draining or not; false if no such chunkd is registered.
    pub fn set_draining(&self, id: &str, draining: bool) -> Result<bool, MetaError> {
        self.apply(Mutation::SetDraining { id: id.to_owned(), draining })?.0.into_changed()
    }

    /// Removes chunkd `id` from the registry, unless a shard is placed on it.
    pub fn forget_chunkd(&self, id: &str) -> Result<(), MetaError> {
        self.apply(Mutation::ForgetChunkd { id: id.to_owned() }).map(drop)
    }

    /// Shards the catalogue places on chunkd `id`.
    pub fn shards_on(&self, id: &str) -> Result<u64, MetaError> {
        self.scan(|tx| {
            tx.prepare_cached("SELECT COUNT(*) FROM shards WHERE chunkd = ?1")
                .sql()?
                .query_row([id], |r| r.get(0))
                .sql()
        })
    }
}

pub(super) fn register(
    tx: &Connection,
    record: &ChunkdRecord,
    now: Timestamp,
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "INSERT INTO chunkds (id, addr, zone, capacity_bytes, free_bytes, used_bytes,
             shard_count, registered, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, zone = excluded.zone,
             capacity_bytes = excluded.capacity_bytes, free_bytes = excluded.free_bytes,
             used_bytes = excluded.used_bytes, shard_count = excluded.shard_count,
             last_seen = excluded.last_seen",
    )
    .sql()?
    .execute(params![
        record.id,
        record.addr,
        record.zone,
        record.capacity_bytes,
        record.free_bytes,
        record.used_bytes,
        record.shard_count,
        now.sec
    ])
    .sql()?;
    Ok(())
}

pub(super) fn set_draining(tx: &Connection, id: &str, draining: bool) -> Result<bool, MetaError> {
    let changed = tx
        .prepare_cached("UPDATE chunkds SET draining = ?2 WHERE id = ?1")
        .sql()?
        .execute(params![id, draining])
        .sql()?;
    Ok(changed == 1)
}

pub(super) fn forget(tx: &Connection, id: &str) -> Result<(), MetaError> {
    tx.prepare_cached(
        "DELETE FROM chunkds WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM shards WHERE chunkd = ?1)",
    )
    .sql()?
    .execute([id])
    .sql()?;
    Ok(())
}
