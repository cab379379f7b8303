//! The chunk catalogue as seen by operators and fault reports.

use rusqlite::{OptionalExtension, params};
use shardfs_chunkd::{ChunkId, Encoding, ShardId};

use super::Store;
use super::layout::{chunk_id, chunk_location};
use crate::proto::{CatalogueStats, ChunkLocation, ChunkStatus, MetaError, ShardStatus};

impl Store {
    pub fn chunk_status(&self, chunk: ChunkId) -> Result<Option<ChunkStatus>, MetaError> {
        self.read(|tx| {
            let Some((len, k, m, refcount)) = tx
                .prepare_cached("SELECT len, k, m, refcount FROM chunks WHERE id = ?1")?
                .query_row([&chunk.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?
            else {
                return Ok(None);
            };
            let shards = tx
                .prepare_cached(
                    "SELECT idx, chunkd, healthy FROM shards WHERE chunk = ?1 ORDER BY idx",
                )?
                .query_map([&chunk.0[..]], |r| {
                    Ok(ShardStatus { index: r.get(0)?, chunkd: r.get(1)?, healthy: r.get(2)? })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(ChunkStatus { chunk, len, encoding: Encoding { k, m }, refcount, shards }))
        })
    }

    /// Catalogued chunks with their healthy shards, in id order after `after`.
    pub fn list_chunks(
        &self,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<Vec<ChunkLocation>, MetaError> {
        self.read(|tx| {
            let start = after.map(|c| c.0.to_vec()).unwrap_or_default();
            let ids: Vec<Vec<u8>> = tx
                .prepare_cached("SELECT id FROM chunks WHERE id > ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![start, limit], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids.into_iter().map(|id| chunk_location(tx, chunk_id(id)?)).collect()
        })
    }

    pub fn catalogue_stats(&self) -> Result<CatalogueStats, MetaError> {
        self.read(|tx| {
            let (chunks, chunk_bytes) =
                tx.query_row("SELECT COUNT(*), COALESCE(SUM(len), 0) FROM chunks", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let unhealthy_shards =
                tx.query_row("SELECT COUNT(*) FROM shards WHERE NOT healthy", [], |r| r.get(0))?;
            Ok(CatalogueStats { chunks, chunk_bytes, unhealthy_shards })
        })
    }

    /// Marks a shard as unusable (corrupt or missing) so readers skip it and repair can
    /// rebuild it. Returns whether the catalogue placed that shard on that chunkd.
    pub fn mark_shard_unhealthy(&self, shard: ShardId, chunkd: &str) -> Result<bool, MetaError> {
        self.write(|tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE shards SET healthy = 0 WHERE chunk = ?1 AND idx = ?2 AND chunkd = ?3",
                )?
                .execute(params![&shard.chunk.0[..], shard.index, chunkd])?;
            Ok(changed > 0)
        })
    }
}
