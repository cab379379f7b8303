//! Storage classes in the namespace and the catalogue: the class a file's new data is
//! written in, from its class policy (`shardfs_meta_api::class_policy`); the chunks the
//! lifecycle should move and the move itself; bytes stored per class.

use rusqlite::{Connection, OptionalExtension, params};
use shardfs_chunk_api::{ChunkId, Encoding, ShardPlace, codec};
use shardfs_meta_api::class_policy::{CLASS_XATTR, ClassPolicy};

use super::catalogue::chunk_status;
use super::layout::{chunk_id, class_from_parts, class_parts};
use super::mutation::Mutation;
use super::xattr::xattr_value;
use super::{Store, get_attr};
use crate::store::Sql as _;
use shardfs_meta_api::proto::{ChunkStatus, ClassUsage, Ino, MetaError};

impl Store {
    /// The class new data of file `ino` is written in. A file not made yet (its making is
    /// still in a mount's queue of batched changes, which placement does not wait for) is
    /// written in the hot class; the lifecycle later moves it where its policy says.
    pub fn write_class(&self, ino: Ino) -> Result<Encoding, MetaError> {
        let volume = self.settings();
        self.read(|tx| {
            let policy = match get_attr(tx, ino) {
                Ok(_) => policy(tx, ino)?,
                Err(MetaError::NotFound) => None,
                Err(e) => return Err(e),
            };
            Ok(ClassPolicy::write_class(policy, volume.hot, volume.cold))
        })
    }
}

/// The class policy `ino` states, if any.
pub(super) fn policy(tx: &Connection, ino: Ino) -> Result<Option<ClassPolicy>, MetaError> {
    Ok(xattr_value(tx, ino, CLASS_XATTR)?.and_then(|value| ClassPolicy::from_xattr(&value)))
}

/// Checks a value about to be set as `CLASS_XATTR`.
pub(super) fn validate_policy(value: &[u8]) -> Result<(), MetaError> {
    match ClassPolicy::from_xattr(value) {
        Some(_) => Ok(()),
        None => Err(MetaError::Invalid(format!(
            "{:?} is not a class policy: write hot, cold, replicas(3), rs(4,2) or lrc(6,2,2)",
            String::from_utf8_lossy(value)
        ))),
    }
}

/// A chunk the lifecycle should move, and where to.
#[derive(Clone, Debug)]
pub struct Transition {
    pub chunk: ChunkStatus,
    pub to: Encoding,
}

impl Store {
    /// Chunks after `after` (in id order, at most `limit` looked at) that the lifecycle
    /// should move, and the last id looked at (`None`: the catalogue's end was reached).
    ///
    /// A chunk moves to the class its files come to rest in (`ClassPolicy::resting_class`)
    /// when every file referencing it agrees on that class, each is ready (it states a
    /// policy, or was last written at or before `cutoff`, in seconds since the epoch), the
    /// chunk is in another class with every shard healthy, and it is stored on chunkds.
    pub fn lifecycle_candidates(
        &self,
        after: Option<ChunkId>,
        limit: u32,
        cutoff: i64,
    ) -> Result<(Vec<Transition>, Option<ChunkId>), MetaError> {
        let volume = self.settings();
        self.scan(|tx| {
            let start = after.map(|c| c.0.to_vec()).unwrap_or_default();
            // While no file states a policy, chunks in the cold class have nowhere to go:
            // the scan skips them in SQL.
            let policies: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM xattrs WHERE name = ?1)")
                .sql()?
                .query_row([CLASS_XATTR], |r| r.get(0))
                .sql()?;
            let [class, k, m, l] = volume.cold.to_parts();
            let ids: Vec<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT id FROM chunks WHERE id > ?1 AND k > 0 AND refcount > 0
                         AND (?3 OR class != ?4 OR k != ?5 OR m != ?6 OR l != ?7)
                     ORDER BY id LIMIT ?2",
                )
                .sql()?
                .query_map(params![start, limit, policies, class, k, m, l], |r| r.get(0))
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            let last = match ids.len() < limit as usize {
                true => None,
                false => ids.last().map(|id| chunk_id(id.clone())).transpose().sql()?,
            };
            let mut moves = Vec::new();
            for id in ids {
                let chunk = chunk_id(id).sql()?;
                let Some(to) = resting_class(tx, chunk, cutoff, (volume.hot, volume.cold))? else {
                    continue;
                };
                let Some(status) = chunk_status(tx, chunk)? else { continue };
                let whole = status.shards.len() == status.encoding.total()
                    && status.shards.iter().all(|s| s.healthy);
                if to != status.encoding && whole {
                    moves.push(Transition { chunk: status, to });
                }
            }
            Ok((moves, last))
        })
    }

    /// Moves `chunk` from class `from` to `to`, now stored as `shards`; false if it is no
    /// longer referenced or no longer in `from`.
    pub fn switch_class(
        &self,
        chunk: ChunkId,
        (from, to): (Encoding, Encoding),
        shards: &[ShardPlace],
    ) -> Result<bool, MetaError> {
        let shards = shards.iter().map(|s| (s.index, s.chunkd.clone())).collect();
        self.apply(Mutation::SwitchClass { chunk, from, to, shards })?.0.into_changed()
    }
}

/// The class `chunk`'s files agree it should rest in, if they agree and are all ready to
/// move (see [`Store::lifecycle_candidates`]).
fn resting_class(
    tx: &Connection,
    chunk: ChunkId,
    cutoff: i64,
    (hot, cold): (Encoding, Encoding),
) -> Result<Option<Encoding>, MetaError> {
    let files: Vec<(Ino, i64)> = tx
        .prepare_cached(
            "SELECT DISTINCT e.ino, i.mtime_sec FROM extents e JOIN inodes i ON i.ino = e.ino
             WHERE e.chunk = ?1",
        )
        .sql()?
        .query_map([&chunk.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    let mut agreed = None;
    for (ino, mtime) in files {
        let policy = policy(tx, ino)?;
        if policy.is_none() && mtime > cutoff {
            return Ok(None);
        }
        let class = ClassPolicy::resting_class(policy, hot, cold);
        if agreed.is_some_and(|agreed| agreed != class) {
            return Ok(None);
        }
        agreed = Some(class);
    }
    Ok(agreed)
}

/// See [`Store::switch_class`].
pub(super) fn switch_class(
    tx: &Connection,
    chunk: ChunkId,
    (from, to): (Encoding, Encoding),
    shards: &[(u8, String)],
) -> Result<bool, MetaError> {
    let to = to.validate().map_err(|e| MetaError::Invalid(e.to_string()))?;
    if shards.len() != to.total()
        || shards.iter().enumerate().any(|(p, (index, _))| codec::position(*index) != p)
    {
        return Err(MetaError::Invalid(format!("chunk {chunk} needs all {to}'s shards in order")));
    }
    let [class, k, m, l] = from.to_parts();
    let current = tx
        .prepare_cached(
            "SELECT 1 FROM chunks WHERE id = ?1 AND refcount > 0
                 AND class = ?2 AND k = ?3 AND m = ?4 AND l = ?5",
        )
        .sql()?
        .query_row(params![&chunk.0[..], class, k, m, l], |_| Ok(()))
        .optional()
        .sql()?
        .is_some();
    if !current {
        return Ok(false);
    }
    tx.prepare_cached("DELETE FROM shards WHERE chunk = ?1")
        .sql()?
        .execute([&chunk.0[..]])
        .sql()?;
    for (index, chunkd) in shards {
        tx.prepare_cached(
            "INSERT INTO shards (chunk, idx, chunkd, healthy) VALUES (?1, ?2, ?3, 1)",
        )
        .sql()?
        .execute(params![&chunk.0[..], index, chunkd])
        .sql()?;
    }
    let [class, k, m, l] = to.to_parts();
    tx.prepare_cached("UPDATE chunks SET class = ?2, k = ?3, m = ?4, l = ?5 WHERE id = ?1")
        .sql()?
        .execute(params![&chunk.0[..], class, k, m, l])
        .sql()?;
    Ok(true)
}

/// Chunks, their bytes and the raw bytes their shards take, per class.
pub(super) fn class_usage(tx: &Connection) -> Result<Vec<ClassUsage>, MetaError> {
    let rows: Vec<([u8; 4], u64, u64, u64)> = tx
        .prepare_cached(
            "SELECT class, k, m, l, COUNT(*), COALESCE(SUM(len), 0),
                 COALESCE(SUM(CASE WHEN k = 0 THEN len
                     ELSE MAX((len + k - 1) / k, 1) * (k + m) END), 0)
             FROM chunks GROUP BY class, k, m, l ORDER BY class, k, m, l",
        )
        .sql()?
        .query_map([], |r| Ok((class_parts(r, 0)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    rows.into_iter()
        .map(|(parts, chunks, bytes, raw_bytes)| {
            let class = class_from_parts(parts)?.to_string();
            Ok(ClassUsage { class, chunks, bytes, raw_bytes })
        })
        .collect()
}
