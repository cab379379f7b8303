//! The chunk catalogue as seen by operators and fault reports.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use shardfs_chunk_api::{ChunkId, ShardId};

use super::layout::{chunk_id, chunk_location, class_from_parts, class_parts};
use super::mutation::{Applied, Mutation};
use super::{Store, classes};
use crate::store::Sql as _;
use shardfs_meta_api::proto::{CatalogueStats, ChunkLocation, ChunkStatus, MetaError, ShardStatus};

impl Store {
    pub fn chunk_status(&self, chunk: ChunkId) -> Result<Option<ChunkStatus>, MetaError> {
        self.read(|tx| chunk_status(tx, chunk))
    }

    /// Catalogued chunks with their healthy shards, in id order after `after`.
    pub fn list_chunks(
        &self,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<Vec<ChunkLocation>, MetaError> {
        self.scan(|tx| {
            let start = after.map(|c| c.0.to_vec()).unwrap_or_default();
            let ids: Vec<Vec<u8>> = tx
                .prepare_cached("SELECT id FROM chunks WHERE id > ?1 ORDER BY id LIMIT ?2")
                .sql()?
                .query_map(params![start, limit], |r| r.get(0))
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            ids.into_iter().map(|id| chunk_location(tx, chunk_id(id).sql()?, &mut 0)).collect()
        })
    }

    /// Counts of the catalogue; chunks with a shard on a chunkd in `down` count as degraded.
    pub fn catalogue_stats(&self, down: &HashSet<String>) -> Result<CatalogueStats, MetaError> {
        self.scan(|tx| {
            let (chunks, chunk_bytes) = tx
                .query_row("SELECT COUNT(*), COALESCE(SUM(len), 0) FROM chunks", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .sql()?;
            let unhealthy_shards = tx
                .query_row("SELECT COUNT(*) FROM shards WHERE NOT healthy", [], |r| r.get(0))
                .sql()?;
            let degraded_chunks = damaged_chunks(tx, down)?.len() as u64;
            let classes = classes::class_usage(tx)?;
            Ok(CatalogueStats { chunks, chunk_bytes, unhealthy_shards, degraded_chunks, classes })
        })
    }

    /// Chunks with a shard that is unhealthy or on a `lost` chunkd, least redundancy left
    /// first, at most `limit`, with the number of such chunks in all. Each comes with all its
    /// shard rows.
    pub fn repair_candidates(
        &self,
        lost: &HashSet<String>,
        limit: usize,
    ) -> Result<(usize, Vec<ChunkStatus>), MetaError> {
        self.scan(|tx| {
            let damaged = damaged_chunks(tx, lost)?;
            let mut candidates = Vec::with_capacity(damaged.len());
            for id in damaged {
                if let Some(status) = chunk_status(tx, chunk_id(id).sql()?)? {
                    candidates.push(status);
                }
            }
            let left = |c: &ChunkStatus| {
                c.shards.iter().filter(|s| s.healthy && !lost.contains(&s.chunkd)).count()
            };
            candidates.sort_by_key(left);
            let backlog = candidates.len();
            candidates.truncate(limit);
            Ok((backlog, candidates))
        })
    }

    /// Moves shard `index` of `chunk` from `from` to `to` and marks it healthy, unless the
    /// catalogue changed meanwhile. Returns whether it moved.
    pub fn move_shard(
        &self,
        chunk: ChunkId,
        index: u8,
        from: &str,
        to: &str,
    ) -> Result<bool, MetaError> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.apply(Mutation::MoveShard { chunk, index, from, to })?.0.into_changed()
    }

    /// Deletes from the catalogue every chunk unreferenced for at least `grace` that has no
    /// live write intent, in one transaction, and returns its shards and their chunkds so
    /// they can be deleted there.
    pub fn remove_unreferenced_chunks(
        &self,
        grace: std::time::Duration,
        has_intent: &dyn Fn(&ChunkId) -> bool,
    ) -> Result<Vec<(ShardId, String)>, MetaError> {
        let cutoff = shardfs_meta_api::proto::Timestamp::now().sec - grace.as_secs() as i64;
        // Read beside the writer: the removal itself checks again that each chunk is still
        // unreferenced, so a chunk referenced meanwhile stays.
        let ids: Vec<Vec<u8>> = self.scan(|tx| {
            tx.prepare_cached(
                "SELECT id FROM chunks WHERE refcount = 0 AND zero_since IS NOT NULL
                     AND zero_since <= ?1",
            )
            .sql()?
            .query_map([cutoff], |r| r.get(0))
            .sql()?
            .collect::<Result<_, _>>()
            .sql()
        })?;
        let mut chunks = Vec::new();
        for id in ids {
            let chunk = chunk_id(id).sql()?;
            if !has_intent(&chunk) {
                chunks.push(chunk);
            }
        }
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        match self.apply(Mutation::RemoveChunks { chunks })?.0 {
            Applied::Removed(shards) => Ok(shards),
            other => Err(other.mismatch("the shards removed")),
        }
    }

    /// Marks unhealthy every healthy shard the catalogue places on `chunkd` that is not in
    /// `present` (the chunkd's complete inventory, listed from `listed_at` on); returns how
    /// many. Chunks catalogued after the listing began are left alone: their shards may have
    /// arrived after the chunkd was listed.
    pub fn mark_missing(
        &self,
        chunkd: &str,
        present: &HashSet<ShardId>,
        listed_at: i64,
    ) -> Result<u64, MetaError> {
        // Read beside the writer: marking touches only shards still placed on `chunkd`.
        let placed: Vec<(Vec<u8>, u8)> = self.scan(|tx| {
            tx.prepare_cached(
                "SELECT s.chunk, s.idx FROM shards s JOIN chunks c ON c.id = s.chunk
                     WHERE s.chunkd = ?1 AND s.healthy AND c.created < ?2",
            )
            .sql()?
            .query_map(params![chunkd, listed_at], |r| Ok((r.get(0)?, r.get(1)?)))
            .sql()?
            .collect::<Result<_, _>>()
            .sql()
        })?;
        let mut shards = Vec::new();
        for (chunk, index) in placed {
            let shard = ShardId { chunk: chunk_id(chunk).sql()?, index };
            if !present.contains(&shard) {
                shards.push(shard);
            }
        }
        if shards.is_empty() {
            return Ok(0);
        }
        let chunkd = chunkd.to_owned();
        match self.apply(Mutation::MarkUnhealthy { chunkd, shards })?.0 {
            Applied::Count(marked) => Ok(marked),
            other => Err(other.mismatch("a count")),
        }
    }

    /// For each of `shards`, whether the catalogue places it on `chunkd`.
    pub fn placed_on(&self, chunkd: &str, shards: &[ShardId]) -> Result<Vec<bool>, MetaError> {
        self.scan(|tx| {
            let mut query = tx.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM shards WHERE chunk = ?1 AND idx = ?2 AND chunkd = ?3)",
            ).sql()?;
            shards
                .iter()
                .map(|s| query.query_row(params![&s.chunk.0[..], s.index, chunkd], |r| r.get(0)).sql())
                .collect()
        })
    }

    /// Marks a shard as unusable (corrupt or missing) so readers skip it and repair can
    /// rebuild it. Returns whether the catalogue placed that shard on that chunkd.
    pub fn mark_shard_unhealthy(&self, shard: ShardId, chunkd: &str) -> Result<bool, MetaError> {
        let chunkd = chunkd.to_owned();
        match self.apply(Mutation::MarkUnhealthy { chunkd, shards: vec![shard] })?.0 {
            Applied::Count(marked) => Ok(marked > 0),
            other => Err(other.mismatch("a count")),
        }
    }
}

pub(super) fn move_shard(
    tx: &Connection,
    chunk: ChunkId,
    index: u8,
    from: &str,
    to: &str,
) -> Result<bool, MetaError> {
    let moved = tx
        .prepare_cached(
            "UPDATE shards SET chunkd = ?4, healthy = 1
             WHERE chunk = ?1 AND idx = ?2 AND chunkd = ?3",
        )
        .sql()?
        .execute(params![&chunk.0[..], index, from, to])
        .sql()?;
    Ok(moved == 1)
}

/// Deletes those of `chunks` still unreferenced, with their shards and inline content;
/// returns the shards that were placed, with their chunkds.
pub(super) fn remove_chunks(
    tx: &Connection,
    chunks: &[ChunkId],
) -> Result<Vec<(ShardId, String)>, MetaError> {
    let mut removed = Vec::new();
    for &chunk in chunks {
        let unreferenced: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND refcount = 0)")
            .sql()?
            .query_row([&chunk.0[..]], |r| r.get(0))
            .sql()?;
        if !unreferenced {
            continue;
        }
        let shards: Vec<(u8, String)> = tx
            .prepare_cached("SELECT idx, chunkd FROM shards WHERE chunk = ?1 AND chunkd != ''")
            .sql()?
            .query_map([&chunk.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .sql()?
            .collect::<Result<_, _>>()
            .sql()?;
        tx.prepare_cached("DELETE FROM shards WHERE chunk = ?1")
            .sql()?
            .execute([&chunk.0[..]])
            .sql()?;
        tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")
            .sql()?
            .execute([&chunk.0[..]])
            .sql()?;
        tx.prepare_cached("DELETE FROM inline_chunks WHERE id = ?1")
            .sql()?
            .execute([&chunk.0[..]])
            .sql()?;
        removed
            .extend(shards.into_iter().map(|(index, chunkd)| (ShardId { chunk, index }, chunkd)));
    }
    Ok(removed)
}

/// Marks `shards` unhealthy where the catalogue places them on `chunkd`; returns how many.
pub(super) fn mark_unhealthy(
    tx: &Connection,
    chunkd: &str,
    shards: &[ShardId],
) -> Result<u64, MetaError> {
    let mut update = tx
        .prepare_cached(
            "UPDATE shards SET healthy = 0 WHERE chunk = ?1 AND idx = ?2 AND chunkd = ?3",
        )
        .sql()?;
    let mut marked = 0;
    for shard in shards {
        marked += update.execute(params![&shard.chunk.0[..], shard.index, chunkd]).sql()? as u64;
    }
    Ok(marked)
}

/// Ids of the chunks with a shard that is unhealthy or on a chunkd in `lost`, sorted, each
/// once: the chunks short of full redundancy.
fn damaged_chunks(tx: &Connection, lost: &HashSet<String>) -> Result<Vec<Vec<u8>>, MetaError> {
    let mut damaged: Vec<Vec<u8>> = tx
        .prepare_cached("SELECT DISTINCT chunk FROM shards WHERE NOT healthy")
        .sql()?
        .query_map([], |r| r.get(0))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    let mut on_lost =
        tx.prepare_cached("SELECT DISTINCT chunk FROM shards WHERE chunkd = ?1").sql()?;
    for chunkd in lost {
        damaged.extend(
            on_lost
                .query_map([chunkd], |r| r.get(0))
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?,
        );
    }
    damaged.sort();
    damaged.dedup();
    Ok(damaged)
}

pub(super) fn chunk_status(
    tx: &Connection,
    chunk: ChunkId,
) -> Result<Option<ChunkStatus>, MetaError> {
    let Some((len, refcount, parts)) = tx
        .prepare_cached("SELECT len, refcount, class, k, m, l FROM chunks WHERE id = ?1")
        .sql()?
        .query_row([&chunk.0[..]], |r| Ok((r.get(0)?, r.get(1)?, class_parts(r, 2)?)))
        .optional()
        .sql()?
    else {
        return Ok(None);
    };
    let encoding = class_from_parts(parts)?;
    let shards = tx
        .prepare_cached("SELECT idx, chunkd, healthy FROM shards WHERE chunk = ?1 ORDER BY idx")
        .sql()?
        .query_map([&chunk.0[..]], |r| {
            Ok(ShardStatus { index: r.get(0)?, chunkd: r.get(1)?, healthy: r.get(2)? })
        })
        .sql()?
        .collect::<Result<Vec<_>, _>>()
        .sql()?;
    Ok(Some(ChunkStatus { chunk, len, encoding, refcount, shards }))
}
