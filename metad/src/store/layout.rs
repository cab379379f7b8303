//! File layouts: extents mapping file ranges onto chunks, and the writes that change them.
//!
//! Extents of one file never overlap. A write punches the range it covers out of the
//! existing extents (splitting them where needed) and inserts its own, so a small write into
//! a large file adds a small chunk instead of rewriting a large one. Every extent holds one
//! reference on its chunk.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use shardfs_chunk_api::{ChunkId, Encoding};

use super::mutation::{Applied, Mutation};
use super::{Store, get_attr};
use crate::store::Sql as _;
use shardfs_meta_api::proto::{
    Attr, ChunkLocation, ChunkPlan, ChunkToWrite, Extent, FileKind, INLINE_MAX, InlineChunk, Ino,
    LAYOUT_INLINE_BUDGET, Layout, MetaError, ShardPlace, SpaceOp, StoredChunk, Timestamp,
};

/// Largest file size (bytes): what SQLite's signed integers can hold.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

impl Store {
    pub fn layout(&self, ino: Ino) -> Result<Layout, MetaError> {
        self.read(|tx| {
            let attr = get_attr(tx, ino)?;
            let extents = tx
                .prepare_cached(
                    "SELECT offset, len, chunk, chunk_offset FROM extents
                     WHERE ino = ?1 ORDER BY offset",
                )
                .sql()?
                .query_map([ino], extent_from_row)
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?;
            let distinct: BTreeSet<ChunkId> =
                extents.iter().filter(|e| !e.is_unwritten()).map(|e| e.chunk).collect();
            let mut budget = LAYOUT_INLINE_BUDGET;
            let chunks = distinct
                .into_iter()
                .map(|chunk| chunk_location(tx, chunk, &mut budget))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Layout { attr, extents, chunks })
        })
    }

    /// The content of a chunk kept inline.
    pub fn read_inline(&self, chunk: ChunkId) -> Result<Vec<u8>, MetaError> {
        self.read(|tx| {
            inline_content(tx, chunk)?.ok_or_else(|| MetaError::ChunkGone(chunk.to_hex()))
        })
    }

    /// Decides, per chunk, whether it is already stored with full redundancy (dedup) or
    /// where to put it.
    pub fn prepare_write(
        &self,
        chunks: &[ChunkToWrite],
        place: impl Fn(&ChunkToWrite) -> Result<ChunkPlan, MetaError>,
    ) -> Result<Vec<ChunkPlan>, MetaError> {
        self.read(|tx| {
            chunks
                .iter()
                .map(|chunk| {
                    if fully_redundant(tx, chunk.chunk)? {
                        Ok(ChunkPlan::Stored(chunk_location(tx, chunk.chunk, &mut 0)?))
                    } else {
                        place(chunk)
                    }
                })
                .collect()
        })
    }

    /// fallocate(2): allocate (holes in the range, up to the size the file ends with, become
    /// unwritten extents: counted in `st_blocks`, but no disk space is reserved), punch a
    /// hole, or zero a range (a hole reads as zeros).
    pub fn allocate(
        &self,
        ino: Ino,
        offset: u64,
        len: u64,
        op: SpaceOp,
    ) -> Result<Attr, MetaError> {
        let now = Timestamp::now();
        self.apply(Mutation::Allocate { ino, offset, len, op, now })?.0.into_attr()
    }

    /// copy_file_range(2) without copying bytes: the destination range points at the
    /// source's chunks. Holes copy as holes. Returns the destination's attributes and the
    /// number of bytes copied (the range is clipped to the source's size).
    pub fn clone_range(
        &self,
        src: Ino,
        src_offset: u64,
        dst: Ino,
        dst_offset: u64,
        len: u64,
    ) -> Result<(Attr, u64), MetaError> {
        let now = Timestamp::now();
        match self.apply(Mutation::CloneRange { src, src_offset, dst, dst_offset, len, now })?.0 {
            Applied::Cloned(attr, len) => Ok((attr, len)),
            other => Err(other.mismatch("a clone's destination")),
        }
    }

    /// Records newly stored chunks and inline ones, and points `extents` of `ino` at them,
    /// in one transaction.
    pub fn commit_write(
        &self,
        ino: Ino,
        stored: &[StoredChunk],
        inline: &[InlineChunk],
        extents: &[Extent],
        mtime: Timestamp,
    ) -> Result<Attr, MetaError> {
        let (stored, inline, extents) = (stored.to_vec(), inline.to_vec(), extents.to_vec());
        let now = Timestamp::now();
        let commit = Mutation::CommitWrite { ino, stored, inline, extents, mtime, now };
        self.apply(commit)?.0.into_attr()
    }
}

/// fallocate(2): allocate (holes in the range, up to the size the file ends with, become
/// unwritten extents: counted in `st_blocks`, but no disk space is reserved), punch a hole,
/// or zero a range (a hole reads as zeros).
pub(super) fn allocate(
    tx: &Connection,
    ino: Ino,
    offset: u64,
    len: u64,
    op: SpaceOp,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    let end =
        offset.checked_add(len).filter(|end| *end <= MAX_FILE_SIZE).ok_or(MetaError::FileTooBig)?;
    let attr = require_file(tx, ino)?;
    let keep_size = match op {
        SpaceOp::Allocate { keep_size } => keep_size,
        SpaceOp::PunchHole => {
            punch(tx, ino, offset, end.min(attr.size), now)?;
            true
        }
        SpaceOp::ZeroRange { keep_size } => {
            punch(tx, ino, offset, if keep_size { end.min(attr.size) } else { end }, now)?;
            keep_size
        }
    };
    let size = if keep_size { attr.size } else { attr.size.max(end) };
    if let SpaceOp::Allocate { .. } = op {
        fill_holes(tx, ino, offset, end.min(size), now)?;
    }
    let changed = size != attr.size || !matches!(op, SpaceOp::Allocate { .. });
    if changed {
        tx.prepare_cached(
            "UPDATE inodes SET size = ?2, mtime_sec = ?3, mtime_nsec = ?4,
                 ctime_sec = ?3, ctime_nsec = ?4
             WHERE ino = ?1",
        )
        .sql()?
        .execute(params![ino, size, now.sec, now.nsec])
        .sql()?;
    }
    get_attr(tx, ino)
}

/// copy_file_range(2) without copying bytes: the destination range points at the source's
/// chunks. Holes copy as holes. Returns the destination's attributes and the number of bytes
/// copied (the range is clipped to the source's size).
pub(super) fn clone_range(
    tx: &Connection,
    (src, src_offset): (Ino, u64),
    (dst, dst_offset): (Ino, u64),
    len: u64,
    now: Timestamp,
) -> Result<(Attr, u64), MetaError> {
    let source = require_file(tx, src)?;
    require_file(tx, dst)?;
    let len = len.min(source.size.saturating_sub(src_offset));
    if len == 0 {
        return Ok((get_attr(tx, dst)?, 0));
    }
    let dst_end =
        dst_offset.checked_add(len).filter(|e| *e <= MAX_FILE_SIZE).ok_or(MetaError::FileTooBig)?;
    if src == dst && src_offset < dst_end && dst_offset < src_offset + len {
        return Err(MetaError::Invalid("overlapping ranges in one file".into()));
    }
    let pieces = extents_in(tx, src, src_offset, src_offset + len)?;
    punch(tx, dst, dst_offset, dst_end, now)?;
    for piece in pieces {
        let moved = Extent { offset: piece.offset - src_offset + dst_offset, ..piece };
        insert_extent(tx, dst, &moved, now)?;
    }
    tx.prepare_cached(
        "UPDATE inodes SET size = MAX(size, ?2), mtime_sec = ?3, mtime_nsec = ?4,
             ctime_sec = ?3, ctime_nsec = ?4
         WHERE ino = ?1",
    )
    .sql()?
    .execute(params![dst, dst_end, now.sec, now.nsec])
    .sql()?;
    Ok((get_attr(tx, dst)?, len))
}

/// Records newly stored chunks and inline ones, and points `extents` of `ino` at them.
pub(super) fn commit_write(
    tx: &Connection,
    ino: Ino,
    stored: &[StoredChunk],
    inline: &[InlineChunk],
    extents: &[Extent],
    mtime: Timestamp,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    let attr = require_file(tx, ino)?;
    for chunk in stored {
        record_chunk(tx, chunk, now)?;
    }
    for chunk in inline {
        record_inline(tx, chunk, now)?;
    }
    let mut end = attr.size;
    for extent in extents {
        let chunk_len: u64 = tx
            .prepare_cached("SELECT len FROM chunks WHERE id = ?1")
            .sql()?
            .query_row([&extent.chunk.0[..]], |r| r.get(0))
            .optional()
            .sql()?
            .ok_or_else(|| MetaError::ChunkGone(extent.chunk.to_hex()))?;
        if extent.len == 0
            || extent.chunk_offset.checked_add(extent.len).is_none_or(|e| e > chunk_len)
            || extent.offset.checked_add(extent.len).is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return Err(MetaError::Invalid(format!("extent {extent:?} out of range")));
        }
        punch(tx, ino, extent.offset, extent.end(), now)?;
        insert_extent(tx, ino, extent, now)?;
        end = end.max(extent.end());
    }
    let ctime = now.max(mtime);
    tx.prepare_cached(
        "UPDATE inodes SET size = ?2, mtime_sec = ?3, mtime_nsec = ?4,
             ctime_sec = ?5, ctime_nsec = ?6
         WHERE ino = ?1",
    )
    .sql()?
    // ctime: when the change is made here, or the writer's mtime if that is later
    // (the writer's mtime may also have been set back explicitly, as by cp -p).
    .execute(params![ino, end, mtime.sec, mtime.nsec, ctime.sec, ctime.nsec])
    .sql()?;
    get_attr(tx, ino)
}

/// The attributes of `ino`, which must be a regular file.
fn require_file(tx: &Connection, ino: Ino) -> Result<Attr, MetaError> {
    let attr = get_attr(tx, ino)?;
    match attr.kind {
        FileKind::File => Ok(attr),
        FileKind::Dir => Err(MetaError::IsDir),
        _ => Err(MetaError::Invalid("not a regular file".into())),
    }
}

/// Extents of `ino` overlapping file range `[start, end)`, clipped to it.
fn extents_in(tx: &Connection, ino: Ino, start: u64, end: u64) -> Result<Vec<Extent>, MetaError> {
    let all = tx
        .prepare_cached(
            "SELECT offset, len, chunk, chunk_offset FROM extents
             WHERE ino = ?1 AND offset < ?3 AND offset + len > ?2 ORDER BY offset",
        )
        .sql()?
        .query_map(params![ino, start, end], extent_from_row)
        .sql()?
        .collect::<Result<Vec<_>, _>>()
        .sql()?;
    Ok(all
        .into_iter()
        .map(|e| {
            let from = e.offset.max(start);
            let to = e.end().min(end);
            Extent {
                offset: from,
                len: to - from,
                chunk: e.chunk,
                chunk_offset: e.chunk_offset + (from - e.offset),
            }
        })
        .collect())
}

/// Turns the holes of `ino` within `[start, end)` into unwritten extents.
fn fill_holes(
    tx: &Connection,
    ino: Ino,
    start: u64,
    end: u64,
    now: Timestamp,
) -> Result<(), MetaError> {
    let mut position = start;
    let unwritten = |offset: u64, end: u64| Extent {
        offset,
        len: end - offset,
        chunk: Extent::UNWRITTEN,
        chunk_offset: 0,
    };
    for extent in extents_in(tx, ino, start, end)? {
        if extent.offset > position {
            insert_extent(tx, ino, &unwritten(position, extent.offset), now)?;
        }
        position = extent.end();
    }
    if position < end {
        insert_extent(tx, ino, &unwritten(position, end), now)?;
    }
    Ok(())
}

/// Sets the size of `ino`, dropping content past it. Growing leaves a hole.
pub(super) fn truncate(
    tx: &Connection,
    ino: Ino,
    size: u64,
    now: Timestamp,
) -> Result<(), MetaError> {
    if size > MAX_FILE_SIZE {
        return Err(MetaError::Invalid(format!("size {size} too large")));
    }
    punch(tx, ino, size, MAX_FILE_SIZE, now)?;
    tx.prepare_cached(
        "UPDATE inodes SET size = ?2, mtime_sec = ?3, mtime_nsec = ?4, ctime_sec = ?3,
             ctime_nsec = ?4
         WHERE ino = ?1",
    )
    .sql()?
    .execute(params![ino, size, now.sec, now.nsec])
    .sql()?;
    Ok(())
}

/// Drops content of `ino` past `size` without touching the size or times (fsck repair).
pub(super) fn trim_past(
    tx: &Connection,
    ino: Ino,
    size: u64,
    now: Timestamp,
) -> Result<(), MetaError> {
    punch(tx, ino, size, MAX_FILE_SIZE, now)
}

/// Drops every extent of `ino` (the inode is going away).
pub(super) fn release_all(tx: &Connection, ino: Ino, now: Timestamp) -> Result<(), MetaError> {
    punch(tx, ino, 0, MAX_FILE_SIZE, now)
}

/// Removes file range `[start, end)` from the extents of `ino`, splitting extents that
/// straddle its edges.
fn punch(tx: &Connection, ino: Ino, start: u64, end: u64, now: Timestamp) -> Result<(), MetaError> {
    if start >= end {
        return Ok(());
    }
    // The extent starting at or before `start` (it may straddle it), then those inside.
    let mut overlapping: Vec<Extent> = Vec::new();
    if let Some(first) = tx
        .prepare_cached(
            "SELECT offset, len, chunk, chunk_offset FROM extents
             WHERE ino = ?1 AND offset <= ?2 ORDER BY offset DESC LIMIT 1",
        )
        .sql()?
        .query_row(params![ino, start], extent_from_row)
        .optional()
        .sql()?
        && first.end() > start
    {
        overlapping.push(first);
    }
    overlapping.extend(
        tx.prepare_cached(
            "SELECT offset, len, chunk, chunk_offset FROM extents
             WHERE ino = ?1 AND offset > ?2 AND offset < ?3 ORDER BY offset",
        )
        .sql()?
        .query_map(params![ino, start, end], extent_from_row)
        .sql()?
        .collect::<Result<Vec<_>, _>>()
        .sql()?,
    );
    for old in overlapping {
        delete_extent(tx, ino, &old, now)?;
        if old.offset < start {
            let left = Extent { len: start - old.offset, ..old };
            insert_extent(tx, ino, &left, now)?;
        }
        if old.end() > end {
            let cut = end - old.offset;
            let right = Extent {
                offset: end,
                len: old.len - cut,
                chunk: old.chunk,
                chunk_offset: old.chunk_offset + cut,
            };
            insert_extent(tx, ino, &right, now)?;
        }
    }
    Ok(())
}

fn insert_extent(
    tx: &Connection,
    ino: Ino,
    extent: &Extent,
    now: Timestamp,
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "INSERT INTO extents (ino, offset, len, chunk, chunk_offset) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .sql()?
    .execute(params![ino, extent.offset, extent.len, &extent.chunk.0[..], extent.chunk_offset])
    .sql()?;
    change_usage(tx, ino, extent, 1, now)
}

fn delete_extent(
    tx: &Connection,
    ino: Ino,
    extent: &Extent,
    now: Timestamp,
) -> Result<(), MetaError> {
    tx.prepare_cached("DELETE FROM extents WHERE ino = ?1 AND offset = ?2")
        .sql()?
        .execute(params![ino, extent.offset])
        .sql()?;
    change_usage(tx, ino, extent, -1, now)
}

/// Moves the chunk's refcount and the inode's allocated bytes by one extent.
fn change_usage(
    tx: &Connection,
    ino: Ino,
    extent: &Extent,
    sign: i64,
    now: Timestamp,
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "UPDATE chunks SET refcount = refcount + ?2,
             zero_since = CASE WHEN refcount + ?2 = 0 THEN ?3 ELSE NULL END
         WHERE id = ?1",
    )
    .sql()?
    .execute(params![&extent.chunk.0[..], sign, now.sec])
    .sql()?;
    tx.prepare_cached("UPDATE inodes SET allocated = allocated + ?2 WHERE ino = ?1")
        .sql()?
        .execute(params![ino, sign * extent.len as i64])
        .sql()?;
    Ok(())
}

/// Whether `chunk` is catalogued with all k+m shards healthy. A write never references a
/// chunk below full redundancy: it stores the chunk again, replacing the unhealthy shards.
fn fully_redundant(tx: &Connection, chunk: ChunkId) -> Result<bool, MetaError> {
    let found: Option<(u32, u32)> = tx
        .prepare_cached(
            "SELECT c.k + c.m, (SELECT COUNT(*) FROM shards s WHERE s.chunk = c.id AND s.healthy)
             FROM chunks c WHERE c.id = ?1",
        )
        .sql()?
        .query_row([&chunk.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .sql()?;
    Ok(found.is_some_and(|(total, healthy)| healthy >= total))
}

fn record_chunk(tx: &Connection, chunk: &StoredChunk, now: Timestamp) -> Result<(), MetaError> {
    let encoding = chunk.encoding.validate().map_err(|e| MetaError::Invalid(e.to_string()))?;
    // All its shards, or (written degraded) at least those holding its data, in index
    // order.
    let indexes: Vec<usize> = chunk.shards.iter().map(|s| s.index as usize).collect();
    let total = encoding.total();
    if indexes.len() < encoding.needed()
        || indexes.windows(2).any(|w| w[0] >= w[1])
        || indexes.last().is_some_and(|i| *i >= total)
    {
        return Err(MetaError::Invalid(format!(
            "chunk {} must list at least {} of shards 0..{total} in order",
            chunk.chunk,
            encoding.needed()
        )));
    }
    let [class, k, m, l] = encoding.to_parts();
    tx.prepare_cached(
        "INSERT INTO chunks (id, len, class, k, m, l, refcount, created, zero_since)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7) ON CONFLICT (id) DO NOTHING",
    )
    .sql()?
    .execute(params![&chunk.chunk.0[..], chunk.len, class, k, m, l, now.sec])
    .sql()?;
    for shard in &chunk.shards {
        let known: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM chunkds WHERE id = ?1)")
            .sql()?
            .query_row([&shard.chunkd], |r| r.get(0))
            .sql()?;
        if !known {
            return Err(MetaError::Invalid(format!("chunkd {} is not registered", shard.chunkd)));
        }
    }
    let catalogued: [u8; 4] = tx
        .prepare_cached("SELECT class, k, m, l FROM chunks WHERE id = ?1")
        .sql()?
        .query_row([&chunk.chunk.0[..]], |r| class_parts(r, 0))
        .sql()?;
    if catalogued != encoding.to_parts() {
        // Stored before in another class: its shards are not interchangeable.
        return Ok(());
    }
    // Where the catalogue already has a healthy shard (another writer stored the same
    // content first), that placement stands and the new copy is an orphan for the sweep;
    // an unhealthy shard is replaced by the new copy.
    for shard in &chunk.shards {
        tx.prepare_cached(
            "INSERT INTO shards (chunk, idx, chunkd, healthy) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT (chunk, idx) DO UPDATE SET chunkd = excluded.chunkd, healthy = 1
             WHERE NOT shards.healthy",
        )
        .sql()?
        .execute(params![&chunk.chunk.0[..], shard.index, shard.chunkd])
        .sql()?;
    }
    // The shards a degraded write could not place: missing, for repair to rebuild.
    for index in (0..total as u8).filter(|i| !chunk.shards.iter().any(|s| s.index == *i)) {
        tx.prepare_cached(
            "INSERT INTO shards (chunk, idx, chunkd, healthy) VALUES (?1, ?2, ?3, 0)
             ON CONFLICT (chunk, idx) DO NOTHING",
        )
        .sql()?
        .execute(params![&chunk.chunk.0[..], index, NOWHERE])
        .sql()?;
    }
    Ok(())
}

/// The chunkd of a shard that was never stored (its chunk was written degraded): an
/// unhealthy shard that repair places and rebuilds.
pub const NOWHERE: &str = "";

/// Catalogues an inline chunk with its content, unless the id is catalogued already (then
/// that copy, inline or on chunkds, stands).
fn record_inline(tx: &Connection, chunk: &InlineChunk, now: Timestamp) -> Result<(), MetaError> {
    let len = chunk.data.len() as u64;
    if len == 0 || len > INLINE_MAX {
        return Err(MetaError::Invalid(format!(
            "inline chunk {} of {len} bytes (1..={INLINE_MAX})",
            chunk.chunk
        )));
    }
    if ChunkId::of(&chunk.data) != chunk.chunk {
        return Err(MetaError::Invalid(format!(
            "inline chunk {}: content does not match its BLAKE3 id",
            chunk.chunk
        )));
    }
    let added = tx
        .prepare_cached(
            "INSERT INTO chunks (id, len, k, m, refcount, created, zero_since)
             VALUES (?1, ?2, 0, 0, 0, ?3, ?3) ON CONFLICT (id) DO NOTHING",
        )
        .sql()?
        .execute(params![&chunk.chunk.0[..], len, now.sec])
        .sql()?;
    if added > 0 {
        tx.prepare_cached("INSERT INTO inline_chunks (id, data) VALUES (?1, ?2)")
            .sql()?
            .execute(params![&chunk.chunk.0[..], &chunk.data])
            .sql()?;
    }
    Ok(())
}

/// The content kept for an inline chunk, if any.
fn inline_content(tx: &Connection, chunk: ChunkId) -> Result<Option<Vec<u8>>, MetaError> {
    let mut query = tx.prepare_cached("SELECT data FROM inline_chunks WHERE id = ?1").sql()?;
    query.query_row([&chunk.0[..]], |r| r.get(0)).optional().sql()
}

/// Where `chunk` is. An inline chunk's content comes along while `budget` (bytes) lasts.
pub(super) fn chunk_location(
    tx: &Connection,
    chunk: ChunkId,
    budget: &mut usize,
) -> Result<ChunkLocation, MetaError> {
    let (len, parts): (u64, [u8; 4]) = tx
        .prepare_cached("SELECT len, class, k, m, l FROM chunks WHERE id = ?1")
        .sql()?
        .query_row([&chunk.0[..]], |r| Ok((r.get(0)?, class_parts(r, 1)?)))
        .optional()
        .sql()?
        .ok_or_else(|| MetaError::ChunkGone(chunk.to_hex()))?;
    let encoding = class_from_parts(parts)?;
    let shards = tx
        .prepare_cached(
            "SELECT s.idx, s.chunkd, COALESCE(d.addr, '') FROM shards s
             LEFT JOIN chunkds d ON d.id = s.chunkd
             WHERE s.chunk = ?1 AND s.healthy ORDER BY s.idx",
        )
        .sql()?
        .query_map([&chunk.0[..]], |r| {
            Ok(ShardPlace { index: r.get(0)?, chunkd: r.get(1)?, addr: r.get(2)? })
        })
        .sql()?
        .collect::<Result<Vec<_>, _>>()
        .sql()?;
    let mut location = ChunkLocation { chunk, len, encoding, shards, inline: None };
    if location.is_inline() && len as usize <= *budget {
        location.inline = inline_content(tx, chunk)?;
        *budget -= len as usize;
    }
    Ok(location)
}

/// Reads an extent from the columns `offset, len, chunk, chunk_offset`.
fn extent_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Extent> {
    Ok(Extent {
        offset: r.get(0)?,
        len: r.get(1)?,
        chunk: chunk_id(r.get(2)?)?,
        chunk_offset: r.get(3)?,
    })
}

pub(super) fn chunk_id(bytes: Vec<u8>) -> rusqlite::Result<ChunkId> {
    let len = bytes.len();
    bytes.try_into().map(ChunkId).map_err(|_| {
        rusqlite::Error::InvalidColumnType(
            0,
            format!("chunk id of {len} bytes"),
            rusqlite::types::Type::Blob,
        )
    })
}

/// The class columns (`class, k, m, l`) of a `chunks` row, from column `first` on.
pub(super) fn class_parts(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<[u8; 4]> {
    Ok([row.get(first)?, row.get(first + 1)?, row.get(first + 2)?, row.get(first + 3)?])
}

/// The class the catalogue records as `parts`.
pub(super) fn class_from_parts(parts: [u8; 4]) -> Result<Encoding, MetaError> {
    Encoding::from_parts(parts)
        .map_err(|e| MetaError::Store(format!("the catalogue holds an invalid class: {e}")))
}
