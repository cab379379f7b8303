//! The chunkd registry: which chunk daemons exist, where they listen, how full they are.

use rusqlite::params;

use super::Store;
use crate::proto::{MetaError, Timestamp};

/// What metad persists about one chunkd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkdRecord {
    pub id: String,
    pub addr: String,
    pub zone: Option<String>,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub shard_count: u64,
}

impl Store {
    /// Adds a chunkd or updates its address, zone and usage. Its id never changes.
    pub fn register_chunkd(&self, record: &ChunkdRecord) -> Result<(), MetaError> {
        let now = Timestamp::now();
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO chunkds (id, addr, zone, capacity_bytes, free_bytes, used_bytes,
                     shard_count, registered, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, zone = excluded.zone,
                     capacity_bytes = excluded.capacity_bytes, free_bytes = excluded.free_bytes,
                     used_bytes = excluded.used_bytes, shard_count = excluded.shard_count,
                     last_seen = excluded.last_seen",
            )?
            .execute(params![
                record.id,
                record.addr,
                record.zone,
                record.capacity_bytes,
                record.free_bytes,
                record.used_bytes,
                record.shard_count,
                now.sec
            ])?;
            Ok(())
        })
    }

    pub fn chunkds(&self) -> Result<Vec<ChunkdRecord>, MetaError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT id, addr, zone, capacity_bytes, free_bytes, used_bytes, shard_count
                     FROM chunkds ORDER BY id",
                )?
                .query_map([], |r| {
                    Ok(ChunkdRecord {
                        id: r.get(0)?,
                        addr: r.get(1)?,
                        zone: r.get(2)?,
                        capacity_bytes: r.get(3)?,
                        free_bytes: r.get(4)?,
                        used_bytes: r.get(5)?,
                        shard_count: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }
}
